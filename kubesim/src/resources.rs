//! The table of every resource kubesim serves: group, version, names, verbs, subresources.
//!
//! Start at [`RESOURCES`]. Discovery, the router, OpenAPI and the store all read this one table,
//! so adding a resource is one entry here (plus columns in `table.rs` if it has special ones).

/// One REST resource (a group/version/plural).
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources besides the main one: `status`, `scale`, `log`.
    pub subresources: &'static [&'static str],
    /// Built into Kubernetes (strategic merge patch allowed); custom resources answer 415.
    pub builtin: bool,
    /// Storage identity: resources that share storage (events in two groups, virtualservices in
    /// two versions) share this key.
    pub storage: &'static str,
    /// Whether objects carry `metadata.generation` bumped on spec changes.
    pub generation: bool,
}

impl ResourceType {
    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps` or `pods`: how error messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `sub` is one of this resource's subresources.
    pub fn has_sub(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// The URL prefix of this resource's group-version: `/api/v1` or `/apis/apps/v1`.
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

macro_rules! res {
    ($group:expr, $version:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr,
     $short:expr, $cats:expr, $subs:expr, $builtin:expr, $storage:expr, $generation:expr) => {
        ResourceType {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: $short,
            categories: $cats,
            subresources: $subs,
            builtin: $builtin,
            storage: $storage,
            generation: $generation,
        }
    };
}

/// Every resource kubesim serves, in discovery order.
pub static RESOURCES: &[ResourceType] = &[
    res!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        NONE,
        &["status"],
        true,
        "namespaces",
        false
    ),
    res!(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        NONE,
        &["status"],
        true,
        "nodes",
        false
    ),
    res!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        ALL,
        &["status", "log", "eviction"],
        true,
        "pods",
        false
    ),
    res!(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        ALL,
        &["status"],
        true,
        "services",
        false
    ),
    res!(
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        NONE,
        NONE,
        true,
        "endpoints",
        false
    ),
    res!(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        NONE,
        NONE,
        true,
        "configmaps",
        false
    ),
    res!(
        "", "v1", "secrets", "secret", "Secret", true, NONE, NONE, NONE, true, "secrets", false
    ),
    res!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        NONE,
        NONE,
        true,
        "serviceaccounts",
        false
    ),
    res!(
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        NONE,
        &["status"],
        true,
        "persistentvolumeclaims",
        false
    ),
    res!(
        "",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        NONE,
        NONE,
        true,
        "events",
        false
    ),
    res!(
        "",
        "v1",
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        true,
        &["quota"],
        NONE,
        &["status"],
        true,
        "resourcequotas",
        false
    ),
    res!(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        ALL,
        &["status", "scale"],
        true,
        "deployments",
        true
    ),
    res!(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        ALL,
        &["status", "scale"],
        true,
        "replicasets",
        true
    ),
    res!(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        NONE,
        NONE,
        true,
        "events",
        false
    ),
    res!(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        NONE,
        &["status"],
        true,
        "poddisruptionbudgets",
        true
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        true,
        NONE,
        NONE,
        NONE,
        true,
        "roles",
        false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        NONE,
        NONE,
        NONE,
        true,
        "rolebindings",
        false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        NONE,
        NONE,
        NONE,
        true,
        "clusterroles",
        false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        NONE,
        NONE,
        NONE,
        true,
        "clusterrolebindings",
        false
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        &["netpol"],
        NONE,
        NONE,
        true,
        "networkpolicies",
        true
    ),
    res!(
        "gateway.networking.k8s.io",
        "v1",
        "httproutes",
        "httproute",
        "HTTPRoute",
        true,
        NONE,
        &["gateway-api"],
        &["status"],
        false,
        "httproutes",
        true
    ),
    res!(
        "networking.istio.io",
        "v1",
        "virtualservices",
        "virtualservice",
        "VirtualService",
        true,
        &["vs"],
        &["istio-io", "networking-istio-io"],
        &["status"],
        false,
        "virtualservices",
        true
    ),
    res!(
        "networking.istio.io",
        "v1beta1",
        "virtualservices",
        "virtualservice",
        "VirtualService",
        true,
        &["vs"],
        &["istio-io", "networking-istio-io"],
        &["status"],
        false,
        "virtualservices",
        true
    ),
];

/// Finds a resource by group, version and plural.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by `apiVersion` and `kind` (as written in a manifest).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// The preferred (first listed) resource for a storage key.
pub fn by_storage(storage: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.storage == storage)
}

/// Group-versions in discovery order: `("", "v1")`, `("apps", "v1")`, ...
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_resources_by_every_key() {
        assert_eq!(
            by_kind("apps/v1", "Deployment").unwrap().plural,
            "deployments"
        );
        assert_eq!(by_kind("v1", "Pod").unwrap().qualified(), "pods");
        assert_eq!(
            by_plural("networking.istio.io", "v1beta1", "virtualservices")
                .unwrap()
                .storage,
            "virtualservices"
        );
        assert!(by_kind("apps/v1", "Nope").is_none());
        assert_eq!(group_versions()[0], ("", "v1"));
        assert!(group_versions().contains(&("networking.istio.io", "v1beta1")));
    }
}
