//! The resources kubesim serves: group, version, names, verbs, subresources.
//!
//! Start at [`RESOURCES`], the built-in kinds, and [`Registry`], which adds the kinds that
//! CustomResourceDefinitions define (`crd.rs` turns a CRD object into [`ResourceType`]s). The
//! store owns one registry; discovery, the router, OpenAPI and Table rendering read it, so a
//! built-in resource is one entry here (plus columns in `table.rs` if it has special ones) and a
//! custom one is a CRD object.

use std::collections::BTreeMap;

/// One REST resource (a group/version/plural).
///
/// Built-in entries are static; those of CRDs are leaked once per distinct definition
/// (`crd.rs` interns them), so every part can keep holding `&'static ResourceType`.
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
    /// Storage identity: resources that share storage (events in two groups, the versions of a
    /// custom resource) share this key; a custom resource's is its CRD's name.
    pub storage: &'static str,
    /// Whether objects carry `metadata.generation` bumped on spec changes.
    pub generation: bool,
    /// The version objects are stored in: a custom resource written in any version is stored
    /// with this one's apiVersion (the CRD version with `storage: true`). Built-ins: `version`.
    pub storage_version: &'static str,
    /// A CRD version's `additionalPrinterColumns` (with the default `Age` when it has none):
    /// the Table columns after `Name`. Empty for built-ins (`table.rs` knows their columns).
    pub printer_columns: &'static [PrinterColumn],
    /// Where a CRD's `scale` subresource reads and writes; `None` for built-ins, whose scale
    /// is `spec.replicas`, `status.replicas` and `spec.selector`.
    pub scale: Option<ScalePaths>,
}

/// One `additionalPrinterColumns` entry of a CRD version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: &'static str,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0 is shown by `kubectl get`, higher only with `-o wide`.
    pub priority: i64,
    /// Evaluated on the object (`jsonpath.rs`), e.g. `.spec.hostnames`.
    pub json_path: &'static str,
}

/// A CRD version's `subresources.scale`: JSON paths (`.spec.replicas`) of the replica counts
/// and, optionally, of the label selector (a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: &'static str,
    pub status_replicas: &'static str,
    pub label_selector: Option<&'static str>,
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
            storage_version: $version,
            printer_columns: &[],
            scale: None,
        }
    };
}

/// Every built-in resource kubesim serves, in discovery order (custom resources follow, from
/// the [`Registry`]).
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
        &["token"],
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
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        &["api-extensions"],
        &["status"],
        true,
        "customresourcedefinitions",
        true
    ),
];

/// Finds a built-in resource by group, version and plural (custom ones: [`Registry::by_plural`]).
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a built-in resource by `apiVersion` and `kind` (custom ones: [`Registry::by_kind`]).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    let (group, version) = split_api_version(api_version);
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// `apps/v1` → `("apps", "v1")`, `v1` → `("", "v1")`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// How Kubernetes orders the versions of a group (`version.CompareKubeAwareVersionStrings`):
/// GA before beta before alpha, higher numbers first, anything else last by name. Sorting by
/// this key puts the preferred version first.
pub fn version_order(version: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, &str) {
    use std::cmp::Reverse;
    let other = (3, Reverse(0), Reverse(0), version);
    let Some(rest) = version.strip_prefix('v') else {
        return other;
    };
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let Ok(major) = rest[..digits].parse::<u64>() else {
        return other;
    };
    let (tier, minor) = match &rest[digits..] {
        "" => (0, ""),
        tail => match (tail.strip_prefix("beta"), tail.strip_prefix("alpha")) {
            (Some(m), _) => (1, m),
            (_, Some(m)) => (2, m),
            _ => return other,
        },
    };
    match (tier, minor.parse::<u64>()) {
        (0, _) => (0, Reverse(major), Reverse(0), version),
        (_, Ok(minor)) => (tier, Reverse(major), Reverse(minor), version),
        _ => other,
    }
}

/// The resources one simulator serves: the built-in [`RESOURCES`] and those of its established
/// CustomResourceDefinitions, which the store keeps here in step with the CRD objects
/// (`crd.rs`). Lookups try the built-ins first, so a CRD never shadows a built-in resource.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// By CRD name.
    crds: BTreeMap<String, CrdTypes>,
    /// Every served custom resource in discovery order: by group, then version priority, then
    /// plural (as the apiextensions server lists them).
    served: Vec<&'static ResourceType>,
}

/// What one CRD defines.
#[derive(Debug, Clone)]
struct CrdTypes {
    /// Its `served: true` versions.
    served: Vec<&'static ResourceType>,
    /// Its storage version (served or not): how its stored objects are read back.
    stored: &'static ResourceType,
}

impl Registry {
    /// Every served resource, built-ins first, in discovery order.
    pub fn all(&self) -> impl Iterator<Item = &'static ResourceType> + '_ {
        RESOURCES.iter().chain(self.served.iter().copied())
    }

    /// Finds a served resource by group, version and plural.
    pub fn by_plural(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&'static ResourceType> {
        self.all()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Finds a served resource by `apiVersion` and `kind` (as written in a manifest).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&'static ResourceType> {
        let (group, version) = split_api_version(api_version);
        self.all()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    /// The preferred served version of a group's kind (`kubectl get virtualservices`'s choice).
    pub fn by_group_kind(&self, group: &str, kind: &str) -> Option<&'static ResourceType> {
        self.all().find(|r| r.group == group && r.kind == kind)
    }

    /// A resource for objects stored under `storage` (the preferred built-in one, or a CRD's
    /// storage version even when it is not served), for garbage collection.
    pub fn by_storage(&self, storage: &str) -> Option<&'static ResourceType> {
        RESOURCES.iter().find(|r| r.storage == storage).or_else(|| {
            self.crds
                .values()
                .map(|c| c.stored)
                .find(|r| r.storage == storage)
        })
    }

    /// The resource a stored object (by its apiVersion and kind) belongs to: a served one, or
    /// the storage version of the CRD of that group and kind.
    pub fn for_stored(&self, api_version: &str, kind: &str) -> Option<&'static ResourceType> {
        let (group, _) = split_api_version(api_version);
        self.by_kind(api_version, kind).or_else(|| {
            self.crds
                .values()
                .map(|c| c.stored)
                .find(|r| r.group == group && r.kind == kind)
        })
    }

    /// Whether `rt` is (still) served: always for built-ins; for a custom resource, while its
    /// CRD defines it.
    pub fn serves(&self, rt: &ResourceType) -> bool {
        self.all().any(|r| std::ptr::eq(r, rt) || r == rt)
    }

    /// Group-versions in discovery order: `("", "v1")`, `("apps", "v1")`, …, then the CRDs'.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for r in self.all() {
            if !out.contains(&(r.group, r.version)) {
                out.push((r.group, r.version));
            }
        }
        out
    }

    /// Serves what the CRD `name` defines (replacing what it defined before). Versions that
    /// would shadow a built-in resource are left out.
    pub(crate) fn set_crd(
        &mut self,
        name: &str,
        served: Vec<&'static ResourceType>,
        stored: &'static ResourceType,
    ) {
        let served = served
            .into_iter()
            .filter(|t| by_plural(t.group, t.version, t.plural).is_none())
            .collect();
        self.crds
            .insert(name.to_owned(), CrdTypes { served, stored });
        self.reindex();
    }

    /// Stops serving what the CRD `name` defined.
    pub(crate) fn remove_crd(&mut self, name: &str) {
        if self.crds.remove(name).is_some() {
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        let mut served: Vec<&'static ResourceType> = self
            .crds
            .values()
            .flat_map(|c| c.served.iter().copied())
            .collect();
        served.sort_by(|a, b| {
            (a.group, version_order(a.version), a.plural).cmp(&(
                b.group,
                version_order(b.version),
                b.plural,
            ))
        });
        self.served = served;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_built_in_resources_by_every_key() {
        assert_eq!(
            by_kind("apps/v1", "Deployment").unwrap().plural,
            "deployments"
        );
        assert_eq!(by_kind("v1", "Pod").unwrap().qualified(), "pods");
        assert_eq!(
            by_plural("apiextensions.k8s.io", "v1", "customresourcedefinitions")
                .unwrap()
                .short_names,
            ["crd", "crds"]
        );
        assert!(by_kind("apps/v1", "Nope").is_none());
        let empty = Registry::default();
        assert_eq!(empty.group_versions()[0], ("", "v1"));
        assert!(
            empty
                .by_group_kind("gateway.networking.k8s.io", "HTTPRoute")
                .is_none(),
            "custom resources come from CRDs"
        );
    }

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec![
            "v1alpha1",
            "v1",
            "foo",
            "v2beta1",
            "v1beta2",
            "v1beta1",
            "v2",
            "v11alpha2",
            "v12alpha1",
        ];
        v.sort_by_key(|v| version_order(v));
        assert_eq!(
            v,
            [
                "v2",
                "v1",
                "v2beta1",
                "v1beta2",
                "v1beta1",
                "v12alpha1",
                "v11alpha2",
                "v1alpha1",
                "foo"
            ]
        );
    }
}
