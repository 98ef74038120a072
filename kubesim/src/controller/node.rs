//! Nodes: the kubelet's registration and node status, and the node-lifecycle and
//! taint-eviction controllers' reaction to a NotReady node.
//!
//! Start at [`sync_nodes`]. A node is NotReady when annotated `kubesim.io/not-ready: "true"` or
//! listed in [`ControllerConfig::not_ready_nodes`]; then its Ready condition is False
//! (`KubeletNotReady`), it carries the `node.kubernetes.io/not-ready` taints, and pods on it that
//! outlive their NoExecute toleration are evicted. Pod readiness on a NotReady node is handled by
//! the kubelet module, which reads [`node_is_ready`].

use jiff::Timestamp;
use serde_json::{Value, json};

use super::events::{self, Involved, Source};
use super::{ControllerConfig, obj};
use crate::cluster::{Cluster, ClusterError, Kind};

/// The annotation that makes a node NotReady.
pub const NOT_READY_ANNOTATION: &str = "kubesim.io/not-ready";
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The kubelet version nodes report.
const KUBELET_VERSION: &str = "v1.32.4";

/// Registers the default node if there is none, then syncs every node's status and taints and
/// evicts pods from nodes NotReady for longer than the pods tolerate.
pub(crate) fn sync_nodes(cluster: &mut dyn Cluster, cfg: &ControllerConfig, now: Timestamp) {
    let mut nodes = cluster.list(Kind::Node, None);
    if nodes.is_empty() {
        let Some(name) = &cfg.register_node else {
            return;
        };
        match register_node(cluster, name) {
            Ok(node) => nodes.push(node),
            Err(error) => {
                super::log_error("kubelet", name, &error);
                return;
            }
        }
    }
    let mut evict_from = Vec::new();
    for node in nodes {
        let key = obj::key(&node);
        match sync_node(cluster, cfg, now, node) {
            Ok(Some(since_ms)) => evict_from.push((key, since_ms)),
            Ok(None) => {}
            Err(error) => super::log_error("node-lifecycle", &key, &error),
        }
    }
    if !evict_from.is_empty() {
        evict_pods(cluster, now, &evict_from);
    }
}

/// Whether a node should be Ready (no fault annotation, not forced NotReady).
pub(crate) fn wants_ready(node: &Value, cfg: &ControllerConfig) -> bool {
    obj::annotation(node, NOT_READY_ANNOTATION) != Some("true")
        && !cfg.not_ready_nodes.iter().any(|n| n == obj::name(node))
}

/// Whether a node's Ready condition is True.
pub(crate) fn node_is_ready(node: &Value) -> bool {
    obj::condition(node.pointer("/status/conditions"), "Ready")
        .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

/// The node's InternalIP (or a stable made-up one).
pub(crate) fn host_ip(node: &Value) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        })
        .and_then(|a| a.get("address"))
        .and_then(Value::as_str)
        .map_or_else(|| default_host_ip(obj::name(node)), str::to_owned)
}

fn default_host_ip(name: &str) -> String {
    format!("172.18.0.{}", 2 + obj::fnv32a(name.as_bytes()) % 200)
}

/// The kubelet registers its Node object.
fn register_node(cluster: &mut dyn Cluster, name: &str) -> Result<Value, ClusterError> {
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
    });
    cluster.create(Kind::Node, node)
}

/// The static parts of a node's status the kubelet reports (capacity, addresses, nodeInfo).
fn fill_node_status(node: &Value, status: &mut serde_json::Map<String, Value>) {
    let name = obj::name(node);
    let resources = json!({"cpu": "8", "ephemeral-storage": "102626232Ki", "hugepages-2Mi": "0",
                           "memory": "32863300Ki", "pods": "110"});
    status
        .entry("capacity")
        .or_insert_with(|| resources.clone());
    status.entry("allocatable").or_insert(resources);
    status.entry("addresses").or_insert_with(|| {
        json!([{"type": "InternalIP", "address": default_host_ip(name)},
               {"type": "Hostname", "address": name}])
    });
    status
        .entry("daemonEndpoints")
        .or_insert_with(|| json!({"kubeletEndpoint": {"Port": 10250}}));
    let id = format!(
        "{:016x}{:016x}",
        obj::fnv64a(name.as_bytes()),
        obj::fnv64a(format!("{name}/m").as_bytes())
    );
    status.entry("nodeInfo").or_insert_with(|| {
        json!({
            "architecture": "amd64",
            "bootID": id,
            "containerRuntimeVersion": "containerd://1.7.24",
            "kernelVersion": "6.1.0-27-amd64",
            "kubeProxyVersion": KUBELET_VERSION,
            "kubeletVersion": KUBELET_VERSION,
            "machineID": id,
            "operatingSystem": "linux",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "systemUUID": id,
        })
    });
}

/// One node condition, keeping its transition time when the status holds.
fn node_condition(
    old: Option<&Value>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let transition = old
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let heartbeat = old
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastHeartbeatTime").cloned())
        .unwrap_or_else(|| json!(now));
    json!({"type": type_, "status": status, "lastHeartbeatTime": heartbeat,
           "lastTransitionTime": transition, "reason": reason, "message": message})
}

/// Syncs one node's status and taints. Returns, for a NotReady node, when it became NotReady.
fn sync_node(
    cluster: &mut dyn Cluster,
    cfg: &ControllerConfig,
    now: Timestamp,
    mut node: Value,
) -> Result<Option<i64>, ClusterError> {
    let ready = wants_ready(&node, cfg);
    let was_ready = obj::condition(node.pointer("/status/conditions"), "Ready")
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        .map(|s| s == "True");
    let stamp = obj::fmt_time(now);
    let old_status = node.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut status = old_status.as_object().cloned().unwrap_or_default();
    fill_node_status(&node, &mut status);
    let old = |t: &str| obj::condition(old_status.get("conditions"), t);
    let (ready_status, ready_reason, ready_message) = if ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        (
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
        )
    };
    status.insert(
        "conditions".to_owned(),
        json!([
            node_condition(
                old("MemoryPressure"),
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                &stamp
            ),
            node_condition(
                old("DiskPressure"),
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                &stamp
            ),
            node_condition(
                old("PIDPressure"),
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                &stamp
            ),
            node_condition(
                old("Ready"),
                "Ready",
                ready_status,
                ready_reason,
                ready_message,
                &stamp
            ),
        ]),
    );
    let status = Value::Object(status);
    if !obj::status_eq(&old_status, &status) {
        node["status"] = status;
        node = cluster.update_status(Kind::Node, node)?;
        if was_ready != Some(ready) && (was_ready.is_some() || !ready) {
            let reason = if ready { "NodeReady" } else { "NodeNotReady" };
            let message = format!("Node {} status is now: {reason}", obj::name(&node));
            let source = Source {
                component: "kubelet",
                host: Some(obj::name(&node)),
            };
            let involved = Involved::new(&node, "Node", "");
            events::record(
                cluster,
                now,
                source,
                &involved,
                events::NORMAL,
                reason,
                &message,
            );
        }
    }
    sync_not_ready_taints(cluster, now, node.clone(), ready)?;
    if ready {
        return Ok(None);
    }
    Ok(obj::condition(node.pointer("/status/conditions"), "Ready")
        .and_then(|c| obj::time_ms_at(c, &["lastTransitionTime"]))
        .or(Some(now.as_millisecond())))
}

/// The node-lifecycle controller's `node.kubernetes.io/not-ready` NoSchedule + NoExecute taints.
fn sync_not_ready_taints(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    mut node: Value,
    ready: bool,
) -> Result<(), ClusterError> {
    let taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |effect: &str| {
        taints.iter().any(|t| {
            t.get("key").and_then(Value::as_str) == Some(NOT_READY_TAINT)
                && t.get("effect").and_then(Value::as_str) == Some(effect)
        })
    };
    let mut new_taints: Vec<Value> = taints
        .iter()
        .filter(|t| t.get("key").and_then(Value::as_str) != Some(NOT_READY_TAINT))
        .cloned()
        .collect();
    if ready {
        if !has("NoSchedule") && !has("NoExecute") {
            return Ok(());
        }
    } else {
        if has("NoSchedule") && has("NoExecute") {
            return Ok(());
        }
        new_taints.push(json!({"key": NOT_READY_TAINT, "effect": "NoSchedule"}));
        new_taints.push(
            json!({"key": NOT_READY_TAINT, "effect": "NoExecute", "timeAdded": obj::fmt_time(now)}),
        );
    }
    let spec = obj::obj_mut(&mut node, &["spec"]);
    if new_taints.is_empty() {
        spec.remove("taints");
    } else {
        spec.insert("taints".to_owned(), json!(new_taints));
    }
    cluster.update(Kind::Node, node).map(drop)
}

/// The taint-eviction controller: pods on a NotReady node past their toleration are deleted.
fn evict_pods(cluster: &mut dyn Cluster, now: Timestamp, not_ready: &[(String, i64)]) {
    for pod in cluster.list(Kind::Pod, None) {
        let Some(node) = obj::str_at(&pod, &["spec", "nodeName"]) else {
            continue;
        };
        let Some((_, since_ms)) = not_ready.iter().find(|(n, _)| n == node) else {
            continue;
        };
        if obj::is_being_deleted(&pod) {
            continue;
        }
        let Some(tolerated_ms) = toleration_ms(&pod) else {
            continue;
        };
        if since_ms + tolerated_ms > now.as_millisecond() {
            continue;
        }
        let message = format!("Marking for deletion Pod {}", obj::key(&pod));
        let involved = Involved::new(&pod, "Pod", "v1");
        events::record(
            cluster,
            now,
            Source::TAINT_EVICTION,
            &involved,
            events::NORMAL,
            "TaintManagerEviction",
            &message,
        );
        match cluster.delete(Kind::Pod, obj::namespace(&pod), obj::name(&pod)) {
            Ok(()) | Err(ClusterError::NotFound(_)) => {}
            Err(error) => super::log_error("taint-eviction", &obj::key(&pod), &error),
        }
    }
}

/// How long a pod tolerates the not-ready NoExecute taint: `None` = forever (a toleration without
/// seconds); no toleration at all = evicted at once.
fn toleration_ms(pod: &Value) -> Option<i64> {
    let tolerations = pod.pointer("/spec/tolerations").and_then(Value::as_array);
    let matching = tolerations.into_iter().flatten().find(|t| {
        let key = t.get("key").and_then(Value::as_str);
        let effect = t.get("effect").and_then(Value::as_str);
        let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
        (key == Some(NOT_READY_TAINT) || (key.is_none() && exists))
            && (effect.is_none() || effect == Some("NoExecute"))
    });
    match matching {
        None => Some(0),
        Some(t) => t
            .get("tolerationSeconds")
            .and_then(Value::as_i64)
            .map(|s| s.max(0) * 1000),
    }
}
