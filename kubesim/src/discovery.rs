//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/<group>` and one `APIResourceList`
//! per group-version, plus aggregated discovery (`APIGroupDiscoveryList`, v2 and v2beta1) for
//! `/api` and `/apis` when the `Accept` header asks for it first (KUBESIM-NOTES §0.4, §4.1):
//! kubectl 1.32 asks v2 → v2beta1 → JSON, kubectl 1.27 v2beta1 → JSON, and a client that
//! lists plain JSON first gets the legacy documents.
//!
//! Start at [`negotiate`] and [`resource_list`]; everything is derived from the store's
//! [`Registry`]: the built-in resources, then the served versions of its CRDs (their groups
//! after the built-in ones, versions in Kubernetes' priority order, so the preferred one first).

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceType};

/// The `/version` answer for a `gitVersion` like `v1.32.4`.
pub fn version(git_version: &str) -> Value {
    let trimmed = git_version.trim_start_matches('v');
    let mut parts = trimmed.split('.');
    let major = parts.next().unwrap_or("1").to_string();
    let minor = parts.next().unwrap_or("32").to_string();
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-22T16:02:27Z",
        "goVersion": "go1.23.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group(types: &Registry, name: &str) -> Option<Value> {
    let versions: Vec<Value> = types
        .group_versions()
        .into_iter()
        .filter(|(g, _)| *g == name)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": name, "versions": versions, "preferredVersion": preferred}))
}

/// `/apis`.
pub fn api_group_list(types: &Registry) -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in types.group_versions() {
        if !g.is_empty() && !names.contains(&g) {
            names.push(g);
        }
    }
    let groups: Vec<Value> = names.into_iter().filter_map(|n| group(types, n)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn api_group(types: &Registry, name: &str) -> Option<Value> {
    let mut g = group(types, name)?;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The `APIResourceList` of one group-version, or `None` if kubesim serves no such version.
pub fn resource_list(types: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut out: Vec<Value> = Vec::new();
    for r in types
        .all()
        .filter(|r| r.group == group && r.version == version)
    {
        let verbs: Vec<&str> = if r.kind == "Namespace" {
            VERBS
                .iter()
                .copied()
                .filter(|v| *v != "deletecollection")
                .collect()
        } else {
            VERBS.to_vec()
        };
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        out.push(entry);
        for sub in r.subresources {
            let entry = match *sub {
                "scale" => {
                    json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced,
                    "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
                }
                "log" => {
                    json!({"name": format!("{}/log", r.plural), "singularName": "", "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": ["get"]})
                }
                "eviction" => {
                    json!({"name": format!("{}/eviction", r.plural), "singularName": "", "namespaced": r.namespaced,
                    "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]})
                }
                other => {
                    json!({"name": format!("{}/{other}", r.plural), "singularName": "", "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": ["get", "patch", "update"]})
                }
            };
            out.push(entry);
        }
    }
    if out.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

/// Which discovery form a request's `Accept` header asks for first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `APIVersions` / `APIGroupList`.
    Legacy,
    /// `APIGroupDiscoveryList` in `apidiscovery.k8s.io/<version>` (`v2` or `v2beta1`).
    Aggregated(&'static str),
}

impl Form {
    /// The Content-Type of an answer in this form.
    pub fn content_type(self) -> String {
        match self {
            Form::Legacy => "application/json".to_string(),
            Form::Aggregated(v) => {
                format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList")
            }
        }
    }
}

/// Picks the first media range of `accept` that kubesim can answer.
pub fn negotiate(accept: &str) -> Form {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let base = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let param = |k: &str| params.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v);
        if base == "application/json"
            && param("g") == Some("apidiscovery.k8s.io")
            && param("as") == Some("APIGroupDiscoveryList")
        {
            match param("v") {
                Some("v2") => return Form::Aggregated("v2"),
                Some("v2beta1") => return Form::Aggregated("v2beta1"),
                _ => continue,
            }
        }
        if matches!(base, "application/json" | "*/*" | "application/*" | "")
            && param("as").is_none()
        {
            return Form::Legacy;
        }
    }
    Form::Legacy
}

fn discovery_resource(r: &ResourceType) -> Value {
    let verbs: Vec<&str> = if r.kind == "Namespace" {
        VERBS
            .iter()
            .copied()
            .filter(|v| *v != "deletecollection")
            .collect()
    } else {
        VERBS.to_vec()
    };
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| match *sub {
            "scale" => json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}),
            "log" => json!({"subresource": "log", "responseKind": {"group": "", "version": "v1", "kind": r.kind}, "verbs": ["get"]}),
            "eviction" => json!({"subresource": "eviction", "responseKind": {"group": "policy", "version": "v1", "kind": "Eviction"}, "verbs": ["create"]}),
            other => json!({"subresource": other, "responseKind": {"group": r.group, "version": r.version, "kind": r.kind}, "verbs": ["get", "patch", "update"]}),
        })
        .collect();
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": verbs,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        entry["subresources"] = json!(subresources);
    }
    entry
}

/// The aggregated document of `/api` (`legacy = true`) or `/apis`, in `apidiscovery.k8s.io/<v>`.
pub fn aggregated(types: &Registry, legacy: bool, version: &str) -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in types.group_versions() {
        if g.is_empty() == legacy && !names.contains(&g) {
            names.push(g);
        }
    }
    let items: Vec<Value> = names
        .into_iter()
        .map(|g| {
            let versions: Vec<Value> = types
                .group_versions()
                .into_iter()
                .filter(|(gg, _)| *gg == g)
                .map(|(_, v)| {
                    let res: Vec<Value> = types
                        .all()
                        .filter(|r| r.group == g && r.version == v)
                        .map(discovery_resource)
                        .collect();
                    json!({"version": v, "resources": res, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_accept_order() {
        let kubectl_132 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(kubectl_132), Form::Aggregated("v2"));
        let kubectl_127 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(kubectl_127), Form::Aggregated("v2beta1"));
        assert_eq!(negotiate("application/json, */*"), Form::Legacy);
        assert_eq!(negotiate(""), Form::Legacy);
        assert_eq!(
            negotiate(
                "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList,application/json"
            ),
            Form::Legacy
        );
        assert_eq!(
            Form::Aggregated("v2").content_type(),
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
    }

    /// The registry of a simulator with the bundled CRDs.
    fn with_crds() -> Registry {
        let mut store = crate::store::Store::new(10);
        let crd = crate::resources::by_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
            .unwrap();
        for obj in crate::crd::bundled() {
            store.create_resource(crd, None, obj, false).unwrap();
        }
        store.types().clone()
    }

    #[test]
    fn aggregated_documents_list_every_resource() {
        let types = with_crds();
        let core = aggregated(&types, true, "v2");
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let apis = aggregated(&types, false, "v2beta1");
        assert_eq!(apis["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let apps = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = &apps["versions"][0]["resources"][0];
        assert_eq!(deploy["resource"], "deployments");
        assert_eq!(deploy["subresources"][1]["responseKind"]["kind"], "Scale");
        let routes = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "gateway.networking.k8s.io")
            .unwrap();
        assert_eq!(routes["versions"][0]["version"], "v1");
        let route = &routes["versions"][0]["resources"][0];
        assert_eq!(
            (
                &route["resource"],
                &route["categories"],
                &route["subresources"][0]["subresource"]
            ),
            (
                &json!("httproutes"),
                &json!(["gateway-api"]),
                &json!("status")
            )
        );
    }

    #[test]
    fn version_splits_major_minor() {
        let v = version("v1.30.5");
        assert_eq!(
            (v["major"].as_str(), v["minor"].as_str()),
            (Some("1"), Some("30"))
        );
    }

    #[test]
    fn apps_lists_deployments_with_scale_subresource() {
        let list = resource_list(&Registry::default(), "apps", "v1").unwrap();
        let res = list["resources"].as_array().unwrap();
        let deploy = res.iter().find(|r| r["name"] == "deployments").unwrap();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        let scale = res
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(
            (scale["group"].as_str(), scale["kind"].as_str()),
            (Some("autoscaling"), Some("Scale"))
        );
        assert!(resource_list(&Registry::default(), "apps", "v2").is_none());
    }

    #[test]
    fn istio_group_prefers_v1() {
        let types = with_crds();
        assert!(
            api_group_list(&Registry::default())["groups"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["name"] != "networking.istio.io"),
            "only with its CRD"
        );
        let list = api_group_list(&types);
        let istio = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "networking.istio.io")
            .unwrap();
        assert_eq!(istio["preferredVersion"]["version"], "v1");
        let versions: Vec<&Value> = istio["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| &v["version"])
            .collect();
        assert_eq!(versions, ["v1", "v1beta1", "v1alpha3"]);
        let vs = resource_list(&types, "networking.istio.io", "v1beta1").unwrap();
        assert_eq!(vs["resources"][0]["shortNames"], json!(["vs"]));
    }
}
