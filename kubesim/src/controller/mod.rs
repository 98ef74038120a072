//! kubesim's controllers: what kube-controller-manager, kube-scheduler and the kubelet would do to
//! the objects in the store, run synchronously by [`reconcile`].
//!
//! Start reading at [`reconcile`]: it runs one *pass* of every controller over the whole cluster,
//! and repeats passes until one changes nothing (at most [`ControllerConfig::max_passes`]). The
//! server calls it after every write and on a periodic tick, so every controller compares before it
//! writes and a cluster that is in sync costs only the lists.
//!
//! | module | upstream counterpart |
//! |---|---|
//! | [`deployment`] | `pkg/controller/deployment` (`sync.go`, `rolling.go`, `recreate.go`, `progress.go`) |
//! | [`deployment_util`] | `pkg/controller/deployment/util/deployment_util.go`, `ComputeHash` |
//! | [`replicaset`] | `pkg/controller/replicaset/replica_set.go` |
//! | [`kubelet`] | kube-scheduler's bind, the kubelet's pod status manager, node status, `pods/log` |
//! | [`node`] | node registration and status, node-lifecycle (NotReady, taints, eviction) |
//! | [`gc`] | the garbage collector for controller ownerReferences |
//! | [`endpoints`] | the endpoints controller |
//! | [`gateway`] | a Gateway API implementation's HTTPRoute status (`Accepted`, `ResolvedRefs`) |
//!
//! Time comes only from [`Cluster::now`], so tests drive every delay with a controllable clock.
//!
//! # Failure injection (incident drills)
//!
//! A fault is chosen per container, first match wins:
//! 1. the pod (template) annotation `kubesim.io/fault: <fault>` (applies to every container);
//! 2. [`ControllerConfig::image_faults`]: an exact image reference mapped to a [`Fault`];
//! 3. the image tag: a tag that *contains* one of the fault words below (`model:v2-crashloop`).
//!
//! | fault | annotation value / tag word | what the pod does |
//! |---|---|---|
//! | [`Fault::CrashLoop`] | `crashloop` | runs 2 s, exits 1 (`Error`), then `CrashLoopBackOff` with the real back-off (10 s doubling to 300 s); `restartCount` grows, Warning `BackOff` events, never Ready, so a rollout stalls until `ProgressDeadlineExceeded`; logs end in a stack of error lines |
//! | [`Fault::NeverReady`] | `never-ready` | the image never pulls: `Pending`, waiting `ErrImagePull` then `ImagePullBackOff`, Warning `Failed` events |
//! | [`Fault::SlowReady`] | `slow-ready=<ms>` (tag: `slow-ready-<ms>`) | runs at once, Ready only after `<ms>` (instead of [`ControllerConfig::pod_ready_delay`]); a Warning `Unhealthy` event when the container has a readinessProbe |
//! | [`Fault::OomKilled`] | `oomkilled` | becomes Ready, is OOM-killed after 45 s of uptime (`lastState.terminated.reason: OOMKilled`, exit 137), backs off like a crash loop and starts again |
//!
//! A Node goes `NotReady` when it carries the annotation `kubesim.io/not-ready: "true"` or is
//! named in [`ControllerConfig::not_ready_nodes`]: its Ready condition turns False, the kubelet
//! records `NodeNotReady`, the node gets the `node.kubernetes.io/not-ready` taints, its pods turn
//! not-ready (Warning `NodeNotReady` per pod) and, after the default 300 s toleration, the pods are
//! evicted (`TaintManagerEviction`) and their ReplicaSets recreate them on a Ready node.

pub mod deployment;
pub mod deployment_util;
pub mod endpoints;
mod events;
pub mod gateway;
pub mod gc;
pub mod kubelet;
pub mod node;
pub(crate) mod obj;
pub mod replicaset;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod testing;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{Cluster, ClusterError, Kind};

/// Knobs of the simulated control plane. `Default` gives a fast, healthy cluster.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long a started container takes to become Ready (the readiness probe's first success).
    /// `startTime` has seconds precision, so the delay counts from the end of the start second:
    /// the real delay is in `[delay, delay + 1 s)`. Zero makes containers Ready as they start.
    pub pod_ready_delay: Duration,
    /// How long a scheduled pod stays `Pending` (`ContainerCreating`) before its containers start.
    pub pod_start_delay: Duration,
    /// The Node the kubelet registers when the cluster has none; `None` registers nothing (pods
    /// then stay Pending with a `FailedScheduling` event, as on a cluster without nodes).
    pub register_node: Option<String>,
    /// Nodes forced NotReady, in addition to those annotated `kubesim.io/not-ready: "true"`.
    pub not_ready_nodes: Vec<String>,
    /// Faults by exact image reference (as written in the pod spec), e.g. from an admin endpoint.
    pub image_faults: BTreeMap<String, Fault>,
    /// Seconds a pod tolerates a NotReady node before it is evicted (the DefaultTolerationSeconds
    /// admission plugin's 300).
    pub not_ready_toleration: Duration,
    /// Upper bound on passes per [`reconcile`] call.
    pub max_passes: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            pod_ready_delay: Duration::from_millis(200),
            pod_start_delay: Duration::ZERO,
            register_node: Some("kubesim-node".to_owned()),
            not_ready_nodes: Vec::new(),
            image_faults: BTreeMap::new(),
            not_ready_toleration: Duration::from_secs(300),
            max_passes: 32,
        }
    }
}

/// A simulated container failure (see the module header for what each one looks like).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The container exits with code 1 shortly after every start.
    CrashLoop,
    /// The image never pulls.
    NeverReady,
    /// The container becomes Ready only after this delay.
    SlowReady(Duration),
    /// The container is OOM-killed after 45 s of uptime, again and again.
    OomKilled,
}

impl Fault {
    /// Parses an annotation value: `crashloop`, `never-ready`, `slow-ready=<ms>`, `oomkilled`.
    pub fn parse(value: &str) -> Option<Fault> {
        let value = value.trim();
        match value {
            "crashloop" => Some(Fault::CrashLoop),
            "never-ready" => Some(Fault::NeverReady),
            "oomkilled" => Some(Fault::OomKilled),
            _ => {
                let ms = value
                    .strip_prefix("slow-ready=")
                    .or_else(|| value.strip_prefix("slow-ready-"))?;
                ms.parse::<u64>()
                    .ok()
                    .map(|ms| Fault::SlowReady(Duration::from_millis(ms)))
            }
        }
    }

    /// The fault an image tag asks for, if its tag contains a fault word.
    pub fn from_image(image: &str) -> Option<Fault> {
        let tag = image_tag(image)?;
        if tag.contains("crashloop") {
            return Some(Fault::CrashLoop);
        }
        if tag.contains("never-ready") {
            return Some(Fault::NeverReady);
        }
        if tag.contains("oomkilled") {
            return Some(Fault::OomKilled);
        }
        let at = tag.find("slow-ready-")?;
        let digits: String = tag[at + "slow-ready-".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse::<u64>()
            .ok()
            .map(|ms| Fault::SlowReady(Duration::from_millis(ms)))
    }
}

/// The tag of an image reference (`repo/name:tag@digest` → `tag`), if it has one.
fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':').map(|(_, tag)| tag)
}

/// Runs every controller over the whole cluster until a pass writes nothing (bounded by
/// [`ControllerConfig::max_passes`]). Called by the server after every write and on a tick.
pub fn reconcile(cluster: &mut dyn Cluster, cfg: &ControllerConfig) {
    for pass in 0..cfg.max_passes.max(1) {
        let writes = reconcile_pass(cluster, cfg);
        if writes == 0 {
            return;
        }
        tracing::trace!(pass, writes, "controller pass wrote");
    }
    tracing::debug!(
        max_passes = cfg.max_passes,
        "controllers still writing after the last pass"
    );
}

/// One pass of every controller over the whole cluster; how many writes it made (none: the
/// controllers have settled).
pub fn reconcile_pass(cluster: &mut dyn Cluster, cfg: &ControllerConfig) -> usize {
    let mut pass_cluster = PassCluster {
        inner: cluster,
        writes: 0,
        lists: RefCell::new(HashMap::new()),
    };
    run_pass(&mut pass_cluster, cfg);
    pass_cluster.writes
}

/// One pass of every controller, in the order the objects flow.
fn run_pass(cluster: &mut PassCluster<'_>, cfg: &ControllerConfig) {
    let now = cluster.now();
    node::sync_nodes(cluster, cfg, now);
    gc::collect_garbage(cluster);
    deployment::sync_deployments(cluster, now);
    replicaset::sync_replica_sets(cluster, cfg, now);
    kubelet::sync_pods(cluster, cfg, now);
    endpoints::sync_endpoints(cluster);
    gateway::sync_routes(cluster);
}

/// Logs a failed controller write the way a work queue would before requeueing.
fn log_error(controller: &'static str, key: &str, error: &ClusterError) {
    tracing::debug!(controller, key, error = %error, "sync failed, will retry on the next pass");
}

/// The [`Cluster`] the controllers see during one pass: it counts successful writes (so a
/// quiet pass ends the loop) and remembers each kind's full list until a write to that kind,
/// so the controllers of a pass share one sweep of the store per kind, like informers sharing
/// a cache.
pub(crate) struct PassCluster<'a> {
    inner: &'a mut dyn Cluster,
    writes: usize,
    lists: RefCell<HashMap<Kind, Rc<Vec<Arc<Value>>>>>,
}

impl PassCluster<'_> {
    fn wrote<T>(&mut self, kind: Kind, result: Result<T, ClusterError>) -> Result<T, ClusterError> {
        if result.is_ok() {
            self.writes += 1;
            self.lists.get_mut().remove(&kind);
        }
        result
    }

    /// Every object of `kind`, shared with the store (not copied), listed again after a
    /// write to that kind.
    pub(crate) fn all(&self, kind: Kind) -> Rc<Vec<Arc<Value>>> {
        let mut lists = self.lists.borrow_mut();
        Rc::clone(
            lists
                .entry(kind)
                .or_insert_with(|| Rc::new(self.inner.list_shared(kind))),
        )
    }
}

impl Cluster for PassCluster<'_> {
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        let all = self.all(kind);
        match namespace {
            None => all.iter().map(|o| Value::clone(o)).collect(),
            Some(ns) => all
                .iter()
                .filter(|o| obj::namespace(o).is_none_or(|n| n == ns))
                .map(|o| Value::clone(o))
                .collect(),
        }
    }
    fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.inner.get(kind, namespace, name)
    }
    fn create(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError> {
        let result = self.inner.create(kind, obj);
        self.wrote(kind, result)
    }
    fn update(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError> {
        let result = self.inner.update(kind, obj);
        self.wrote(kind, result)
    }
    fn update_status(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError> {
        let result = self.inner.update_status(kind, obj);
        self.wrote(kind, result)
    }
    fn delete(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ClusterError> {
        let result = self.inner.delete(kind, namespace, name);
        // A delete may cascade (the store's garbage collection): forget every list.
        if result.is_ok() {
            self.lists.get_mut().clear();
        }
        self.wrote(kind, result)
    }
    fn now(&self) -> jiff::Timestamp {
        self.inner.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_annotations_and_tags() {
        assert_eq!(Fault::parse("crashloop"), Some(Fault::CrashLoop));
        assert_eq!(
            Fault::parse("slow-ready=1500"),
            Some(Fault::SlowReady(Duration::from_millis(1500)))
        );
        assert_eq!(Fault::parse("slow-ready=soon"), None);
        assert_eq!(Fault::parse("explode"), None);
        assert_eq!(
            Fault::from_image("registry:5000/ml/model:v2-crashloop"),
            Some(Fault::CrashLoop)
        );
        assert_eq!(Fault::from_image("registry:5000/crashloop/model:v2"), None);
        assert_eq!(
            Fault::from_image("model:slow-ready-250"),
            Some(Fault::SlowReady(Duration::from_millis(250)))
        );
        assert_eq!(Fault::from_image("nginx"), None);
        assert_eq!(
            Fault::from_image("nginx:never-ready"),
            Some(Fault::NeverReady)
        );
        assert_eq!(
            Fault::from_image("x:oomkilled@sha256:ab"),
            Some(Fault::OomKilled)
        );
    }
}
