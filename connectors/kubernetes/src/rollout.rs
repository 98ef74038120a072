//! Pure Deployment rollout logic, ported from kubectl so that firebreak's actions decide
//! exactly as `kubectl rollout undo | status | history` do. No I/O here.
//!
//! Start at [`plan_rollback`] (kubectl `polymorphichelpers/rollback.go`) and [`status`]
//! (kubectl `polymorphichelpers/rollout_status.go`). Templates are compared the way the
//! Deployment controller does ([`equal_ignore_hash`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// The label the Deployment controller adds to each ReplicaSet's template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The revision annotation on Deployments and ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The annotation `kubectl rollout restart` sets on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The annotation whose value `rollout history` shows.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// Deployment annotations a rollback keeps from the Deployment rather than taking from the
/// ReplicaSet (kubectl `annotationsToSkip`).
pub const ANNOTATIONS_TO_SKIP: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// Why a rollback cannot be planned. The messages are kubectl's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("no rollout history found for deployment \"{0}\"")]
    NoHistory(String),
    #[error("unable to find specified revision {0} in history")]
    RevisionNotFound(i64),
    #[error(
        "you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume' and try again"
    )]
    Paused,
}

/// What a rollback will write, computed from the Deployment and its ReplicaSets.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackPlan {
    /// The target's template already is the Deployment's: nothing to write (kubectl prints
    /// "skipped rollback").
    Skip { revision: i64 },
    /// Replace the template and the annotations.
    Apply {
        /// The revision of the ReplicaSet rolled back to.
        revision: i64,
        /// The target template without `pod-template-hash`.
        template: Box<PodTemplateSpec>,
        /// The Deployment's annotations after the rollback.
        annotations: BTreeMap<String, String>,
    },
}

/// The revision of a Deployment or ReplicaSet; a missing annotation counts as 0, like kubectl.
/// `None` when the annotation is not a number (kubectl skips such ReplicaSets).
pub fn revision_of(annotations: Option<&BTreeMap<String, String>>) -> Option<i64> {
    match annotations.and_then(|a| a.get(REVISION)) {
        None => Some(0),
        Some(v) => v.parse().ok(),
    }
}

/// The ReplicaSets whose controller ownerReference is this Deployment (by uid), as
/// `metav1.IsControlledBy`. The input is expected to be the list matching the selector.
pub fn owned_replicasets(deployment: &Deployment, all: Vec<ReplicaSet>) -> Vec<ReplicaSet> {
    let Some(uid) = deployment.metadata.uid.as_deref() else {
        return Vec::new();
    };
    all.into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid && o.kind == "Deployment")
        })
        .collect()
}

/// Chooses the ReplicaSet to roll back to, as kubectl's `deploymentRevision`: with
/// `to_revision == 0` the second-highest revision among all owned ReplicaSets, otherwise
/// the one with exactly that revision.
pub fn select_target<'a>(
    deployment_name: &str,
    owned: &'a [ReplicaSet],
    to_revision: i64,
) -> Result<&'a ReplicaSet, RollbackError> {
    if to_revision < 0 {
        return Err(RollbackError::RevisionNotFound(to_revision));
    }
    let mut latest: Option<(i64, &ReplicaSet)> = None;
    let mut previous: Option<(i64, &ReplicaSet)> = None;
    for rs in owned {
        let Some(v) = revision_of(rs.metadata.annotations.as_ref()) else {
            continue;
        };
        if to_revision == 0 {
            if latest.is_none_or(|(l, _)| l < v) {
                previous = latest;
                latest = Some((v, rs));
            } else if previous.is_none_or(|(p, _)| p < v) {
                previous = Some((v, rs));
            }
        } else if v == to_revision {
            return Ok(rs);
        }
    }
    if to_revision > 0 {
        return Err(RollbackError::RevisionNotFound(to_revision));
    }
    previous
        .map(|(_, rs)| rs)
        .ok_or_else(|| RollbackError::NoHistory(deployment_name.to_owned()))
}

/// Plans `kubectl rollout undo [--to-revision=N]`: picks the target, refuses paused
/// Deployments, skips when nothing would change, and otherwise computes the template (minus
/// `pod-template-hash`) and annotations kubectl writes.
pub fn plan_rollback(
    deployment: &Deployment,
    owned: &[ReplicaSet],
    to_revision: i64,
) -> Result<RollbackPlan, RollbackError> {
    let name = deployment.metadata.name.as_deref().unwrap_or_default();
    let target = select_target(name, owned, to_revision)?;
    let revision = revision_of(target.metadata.annotations.as_ref()).unwrap_or_default();
    if deployment.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        return Err(RollbackError::Paused);
    }
    let target_template = target
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let current = deployment
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    if equal_ignore_hash(&target_template, &current) {
        return Ok(RollbackPlan::Skip { revision });
    }
    let mut template = target_template;
    if let Some(meta) = template.metadata.as_mut()
        && let Some(labels) = meta.labels.as_mut()
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    let mut annotations = BTreeMap::new();
    let current_annotations = deployment.metadata.annotations.clone().unwrap_or_default();
    for key in ANNOTATIONS_TO_SKIP {
        if let Some(v) = current_annotations.get(key) {
            annotations.insert(key.to_owned(), v.clone());
        }
    }
    for (k, v) in target.metadata.annotations.iter().flatten() {
        if !ANNOTATIONS_TO_SKIP.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    Ok(RollbackPlan::Apply {
        revision,
        template: Box::new(template),
        annotations,
    })
}

/// Semantic equality of two pod templates ignoring `pod-template-hash`, where null, empty
/// and absent are the same (the controller's `EqualIgnoreHash` after API defaulting).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    normalized(a) == normalized(b)
}

fn normalized(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    if let Some(meta) = v.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        meta.remove("creationTimestamp");
    }
    prune_empty(&mut v);
    v
}

/// A digest of a pod template as the controller compares templates (without
/// `pod-template-hash`, null/empty/absent alike): equal templates, equal digests.
pub fn template_digest(t: Option<&PodTemplateSpec>) -> String {
    match t {
        Some(t) => json_digest(&normalized(t)),
        None => json_digest(&Value::Null),
    }
}

/// A short hex digest of a JSON value where null, empty and absent are the same.
pub fn json_digest(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut v = v.clone();
    prune_empty(&mut v);
    let digest = Sha256::digest(serde_json::to_vec(&v).unwrap_or_default());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Semantic JSON equality where null, empty and absent are the same.
pub fn same_json(a: &Value, b: &Value) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    prune_empty(&mut a);
    prune_empty(&mut b);
    a == b
}

/// Removes nulls, empty objects and empty arrays, recursively.
fn prune_empty(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(map) => {
            map.retain(|_, child| !prune_empty(child));
            map.is_empty()
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                prune_empty(item);
            }
            items.is_empty()
        }
        _ => false,
    }
}

/// The container images of a template, as `name=image`, in order.
pub fn images(template: Option<&PodTemplateSpec>) -> Vec<String> {
    template
        .and_then(|t| t.spec.as_ref())
        .map(|s| {
            s.containers
                .iter()
                .map(|c| format!("{}={}", c.name, c.image.as_deref().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// The Deployment's images, as `name=image`.
pub fn deployment_images(d: &Deployment) -> Vec<String> {
    images(d.spec.as_ref().map(|s| &s.template))
}

/// The ReplicaSet's images, as `name=image`.
pub fn replicaset_images(rs: &ReplicaSet) -> Vec<String> {
    images(rs.spec.as_ref().and_then(|s| s.template.as_ref()))
}

/// The Deployment's own revision annotation (0 when absent).
pub fn deployment_revision(d: &Deployment) -> i64 {
    revision_of(d.metadata.annotations.as_ref()).unwrap_or_default()
}

/// One row of `kubectl rollout history`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub revision: i64,
    /// `kubernetes.io/change-cause` from the ReplicaSet, or `<none>` like kubectl.
    pub change_cause: String,
    pub replicaset: String,
    pub images: Vec<String>,
}

/// The history rows in ascending revision order (revision 0 rows are left out, as kubectl).
pub fn history(owned: &[ReplicaSet]) -> Vec<HistoryEntry> {
    let mut rows: Vec<HistoryEntry> = owned
        .iter()
        .filter_map(|rs| {
            let revision = revision_of(rs.metadata.annotations.as_ref())?;
            (revision > 0).then(|| HistoryEntry {
                revision,
                change_cause: rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(CHANGE_CAUSE))
                    .cloned()
                    .unwrap_or_else(|| "<none>".to_owned()),
                replicaset: rs.metadata.name.clone().unwrap_or_default(),
                images: replicaset_images(rs),
            })
        })
        .collect();
    rows.sort_by_key(|r| r.revision);
    rows
}

/// Where a rollout stands, as `kubectl rollout status` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Still going; the line kubectl prints.
    Waiting(String),
    /// Finished: `deployment "NAME" successfully rolled out`.
    Done(String),
    /// `deployment "NAME" exceeded its progress deadline`.
    DeadlineExceeded(String),
}

/// kubectl's `DeploymentStatusViewer.Status` with revision 0.
pub fn status(d: &Deployment) -> Status {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let st = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or_default();
    if generation > st.observed_generation.unwrap_or_default() {
        return Status::Waiting("Waiting for deployment spec update to be observed...".to_owned());
    }
    let progressing = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing");
    if progressing.and_then(|c| c.reason.as_deref()) == Some("ProgressDeadlineExceeded") {
        return Status::DeadlineExceeded(format!(
            "deployment \"{name}\" exceeded its progress deadline"
        ));
    }
    let updated = st.updated_replicas.unwrap_or_default();
    let replicas = st.replicas.unwrap_or_default();
    let available = st.available_replicas.unwrap_or_default();
    if let Some(spec_replicas) = d.spec.as_ref().and_then(|s| s.replicas)
        && updated < spec_replicas
    {
        return Status::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {spec_replicas} new replicas have been updated..."
        ));
    }
    if replicas > updated {
        return Status::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return Status::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    Status::Done(format!("deployment \"{name}\" successfully rolled out"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(extra: Value) -> Deployment {
        let mut base = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "prod", "uid": "d-uid", "generation": 2,
                         "resourceVersion": "42",
                         "annotations": {"deployment.kubernetes.io/revision": "2",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{}",
                                         "team": "a"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": "web:2"}]}}},
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn rs(name: &str, revision: Option<&str>, image: &str, owner_uid: &str) -> ReplicaSet {
        let mut annotations = serde_json::Map::new();
        if let Some(r) = revision {
            annotations.insert(REVISION.into(), json!(r));
        }
        annotations.insert(CHANGE_CAUSE.into(), json!(format!("set {image}")));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod", "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                            "name": "web", "uid": owner_uid, "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "web", POD_TEMPLATE_HASH: name}},
                     "template": {"metadata": {"labels": {"app": "web", POD_TEMPLATE_HASH: name},
                                               "creationTimestamp": null},
                                  "spec": {"containers": [{"name": "app", "image": image, "resources": {}}]}}},
        }))
        .unwrap()
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    #[test]
    fn owned_keeps_only_controller_refs_with_the_deployment_uid() {
        let d = deployment(json!({}));
        let mut not_controller = rs("web-c", Some("1"), "web:1", "d-uid");
        not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        let all = vec![
            rs("web-a", Some("1"), "web:1", "d-uid"),
            rs("web-b", Some("2"), "web:2", "other-uid"),
            not_controller,
        ];
        let owned = owned_replicasets(&d, all);
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].metadata.name.as_deref(), Some("web-a"));
    }

    #[test]
    fn default_target_is_second_highest_revision() {
        let owned = vec![
            rs("web-c", Some("3"), "web:3", "d-uid"),
            rs("web-a", Some("1"), "web:1", "d-uid"),
            rs("web-b", Some("2"), "web:2", "d-uid"),
            rs("web-x", Some("garbage"), "web:x", "d-uid"),
        ];
        let t = select_target("web", &owned, 0).unwrap();
        assert_eq!(t.metadata.name.as_deref(), Some("web-b"));
        let t = select_target("web", &owned, 1).unwrap();
        assert_eq!(t.metadata.name.as_deref(), Some("web-a"));
    }

    #[test]
    fn missing_history_and_revision_use_kubectl_messages() {
        let owned = vec![rs("web-a", Some("1"), "web:1", "d-uid")];
        assert_eq!(
            select_target("web", &owned, 0).unwrap_err().to_string(),
            "no rollout history found for deployment \"web\""
        );
        assert_eq!(
            select_target("web", &owned, 7).unwrap_err().to_string(),
            "unable to find specified revision 7 in history"
        );
        assert_eq!(
            select_target("web", &owned, -1).unwrap_err(),
            RollbackError::RevisionNotFound(-1)
        );
        assert_eq!(
            select_target("web", &[], 0).unwrap_err(),
            RollbackError::NoHistory("web".into())
        );
    }

    #[test]
    fn missing_revision_annotation_counts_as_zero() {
        let owned = vec![
            rs("web-a", None, "web:1", "d-uid"),
            rs("web-b", Some("1"), "web:2", "d-uid"),
        ];
        let t = select_target("web", &owned, 0).unwrap();
        assert_eq!(t.metadata.name.as_deref(), Some("web-a"));
    }

    #[test]
    fn plan_copies_template_without_hash_and_kubectl_annotations() {
        let d = deployment(json!({}));
        let owned = vec![
            rs("web-a", Some("1"), "web:1", "d-uid"),
            rs("web-b", Some("2"), "web:2", "d-uid"),
        ];
        let RollbackPlan::Apply {
            revision,
            template,
            annotations,
        } = plan_rollback(&d, &owned, 0).unwrap()
        else {
            panic!("expected a rollback to apply");
        };
        assert_eq!(revision, 1);
        let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
        assert_eq!(labels.len(), 1, "{labels:?}");
        assert_eq!(labels["app"], "web");
        assert_eq!(
            template.spec.as_ref().unwrap().containers[0]
                .image
                .as_deref(),
            Some("web:1")
        );
        // Skip-list keys keep the Deployment's values; others come from the RS; the
        // Deployment's own "team" annotation is dropped, as kubectl does.
        let expected: BTreeMap<String, String> = [
            (REVISION, "2"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            (CHANGE_CAUSE, "set web:1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(annotations, expected);
    }

    #[test]
    fn plan_skips_when_target_matches_current_template() {
        let d = deployment(json!({}));
        let owned = vec![
            rs("web-a", Some("1"), "web:2", "d-uid"),
            rs("web-b", Some("2"), "web:3", "d-uid"),
        ];
        assert_eq!(
            plan_rollback(&d, &owned, 0).unwrap(),
            RollbackPlan::Skip { revision: 1 }
        );
    }

    #[test]
    fn plan_refuses_paused_deployments() {
        let d = deployment(json!({"spec": {"paused": true}}));
        let owned = vec![
            rs("web-a", Some("1"), "web:1", "d-uid"),
            rs("web-b", Some("2"), "web:2", "d-uid"),
        ];
        let err = plan_rollback(&d, &owned, 0).unwrap_err();
        assert_eq!(err, RollbackError::Paused);
        assert!(
            err.to_string()
                .starts_with("you cannot rollback a paused deployment")
        );
    }

    #[test]
    fn templates_compare_semantically() {
        let a: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web", POD_TEMPLATE_HASH: "abc"}, "creationTimestamp": null},
            "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {}, "env": []}]}
        }))
        .unwrap();
        let b: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]}
        }))
        .unwrap();
        assert!(equal_ignore_hash(&a, &b));
        let c: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:2"}]}
        }))
        .unwrap();
        assert!(!equal_ignore_hash(&a, &c));
    }

    #[test]
    fn history_is_sorted_with_change_causes() {
        let mut no_cause = rs("web-b", Some("3"), "web:2", "d-uid");
        no_cause
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(CHANGE_CAUSE);
        let owned = vec![no_cause, rs("web-a", Some("2"), "web:1", "d-uid")];
        let h = history(&owned);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].revision, 2);
        assert_eq!(h[0].change_cause, "set web:1");
        assert_eq!(h[0].images, vec!["app=web:1"]);
        assert_eq!(h[1].revision, 3);
        assert_eq!(h[1].change_cause, "<none>");
    }

    #[test]
    fn status_messages_match_kubectl() {
        let cases = [
            (
                json!({"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}),
                Status::Waiting("Waiting for deployment spec update to be observed...".into()),
            ),
            (
                json!({"status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1}}),
                Status::Waiting("Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...".into()),
            ),
            (
                json!({"status": {"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3}}),
                Status::Waiting("Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...".into()),
            ),
            (
                json!({"status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 1}}),
                Status::Waiting("Waiting for deployment \"web\" rollout to finish: 1 of 3 updated replicas are available...".into()),
            ),
            (
                json!({"status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}}),
                Status::Done("deployment \"web\" successfully rolled out".into()),
            ),
            (
                json!({"status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                       "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}}),
                Status::DeadlineExceeded("deployment \"web\" exceeded its progress deadline".into()),
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(status(&deployment(extra.clone())), expected, "{extra}");
        }
    }
}
