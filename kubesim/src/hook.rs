//! Where the API server hands control to the controllers.
//!
//! Until the controllers module (`crate::controller`) lands, this holds a stand-in
//! [`ControllerConfig`] with the same fields and a minimal [`reconcile`] that only keeps node
//! readiness in line with `not_ready_nodes`; the server calls [`reconcile`] after every write and
//! on every tick either way.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{Cluster, Kind};

/// Knobs of the simulated control plane (stand-in with the controllers' field names).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long a started container takes to become Ready.
    pub pod_ready_delay: Duration,
    /// How long a scheduled pod stays Pending before its containers start.
    pub pod_start_delay: Duration,
    /// The node registered when the cluster has none.
    pub register_node: Option<String>,
    /// Nodes forced NotReady.
    pub not_ready_nodes: Vec<String>,
    /// Faults by exact image reference.
    pub image_faults: BTreeMap<String, Fault>,
    /// Seconds a pod tolerates a NotReady node before eviction.
    pub not_ready_toleration: Duration,
    /// Upper bound on passes per reconcile.
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

/// A simulated container failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    CrashLoop,
    NeverReady,
    SlowReady(Duration),
    OomKilled,
}

impl Fault {
    /// Parses `crashloop`, `never-ready`, `slow-ready=<ms>`, `oomkilled`.
    pub fn parse(value: &str) -> Option<Fault> {
        match value.trim() {
            "crashloop" => Some(Fault::CrashLoop),
            "never-ready" => Some(Fault::NeverReady),
            "oomkilled" => Some(Fault::OomKilled),
            other => other
                .strip_prefix("slow-ready=")
                .and_then(|ms| ms.parse().ok())
                .map(|ms| Fault::SlowReady(Duration::from_millis(ms))),
        }
    }
}

/// Runs the controllers once over the cluster.
pub fn reconcile(cluster: &mut dyn Cluster, cfg: &ControllerConfig) {
    for node in cluster.list(Kind::Node, None) {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let want = if cfg.not_ready_nodes.contains(&name) {
            "False"
        } else {
            "True"
        };
        let mut updated = node.clone();
        let Some(conditions) = updated
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in conditions.iter_mut() {
            if c["type"] == "Ready" && c["status"] != want {
                c["status"] = json!(want);
                c["reason"] = json!(if want == "True" {
                    "KubeletReady"
                } else {
                    "KubeletNotReady"
                });
            }
        }
        if updated != node
            && let Err(e) = cluster.update_status(Kind::Node, updated)
        {
            tracing::debug!(node = %name, error = %e, "node status update failed");
        }
    }
}
