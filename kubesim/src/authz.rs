//! Access reviews answered from the RBAC objects in the store, so `kubectl auth can-i
//! --as=system:serviceaccount:NS:NAME …` says what the applied Roles, ClusterRoles and their
//! bindings grant. Start at [`review`].
//!
//! `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` asks for the caller: the
//! impersonated user (`Impersonate-User`, `Impersonate-Group`, as `kubectl --as` sends them);
//! without impersonation the caller is kubesim's admin and everything is allowed.
//! `subjectaccessreviews` names the user and groups in its spec. Nothing is stored.
//!
//! kubectl 1.32+ sends these bodies as protobuf from its typed client (KUBESIM-NOTES §3): the
//! few fields a review has are decoded by hand ([`decode_protobuf`]); the answer is JSON, which
//! kubectl accepts.
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
struct Attributes {
    namespace: String,
    verb: String,
    group: String,
    resource: String,
    subresource: String,
    name: String,
    path: Option<String>,
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

/// Whether `who` may do `a`, and which binding allowed it.
fn allowed(store: &Store, who: &Subject, a: &Attributes) -> Option<String> {
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

/// Reads protobuf varint at `*at`.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of one protobuf message: (field number, bytes) for length-delimited ones (the
/// only kind a review's fields are); other wire types are skipped.
fn fields(buf: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        match key & 7 {
            0 => {
                varint(buf, &mut at)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                out.push((key >> 3, buf.get(at..end)?));
                at = end;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn strings(msg: &[u8], names: &[&str]) -> Option<Value> {
    let mut obj = serde_json::Map::new();
    for (n, bytes) in fields(msg)? {
        if let Some(name) = usize::try_from(n).ok().and_then(|n| names.get(n - 1)) {
            obj.insert(
                (*name).to_owned(),
                Value::String(String::from_utf8_lossy(bytes).into_owned()),
            );
        }
    }
    Some(Value::Object(obj))
}

/// A `k8s\0`-enveloped protobuf (Self)SubjectAccessReview as the JSON it stands for.
pub fn decode_protobuf(body: &[u8]) -> Option<Value> {
    let unknown = body.strip_prefix(b"k8s\0")?;
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, bytes) in fields(unknown)? {
        match n {
            1 => {
                let meta = strings(bytes, &["apiVersion", "kind"])?;
                kind = meta["kind"].as_str().unwrap_or_default().to_owned();
            }
            2 => raw = bytes,
            _ => {}
        }
    }
    let mut spec = serde_json::Map::new();
    let mut groups = Vec::new();
    for (n, bytes) in fields(raw)? {
        if n != 2 {
            continue;
        }
        for (f, value) in fields(bytes)? {
            match f {
                1 => {
                    spec.insert(
                        "resourceAttributes".into(),
                        strings(
                            value,
                            &[
                                "namespace",
                                "verb",
                                "group",
                                "version",
                                "resource",
                                "subresource",
                                "name",
                            ],
                        )?,
                    );
                }
                2 => {
                    spec.insert(
                        "nonResourceAttributes".into(),
                        strings(value, &["path", "verb"])?,
                    );
                }
                3 => {
                    spec.insert(
                        "user".into(),
                        Value::String(String::from_utf8_lossy(value).into_owned()),
                    );
                }
                4 => groups.push(Value::String(String::from_utf8_lossy(value).into_owned())),
                _ => {}
            }
        }
    }
    if !groups.is_empty() {
        spec.insert("groups".into(), Value::Array(groups));
    }
    Some(json!({"kind": kind, "apiVersion": "authorization.k8s.io/v1", "spec": spec}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a length-delimited field, as protobuf does.
    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from((n << 3) | 2).unwrap()];
        out.push(u8::try_from(bytes.len()).unwrap());
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_protobuf_review_decodes_to_its_json() {
        let attrs = [
            field(1, b"ml-serving"),
            field(2, b"patch"),
            field(3, b"apps"),
            field(5, b"deployments"),
            field(6, b"scale"),
        ]
        .concat();
        let spec = field(1, &attrs);
        let review = [field(1, &[]), field(2, &spec)].concat();
        let type_meta = [
            field(1, b"authorization.k8s.io/v1"),
            field(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &review)].concat();
        let decoded = decode_protobuf(&body).unwrap();
        assert_eq!(decoded["kind"], "SelfSubjectAccessReview");
        assert_eq!(
            decoded["spec"]["resourceAttributes"],
            json!({"namespace": "ml-serving", "verb": "patch", "group": "apps",
                   "resource": "deployments", "subresource": "scale"})
        );
    }

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
