//! The ReplicaSet controller, after upstream's `pkg/controller/replicaset/replica_set.go`:
//! `sync_replica_set` claims the pods (adopting orphans that match, releasing those that no
//! longer match), `manage_replicas` creates or deletes pods to reach `spec.replicas`, and
//! `calculate_status` counts replicas, fullyLabeled, ready and available pods.
//!
//! Pods are named like the apiserver's `generateName`: `<rs>-<5 characters>` from the same
//! alphabet, derived from the RS uid and the clock so a run is reproducible.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::events::{self, Involved, Source};
use super::{ControllerConfig, PassCluster, obj};
use crate::cluster::{Cluster, ClusterError, Kind};

/// `burstReplicas`: at most this many creations or deletions per sync.
const BURST_REPLICAS: usize = 500;
/// `controller.kubernetes.io/pod-deletion-cost`.
const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Syncs every ReplicaSet once.
pub(crate) fn sync_replica_sets(
    cluster: &mut PassCluster<'_>,
    cfg: &ControllerConfig,
    now: Timestamp,
) {
    let toleration_seconds = cfg.not_ready_toleration.as_secs();
    let rses = cluster.all(Kind::ReplicaSet);
    if rses.is_empty() {
        return;
    }
    let all_pods = cluster.all(Kind::Pod);
    let pods = PodIndex::new(&all_pods);
    for rs in rses.iter() {
        let key = obj::key(rs);
        if let Err(error) =
            sync_replica_set(cluster, now, Value::clone(rs), &pods, toleration_seconds)
        {
            super::log_error("replicaset", &key, &error);
        }
    }
}

/// Active pods by controlling owner uid, and the orphans (no controller) by namespace, so a
/// sync looks only at the pods it could own.
struct PodIndex<'a> {
    by_owner: HashMap<&'a str, Vec<&'a Value>>,
    orphans: HashMap<&'a str, Vec<&'a Value>>,
}

impl<'a> PodIndex<'a> {
    fn new(pods: &'a [Arc<Value>]) -> Self {
        let mut index = PodIndex {
            by_owner: HashMap::new(),
            orphans: HashMap::new(),
        };
        for pod in pods.iter().filter(|p| is_pod_active(p)) {
            match obj::controller_uid(pod) {
                Some(uid) => index.by_owner.entry(uid).or_default().push(pod),
                None => {
                    let ns = obj::namespace(pod).unwrap_or("");
                    index.orphans.entry(ns).or_default().push(pod);
                }
            }
        }
        index
    }

    /// The pods `rs` controls or could adopt.
    fn candidates(&self, rs: &Value) -> Vec<Value> {
        let owned = self.by_owner.get(obj::uid(rs)).into_iter().flatten();
        let orphans = self
            .orphans
            .get(obj::namespace(rs).unwrap_or(""))
            .into_iter()
            .flatten();
        owned.chain(orphans).map(|p| (*p).clone()).collect()
    }
}

/// `syncReplicaSet`.
fn sync_replica_set(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    rs: Value,
    pods: &PodIndex<'_>,
    toleration_seconds: u64,
) -> Result<(), ClusterError> {
    let selector = rs.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    if obj::selector_is_empty(&selector) {
        // Validation forbids it; the real controller logs and gives up too.
        return Ok(());
    }
    let filtered_pods = claim_pods(cluster, &rs, &selector, &pods.candidates(&rs))?;
    let manage_result = if obj::is_being_deleted(&rs) {
        Ok(())
    } else {
        manage_replicas(cluster, now, &rs, &filtered_pods, toleration_seconds)
    };
    update_replica_set_status(cluster, now, &rs, &filtered_pods)?;
    manage_result
}

/// `controller.IsPodActive`: not finished and not being deleted.
pub(crate) fn is_pod_active(pod: &Value) -> bool {
    !matches!(
        obj::str_at(pod, &["status", "phase"]),
        Some("Succeeded" | "Failed")
    ) && !obj::is_being_deleted(pod)
}

/// `podutil.IsPodReady`.
pub(crate) fn is_pod_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    obj::condition(pod.pointer("/status/conditions"), "Ready")
}

/// `podutil.IsPodAvailable`: Ready for at least `min_ready_seconds`.
pub(crate) fn is_pod_available(pod: &Value, min_ready_seconds: i64, now: Timestamp) -> bool {
    if !is_pod_ready(pod) {
        return false;
    }
    if min_ready_seconds == 0 {
        return true;
    }
    ready_condition(pod)
        .and_then(|c| obj::time_ms_at(c, &["lastTransitionTime"]))
        .is_some_and(|since| since + min_ready_seconds * 1000 < now.as_millisecond())
}

/// `ClaimPods`: the active pods this RS controls, adopting and releasing as needed.
fn claim_pods(
    cluster: &mut dyn Cluster,
    rs: &Value,
    selector: &Value,
    pods: &[Value],
) -> Result<Vec<Value>, ClusterError> {
    let rs_uid = obj::uid(rs);
    let mut owned = Vec::new();
    for pod in pods {
        let matches = obj::selector_matches(selector, obj::labels_at(pod, &["metadata", "labels"]));
        match obj::controller_uid(pod) {
            Some(uid) if uid == rs_uid => {
                if matches {
                    owned.push(pod.clone());
                } else {
                    let mut released = pod.clone();
                    if let Some(list) = released
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        list.retain(|r| r.get("uid").and_then(Value::as_str) != Some(rs_uid));
                    }
                    cluster.update(Kind::Pod, released)?;
                }
            }
            Some(_) => {}
            None if matches && !obj::is_being_deleted(rs) => {
                let mut adopted = pod.clone();
                let refs = obj::obj_mut(&mut adopted, &["metadata"])
                    .entry("ownerReferences")
                    .or_insert_with(|| json!([]));
                if let Some(list) = refs.as_array_mut() {
                    list.push(obj::controller_ref_to(rs, "apps/v1", "ReplicaSet"));
                }
                owned.push(cluster.update(Kind::Pod, adopted)?);
            }
            None => {}
        }
    }
    Ok(owned)
}

fn event(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    rs: &Value,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let involved = Involved::new(rs, "ReplicaSet", "apps/v1");
    events::record(
        cluster,
        now,
        Source::REPLICASET,
        &involved,
        type_,
        reason,
        message,
    );
}

/// `manageReplicas`: create or delete pods so the RS has `spec.replicas` active pods.
fn manage_replicas(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    rs: &Value,
    filtered_pods: &[Value],
    toleration_seconds: u64,
) -> Result<(), ClusterError> {
    let desired = obj::i64_at(rs, &["spec", "replicas"]).unwrap_or(1).max(0) as usize;
    let active = filtered_pods.len();
    if active < desired {
        let to_create = (desired - active).min(BURST_REPLICAS);
        for n in 0..to_create {
            match create_pod(cluster, now, rs, n, toleration_seconds) {
                Ok(pod) => {
                    let message = format!("Created pod: {}", obj::name(&pod));
                    event(
                        cluster,
                        now,
                        rs,
                        events::NORMAL,
                        "SuccessfulCreate",
                        &message,
                    );
                }
                Err(error) => {
                    let message = format!("Error creating: {error}");
                    event(cluster, now, rs, events::WARNING, "FailedCreate", &message);
                    return Err(error);
                }
            }
        }
    } else if active > desired {
        let diff = (active - desired).min(BURST_REPLICAS);
        for pod in get_pods_to_delete(filtered_pods, filtered_pods, diff, now) {
            match cluster.delete(Kind::Pod, obj::namespace(pod), obj::name(pod)) {
                Ok(()) => {
                    let message = format!("Deleted pod: {}", obj::name(pod));
                    event(
                        cluster,
                        now,
                        rs,
                        events::NORMAL,
                        "SuccessfulDelete",
                        &message,
                    );
                }
                Err(ClusterError::NotFound(_)) => {}
                Err(error) => {
                    let message = format!("Error deleting: {error}");
                    event(cluster, now, rs, events::WARNING, "FailedDelete", &message);
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

/// Creates one pod from the RS template, retrying the name on a clash as generateName would.
fn create_pod(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    rs: &Value,
    n: usize,
    toleration_seconds: u64,
) -> Result<Value, ClusterError> {
    let mut last = None;
    for attempt in 0..8u64 {
        let seed = obj::fnv64a(
            format!("{}|{}|{n}|{attempt}", obj::uid(rs), now.as_nanosecond()).as_bytes(),
        );
        let pod = pod_from_template(rs, seed, toleration_seconds);
        match cluster.create(Kind::Pod, pod) {
            Err(error @ ClusterError::AlreadyExists(_)) => last = Some(error),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| ClusterError::AlreadyExists(obj::key(rs))))
}

/// `GetPodFromTemplate` plus what admission adds (service account, default tolerations).
fn pod_from_template(rs: &Value, seed: u64, toleration_seconds: u64) -> Value {
    let template = rs
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    // generateName keeps names within 63 characters.
    let mut base = format!("{}-", obj::name(rs));
    base.truncate(58);
    let name = format!("{base}{}", obj::safe_suffix(seed, 5));
    let mut metadata = json!({
        "name": name,
        "generateName": format!("{}-", obj::name(rs)),
        "namespace": obj::namespace(rs).unwrap_or("default"),
        "ownerReferences": [obj::controller_ref_to(rs, "apps/v1", "ReplicaSet")],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template
            .pointer(&format!("/metadata/{field}"))
            .filter(|v| !v.is_null())
        {
            metadata[field] = v.clone();
        }
    }
    let mut spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    add_admission_defaults(&mut spec, toleration_seconds);
    let qos = qos_class(&spec);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": qos},
    })
}

/// ServiceAccount and DefaultTolerationSeconds admission.
fn add_admission_defaults(spec: &mut Value, toleration_seconds: u64) {
    let map = obj::obj_mut(spec, &[]);
    map.entry("serviceAccountName")
        .or_insert_with(|| json!("default"));
    let sa = map["serviceAccountName"].clone();
    map.entry("serviceAccount").or_insert(sa);
    let tolerations = map.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !list
                .iter()
                .any(|t| t.get("key").and_then(Value::as_str) == Some(key))
            {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": toleration_seconds}));
            }
        }
    }
}

/// The pod QoS class from its containers' resources.
fn qos_class(spec: &Value) -> &'static str {
    let containers = spec.get("containers").and_then(Value::as_array);
    let Some(containers) = containers else {
        return "BestEffort";
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        let full = ["cpu", "memory"].iter().all(|r| {
            let limit = limits.and_then(|l| l.get(*r));
            let request = requests.and_then(|q| q.get(*r)).or(limit);
            limit.is_some() && request == limit
        });
        guaranteed &= full;
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// `getPodsToDelete`: the `diff` pods ranked first by `ActivePodsWithRanks` (unassigned,
/// pending, not ready, cheaper, doubled up on a node, ready for less time, more restarts,
/// newer). "Doubled up" counts `related_pods` per node; upstream counts the pods of every
/// ReplicaSet of the same owner, kubesim those of the ReplicaSet itself.
fn get_pods_to_delete<'a>(
    filtered_pods: &'a [Value],
    related_pods: &[Value],
    diff: usize,
    now: Timestamp,
) -> Vec<&'a Value> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for pod in related_pods.iter().filter(|p| is_pod_active(p)) {
        if let Some(node) = obj::str_at(pod, &["spec", "nodeName"]) {
            *on_node.entry(node).or_default() += 1;
        }
    }
    let mut ranked: Vec<&Value> = filtered_pods.iter().collect();
    ranked.sort_by_key(|pod| {
        let node = obj::str_at(pod, &["spec", "nodeName"]).unwrap_or("");
        let phase_rank = match obj::str_at(pod, &["status", "phase"]) {
            Some("Pending") => 0,
            Some("Unknown") => 1,
            Some("Running") => 2,
            _ => 0,
        };
        let cost: i64 = obj::annotation(pod, POD_DELETION_COST)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let ready = is_pod_ready(pod);
        let ready_since = ready_condition(pod)
            .and_then(|c| obj::time_ms_at(c, &["lastTransitionTime"]))
            .unwrap_or(now.as_millisecond());
        let restarts: i64 = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .map_or(0, |cs| {
                cs.iter()
                    .filter_map(|c| c.get("restartCount")?.as_i64())
                    .sum()
            });
        (
            !node.is_empty(),
            phase_rank,
            ready,
            cost,
            Reverse(if node.is_empty() {
                0
            } else {
                on_node.get(node).copied().unwrap_or(0)
            }),
            Reverse(if ready { ready_since } else { i64::MAX }),
            Reverse(restarts),
            Reverse(obj::creation_key(pod)),
        )
    });
    ranked.truncate(diff);
    ranked
}

/// `calculateStatus` + `updateReplicaSetStatus`.
fn update_replica_set_status(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    rs: &Value,
    filtered_pods: &[Value],
) -> Result<(), ClusterError> {
    let template_labels = rs.pointer("/spec/template/metadata/labels").cloned();
    let min_ready = obj::i64_at(rs, &["spec", "minReadySeconds"]).unwrap_or(0);
    let mut fully_labeled = 0;
    let mut ready = 0;
    let mut available = 0;
    for pod in filtered_pods {
        let template_selector =
            json!({"matchLabels": template_labels.clone().unwrap_or_else(|| json!({}))});
        if obj::selector_matches(
            &template_selector,
            obj::labels_at(pod, &["metadata", "labels"]),
        ) {
            fully_labeled += 1;
        }
        if is_pod_ready(pod) {
            ready += 1;
            if is_pod_available(pod, min_ready, now) {
                available += 1;
            }
        }
    }
    let old_status = rs.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut status = json!({"replicas": filtered_pods.len()});
    for (k, n) in [
        ("fullyLabeledReplicas", fully_labeled),
        ("readyReplicas", ready),
        ("availableReplicas", available),
    ] {
        if n != 0 {
            status[k] = json!(n);
        }
    }
    if obj::generation(rs) != 0 {
        status["observedGeneration"] = json!(obj::generation(rs));
    }
    if let Some(conditions) = old_status.get("conditions").filter(|c| !c.is_null()) {
        status["conditions"] = conditions.clone();
    }
    if obj::status_eq(&old_status, &status) && old_status.get("replicas").is_some() {
        return Ok(());
    }
    let mut updated = rs.clone();
    updated["status"] = status;
    cluster.update_status(Kind::ReplicaSet, updated).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastTransitionTime": created}]}
        });
        if let Some(node) = node {
            p["spec"]["nodeName"] = json!(node);
        }
        p
    }

    #[test]
    fn deletion_prefers_unassigned_pending_not_ready_then_newest() {
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let pods = vec![
            pod(
                "ready-old",
                Some("n1"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "ready-new",
                Some("n1"),
                "Running",
                true,
                "2026-01-01T00:30:00Z",
            ),
            pod(
                "not-ready",
                Some("n1"),
                "Running",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n1"),
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod("unassigned", None, "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        let names: Vec<&str> = get_pods_to_delete(&pods, &pods, 4, now)
            .into_iter()
            .map(obj::name)
            .collect();
        assert_eq!(names, ["unassigned", "pending", "not-ready", "ready-new"]);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let p = pod("p", Some("n"), "Running", true, "2026-01-01T00:00:00Z");
        assert!(is_pod_available(&p, 0, now));
        assert!(is_pod_available(&p, 9, now));
        assert!(!is_pod_available(&p, 10, now));
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(&b), "Burstable");
    }
}
