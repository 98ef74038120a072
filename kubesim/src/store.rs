//! The in-memory object store: admission (defaults, validation, server-set metadata), optimistic
//! concurrency, one global resourceVersion, the bounded change log that watches replay, and
//! ownerReference garbage collection on delete.
//!
//! Start at [`Store`]: [`Store::create_resource`], [`Store::update_resource`], [`Store::update_resource_status`] and
//! [`Store::delete_resource`] are the only writes, and each ends in `commit`, which bumps the
//! resourceVersion, appends a [`Change`] to the log and broadcasts it to live watches. The
//! controllers reach the same writes through the [`Cluster`] implementation at the bottom.
//!
//! The store also owns the [`Registry`] of served resources: `commit` keeps it in step with the
//! CustomResourceDefinition objects (`crd.rs`), and deleting a CRD deletes its objects first.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::cluster::{Cluster, ClusterError, Kind};
use crate::resources::{self, Registry, ResourceType};
use crate::status::{ApiError, Cause};
use crate::{convert, crd, defaults, validate};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One committed write, as the change log and watches see it (objects in storage form).
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub storage: &'static str,
    pub namespace: String,
    pub kind: ChangeKind,
    /// The object after the change (for deletes: the last state, with the delete's rv).
    pub object: Value,
    /// The object before the change (for modifications), to turn selector changes into
    /// ADDED/DELETED for watches.
    pub old: Option<Value>,
}

/// The simulator's clock: real time shifted by an offset, or frozen.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: SignedDuration,
    frozen: Option<Timestamp>,
}

impl Clock {
    /// The current simulated time.
    pub fn now(&self) -> Timestamp {
        self.frozen.unwrap_or_else(|| {
            Timestamp::now()
                .saturating_add(self.offset)
                .unwrap_or(Timestamp::MAX)
        })
    }

    /// Moves the clock forward (or back, for a negative duration).
    pub fn advance(&mut self, by: SignedDuration) {
        match &mut self.frozen {
            Some(t) => *t = t.saturating_add(by).unwrap_or(*t),
            None => self.offset = self.offset.saturating_add(by),
        }
    }

    /// Stops the clock at its current time (or thaws it, keeping the time it shows).
    pub fn freeze(&mut self, frozen: bool) {
        match (frozen, self.frozen) {
            (true, None) => self.frozen = Some(self.now()),
            (false, Some(at)) => {
                self.offset = at.duration_since(Timestamp::now());
                self.frozen = None;
            }
            _ => {}
        }
    }

    /// Sets the clock to `at` (keeps it frozen if it was).
    pub fn set(&mut self, at: Timestamp) {
        match &mut self.frozen {
            Some(t) => *t = at,
            None => self.offset = at.duration_since(Timestamp::now()),
        }
    }

    /// Whether the clock is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }
}

/// RFC 3339 with seconds precision, as `metadata.creationTimestamp` is written.
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

type Key = (&'static str, String, String);

/// The uids an object's ownerReferences name.
fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// How dependents are treated when their owner is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The object store. Not thread-safe by itself: the server keeps it behind a mutex and never
/// holds that across an `.await`.
pub struct Store {
    /// Shared, so a controller pass lists a kind without copying it (see [`Store::list_shared`]).
    objects: BTreeMap<Key, Arc<Value>>,
    /// Owner uid → the objects whose ownerReferences name it, so garbage collection on delete
    /// does not scan the whole store.
    owned: HashMap<String, BTreeSet<Key>>,
    rv: u64,
    log: VecDeque<Arc<Change>>,
    log_capacity: usize,
    /// Watches from a resourceVersion older than this get `410 Expired`.
    oldest_watchable: u64,
    tx: broadcast::Sender<Arc<Change>>,
    /// The simulated clock.
    pub clock: Clock,
    next_cluster_ip: u32,
    /// The served resources: the built-ins and those of the stored CRDs.
    types: Registry,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = value;
}

fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(n)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

impl Store {
    /// An empty store with the default namespaces (`default`, `kube-system`, `kube-public`,
    /// `kube-node-lease`) and one Ready node `kubesim-node-1`. `log_capacity` bounds the watch
    /// window (older resourceVersions get `410 Expired`).
    pub fn new(log_capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut store = Store {
            objects: BTreeMap::new(),
            owned: HashMap::new(),
            rv: 0,
            log: VecDeque::new(),
            log_capacity: log_capacity.max(1),
            oldest_watchable: 0,
            tx,
            clock: Clock::default(),
            next_cluster_ip: 0,
            types: Registry::default(),
        };
        let ns = resources::by_kind("v1", "Namespace").expect("namespaces are served");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            store
                .create_resource(ns, None, obj, false)
                .expect("default namespaces are valid");
        }
        let svc = resources::by_kind("v1", "Service").expect("services are served");
        let kubernetes = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 6443}]}});
        store
            .create_resource(svc, Some("default"), kubernetes, false)
            .expect("kubernetes service is valid");
        let node = resources::by_kind("v1", "Node").expect("nodes are served");
        store
            .create_resource(node, None, default_node(&store.clock), false)
            .expect("default node is valid");
        store
    }

    /// The resources this store serves: the built-ins and those its CRDs define.
    pub fn types(&self) -> &Registry {
        &self.types
    }

    /// The current (latest committed) resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.oldest_watchable
    }

    /// Forgets the change log: every watch from an older resourceVersion now gets `410`.
    ///
    /// The resourceVersion advances by one, so a watch resuming from the version of the last
    /// change (or of a list taken before) is expired too, while a fresh list's version is not.
    pub fn compact(&mut self) {
        self.log.clear();
        self.rv += 1;
        self.oldest_watchable = self.rv;
    }

    /// Subscribes to live changes. Call while holding the store lock, together with
    /// [`Store::changes_since`], so no change is missed or repeated.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// Logged changes with a resourceVersion greater than `rv`, oldest first.
    pub fn changes_since(&self, rv: u64) -> Vec<Arc<Change>> {
        self.log.iter().filter(|c| c.rv > rv).cloned().collect()
    }

    fn ns_key(rt: &ResourceType, ns: Option<&str>) -> String {
        if rt.namespaced {
            ns.unwrap_or_default().to_string()
        } else {
            String::new()
        }
    }

    fn raw(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Option<&Value> {
        self.objects
            .get(&(rt.storage, Self::ns_key(rt, ns), name.to_string()))
            .map(|o| &**o)
    }

    /// One object, in the form served by `rt`.
    pub fn get_resource(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.raw(rt, ns, name)
            .map(|o| convert::from_storage(rt, o))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Every object of `rt` (in `ns`, or everywhere for `None`), sorted by namespace and name.
    pub fn list_resource(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<Value> {
        self.list_resource_where(rt, ns, |_| true)
    }

    /// The objects of `rt` (in `ns`, or everywhere for `None`) that `keep` selects, sorted by
    /// namespace and name. Only those are copied out of the store: a selective list of a kind
    /// with thousands of objects (a namespace's Pods, Events, ReplicaSets) is made under the
    /// simulator's lock, which every other request and controller pass waits for.
    pub fn list_resource_where(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let stored = self
            .stored(rt)
            .filter(|((_, n, _), _)| ns.is_none() || !rt.namespaced || Some(n.as_str()) == ns)
            .map(|(_, o)| &**o);
        if convert::selects_as_stored(rt) {
            stored
                .filter(|o| keep(o))
                .map(|o| convert::from_storage(rt, o))
                .collect()
        } else {
            stored
                .map(|o| convert::from_storage(rt, o))
                .filter(|o| keep(o))
                .collect()
        }
    }

    /// Every stored object (storage form), for saving state.
    pub fn all_objects(&self) -> impl Iterator<Item = &Value> {
        self.objects.values().map(|o| &**o)
    }

    /// Every object of `rt` (everywhere), sorted by namespace and name, shared with the store
    /// where its served form is its stored form: a controller pass reads each kind whole, and
    /// copying thousands of Pods for it held the simulator's lock for most of the pass.
    pub fn list_shared(&self, rt: &ResourceType) -> Vec<Arc<Value>> {
        self.stored(rt)
            .map(|(_, o)| {
                if convert::served_as_stored(rt, o) {
                    Arc::clone(o)
                } else {
                    Arc::new(convert::from_storage(rt, o))
                }
            })
            .collect()
    }

    /// Every stored object of `rt`'s storage, by key (namespace, name).
    fn stored(&self, rt: &ResourceType) -> impl Iterator<Item = (&Key, &Arc<Value>)> {
        self.objects
            .range((rt.storage, String::new(), String::new())..)
            .take_while(move |((s, _, _), _)| *s == rt.storage)
    }

    fn commit(
        &mut self,
        rt: &ResourceType,
        kind: ChangeKind,
        mut obj: Value,
        old: Option<Value>,
    ) -> Value {
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        let ns = meta_str(&obj, "namespace").to_string();
        let key = (
            rt.storage,
            Self::ns_key(rt, Some(&ns)),
            meta_str(&obj, "name").to_string(),
        );
        if let Some(previous) = self.objects.get(&key) {
            for uid in owner_uids(previous) {
                if let Some(keys) = self.owned.get_mut(&uid) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.owned.remove(&uid);
                    }
                }
            }
        }
        if kind == ChangeKind::Deleted {
            self.objects.remove(&key);
        } else {
            for uid in owner_uids(&obj) {
                self.owned.entry(uid).or_default().insert(key.clone());
            }
            self.objects.insert(key, Arc::new(obj.clone()));
        }
        if crd::is_crd(rt) {
            self.sync_crd(&obj, kind == ChangeKind::Deleted);
        }
        let change = Arc::new(Change {
            rv: self.rv,
            storage: rt.storage,
            namespace: ns,
            kind,
            object: obj.clone(),
            old,
        });
        self.log.push_back(change.clone());
        while self.log.len() > self.log_capacity {
            if let Some(dropped) = self.log.pop_front() {
                self.oldest_watchable = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
        obj
    }

    /// Serves what a written CRD defines, or stops serving it once deleted.
    fn sync_crd(&mut self, obj: &Value, deleted: bool) {
        let name = meta_str(obj, "name");
        match crd::types_of(obj) {
            Some((served, stored)) if !deleted => self.types.set_crd(name, served, stored),
            _ => self.types.remove_crd(name),
        }
    }

    /// Restores an object saved earlier (storage form), keeping its metadata; used when loading
    /// a state file (CRDs before the objects of their kinds).
    pub fn restore(&mut self, obj: Value) -> Result<(), ApiError> {
        let rt = self.storage_type(&obj)?;
        if crd::is_crd(rt) {
            self.sync_crd(&obj, false);
        }
        let rv: u64 = meta_str(&obj, "resourceVersion").parse().unwrap_or(0);
        let ns = meta_str(&obj, "namespace").to_string();
        let key = (
            rt.storage,
            Self::ns_key(rt, Some(&ns)),
            meta_str(&obj, "name").to_string(),
        );
        self.rv = self.rv.max(rv);
        for uid in owner_uids(&obj) {
            self.owned.entry(uid).or_default().insert(key.clone());
        }
        self.objects.insert(key, Arc::new(obj));
        self.oldest_watchable = self.rv;
        self.log.clear();
        Ok(())
    }

    /// Creates an object (`obj` in the form served by `rt`). `ns` is the namespace from the URL,
    /// if any. With `dry_run` the admitted object is returned but not stored.
    pub fn create_resource(
        &mut self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !self.types.serves(rt) {
            // The CRD went away after the request was routed.
            return Err(ApiError::no_route());
        }
        let mut obj = self.admit_identity(rt, ns, obj)?;
        let mut name = meta_str(&obj, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    vec![Cause::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
            name = format!("{prefix}{}", random_suffix(5));
            set_meta(&mut obj, "name", json!(name));
        }
        let causes = validate::name_causes(rt, &name);
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, &name, causes));
        }
        let ns_name = meta_str(&obj, "namespace").to_string();
        if rt.namespaced {
            let nst = resources::by_kind("v1", "Namespace").expect("namespaces are served");
            if self.raw(nst, None, &ns_name).is_none() {
                return Err(ApiError::not_found(nst, &ns_name));
            }
        }
        if self.raw(rt, Some(&ns_name), &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        let mut obj = convert::to_storage(rt, obj);
        let now = self.clock.now();
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove(field);
            }
        }
        set_meta(&mut obj, "uid", json!(uuid::Uuid::new_v4().to_string()));
        set_meta(&mut obj, "creationTimestamp", json!(format_time(now)));
        if rt.generation {
            set_meta(&mut obj, "generation", json!(1));
        }
        match rt.kind {
            "Deployment" | "ReplicaSet" => obj["status"] = json!({}),
            "Pod" if obj.get("status").is_none_or(|s| s.get("phase").is_none()) => {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
            "Service" => self.allocate_cluster_ip(&mut obj),
            _ => {}
        }
        defaults::apply(rt, &mut obj);
        let causes = validate::validate(rt, &obj, None);
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, &name, causes));
        }
        if crd::is_crd(rt) {
            crd::set_status(&mut obj, None, &format_time(now));
        }
        if dry_run {
            return Ok(convert::from_storage(rt, &obj));
        }
        let stored = self.commit(rt, ChangeKind::Added, obj, None);
        tracing::debug!(resource = rt.plural, namespace = %ns_name, name = %name, "created");
        Ok(convert::from_storage(rt, &stored))
    }

    fn allocate_cluster_ip(&mut self, obj: &mut Value) {
        let ty = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            return;
        }
        let given = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ip = if given.is_empty() {
            let n = self.next_cluster_ip;
            self.next_cluster_ip += 1;
            format!("10.96.{}.{}", n / 250, n % 250 + 1)
        } else {
            given
        };
        if !obj.get("spec").is_some_and(Value::is_object) {
            obj["spec"] = json!({});
        }
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
    }

    /// Checks apiVersion/kind and namespace against the URL and fills them in.
    fn admit_identity(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !av.is_empty() && av != rt.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !kind.is_empty() && kind != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        if rt.namespaced {
            let body_ns = meta_str(&obj, "namespace").to_string();
            let ns = match (ns, body_ns.as_str()) {
                (Some(url), "") => url.to_string(),
                (Some(url), body) if url != body => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (_, "") => "default".to_string(),
                (_, body) => body.to_string(),
            };
            set_meta(&mut obj, "namespace", json!(ns));
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        Ok(obj)
    }

    fn existing(
        &self,
        rt: &ResourceType,
        obj: &Value,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let body_name = meta_str(obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let old = self
            .raw(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let want = meta_str(obj, "resourceVersion");
        if !want.is_empty() && want != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(rt, name));
        }
        Ok(old)
    }

    /// Replaces the main resource. A non-empty `metadata.resourceVersion` in `obj` must match
    /// the stored one (else `409 Conflict`); status is kept for resources with a status
    /// subresource; `metadata.generation` is bumped on spec (and, for Deployments, annotation)
    /// changes. A write that changes nothing is not committed.
    pub fn update_resource(
        &mut self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let obj = self.admit_identity(rt, ns, obj)?;
        let old = self.existing(rt, &obj, ns, name)?;
        let mut new = convert::to_storage(rt, obj);
        set_meta(&mut new, "name", json!(name));
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match old["metadata"].get(field) {
                Some(v) => set_meta(&mut new, field, v.clone()),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        if rt.has_sub("status") {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        defaults::apply(rt, &mut new);
        let causes = validate::validate(rt, &new, Some(&old));
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, name, causes));
        }
        if crd::is_crd(rt) {
            crd::set_status(&mut new, Some(&old), &format_time(self.clock.now()));
        }
        if rt.generation && spec_changed(rt, &old, &new) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            set_meta(&mut new, "generation", json!(generation));
        }
        self.finish_update(rt, old, new, dry_run)
    }

    /// Replaces the status subresource (and annotations, as the apiserver allows); never bumps
    /// `metadata.generation`.
    pub fn update_resource_status(
        &mut self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let obj = self.admit_identity(rt, ns, obj)?;
        let old = self.existing(rt, &obj, ns, name)?;
        let obj = convert::to_storage(rt, obj);
        let mut new = old.clone();
        match obj.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        match obj.pointer("/metadata/annotations") {
            Some(a) => set_meta(&mut new, "annotations", a.clone()),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove("annotations");
                }
            }
        }
        if crd::is_crd(rt) {
            // The apiextensions controllers own a CRD's status; they set it right back.
            crd::set_status(&mut new, Some(&old), &format_time(self.clock.now()));
        }
        self.finish_update(rt, old, new, dry_run)
    }

    fn finish_update(
        &mut self,
        rt: &'static ResourceType,
        old: Value,
        new: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut cmp = new.clone();
        set_meta(
            &mut cmp,
            "resourceVersion",
            old["metadata"]["resourceVersion"].clone(),
        );
        if cmp == old || dry_run {
            return Ok(convert::from_storage(rt, if dry_run { &cmp } else { &old }));
        }
        let stored = self.commit(rt, ChangeKind::Modified, new, Some(old));
        Ok(convert::from_storage(rt, &stored))
    }

    /// Deletes an object and (by `propagation`) its dependents; returns the deleted object.
    pub fn delete_resource(
        &mut self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        propagation: Propagation,
        precondition_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let old = self
            .raw(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(want) = precondition_rv.filter(|v| !v.is_empty())
            && want != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        if rt.kind == "Namespace" {
            if ["default", "kube-system", "kube-public"].contains(&name) {
                return Err(ApiError::forbidden(
                    rt,
                    name,
                    "this namespace may not be deleted",
                ));
            }
            let inside: Vec<(&'static str, String)> = self
                .objects
                .keys()
                .filter(|(_, n, _)| n == name)
                .map(|(s, _, o)| (*s, o.clone()))
                .collect();
            for (storage, obj_name) in inside {
                if let Some(t) = self.types.by_storage(storage) {
                    let _ = self.delete_resource(
                        t,
                        Some(name),
                        &obj_name,
                        Propagation::Background,
                        None,
                    );
                }
            }
        }
        if crd::is_crd(rt) {
            // The apiextensions server deletes every object of the kind before the CRD.
            self.delete_all_stored(name);
        }
        let uid = meta_str(&old, "uid").to_string();
        match propagation {
            Propagation::Orphan => self.orphan_dependents(&uid),
            Propagation::Background | Propagation::Foreground => self.delete_dependents(&uid),
        }
        let mut last = old.clone();
        if let Some(m) = last["metadata"].as_object_mut() {
            m.remove("deletionTimestamp");
        }
        let deleted = self.commit(rt, ChangeKind::Deleted, last, Some(old));
        tracing::debug!(resource = rt.plural, name, "deleted");
        Ok(convert::from_storage(rt, &deleted))
    }

    /// Deletes every object stored under `storage` (a CRD's name), dependents included.
    fn delete_all_stored(&mut self, storage: &str) {
        let Some(t) = self.types.by_storage(storage) else {
            return;
        };
        let victims: Vec<(String, String)> = self
            .stored(t)
            .map(|((_, ns, name), _)| (ns.clone(), name.clone()))
            .collect();
        for (ns, name) in victims {
            let _ = self.delete_resource(t, Some(&ns), &name, Propagation::Background, None);
        }
    }

    fn dependents(&self, uid: &str) -> Vec<(&'static ResourceType, String, String)> {
        self.owned
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|(s, ns, name)| {
                self.types
                    .by_storage(s)
                    .map(|t| (t, ns.clone(), name.clone()))
            })
            .collect()
    }

    /// The resource type a stored object belongs to, by its apiVersion and kind.
    fn storage_type(&self, obj: &Value) -> Result<&'static ResourceType, ApiError> {
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        self.types.for_stored(av, kind).ok_or_else(|| {
            ApiError::bad_request(format!("no resource for apiVersion {av:?} kind {kind:?}"))
        })
    }

    /// The resource the controllers mean by `kind`; `None` for a custom kind whose CRD is not
    /// installed.
    fn kind_type(&self, kind: Kind) -> Option<&'static ResourceType> {
        let (av, k) = match kind {
            Kind::Deployment => ("apps/v1", "Deployment"),
            Kind::ReplicaSet => ("apps/v1", "ReplicaSet"),
            Kind::Pod => ("v1", "Pod"),
            Kind::Event => ("v1", "Event"),
            Kind::Node => ("v1", "Node"),
            Kind::Namespace => ("v1", "Namespace"),
            Kind::Service => ("v1", "Service"),
            Kind::Endpoints => ("v1", "Endpoints"),
            Kind::HttpRoute => {
                return self
                    .types
                    .by_group_kind("gateway.networking.k8s.io", "HTTPRoute");
            }
            Kind::VirtualService => {
                return self
                    .types
                    .by_group_kind("networking.istio.io", "VirtualService");
            }
        };
        resources::by_kind(av, k)
    }

    /// [`Store::kind_type`], or the error a write to an uninstalled custom kind gets.
    fn writable(&self, kind: Kind) -> Result<&'static ResourceType, ClusterError> {
        self.kind_type(kind)
            .ok_or_else(|| ClusterError::NotFound(format!("{kind:?} (its CRD is not installed)")))
    }

    fn delete_dependents(&mut self, uid: &str) {
        for (t, ns, name) in self.dependents(uid) {
            let _ = self.delete_resource(t, Some(&ns), &name, Propagation::Background, None);
        }
    }

    fn orphan_dependents(&mut self, uid: &str) {
        for (t, ns, name) in self.dependents(uid) {
            let Some(mut obj) = self.raw(t, Some(&ns), &name).cloned() else {
                continue;
            };
            let old = obj.clone();
            if let Some(refs) = obj
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                if refs.is_empty()
                    && let Some(m) = obj["metadata"].as_object_mut()
                {
                    m.remove("ownerReferences");
                }
            }
            self.commit(t, ChangeKind::Modified, obj, Some(old));
        }
    }
}

/// Whether an update changes what bumps `metadata.generation`: everything but metadata and
/// status, plus annotations for Deployments (they are copied to ReplicaSets). A custom resource
/// without a status subresource counts status changes too, as the apiextensions server does.
fn spec_changed(rt: &ResourceType, old: &Value, new: &Value) -> bool {
    let keep_status = !rt.builtin && !rt.has_sub("status");
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            if !keep_status {
                m.remove("status");
            }
        }
        v
    };
    if strip(old) != strip(new) {
        return true;
    }
    rt.kind == "Deployment"
        && old.pointer("/metadata/annotations") != new.pointer("/metadata/annotations")
}

/// The one node of a fresh cluster.
fn default_node(clock: &Clock) -> Value {
    let now = format_time(clock.now());
    let condition = |ty: &str, status: &str, reason: &str, message: &str| json!({"type": ty, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "kubesim-node-1",
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": "kubesim-node-1",
                "kubernetes.io/os": "linux"
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}
        },
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.11"}, {"type": "Hostname", "address": "kubesim-node-1"}],
            "allocatable": {"cpu": "8", "ephemeral-storage": "100Gi", "memory": "32Gi", "pods": "110"},
            "capacity": {"cpu": "8", "ephemeral-storage": "100Gi", "memory": "32Gi", "pods": "110"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "6b3c4a8e-0b1f-4a43-9d8f-6d0b0e1f7a11",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kernelVersion": "6.1.0-kubesim",
                "kubeProxyVersion": "v1.32.4",
                "kubeletVersion": "v1.32.4",
                "machineID": "kubesim-node-1",
                "operatingSystem": "linux",
                "osImage": "kubesim (simulated node)",
                "systemUUID": "kubesim-node-1"
            }
        }
    })
}

fn cluster_error(e: ApiError) -> ClusterError {
    match e.reason {
        "NotFound" => ClusterError::NotFound(e.message),
        "AlreadyExists" => ClusterError::AlreadyExists(e.message),
        "Conflict" => ClusterError::Conflict(e.message),
        _ => ClusterError::Invalid(e.message),
    }
}

fn obj_ns(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn obj_name(obj: &Value) -> String {
    meta_str(obj, "name").to_string()
}

impl Cluster for Store {
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        match self.kind_type(kind) {
            Some(rt) => Store::list_resource(self, rt, namespace),
            None => Vec::new(),
        }
    }

    fn list_shared(&self, kind: Kind) -> Vec<Arc<Value>> {
        match self.kind_type(kind) {
            Some(rt) => Store::list_shared(self, rt),
            None => Vec::new(),
        }
    }

    fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        Store::get_resource(self, self.kind_type(kind)?, namespace, name).ok()
    }

    fn create(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError> {
        let ns = obj_ns(&obj);
        let rt = self.writable(kind)?;
        Store::create_resource(self, rt, ns.as_deref(), obj, false).map_err(cluster_error)
    }

    fn update(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError> {
        let (ns, name) = (obj_ns(&obj), obj_name(&obj));
        let rt = self.writable(kind)?;
        Store::update_resource(self, rt, ns.as_deref(), &name, obj, false).map_err(cluster_error)
    }

    fn update_status(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError> {
        let (ns, name) = (obj_ns(&obj), obj_name(&obj));
        let rt = self.writable(kind)?;
        Store::update_resource_status(self, rt, ns.as_deref(), &name, obj, false)
            .map_err(cluster_error)
    }

    fn delete(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ClusterError> {
        let rt = self.writable(kind)?;
        Store::delete_resource(self, rt, namespace, name, Propagation::Background, None)
            .map(|_| ())
            .map_err(cluster_error)
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy_rt() -> &'static ResourceType {
        resources::by_kind("apps/v1", "Deployment").unwrap()
    }

    fn web() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx:1.0"}]}}}})
    }

    #[test]
    fn create_sets_server_fields_and_rejects_duplicates() {
        let mut s = Store::new(100);
        let d = s
            .create_resource(deploy_rt(), Some("default"), web(), false)
            .unwrap();
        assert_eq!(d["metadata"]["generation"], 1);
        assert_eq!(d["metadata"]["namespace"], "default");
        assert!(d["metadata"]["uid"].as_str().unwrap().len() == 36);
        assert_eq!(d["metadata"]["resourceVersion"], s.current_rv().to_string());
        assert_eq!(d["spec"]["replicas"], 1);
        let err = s
            .create_resource(deploy_rt(), Some("default"), web(), false)
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let err = s
            .create_resource(deploy_rt(), Some("nope"), web(), false)
            .unwrap_err();
        assert_eq!(err.message, "namespaces \"nope\" not found");
    }

    #[test]
    fn a_selective_list_selects_on_the_served_form() {
        let mut s = Store::new(100);
        let mut api = web();
        api["metadata"]["name"] = json!("api");
        api["metadata"]["labels"] = json!({"app": "api"});
        for d in [web(), api] {
            s.create_resource(deploy_rt(), Some("default"), d, false)
                .unwrap();
        }
        let is_api = |o: &Value| o.pointer("/metadata/labels/app") == Some(&json!("api"));
        let kept = s.list_resource_where(deploy_rt(), Some("default"), is_api);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["metadata"]["name"], "api");
        assert_eq!(kept[0]["apiVersion"], "apps/v1");
        assert_eq!(s.list_resource(deploy_rt(), Some("default")).len(), 2);

        // events.k8s.io serves core Events with renamed fields: its selectors see those.
        let core = resources::by_kind("v1", "Event").unwrap();
        for name in ["web", "api"] {
            let event = json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("{name}.1")},
                "involvedObject": {"kind": "Deployment", "name": name}, "reason": "Scaled"});
            s.create_resource(core, Some("default"), event, false)
                .unwrap();
        }
        let events = resources::by_plural("events.k8s.io", "v1", "events").unwrap();
        let about_web = |o: &Value| o.pointer("/regarding/name") == Some(&json!("web"));
        let kept = s.list_resource_where(events, Some("default"), about_web);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["metadata"]["name"], "web.1");
        assert_eq!(kept[0]["apiVersion"], "events.k8s.io/v1");
    }

    /// A controller pass reads each kind whole: the objects are the store's own (no copy), and
    /// a write after the list replaces the stored object without changing what was listed.
    #[test]
    fn a_shared_list_is_the_stored_objects_and_stays_as_listed() {
        let mut s = Store::new(100);
        s.create_resource(deploy_rt(), Some("default"), web(), false)
            .unwrap();
        let first = s.list_shared(deploy_rt());
        let again = s.list_shared(deploy_rt());
        assert_eq!(first.len(), 1);
        assert!(Arc::ptr_eq(&first[0], &again[0]), "listed by copying");
        assert_eq!(*first[0], s.list_resource(deploy_rt(), None)[0]);

        let mut scaled = s.get_resource(deploy_rt(), Some("default"), "web").unwrap();
        scaled["spec"]["replicas"] = json!(5);
        s.update_resource(deploy_rt(), Some("default"), "web", scaled, false)
            .unwrap();
        let after = s.list_shared(deploy_rt());
        assert_eq!(after[0]["spec"]["replicas"], 5);
        assert_ne!(
            first[0]["spec"]["replicas"], 5,
            "a listed object changed under its reader"
        );

        // A kind served under another name is converted, as any list of it is.
        let core = resources::by_kind("v1", "Event").unwrap();
        let event = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1"},
            "involvedObject": {"kind": "Deployment", "name": "web"}, "reason": "Scaled"});
        s.create_resource(core, Some("default"), event, false)
            .unwrap();
        let events = resources::by_plural("events.k8s.io", "v1", "events").unwrap();
        let listed = s.list_shared(events);
        assert_eq!(listed[0]["apiVersion"], "events.k8s.io/v1");
        assert_eq!(listed[0]["regarding"]["name"], "web");
    }

    #[test]
    fn generate_name_and_missing_name() {
        let mut s = Store::new(100);
        let cm = resources::by_kind("v1", "ConfigMap").unwrap();
        let made = s
            .create_resource(
                cm,
                Some("default"),
                json!({"metadata": {"generateName": "snap-"}}),
                false,
            )
            .unwrap();
        let name = made["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("snap-") && name.len() == 10);
        let err = s
            .create_resource(cm, Some("default"), json!({"metadata": {}}), false)
            .unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn updates_check_resource_version_and_bump_generation() {
        let mut s = Store::new(100);
        let d = s
            .create_resource(deploy_rt(), Some("default"), web(), false)
            .unwrap();
        let mut stale = d.clone();
        let mut changed = d.clone();
        changed["spec"]["replicas"] = json!(3);
        let updated = s
            .update_resource(deploy_rt(), Some("default"), "web", changed, false)
            .unwrap();
        assert_eq!(updated["metadata"]["generation"], 2);
        stale["spec"]["replicas"] = json!(5);
        let err = s
            .update_resource(deploy_rt(), Some("default"), "web", stale, false)
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        // A no-op update commits nothing.
        let rv = s.current_rv();
        s.update_resource(deploy_rt(), Some("default"), "web", updated.clone(), false)
            .unwrap();
        assert_eq!(rv, s.current_rv());
        // Status writes keep spec and generation.
        let mut st = updated.clone();
        st["status"] = json!({"replicas": 3});
        st["spec"]["replicas"] = json!(9);
        let after = s
            .update_resource_status(deploy_rt(), Some("default"), "web", st, false)
            .unwrap();
        assert_eq!(after["spec"]["replicas"], 3);
        assert_eq!(after["status"]["replicas"], 3);
        assert_eq!(after["metadata"]["generation"], 2);
        // Main-resource writes cannot change status.
        let mut main = after.clone();
        main["status"] = json!({});
        let kept = s
            .update_resource(deploy_rt(), Some("default"), "web", main, false)
            .unwrap();
        assert_eq!(kept["status"]["replicas"], 3);
    }

    #[test]
    fn delete_cascades_or_orphans_by_owner_uid() {
        let mut s = Store::new(100);
        let d = s
            .create_resource(deploy_rt(), Some("default"), web(), false)
            .unwrap();
        let cm = resources::by_kind("v1", "ConfigMap").unwrap();
        let owned = |n: &str| json!({"metadata": {"name": n, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": d["metadata"]["uid"], "controller": true}]}});
        s.create_resource(cm, Some("default"), owned("a"), false)
            .unwrap();
        s.delete_resource(
            deploy_rt(),
            Some("default"),
            "web",
            Propagation::Background,
            None,
        )
        .unwrap();
        assert!(s.get_resource(cm, Some("default"), "a").is_err());
        let d = s
            .create_resource(deploy_rt(), Some("default"), web(), false)
            .unwrap();
        let owned = json!({"metadata": {"name": "b", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": d["metadata"]["uid"]}]}});
        s.create_resource(cm, Some("default"), owned, false)
            .unwrap();
        s.delete_resource(
            deploy_rt(),
            Some("default"),
            "web",
            Propagation::Orphan,
            None,
        )
        .unwrap();
        let b = s.get_resource(cm, Some("default"), "b").unwrap();
        assert!(b["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn change_log_is_bounded() {
        let mut s = Store::new(3);
        let cm = resources::by_kind("v1", "ConfigMap").unwrap();
        for i in 0..5 {
            s.create_resource(
                cm,
                Some("default"),
                json!({"metadata": {"name": format!("c{i}")}}),
                false,
            )
            .unwrap();
        }
        assert_eq!(s.changes_since(0).len(), 3);
        assert_eq!(s.oldest_watchable(), s.current_rv() - 3);
        let before = s.current_rv();
        s.compact();
        assert_eq!(s.oldest_watchable(), s.current_rv());
        assert!(
            before < s.oldest_watchable(),
            "the last version is now too old"
        );
    }

    #[test]
    fn clock_can_be_frozen_advanced_and_set() {
        let mut c = Clock::default();
        c.freeze(true);
        let t = c.now();
        c.advance(SignedDuration::from_secs(60));
        assert_eq!(c.now().duration_since(t), SignedDuration::from_secs(60));
        let at: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        c.set(at);
        assert_eq!(c.now(), at);
        c.freeze(false);
        assert!(c.now().duration_since(at) < SignedDuration::from_secs(5));
    }
}
