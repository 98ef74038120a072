//! The Deployment controller's helpers, one function per upstream helper in
//! `pkg/controller/deployment/util/deployment_util.go` (plus `controller.ComputeHash`), under the
//! same names in snake case so the two can be read side by side.
//!
//! Start with [`DeploymentSpec::from_deployment`] (what the controller reads of a Deployment),
//! then [`compute_hash`] / [`equal_ignore_hash`] (ReplicaSet identity) and
//! [`set_new_replica_set_annotations`] (revision bookkeeping).

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::obj;

/// `deployment.kubernetes.io/revision`.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// `deployment.kubernetes.io/revision-history`: earlier revisions of a re-used ReplicaSet.
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// `deployment.kubernetes.io/desired-replicas`.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// `deployment.kubernetes.io/max-replicas`.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// The label that ties a ReplicaSet and its pods to one pod template.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// `revision-history` is capped at this many characters, dropping the oldest entries.
pub const MAX_REV_HISTORY_LENGTH_IN_CHARS: usize = 2000;

/// Deployment annotations never copied to ReplicaSets (`skipCopyAnnotation`).
const SKIP_COPY_ANNOTATIONS: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];

// Condition reasons (`deployment_util.go` constants).
pub const NEW_RS_REASON: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS_REASON: &str = "FoundNewReplicaSet";
pub const RS_UPDATED_REASON: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE_REASON: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT_REASON: &str = "ProgressDeadlineExceeded";
pub const PAUSED_DEPLOY_REASON: &str = "DeploymentPaused";
pub const RESUMED_DEPLOY_REASON: &str = "DeploymentResumed";
pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// The deployment strategy, with the apps/v1 defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Recreate,
    RollingUpdate {
        max_surge: Value,
        max_unavailable: Value,
    },
}

/// What the controller reads of a Deployment's spec, defaulted as apps/v1 defaults it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSpec {
    pub replicas: i32,
    pub paused: bool,
    pub min_ready_seconds: i32,
    /// `None` keeps every old ReplicaSet.
    pub revision_history_limit: Option<i32>,
    /// `None` (or `i32::MAX`) disables progress estimation.
    pub progress_deadline_seconds: Option<i32>,
    pub strategy: Strategy,
}

impl DeploymentSpec {
    /// Reads `spec`, filling in what the apiserver would have defaulted.
    pub fn from_deployment(d: &Value) -> Self {
        let spec = d.get("spec").unwrap_or(&Value::Null);
        let strategy = match obj::str_at(spec, &["strategy", "type"]) {
            Some("Recreate") => Strategy::Recreate,
            _ => {
                let ru = obj::at(spec, &["strategy", "rollingUpdate"]);
                let field = |k: &str| {
                    ru.and_then(|ru| ru.get(k))
                        .filter(|v| !v.is_null())
                        .cloned()
                        .unwrap_or_else(|| json!("25%"))
                };
                Strategy::RollingUpdate {
                    max_surge: field("maxSurge"),
                    max_unavailable: field("maxUnavailable"),
                }
            }
        };
        let opt_int = |k: &str, default: i64| match spec.get(k) {
            Some(Value::Null) | None => Some(default),
            Some(v) => v.as_i64(),
        };
        Self {
            replicas: spec
                .get("replicas")
                .and_then(Value::as_i64)
                .map_or(1, |n| n as i32),
            paused: obj::bool_at(spec, &["paused"]),
            min_ready_seconds: obj::int_at(spec, &["minReadySeconds"]),
            revision_history_limit: opt_int("revisionHistoryLimit", 10).map(|n| n as i32),
            progress_deadline_seconds: opt_int("progressDeadlineSeconds", 600).map(|n| n as i32),
            strategy,
        }
    }

    pub fn is_rolling_update(&self) -> bool {
        matches!(self.strategy, Strategy::RollingUpdate { .. })
    }

    /// `HasProgressDeadline`.
    pub fn has_progress_deadline(&self) -> bool {
        self.progress_deadline_seconds
            .is_some_and(|s| s != i32::MAX)
    }
}

/// `intstr.GetScaledValueFromIntOrPercent`: an int as is, `"N%"` of `total` rounded up or down.
/// Anything else is 0 (validation rejects it before it gets here).
pub fn get_scaled_value_from_int_or_percent(v: &Value, total: i32, round_up: bool) -> i32 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0) as i32,
        Value::String(s) => {
            let Some(pct) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return 0;
            };
            let scaled = pct * i64::from(total);
            let value = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            value as i32
        }
        _ => 0,
    }
}

/// `ResolveFenceposts`: surge rounded up, unavailable rounded down, never both zero.
pub fn resolve_fenceposts(max_surge: &Value, max_unavailable: &Value, desired: i32) -> (i32, i32) {
    let surge = get_scaled_value_from_int_or_percent(max_surge, desired, true);
    let mut unavailable = get_scaled_value_from_int_or_percent(max_unavailable, desired, false);
    if surge == 0 && unavailable == 0 {
        // Rounding can make both zero; surge may be blocked by quota, so allow one unavailable.
        unavailable = 1;
    }
    (surge, unavailable)
}

/// `MaxSurge`: 0 for Recreate.
pub fn max_surge(spec: &DeploymentSpec) -> i32 {
    match &spec.strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => resolve_fenceposts(max_surge, max_unavailable, spec.replicas).0,
        Strategy::Recreate => 0,
    }
}

/// `MaxUnavailable`: 0 for Recreate or zero replicas, capped at replicas.
pub fn max_unavailable(spec: &DeploymentSpec) -> i32 {
    match &spec.strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } if spec.replicas > 0 => {
            let (_, unavailable) = resolve_fenceposts(max_surge, max_unavailable, spec.replicas);
            unavailable.min(spec.replicas)
        }
        _ => 0,
    }
}

/// A pod template without `pod-template-hash` in its labels, pruned of null/empty values.
fn template_without_hash(template: &Value) -> Option<Value> {
    let mut t = template.clone();
    if let Some(labels) = t
        .get_mut("metadata")
        .and_then(|m| m.get_mut("labels"))
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    obj::prune(&t, false)
}

/// `controller.ComputeHash`: FNV-32a over the template (canonical JSON instead of Go's spew dump)
/// plus the collision count, encoded with `rand.SafeEncodeString`.
pub fn compute_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut canonical = String::new();
    if let Some(t) = template_without_hash(template) {
        obj::canonical_json(&t, &mut canonical);
    }
    let mut bytes = canonical.into_bytes();
    if let Some(count) = collision_count {
        // Go writes an 8-byte buffer holding the count as little-endian uint32.
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(&buf);
    }
    obj::safe_encode(&obj::fnv32a(&bytes).to_string())
}

/// `EqualIgnoreHash`: semantic equality of two pod templates, ignoring `pod-template-hash`.
pub fn equal_ignore_hash(t1: &Value, t2: &Value) -> bool {
    template_without_hash(t1) == template_without_hash(t2)
}

/// `Revision`: a ReplicaSet's revision annotation, 0 when absent or malformed.
pub fn revision(rs: &Value) -> i64 {
    obj::annotation(rs, REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `MaxRevision`.
pub fn max_revision(rses: &[Value]) -> i64 {
    rses.iter().map(revision).max().unwrap_or(0)
}

/// `spec.replicas` of a ReplicaSet (a pointer defaulted to 1).
pub fn rs_replicas(rs: &Value) -> i32 {
    obj::i64_at(rs, &["spec", "replicas"]).map_or(1, |n| n as i32)
}

/// `FindNewReplicaSet`: the oldest ReplicaSet whose template equals the Deployment's.
pub fn find_new_replica_set(d: &Value, rses: &[Value]) -> Option<usize> {
    let template = d.pointer("/spec/template").unwrap_or(&Value::Null);
    let mut indices: Vec<usize> = (0..rses.len()).collect();
    indices.sort_by_key(|&i| obj::creation_key(&rses[i]));
    indices.into_iter().find(|&i| {
        equal_ignore_hash(
            rses[i].pointer("/spec/template").unwrap_or(&Value::Null),
            template,
        )
    })
}

/// `copyDeploymentAnnotationsToReplicaSet`.
fn copy_deployment_annotations_to_replica_set(d: &Value, rs: &mut Value) -> bool {
    let Some(annotations) = obj::at(d, &["metadata", "annotations"]).and_then(Value::as_object)
    else {
        return false;
    };
    let mut changed = false;
    let rs_annotations = obj::obj_mut(rs, &["metadata", "annotations"]);
    for (k, v) in annotations {
        if SKIP_COPY_ANNOTATIONS.contains(&k.as_str()) || rs_annotations.get(k) == Some(v) {
            continue;
        }
        rs_annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, raises the revision (and
/// records the old one in `revision-history` when this is a rollback to an existing RS) and, for
/// a ReplicaSet about to be created, sets the replicas annotations. Returns whether it changed.
pub fn set_new_replica_set_annotations(
    d: &Value,
    spec: &DeploymentSpec,
    rs: &mut Value,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = copy_deployment_annotations_to_replica_set(d, rs);
    let annotations = obj::obj_mut(rs, &["metadata", "annotations"]);
    let old_revision = annotations
        .get(REVISION_ANNOTATION)
        .and_then(Value::as_str)
        .map(str::to_owned);
    let old_revision_int = match &old_revision {
        None => 0,
        Some(r) => match r.parse::<i64>() {
            Ok(n) => n,
            Err(_) if r.is_empty() => 0,
            Err(_) => return false,
        },
    };
    if old_revision_int < new_revision {
        annotations.insert(
            REVISION_ANNOTATION.to_owned(),
            json!(new_revision.to_string()),
        );
        changed = true;
        if let Some(old) = old_revision {
            append_revision_history(annotations, &old);
        }
    }
    if !exists && set_replicas_annotations(rs, spec.replicas, spec.replicas + max_surge(spec)) {
        changed = true;
    }
    changed
}

/// Appends `old` to `revision-history`, dropping the oldest entries beyond the length cap.
fn append_revision_history(annotations: &mut Map<String, Value>, old: &str) {
    let history = annotations
        .get(REVISION_HISTORY_ANNOTATION)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if history.is_empty() {
        annotations.insert(REVISION_HISTORY_ANNOTATION.to_owned(), json!(old));
        return;
    }
    let entries: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + old.len() + 1;
    let mut start = 0;
    while total > MAX_REV_HISTORY_LENGTH_IN_CHARS && start < entries.len() {
        total -= entries[start].len() + 1;
        start += 1;
    }
    if total <= MAX_REV_HISTORY_LENGTH_IN_CHARS {
        let mut kept: Vec<&str> = entries[start..].to_vec();
        kept.push(old);
        annotations.insert(
            REVISION_HISTORY_ANNOTATION.to_owned(),
            json!(kept.join(",")),
        );
    }
}

/// `SetReplicasAnnotations`: desired-replicas and max-replicas; returns whether they changed.
pub fn set_replicas_annotations(rs: &mut Value, desired: i32, max: i32) -> bool {
    if !replicas_annotations_need_update(rs, desired, max) {
        return false;
    }
    obj::set_annotation(rs, DESIRED_REPLICAS_ANNOTATION, &desired.to_string());
    obj::set_annotation(rs, MAX_REPLICAS_ANNOTATION, &max.to_string());
    true
}

/// `ReplicasAnnotationsNeedUpdate`.
pub fn replicas_annotations_need_update(rs: &Value, desired: i32, max: i32) -> bool {
    obj::annotation(rs, DESIRED_REPLICAS_ANNOTATION) != Some(desired.to_string().as_str())
        || obj::annotation(rs, MAX_REPLICAS_ANNOTATION) != Some(max.to_string().as_str())
}

/// `GetDesiredReplicasAnnotation`.
pub fn get_desired_replicas_annotation(rs: &Value) -> Option<i32> {
    obj::annotation(rs, DESIRED_REPLICAS_ANNOTATION).and_then(|v| v.parse().ok())
}

/// `getMaxReplicasAnnotation`.
fn get_max_replicas_annotation(rs: &Value) -> Option<i32> {
    obj::annotation(rs, MAX_REPLICAS_ANNOTATION).and_then(|v| v.parse().ok())
}

/// `GetReplicaCountForReplicaSets`: the sum of `spec.replicas`.
pub fn get_replica_count_for_replica_sets<'a>(rses: impl IntoIterator<Item = &'a Value>) -> i32 {
    rses.into_iter().map(rs_replicas).sum()
}

/// `GetActualReplicaCountForReplicaSets`: the sum of `status.replicas`.
pub fn get_actual_replica_count_for_replica_sets<'a>(
    rses: impl IntoIterator<Item = &'a Value>,
) -> i32 {
    rses.into_iter()
        .map(|rs| obj::int_at(rs, &["status", "replicas"]))
        .sum()
}

/// `GetReadyReplicaCountForReplicaSets`.
pub fn get_ready_replica_count_for_replica_sets<'a>(
    rses: impl IntoIterator<Item = &'a Value>,
) -> i32 {
    rses.into_iter()
        .map(|rs| obj::int_at(rs, &["status", "readyReplicas"]))
        .sum()
}

/// `GetAvailableReplicaCountForReplicaSets`.
pub fn get_available_replica_count_for_replica_sets<'a>(
    rses: impl IntoIterator<Item = &'a Value>,
) -> i32 {
    rses.into_iter()
        .map(|rs| obj::int_at(rs, &["status", "availableReplicas"]))
        .sum()
}

/// `IsSaturated`: the new RS has all the replicas, all available.
pub fn is_saturated(spec: &DeploymentSpec, rs: Option<&Value>) -> bool {
    let Some(rs) = rs else { return false };
    let Some(desired) = get_desired_replicas_annotation(rs) else {
        return false;
    };
    rs_replicas(rs) == spec.replicas
        && desired == spec.replicas
        && obj::int_at(rs, &["status", "availableReplicas"]) == spec.replicas
}

/// `NewRSNewReplicas`: how big the new RS may be now.
pub fn new_rs_new_replicas(spec: &DeploymentSpec, all_rses: &[&Value], new_rs: &Value) -> i32 {
    match &spec.strategy {
        Strategy::RollingUpdate { max_surge, .. } => {
            let max_surge = get_scaled_value_from_int_or_percent(max_surge, spec.replicas, true);
            let current_pod_count = get_replica_count_for_replica_sets(all_rses.iter().copied());
            let max_total_pods = spec.replicas + max_surge;
            if current_pod_count >= max_total_pods {
                return rs_replicas(new_rs);
            }
            let scale_up_count =
                (max_total_pods - current_pod_count).min(spec.replicas - rs_replicas(new_rs));
            rs_replicas(new_rs) + scale_up_count
        }
        Strategy::Recreate => spec.replicas,
    }
}

/// `getReplicaSetFraction`: this RS's share of a proportional scale.
fn get_replica_set_fraction(rs: &Value, spec: &DeploymentSpec, status_replicas: i32) -> i32 {
    if spec.replicas == 0 {
        return -rs_replicas(rs);
    }
    let deployment_max_replicas = spec.replicas + max_surge(spec);
    let before = match get_max_replicas_annotation(rs) {
        Some(n) if n != 0 => n,
        // The user changed the size by hand: fall back to the current size.
        _ => status_replicas,
    };
    if before == 0 {
        return 0;
    }
    let new_size =
        f64::from(rs_replicas(rs)) * f64::from(deployment_max_replicas) / f64::from(before);
    // integer.RoundToInt32 rounds half away from zero, as f64::round does.
    new_size.round() as i32 - rs_replicas(rs)
}

/// `GetReplicaSetProportion`.
pub fn get_replica_set_proportion(
    rs: &Value,
    spec: &DeploymentSpec,
    status_replicas: i32,
    to_add: i32,
    added: i32,
) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = get_replica_set_fraction(rs, spec, status_replicas);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// `DeploymentComplete`.
pub fn deployment_complete(d: &Value, spec: &DeploymentSpec, new_status: &Value) -> bool {
    obj::int_at(new_status, &["updatedReplicas"]) == spec.replicas
        && obj::int_at(new_status, &["replicas"]) == spec.replicas
        && obj::int_at(new_status, &["availableReplicas"]) == spec.replicas
        && obj::i64_at(new_status, &["observedGeneration"]).unwrap_or(0) >= obj::generation(d)
}

/// `DeploymentProgressing`: more updated, fewer old, more ready or more available replicas.
pub fn deployment_progressing(d: &Value, new_status: &Value) -> bool {
    let old = d.get("status").unwrap_or(&Value::Null);
    let f = |s: &Value, k: &str| obj::int_at(s, &[k]);
    let old_old = f(old, "replicas") - f(old, "updatedReplicas");
    let new_old = f(new_status, "replicas") - f(new_status, "updatedReplicas");
    f(new_status, "updatedReplicas") > f(old, "updatedReplicas")
        || new_old < old_old
        || f(new_status, "readyReplicas") > f(old, "readyReplicas")
        || f(new_status, "availableReplicas") > f(old, "availableReplicas")
}

/// `DeploymentTimedOut`: no progress for `progressDeadlineSeconds` since the Progressing
/// condition's `lastUpdateTime`.
pub fn deployment_timed_out(spec: &DeploymentSpec, new_status: &Value, now: Timestamp) -> bool {
    if !spec.has_progress_deadline() {
        return false;
    }
    let Some(cond) = get_condition(new_status, "Progressing") else {
        return false;
    };
    match obj::str_at(cond, &["reason"]) {
        Some(NEW_RS_AVAILABLE_REASON) => return false,
        Some(TIMED_OUT_REASON) => return true,
        _ => {}
    }
    let Some(from) = obj::time_ms_at(cond, &["lastUpdateTime"]) else {
        return false;
    };
    let deadline_ms = i64::from(spec.progress_deadline_seconds.unwrap_or(0)) * 1000;
    from + deadline_ms < now.as_millisecond()
}

/// `GetDeploymentCondition` on a status object.
pub fn get_condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    obj::condition(status.get("conditions"), type_)
}

/// `NewDeploymentCondition`.
pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Value {
    let t = obj::fmt_time(now);
    json!({
        "type": type_,
        "status": status,
        "lastUpdateTime": t,
        "lastTransitionTime": t,
        "reason": reason,
        "message": message,
    })
}

/// `SetDeploymentCondition`: replaces the condition of that type (appending it last), unless
/// status and reason are unchanged; keeps `lastTransitionTime` when the status did not flip.
pub fn set_condition(status: &mut Value, mut condition: Value) {
    let type_ = condition["type"].as_str().unwrap_or("").to_owned();
    if let Some(current) = get_condition(status, &type_) {
        if current.get("status") == condition.get("status")
            && current.get("reason") == condition.get("reason")
        {
            return;
        }
        if current.get("status") == condition.get("status") {
            condition["lastTransitionTime"] = current["lastTransitionTime"].clone();
        }
    }
    remove_condition(status, &type_);
    let conditions = obj::obj_mut(status, &[])
        .entry("conditions")
        .or_insert_with(|| json!([]));
    if let Some(list) = conditions.as_array_mut() {
        list.push(condition);
    } else {
        *conditions = json!([condition]);
    }
}

/// `RemoveDeploymentCondition`.
pub fn remove_condition(status: &mut Value, type_: &str) {
    if let Some(list) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        list.retain(|c| c.get("type").and_then(Value::as_str) != Some(type_));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(replicas: i32, surge: Value, unavailable: Value) -> DeploymentSpec {
        DeploymentSpec::from_deployment(&json!({"spec": {
            "replicas": replicas,
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
        }}))
    }

    #[test]
    fn fenceposts_round_like_upstream() {
        // 25% of 3: surge rounds up to 1, unavailable rounds down to 0.
        let s = spec(3, json!("25%"), json!("25%"));
        assert_eq!((max_surge(&s), max_unavailable(&s)), (1, 0));
        // 25% of 10: surge 3, unavailable 2.
        let s = spec(10, json!("25%"), json!("25%"));
        assert_eq!((max_surge(&s), max_unavailable(&s)), (3, 2));
        // Both resolve to zero: one unavailable is allowed.
        let s = spec(3, json!(0), json!("10%"));
        assert_eq!((max_surge(&s), max_unavailable(&s)), (0, 1));
        // Unavailable capped at replicas.
        let s = spec(2, json!(1), json!(5));
        assert_eq!(max_unavailable(&s), 2);
        let recreate = DeploymentSpec::from_deployment(
            &json!({"spec": {"replicas": 3, "strategy": {"type": "Recreate"}}}),
        );
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
    }

    #[test]
    fn defaults_follow_apps_v1() {
        let s = DeploymentSpec::from_deployment(&json!({"spec": {}}));
        assert_eq!(s.replicas, 1);
        assert_eq!(s.revision_history_limit, Some(10));
        assert_eq!(s.progress_deadline_seconds, Some(600));
        assert!(s.is_rolling_update());
    }

    #[test]
    fn hash_ignores_the_hash_label_and_empty_values_and_uses_collision_count() {
        let t1 = json!({"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "nginx:1.0"}]}});
        let t2 = json!({"metadata": {"creationTimestamp": null,
                                     "labels": {"app": "web", "pod-template-hash": "abc"}},
                        "spec": {"containers": [{"name": "app", "image": "nginx:1.0", "resources": {}}]}});
        let h = compute_hash(&t1, None);
        assert_eq!(h, compute_hash(&t2, None));
        assert!(h.bytes().all(|b| b"456789bcdf".contains(&b)), "{h}");
        assert!(equal_ignore_hash(&t1, &t2));
        assert_ne!(h, compute_hash(&t1, Some(1)));
        let t3 = json!({"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "nginx:2.0"}]}});
        assert!(!equal_ignore_hash(&t1, &t3));
        assert_ne!(h, compute_hash(&t3, None));
    }

    #[test]
    fn rollback_records_revision_history() {
        let d = json!({"metadata": {"annotations": {
            "kubernetes.io/change-cause": "undo",
            "deployment.kubernetes.io/revision": "2",
            "kubectl.kubernetes.io/last-applied-configuration": "{}"}}});
        let s = DeploymentSpec::from_deployment(&json!({"spec": {"replicas": 3}}));
        let mut rs = json!({"metadata": {"annotations": {REVISION_ANNOTATION: "1"}}});
        assert!(set_new_replica_set_annotations(&d, &s, &mut rs, 3, true));
        assert_eq!(obj::annotation(&rs, REVISION_ANNOTATION), Some("3"));
        assert_eq!(obj::annotation(&rs, REVISION_HISTORY_ANNOTATION), Some("1"));
        assert_eq!(
            obj::annotation(&rs, "kubernetes.io/change-cause"),
            Some("undo")
        );
        assert_eq!(
            obj::annotation(&rs, "kubectl.kubernetes.io/last-applied-configuration"),
            None
        );
        // Nothing to do the second time.
        assert!(!set_new_replica_set_annotations(&d, &s, &mut rs, 3, true));
        assert!(set_new_replica_set_annotations(&d, &s, &mut rs, 5, true));
        assert_eq!(
            obj::annotation(&rs, REVISION_HISTORY_ANNOTATION),
            Some("1,3")
        );
    }

    #[test]
    fn revision_history_is_capped_dropping_the_oldest() {
        let mut annotations = Map::new();
        let long: Vec<String> = (0..700).map(|i| i.to_string()).collect();
        annotations.insert(
            REVISION_HISTORY_ANNOTATION.to_owned(),
            json!(long.join(",")),
        );
        append_revision_history(&mut annotations, "9999");
        let h = annotations[REVISION_HISTORY_ANNOTATION].as_str().unwrap();
        assert!(h.len() <= MAX_REV_HISTORY_LENGTH_IN_CHARS);
        assert!(h.ends_with(",9999"));
        assert!(!h.starts_with("0,"));
    }

    #[test]
    fn conditions_keep_transition_time_when_status_holds() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let mut status = json!({});
        set_condition(
            &mut status,
            new_condition("Progressing", "True", NEW_RS_REASON, "a", t0),
        );
        set_condition(
            &mut status,
            new_condition("Available", "True", MINIMUM_REPLICAS_AVAILABLE, "b", t0),
        );
        set_condition(
            &mut status,
            new_condition("Progressing", "True", RS_UPDATED_REASON, "c", t1),
        );
        let conds = status["conditions"].as_array().unwrap();
        assert_eq!(conds[0]["type"], "Available");
        assert_eq!(conds[1]["reason"], RS_UPDATED_REASON);
        assert_eq!(conds[1]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(conds[1]["lastUpdateTime"], "2026-01-01T00:01:00Z");
    }

    #[test]
    fn proportions_follow_the_max_replicas_annotation() {
        // 10 replicas, 25% surge → 13 max; an RS of 6 annotated with max 10 grows to 8 (6*13/10=7.8).
        let s = spec(10, json!("25%"), json!("25%"));
        let rs = json!({"metadata": {"annotations": {MAX_REPLICAS_ANNOTATION: "10"}},
                        "spec": {"replicas": 6}});
        assert_eq!(get_replica_set_proportion(&rs, &s, 10, 5, 0), 2);
        assert_eq!(get_replica_set_proportion(&rs, &s, 10, 1, 0), 1);
    }
}
