//! A small in-memory [`Cluster`] for the controllers' unit tests: a map per kind, a global
//! resourceVersion counter, `generation` bumps on spec (and, for Deployments, annotation)
//! changes, the status subresource split, resourceVersion preconditions and a clock the test
//! moves by hand. It mirrors the store's contract in `cluster.rs`, nothing more.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::obj;
use crate::cluster::{Cluster, ClusterError, Kind};

pub(crate) struct FakeCluster {
    objects: BTreeMap<(String, String, String), Value>,
    rv: u64,
    uid: u64,
    pub now: Timestamp,
    /// Every write, for assertions about what a reconcile did.
    pub writes: usize,
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Deployment => "Deployment",
        Kind::ReplicaSet => "ReplicaSet",
        Kind::Pod => "Pod",
        Kind::Event => "Event",
        Kind::Node => "Node",
        Kind::Namespace => "Namespace",
        Kind::Service => "Service",
        Kind::Endpoints => "Endpoints",
        Kind::HttpRoute => "HTTPRoute",
        Kind::VirtualService => "VirtualService",
    }
}

fn has_status_subresource(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Deployment | Kind::ReplicaSet | Kind::Pod | Kind::Node | Kind::HttpRoute
    )
}

fn is_cluster_scoped(kind: Kind) -> bool {
    matches!(kind, Kind::Node | Kind::Namespace)
}

impl FakeCluster {
    pub(crate) fn new() -> Self {
        Self {
            objects: BTreeMap::new(),
            rv: 100,
            uid: 0,
            now: "2026-11-27T00:00:00Z".parse().expect("valid time"),
            writes: 0,
        }
    }

    pub(crate) fn advance(&mut self, ms: i64) {
        self.now += SignedDuration::from_millis(ms);
    }

    fn key(kind: Kind, namespace: Option<&str>, name: &str) -> (String, String, String) {
        let ns = if is_cluster_scoped(kind) {
            ""
        } else {
            namespace.unwrap_or("default")
        };
        (kind_name(kind).to_owned(), ns.to_owned(), name.to_owned())
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Creates a Deployment as `kubectl apply` would (the store defaults the rest).
    pub(crate) fn create_deployment(&mut self, name: &str, replicas: i32, image: &str) -> Value {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                             "spec": {"containers": [{"name": "app", "image": image}]}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            }
        });
        self.create(Kind::Deployment, d).expect("create deployment")
    }

    pub(crate) fn deployment(&self, name: &str) -> Value {
        self.get(Kind::Deployment, Some("default"), name)
            .expect("deployment exists")
    }

    /// Applies `f` to a Deployment through the main resource, like a kubectl PATCH.
    pub(crate) fn edit_deployment(&mut self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut d = self.deployment(name);
        f(&mut d);
        self.update(Kind::Deployment, d).expect("update deployment");
    }

    /// The Deployment's ReplicaSets in creation order (uids are sequential here).
    pub(crate) fn replica_sets(&self, deployment: &str) -> Vec<Value> {
        let uid = obj::uid(&self.deployment(deployment)).to_owned();
        let mut rses: Vec<Value> = self
            .list(Kind::ReplicaSet, Some("default"))
            .into_iter()
            .filter(|rs| obj::controller_uid(rs) == Some(uid.as_str()))
            .collect();
        rses.sort_by(|a, b| obj::uid(a).cmp(obj::uid(b)));
        rses
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        self.list(Kind::Event, None)
    }
}

impl Cluster for FakeCluster {
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        let k = kind_name(kind);
        self.objects
            .iter()
            .filter(|((kk, ns, _), _)| {
                kk == k && namespace.is_none_or(|n| is_cluster_scoped(kind) || n == ns)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.objects.get(&Self::key(kind, namespace, name)).cloned()
    }

    fn create(&mut self, kind: Kind, mut obj_v: Value) -> Result<Value, ClusterError> {
        let mut name = obj::name(&obj_v).to_owned();
        if name.is_empty() {
            let base = obj::str_at(&obj_v, &["metadata", "generateName"])
                .unwrap_or("")
                .to_owned();
            name = format!("{base}{}", obj::safe_suffix(self.rv, 5));
        }
        let key = Self::key(kind, obj::namespace(&obj_v), &name);
        if self.objects.contains_key(&key) {
            return Err(ClusterError::AlreadyExists(name));
        }
        self.uid += 1;
        let rv = self.next_rv();
        let meta = obj::obj_mut(&mut obj_v, &["metadata"]);
        meta.insert("name".into(), json!(name));
        if !is_cluster_scoped(kind) {
            meta.entry("namespace").or_insert_with(|| json!("default"));
        }
        meta.insert("uid".into(), json!(format!("uid-{:04}", self.uid)));
        meta.insert("resourceVersion".into(), json!(rv));
        meta.insert("creationTimestamp".into(), json!(obj::fmt_time(self.now)));
        if matches!(kind, Kind::Deployment | Kind::ReplicaSet) {
            meta.insert("generation".into(), json!(1));
        }
        self.objects.insert(key, obj_v.clone());
        self.writes += 1;
        Ok(obj_v)
    }

    fn update(&mut self, kind: Kind, mut new: Value) -> Result<Value, ClusterError> {
        let key = Self::key(kind, obj::namespace(&new), obj::name(&new));
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ClusterError::NotFound(obj::name(&new).to_owned()))?;
        if let Some(rv) = obj::str_at(&new, &["metadata", "resourceVersion"])
            && Some(rv) != obj::str_at(&old, &["metadata", "resourceVersion"])
        {
            return Err(ClusterError::Conflict(obj::name(&new).to_owned()));
        }
        if has_status_subresource(kind) {
            new["status"] = old.get("status").cloned().unwrap_or(Value::Null);
        }
        let mut generation = obj::generation(&old);
        let spec_changed = !obj::semantic_eq(
            old.get("spec").unwrap_or(&Value::Null),
            new.get("spec").unwrap_or(&Value::Null),
        );
        let annotations_changed = kind == Kind::Deployment
            && old.pointer("/metadata/annotations") != new.pointer("/metadata/annotations");
        if generation > 0 && (spec_changed || annotations_changed) {
            generation += 1;
        }
        let rv = self.next_rv();
        let meta = obj::obj_mut(&mut new, &["metadata"]);
        for k in ["uid", "creationTimestamp"] {
            meta.insert(k.into(), old["metadata"][k].clone());
        }
        if generation > 0 {
            meta.insert("generation".into(), json!(generation));
        }
        meta.insert("resourceVersion".into(), json!(rv));
        self.objects.insert(key, new.clone());
        self.writes += 1;
        Ok(new)
    }

    fn update_status(&mut self, kind: Kind, new: Value) -> Result<Value, ClusterError> {
        let key = Self::key(kind, obj::namespace(&new), obj::name(&new));
        let mut stored = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ClusterError::NotFound(obj::name(&new).to_owned()))?;
        if let Some(rv) = obj::str_at(&new, &["metadata", "resourceVersion"])
            && Some(rv) != obj::str_at(&stored, &["metadata", "resourceVersion"])
        {
            return Err(ClusterError::Conflict(obj::name(&new).to_owned()));
        }
        stored["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if kind == Kind::Deployment
            && let Some(a) = new.pointer("/metadata/annotations")
        {
            stored["metadata"]["annotations"] = a.clone();
        }
        stored["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.objects.insert(key, stored.clone());
        self.writes += 1;
        Ok(stored)
    }

    fn delete(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ClusterError> {
        self.writes += 1;
        self.objects
            .remove(&Self::key(kind, namespace, name))
            .map(drop)
            .ok_or_else(|| ClusterError::NotFound(name.to_owned()))
    }

    fn now(&self) -> Timestamp {
        self.now
    }
}
