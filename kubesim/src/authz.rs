//! Access reviews answered from the RBAC objects in the store, so `kubectl auth can-i
//! --as=system:serviceaccount:NS:NAME …` says what the applied Roles, ClusterRoles and their
//! bindings grant. Start at [`review`].
//!
//! `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` asks for the caller: the
//! impersonated user (`Impersonate-User`, `Impersonate-Group`, as `kubectl --as` sends them);
//! without impersonation the caller is kubesim's admin and everything is allowed.
//! `subjectaccessreviews` names the user and groups in its spec. Nothing is stored.
//!
//! kubectl 1.32+ sends these bodies as protobuf from its typed client (KUBESIM-NOTES §3),
//! decoded like any other body (`protobuf.rs`); the answer is JSON, which kubectl accepts.
//!
//! Evaluation follows Kubernetes' RBAC authorizer: the ClusterRoleBindings, then the
//! RoleBindings of the request's namespace, whose subjects name the user (kind `User`), one of
//! its groups (kind `Group`), or — for `system:serviceaccount:NS:NAME` — the ServiceAccount;
//! a rule allows when its apiGroups, resources (`resource/subresource`), verbs and resourceNames
//! match (`*` matches any), or for a path, its nonResourceURLs (a trailing `*` is a prefix).

use serde_json::{Value, json};

use crate::resources::{self, ResourceType};
use crate::store::Store;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub user: String,
    pub groups: Vec<String>,
}

impl Subject {
    /// The groups Kubernetes adds: authenticated, and for a service account its two groups.
    fn all_groups(&self) -> Vec<String> {
        let mut groups = self.groups.clone();
        groups.push("system:authenticated".into());
        if let Some(rest) = self.user.strip_prefix("system:serviceaccount:")
            && let Some((ns, _)) = rest.split_once(':')
        {
            groups.push("system:serviceaccounts".into());
            groups.push(format!("system:serviceaccounts:{ns}"));
        }
        groups
    }

    fn matches(&self, subject: &Value, binding_ns: Option<&str>) -> bool {
        let name = subject["name"].as_str().unwrap_or_default();
        match subject["kind"].as_str() {
            Some("User") => self.user == name,
            Some("Group") => self.all_groups().iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let ns = subject["namespace"]
                    .as_str()
                    .or(binding_ns)
                    .unwrap_or_default();
                self.user == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    }
}

/// A review's question: a resource request or a non-resource path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub namespace: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// A non-resource request's path (`/version`); `None` for a resource request.
    pub path: Option<String>,
}

impl Attributes {
    fn from_spec(spec: &Value) -> Attributes {
        let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
        if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
            Attributes {
                namespace: text(r, "namespace"),
                verb: text(r, "verb"),
                group: text(r, "group"),
                resource: text(r, "resource"),
                subresource: text(r, "subresource"),
                name: text(r, "name"),
                path: None,
            }
        } else {
            let n = &spec["nonResourceAttributes"];
            Attributes {
                verb: text(n, "verb"),
                path: Some(text(n, "path")),
                ..Attributes::default()
            }
        }
    }
}

fn listed(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !listed(&rule["verbs"], &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return rule["nonResourceURLs"].as_array().is_some_and(|urls| {
            urls.iter().filter_map(Value::as_str).any(|u| {
                u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
            })
        });
    }
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let names_ok = match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => {
            !a.name.is_empty() && names.iter().any(|n| n == a.name.as_str())
        }
        _ => true,
    };
    listed(&rule["apiGroups"], &a.group) && listed(&rule["resources"], &resource) && names_ok
}

fn kind(kind: &str) -> &'static ResourceType {
    resources::RESOURCES
        .iter()
        .find(|r| r.group == "rbac.authorization.k8s.io" && r.kind == kind)
        .expect("kubesim serves the RBAC kinds")
}

/// What the bootstrap ClusterRoles every cluster has grant anyone authenticated:
/// `system:discovery` and `system:public-info-viewer` (discovery, `/version`, OpenAPI, health)
/// and `system:basic-user` (asking what oneself may do).
pub(crate) fn bootstrap_allows(a: &Attributes) -> bool {
    match &a.path {
        Some(path) => {
            a.verb == "get"
                && (["/api", "/apis", "/version", "/healthz", "/livez", "/readyz"]
                    .iter()
                    .any(|p| path == p || path.strip_prefix(p) == Some("/"))
                    || ["/api/", "/apis/", "/openapi/", "/version/"]
                        .iter()
                        .any(|p| path.starts_with(p)))
        }
        None => {
            a.verb == "create"
                && matches!(
                    (a.group.as_str(), a.resource.as_str()),
                    (
                        "authorization.k8s.io",
                        "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
                    ) | ("authentication.k8s.io", "selfsubjectreviews")
                )
        }
    }
}

/// Whether `who` may do `a`, and which binding allowed it.
pub(crate) fn allowed(store: &Store, who: &Subject, a: &Attributes) -> Option<String> {
    let role_rules = |role_ref: &Value, ns: Option<&str>| -> Vec<Value> {
        let name = role_ref["name"].as_str().unwrap_or_default();
        let role = match role_ref["kind"].as_str() {
            Some("ClusterRole") => store.get_resource(kind("ClusterRole"), None, name).ok(),
            Some("Role") => ns.and_then(|ns| store.get_resource(kind("Role"), Some(ns), name).ok()),
            _ => None,
        };
        role.and_then(|r| r["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    let mut bindings: Vec<(Value, Option<String>)> = store
        .list_resource(kind("ClusterRoleBinding"), None)
        .into_iter()
        .map(|b| (b, None))
        .collect();
    if !a.namespace.is_empty() && a.path.is_none() {
        bindings.extend(
            store
                .list_resource(kind("RoleBinding"), Some(&a.namespace))
                .into_iter()
                .map(|b| (b, Some(a.namespace.clone()))),
        );
    }
    bindings.into_iter().find_map(|(binding, ns)| {
        let bound = binding["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| who.matches(s, ns.as_deref())));
        let allows = bound
            && role_rules(&binding["roleRef"], ns.as_deref())
                .iter()
                .any(|rule| rule_allows(rule, a));
        allows.then(|| {
            format!(
                "RBAC: allowed by {} {:?}",
                if ns.is_some() {
                    "RoleBinding"
                } else {
                    "ClusterRoleBinding"
                },
                binding["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
    })
}

/// Answers a review (`SelfSubjectAccessReview` asked by `caller`, or `SubjectAccessReview`):
/// the review with its `status`.
pub fn review(store: &Store, mut body: Value, caller: Option<Subject>) -> Value {
    let spec = body["spec"].clone();
    let who = match body["kind"].as_str() {
        Some("SubjectAccessReview") => Some(Subject {
            user: spec["user"].as_str().unwrap_or_default().to_owned(),
            groups: spec["groups"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }),
        _ => caller,
    };
    let status = match who {
        // kubesim's own user is its admin.
        None => {
            json!({"allowed": true, "reason": "kubesim: the unimpersonated caller is the cluster admin"})
        }
        Some(who) => match allowed(store, &who, &Attributes::from_spec(&spec)) {
            Some(reason) => json!({"allowed": true, "reason": reason}),
            None => json!({"allowed": false}),
        },
    };
    body["status"] = status;
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_like_the_rbac_authorizer() {
        let a = Attributes {
            verb: "get".into(),
            group: "apps".into(),
            resource: "deployments".into(),
            subresource: "scale".into(),
            name: "web".into(),
            ..Attributes::default()
        };
        let rule = |groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs, "resourceNames": names});
        assert!(rule_allows(
            &rule(&["apps"], &["deployments/scale"], &["get"], &[]),
            &a
        ));
        assert!(rule_allows(&rule(&["*"], &["*"], &["*"], &[]), &a));
        assert!(
            !rule_allows(&rule(&["apps"], &["deployments"], &["get"], &[]), &a),
            "the subresource is its own"
        );
        assert!(
            !rule_allows(&rule(&[""], &["deployments/scale"], &["get"], &[]), &a),
            "another group"
        );
        assert!(rule_allows(
            &rule(&["apps"], &["deployments/scale"], &["get"], &["web"]),
            &a
        ));
        assert!(!rule_allows(
            &rule(&["apps"], &["deployments/scale"], &["get"], &["api"]),
            &a
        ));
        let path = Attributes {
            verb: "get".into(),
            path: Some("/healthz/ready".into()),
            ..Attributes::default()
        };
        assert!(rule_allows(
            &json!({"verbs": ["get"], "nonResourceURLs": ["/healthz*"]}),
            &path
        ));
        assert!(!rule_allows(
            &json!({"verbs": ["get"], "nonResourceURLs": ["/metrics"]}),
            &path
        ));
    }
}
