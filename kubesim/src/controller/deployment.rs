//! The Deployment controller, function for function after upstream's
//! `pkg/controller/deployment` (`deployment_controller.go`, `sync.go`, `rolling.go`,
//! `recreate.go`, `progress.go`), under the same names in snake case.
//!
//! Start at [`sync_deployments`] → `DeploymentController::sync_deployment`, which picks
//! `sync` (paused or scaling), `rollout_rolling` or `rollout_recreate`; all of them end in
//! `sync_rollout_status` / `sync_deployment_status` → `calculate_status`.
//!
//! ReplicaSets are handled as indices into one `Vec<Value>` per Deployment (the RS "list"), and
//! every write replaces the list entry with the object the store returned, so later steps of the
//! same sync never send a stale resourceVersion.

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::deployment_util::{self as util, DeploymentSpec, Strategy};
use super::events::{self, Involved, Source};
use super::{PassCluster, obj};
use crate::cluster::{Cluster, ClusterError, Kind};

/// Syncs every Deployment once (one pass of the controller's work queue).
pub(crate) fn sync_deployments(cluster: &mut PassCluster<'_>, now: Timestamp) {
    let deployments = cluster.all(Kind::Deployment);
    if deployments.is_empty() {
        return;
    }
    // ReplicaSets by controlling owner uid, orphans by namespace: a Deployment only looks at
    // the ReplicaSets it controls or could adopt.
    let all_rses = cluster.all(Kind::ReplicaSet);
    let mut rs_by_owner: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut orphans: HashMap<&str, Vec<&Value>> = HashMap::new();
    for rs in all_rses.iter() {
        match obj::controller_uid(rs) {
            Some(uid) => rs_by_owner.entry(uid).or_default().push(rs),
            None => orphans
                .entry(obj::namespace(rs).unwrap_or(""))
                .or_default()
                .push(rs),
        }
    }
    let mut dc = DeploymentController { cluster, now };
    for d in deployments.iter() {
        let owned = rs_by_owner.get(obj::uid(d)).into_iter().flatten();
        let ns_orphans = orphans
            .get(obj::namespace(d).unwrap_or(""))
            .into_iter()
            .flatten();
        let candidates: Vec<Value> = owned.chain(ns_orphans).map(|rs| (*rs).clone()).collect();
        let key = obj::key(d);
        if let Err(error) = dc.sync_deployment(Value::clone(d), &candidates) {
            super::log_error("deployment", &key, &error);
        }
    }
}

/// The new ReplicaSet and the old ones, as indices into the RS list.
struct Split {
    new: Option<usize>,
    old: Vec<usize>,
}

impl Split {
    /// `append(oldRSs, newRS)`.
    fn all(&self) -> Vec<usize> {
        self.old.iter().copied().chain(self.new).collect()
    }
}

fn refs<'a>(rses: &'a [Value], indices: &[usize]) -> Vec<&'a Value> {
    indices.iter().map(|&i| &rses[i]).collect()
}

/// `%q` of a Go string (names never need escaping).
fn q(s: &str) -> String {
    format!("\"{s}\"")
}

struct DeploymentController<'c> {
    cluster: &'c mut dyn Cluster,
    now: Timestamp,
}

impl DeploymentController<'_> {
    fn event(&mut self, d: &Value, type_: &str, reason: &str, message: &str) {
        let involved = Involved::new(d, "Deployment", "apps/v1");
        events::record(
            self.cluster,
            self.now,
            Source::DEPLOYMENT,
            &involved,
            type_,
            reason,
            message,
        );
    }

    fn update_status(&mut self, d: &mut Value) -> Result<(), ClusterError> {
        *d = self.cluster.update_status(Kind::Deployment, d.clone())?;
        Ok(())
    }

    /// `syncDeployment`.
    fn sync_deployment(&mut self, mut d: Value, ns_rses: &[Value]) -> Result<(), ClusterError> {
        let spec = DeploymentSpec::from_deployment(&d);
        let selector = d.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
        if obj::selector_is_empty(&selector) {
            return self.sync_selecting_all(d);
        }
        let mut rs_list = self.get_replica_sets_for_deployment(&d, &selector, ns_rses)?;
        if obj::is_being_deleted(&d) {
            return self.sync_status_only(d, &spec, &mut rs_list);
        }
        self.check_paused_conditions(&mut d, &spec)?;
        if spec.paused {
            return self.sync(d, &spec, &mut rs_list);
        }
        if self.is_scaling_event(&mut d, &spec, &mut rs_list)? {
            return self.sync(d, &spec, &mut rs_list);
        }
        match spec.strategy {
            Strategy::Recreate => self.rollout_recreate(d, &spec, &mut rs_list),
            Strategy::RollingUpdate { .. } => self.rollout_rolling(d, &spec, &mut rs_list),
        }
    }

    /// An empty selector would select every pod: warn and only observe the generation.
    fn sync_selecting_all(&mut self, mut d: Value) -> Result<(), ClusterError> {
        let observed = obj::i64_at(&d, &["status", "observedGeneration"]).unwrap_or(0);
        if observed >= obj::generation(&d) {
            return Ok(());
        }
        self.event(
            &d,
            events::WARNING,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.",
        );
        let generation = obj::generation(&d);
        obj::obj_mut(&mut d, &["status"])
            .insert("observedGeneration".to_owned(), json!(generation));
        self.update_status(&mut d)
    }

    /// `getReplicaSetsForDeployment`: the ReplicaSets this Deployment controls, adopting orphans
    /// that match its selector and releasing owned ones that no longer match.
    fn get_replica_sets_for_deployment(
        &mut self,
        d: &Value,
        selector: &Value,
        ns_rses: &[Value],
    ) -> Result<Vec<Value>, ClusterError> {
        let d_uid = obj::uid(d);
        let mut owned = Vec::new();
        for rs in ns_rses {
            let matches =
                obj::selector_matches(selector, obj::labels_at(rs, &["metadata", "labels"]));
            match obj::controller_uid(rs) {
                Some(uid) if uid == d_uid => {
                    if matches {
                        owned.push(rs.clone());
                    } else {
                        self.release(rs)?;
                    }
                }
                Some(_) => {}
                None if matches && !obj::is_being_deleted(d) && !obj::is_being_deleted(rs) => {
                    owned.push(self.adopt(d, rs)?);
                }
                None => {}
            }
        }
        Ok(owned)
    }

    fn adopt(&mut self, d: &Value, rs: &Value) -> Result<Value, ClusterError> {
        let mut rs = rs.clone();
        let refs = obj::obj_mut(&mut rs, &["metadata"])
            .entry("ownerReferences")
            .or_insert_with(|| json!([]));
        if !refs.is_array() {
            *refs = json!([]);
        }
        if let Some(list) = refs.as_array_mut() {
            list.push(obj::controller_ref_to(d, "apps/v1", "Deployment"));
        }
        self.cluster.update(Kind::ReplicaSet, rs)
    }

    fn release(&mut self, rs: &Value) -> Result<(), ClusterError> {
        let mut rs = rs.clone();
        if let Some(list) = rs
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            list.retain(|r| r.get("controller").and_then(Value::as_bool) != Some(true));
        }
        self.cluster.update(Kind::ReplicaSet, rs).map(drop)
    }

    /// `checkPausedConditions`: Progressing=Unknown DeploymentPaused / DeploymentResumed, never
    /// overwriting ProgressDeadlineExceeded.
    fn check_paused_conditions(
        &mut self,
        d: &mut Value,
        spec: &DeploymentSpec,
    ) -> Result<(), ClusterError> {
        if !spec.has_progress_deadline() {
            return Ok(());
        }
        let status = d.get("status").cloned().unwrap_or_else(|| json!({}));
        let reason = util::get_condition(&status, "Progressing")
            .and_then(|c| c.get("reason"))
            .and_then(Value::as_str);
        if reason == Some(util::TIMED_OUT_REASON) {
            return Ok(());
        }
        let paused_cond_exists = reason == Some(util::PAUSED_DEPLOY_REASON);
        let condition = if spec.paused && !paused_cond_exists {
            (util::PAUSED_DEPLOY_REASON, "Deployment is paused")
        } else if !spec.paused && paused_cond_exists {
            (util::RESUMED_DEPLOY_REASON, "Deployment is resumed")
        } else {
            return Ok(());
        };
        let status = obj::obj_mut(d, &["status"]);
        let mut status_value = Value::Object(std::mem::take(status));
        util::set_condition(
            &mut status_value,
            util::new_condition("Progressing", "Unknown", condition.0, condition.1, self.now),
        );
        d["status"] = status_value;
        self.update_status(d)
    }

    /// `sync`: scale (for paused or scaling Deployments), clean up when paused, status.
    fn sync(
        &mut self,
        mut d: Value,
        spec: &DeploymentSpec,
        rs_list: &mut Vec<Value>,
    ) -> Result<(), ClusterError> {
        let split = self.get_all_replica_sets_and_sync_revision(&mut d, spec, rs_list, false)?;
        self.scale(&d, spec, rs_list, &split)?;
        if spec.paused {
            self.cleanup_deployment(spec, rs_list, &split.old)?;
        }
        self.sync_deployment_status(d, spec, rs_list, &split)
    }

    /// `syncStatusOnly`: a Deployment being deleted only gets its status updated.
    fn sync_status_only(
        &mut self,
        mut d: Value,
        spec: &DeploymentSpec,
        rs_list: &mut Vec<Value>,
    ) -> Result<(), ClusterError> {
        let split = self.get_all_replica_sets_and_sync_revision(&mut d, spec, rs_list, false)?;
        self.sync_deployment_status(d, spec, rs_list, &split)
    }

    /// `isScalingEvent`: an active ReplicaSet's desired-replicas annotation differs from
    /// `spec.replicas`.
    fn is_scaling_event(
        &mut self,
        d: &mut Value,
        spec: &DeploymentSpec,
        rs_list: &mut Vec<Value>,
    ) -> Result<bool, ClusterError> {
        let split = self.get_all_replica_sets_and_sync_revision(d, spec, rs_list, false)?;
        Ok(split
            .all()
            .into_iter()
            .map(|i| &rs_list[i])
            .filter(|rs| util::rs_replicas(rs) > 0)
            .filter_map(util::get_desired_replicas_annotation)
            .any(|desired| desired != spec.replicas))
    }

    /// `getAllReplicaSetsAndSyncRevision`.
    fn get_all_replica_sets_and_sync_revision(
        &mut self,
        d: &mut Value,
        spec: &DeploymentSpec,
        rs_list: &mut Vec<Value>,
        create_if_not_existed: bool,
    ) -> Result<Split, ClusterError> {
        let existing = util::find_new_replica_set(d, rs_list);
        let old: Vec<usize> = (0..rs_list.len())
            .filter(|&i| Some(i) != existing)
            .collect();
        let new =
            self.get_new_replica_set(d, spec, rs_list, existing, &old, create_if_not_existed)?;
        Ok(Split { new, old })
    }

    /// `getNewReplicaSet`: syncs the revision of the existing new RS, or creates it.
    fn get_new_replica_set(
        &mut self,
        d: &mut Value,
        spec: &DeploymentSpec,
        rs_list: &mut Vec<Value>,
        existing: Option<usize>,
        old: &[usize],
        create_if_not_existed: bool,
    ) -> Result<Option<usize>, ClusterError> {
        let old_rses: Vec<Value> = old.iter().map(|&i| rs_list[i].clone()).collect();
        let new_revision = util::max_revision(&old_rses) + 1;
        if let Some(i) = existing {
            self.sync_existing_new_replica_set(d, spec, rs_list, i, new_revision)?;
            return Ok(Some(i));
        }
        if !create_if_not_existed {
            return Ok(None);
        }
        let created = self.create_new_replica_set(d, spec, &old_rses, new_revision)?;
        rs_list.push(created);
        Ok(Some(rs_list.len() - 1))
    }

    /// The `existingNewRS != nil` half of `getNewReplicaSet`.
    fn sync_existing_new_replica_set(
        &mut self,
        d: &mut Value,
        spec: &DeploymentSpec,
        rs_list: &mut [Value],
        i: usize,
        new_revision: i64,
    ) -> Result<(), ClusterError> {
        let mut rs_copy = rs_list[i].clone();
        let annotations_updated =
            util::set_new_replica_set_annotations(d, spec, &mut rs_copy, new_revision, true);
        let min_ready_needs_update =
            obj::int_at(&rs_copy, &["spec", "minReadySeconds"]) != spec.min_ready_seconds;
        if annotations_updated || min_ready_needs_update {
            set_min_ready_seconds(&mut rs_copy, spec.min_ready_seconds);
            rs_list[i] = self.cluster.update(Kind::ReplicaSet, rs_copy)?;
            return Ok(());
        }
        let rs_revision = obj::annotation(&rs_copy, util::REVISION_ANNOTATION).unwrap_or("");
        let mut needs_update = set_deployment_revision(d, rs_revision);
        let status = d.get("status").cloned().unwrap_or_else(|| json!({}));
        if spec.has_progress_deadline() && util::get_condition(&status, "Progressing").is_none() {
            let message = format!("Found new replica set {}", q(obj::name(&rs_copy)));
            let mut status = status;
            util::set_condition(
                &mut status,
                util::new_condition(
                    "Progressing",
                    "True",
                    util::FOUND_NEW_RS_REASON,
                    &message,
                    self.now,
                ),
            );
            d["status"] = status;
            needs_update = true;
        }
        if needs_update {
            self.update_status(d)?;
        }
        Ok(())
    }

    /// The create half of `getNewReplicaSet`: `<deployment>-<pod-template-hash>`.
    fn create_new_replica_set(
        &mut self,
        d: &mut Value,
        spec: &DeploymentSpec,
        old_rses: &[Value],
        new_revision: i64,
    ) -> Result<Value, ClusterError> {
        let mut new_rs = self.new_replica_set_object(d, spec, old_rses, new_revision);
        let new_replicas_count = util::rs_replicas(&new_rs);
        let rs_name = obj::name(&new_rs).to_owned();
        let (created, already_exists) = match self.cluster.create(Kind::ReplicaSet, new_rs.clone())
        {
            Ok(created) => (created, false),
            Err(ClusterError::AlreadyExists(what)) => {
                let existing = self
                    .cluster
                    .get(Kind::ReplicaSet, obj::namespace(d), &rs_name);
                match existing {
                    Some(rs)
                        if obj::controller_uid(&rs) == Some(obj::uid(d))
                            && util::equal_ignore_hash(
                                d.pointer("/spec/template").unwrap_or(&Value::Null),
                                rs.pointer("/spec/template").unwrap_or(&Value::Null),
                            ) =>
                    {
                        (rs, true)
                    }
                    _ => {
                        // A different template hashed to the same name: bump collisionCount so
                        // the next sync computes another hash.
                        let count = obj::i64_at(d, &["status", "collisionCount"]).unwrap_or(0);
                        obj::obj_mut(d, &["status"])
                            .insert("collisionCount".to_owned(), json!(count + 1));
                        self.update_status(d)?;
                        return Err(ClusterError::AlreadyExists(what));
                    }
                }
            }
            Err(error) => {
                let message = format!("Failed to create new replica set {}: {error}", q(&rs_name));
                if spec.has_progress_deadline() {
                    let mut status = d.get("status").cloned().unwrap_or_else(|| json!({}));
                    util::set_condition(
                        &mut status,
                        util::new_condition(
                            "Progressing",
                            "False",
                            "ReplicaSetCreateError",
                            &message,
                            self.now,
                        ),
                    );
                    d["status"] = status;
                    self.update_status(d)?;
                }
                self.event(d, events::WARNING, "ReplicaSetCreateError", &message);
                return Err(error);
            }
        };
        new_rs = created;
        if !already_exists && new_replicas_count > 0 {
            let message = format!(
                "Scaled up replica set {} from 0 to {new_replicas_count}",
                obj::name(&new_rs)
            );
            self.event(d, events::NORMAL, "ScalingReplicaSet", &message);
        }
        let mut needs_update = set_deployment_revision(d, &new_revision.to_string());
        if !already_exists && spec.has_progress_deadline() {
            let message = format!("Created new replica set {}", q(obj::name(&new_rs)));
            let mut status = d.get("status").cloned().unwrap_or_else(|| json!({}));
            util::set_condition(
                &mut status,
                util::new_condition(
                    "Progressing",
                    "True",
                    util::NEW_RS_REASON,
                    &message,
                    self.now,
                ),
            );
            d["status"] = status;
            needs_update = true;
        }
        if needs_update {
            self.update_status(d)?;
        }
        Ok(new_rs)
    }

    /// The ReplicaSet object `getNewReplicaSet` creates: template + hash label, selector + hash,
    /// a controller reference, the size from `NewRSNewReplicas` and the annotations.
    fn new_replica_set_object(
        &self,
        d: &Value,
        spec: &DeploymentSpec,
        old_rses: &[Value],
        new_revision: i64,
    ) -> Value {
        let collision_count = obj::i64_at(d, &["status", "collisionCount"]);
        let mut template = d
            .pointer("/spec/template")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let hash = util::compute_hash(&template, collision_count);
        obj::obj_mut(&mut template, &["metadata", "labels"])
            .insert(util::POD_TEMPLATE_HASH_LABEL.to_owned(), json!(hash));
        let mut selector = d
            .pointer("/spec/selector")
            .cloned()
            .unwrap_or_else(|| json!({}));
        obj::obj_mut(&mut selector, &["matchLabels"])
            .insert(util::POD_TEMPLATE_HASH_LABEL.to_owned(), json!(hash));
        let labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let mut new_rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{}-{hash}", obj::name(d)),
                "namespace": obj::namespace(d).unwrap_or("default"),
                "labels": labels,
                "ownerReferences": [obj::controller_ref_to(d, "apps/v1", "Deployment")],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        });
        set_min_ready_seconds(&mut new_rs, spec.min_ready_seconds);
        let mut all: Vec<&Value> = old_rses.iter().collect();
        all.push(&new_rs);
        let new_replicas_count = util::new_rs_new_replicas(spec, &all, &new_rs);
        new_rs["spec"]["replicas"] = json!(new_replicas_count);
        util::set_new_replica_set_annotations(d, spec, &mut new_rs, new_revision, false);
        new_rs
    }

    /// `scale`: proportional scaling of the active ReplicaSets to `spec.replicas`.
    fn scale(
        &mut self,
        d: &Value,
        spec: &DeploymentSpec,
        rs_list: &mut [Value],
        split: &Split,
    ) -> Result<(), ClusterError> {
        if let Some(i) = find_active_or_latest(rs_list, split) {
            if util::rs_replicas(&rs_list[i]) != spec.replicas {
                self.scale_replica_set_and_record_event(d, spec, rs_list, i, spec.replicas)?;
            }
            return Ok(());
        }
        if util::is_saturated(spec, split.new.map(|i| &rs_list[i])) {
            for &i in &split.old {
                if util::rs_replicas(&rs_list[i]) > 0 {
                    self.scale_replica_set_and_record_event(d, spec, rs_list, i, 0)?;
                }
            }
            return Ok(());
        }
        if !spec.is_rolling_update() {
            return Ok(());
        }
        let mut active: Vec<usize> = split
            .all()
            .into_iter()
            .filter(|&i| util::rs_replicas(&rs_list[i]) > 0)
            .collect();
        let all_rss_replicas =
            util::get_replica_count_for_replica_sets(active.iter().map(|&i| &rs_list[i]));
        let allowed_size = if spec.replicas > 0 {
            spec.replicas + util::max_surge(spec)
        } else {
            0
        };
        let to_add = allowed_size - all_rss_replicas;
        let operation = match to_add.signum() {
            1 => {
                // ReplicaSetsBySizeNewer: bigger first, newer first among equals.
                active.sort_by(|&a, &b| {
                    let (ra, rb) = (
                        util::rs_replicas(&rs_list[a]),
                        util::rs_replicas(&rs_list[b]),
                    );
                    rb.cmp(&ra).then_with(|| {
                        obj::creation_key(&rs_list[b]).cmp(&obj::creation_key(&rs_list[a]))
                    })
                });
                "up"
            }
            -1 => {
                // ReplicaSetsBySizeOlder: bigger first, older first among equals.
                active.sort_by(|&a, &b| {
                    let (ra, rb) = (
                        util::rs_replicas(&rs_list[a]),
                        util::rs_replicas(&rs_list[b]),
                    );
                    rb.cmp(&ra).then_with(|| {
                        obj::creation_key(&rs_list[a]).cmp(&obj::creation_key(&rs_list[b]))
                    })
                });
                "down"
            }
            _ => "",
        };
        let status_replicas = obj::int_at(d, &["status", "replicas"]);
        let mut added = 0;
        let mut sizes = Vec::with_capacity(active.len());
        for &i in &active {
            let rs = &rs_list[i];
            let proportion = if to_add != 0 {
                util::get_replica_set_proportion(rs, spec, status_replicas, to_add, added)
            } else {
                0
            };
            added += proportion;
            sizes.push(util::rs_replicas(rs) + proportion);
        }
        for (n, &i) in active.iter().enumerate() {
            if n == 0 && to_add != 0 {
                // Leftovers go to the largest ReplicaSet.
                sizes[0] = (sizes[0] + to_add - added).max(0);
            }
            self.scale_replica_set(d, spec, rs_list, i, sizes[n], operation)?;
        }
        Ok(())
    }

    /// `scaleReplicaSetAndRecordEvent`.
    fn scale_replica_set_and_record_event(
        &mut self,
        d: &Value,
        spec: &DeploymentSpec,
        rs_list: &mut [Value],
        i: usize,
        new_scale: i32,
    ) -> Result<bool, ClusterError> {
        let current = util::rs_replicas(&rs_list[i]);
        if current == new_scale {
            return Ok(false);
        }
        let operation = if current < new_scale { "up" } else { "down" };
        self.scale_replica_set(d, spec, rs_list, i, new_scale, operation)
    }

    /// `scaleReplicaSet`: size and replicas annotations in one update, plus the event.
    fn scale_replica_set(
        &mut self,
        d: &Value,
        spec: &DeploymentSpec,
        rs_list: &mut [Value],
        i: usize,
        new_scale: i32,
        operation: &str,
    ) -> Result<bool, ClusterError> {
        let old_scale = util::rs_replicas(&rs_list[i]);
        let max_replicas = spec.replicas + util::max_surge(spec);
        let size_needs_update = old_scale != new_scale;
        let annotations_need_update =
            util::replicas_annotations_need_update(&rs_list[i], spec.replicas, max_replicas);
        if !size_needs_update && !annotations_need_update {
            return Ok(false);
        }
        let mut rs_copy = rs_list[i].clone();
        rs_copy["spec"]["replicas"] = json!(new_scale);
        util::set_replicas_annotations(&mut rs_copy, spec.replicas, max_replicas);
        rs_list[i] = self.cluster.update(Kind::ReplicaSet, rs_copy)?;
        if size_needs_update {
            let message = format!(
                "Scaled {operation} replica set {} from {old_scale} to {new_scale}",
                obj::name(&rs_list[i])
            );
            self.event(d, events::NORMAL, "ScalingReplicaSet", &message);
        }
        Ok(size_needs_update)
    }

    /// `rolloutRolling`.
    fn rollout_rolling(
        &mut self,
        mut d: Value,
        spec: &DeploymentSpec,
        rs_list: &mut Vec<Value>,
    ) -> Result<(), ClusterError> {
        let split = self.get_all_replica_sets_and_sync_revision(&mut d, spec, rs_list, true)?;
        if self.reconcile_new_replica_set(&d, spec, rs_list, &split)? {
            return self.sync_rollout_status(d, spec, rs_list, &split);
        }
        if self.reconcile_old_replica_sets(&d, spec, rs_list, &split)? {
            return self.sync_rollout_status(d, spec, rs_list, &split);
        }
        let status = d.get("status").cloned().unwrap_or_default();
        if util::deployment_complete(&d, spec, &status) {
            self.cleanup_deployment(spec, rs_list, &split.old)?;
        }
        self.sync_rollout_status(d, spec, rs_list, &split)
    }

    /// `reconcileNewReplicaSet`: scale the new RS up within maxSurge (or down to replicas).
    fn reconcile_new_replica_set(
        &mut self,
        d: &Value,
        spec: &DeploymentSpec,
        rs_list: &mut [Value],
        split: &Split,
    ) -> Result<bool, ClusterError> {
        let Some(new) = split.new else {
            return Ok(false);
        };
        let new_replicas = util::rs_replicas(&rs_list[new]);
        if new_replicas == spec.replicas {
            return Ok(false);
        }
        if new_replicas > spec.replicas {
            return self.scale_replica_set_and_record_event(d, spec, rs_list, new, spec.replicas);
        }
        let all = split.all();
        let count = util::new_rs_new_replicas(spec, &refs(rs_list, &all), &rs_list[new]);
        self.scale_replica_set_and_record_event(d, spec, rs_list, new, count)
    }

    /// `reconcileOldReplicaSets`: scale old RSes down within maxUnavailable, unhealthy first.
    fn reconcile_old_replica_sets(
        &mut self,
        d: &Value,
        spec: &DeploymentSpec,
        rs_list: &mut [Value],
        split: &Split,
    ) -> Result<bool, ClusterError> {
        let Some(new) = split.new else {
            return Ok(false);
        };
        let old: Vec<usize> = split
            .old
            .iter()
            .copied()
            .filter(|&i| util::rs_replicas(&rs_list[i]) > 0)
            .collect();
        let old_pods_count = util::get_replica_count_for_replica_sets(refs(rs_list, &old));
        if old_pods_count == 0 {
            return Ok(false);
        }
        let all_pods_count = util::get_replica_count_for_replica_sets(refs(rs_list, &split.all()));
        let min_available = spec.replicas - util::max_unavailable(spec);
        let new_rs_unavailable = util::rs_replicas(&rs_list[new])
            - obj::int_at(&rs_list[new], &["status", "availableReplicas"]);
        let max_scaled_down = all_pods_count - min_available - new_rs_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let cleanup_count =
            self.cleanup_unhealthy_replicas(d, spec, rs_list, &old, max_scaled_down)?;
        let mut all = old.clone();
        all.push(new);
        let scaled_down_count =
            self.scale_down_old_replica_sets_for_rolling_update(d, spec, rs_list, &all, &old)?;
        Ok(cleanup_count + scaled_down_count > 0)
    }

    /// `cleanupUnhealthyReplicas`: drop old replicas that are not available, oldest RS first.
    fn cleanup_unhealthy_replicas(
        &mut self,
        d: &Value,
        spec: &DeploymentSpec,
        rs_list: &mut [Value],
        old: &[usize],
        max_cleanup_count: i32,
    ) -> Result<i32, ClusterError> {
        let mut old = old.to_vec();
        old.sort_by_key(|&i| obj::creation_key(&rs_list[i]));
        let mut total_scaled_down = 0;
        for i in old {
            if total_scaled_down >= max_cleanup_count {
                break;
            }
            let replicas = util::rs_replicas(&rs_list[i]);
            let available = obj::int_at(&rs_list[i], &["status", "availableReplicas"]);
            if replicas == 0 || replicas == available {
                continue;
            }
            let scaled_down_count =
                (max_cleanup_count - total_scaled_down).min(replicas - available);
            let new_count = replicas - scaled_down_count;
            if new_count > replicas {
                return Err(ClusterError::Invalid(format!(
                    "when cleaning up unhealthy replicas, got invalid request to scale down {} {replicas} -> {new_count}",
                    obj::key(&rs_list[i])
                )));
            }
            self.scale_replica_set_and_record_event(d, spec, rs_list, i, new_count)?;
            total_scaled_down += scaled_down_count;
        }
        Ok(total_scaled_down)
    }

    /// `scaleDownOldReplicaSetsForRollingUpdate`: scale down by `available − minAvailable`.
    fn scale_down_old_replica_sets_for_rolling_update(
        &mut self,
        d: &Value,
        spec: &DeploymentSpec,
        rs_list: &mut [Value],
        all: &[usize],
        old: &[usize],
    ) -> Result<i32, ClusterError> {
        let min_available = spec.replicas - util::max_unavailable(spec);
        let available_pod_count =
            util::get_available_replica_count_for_replica_sets(refs(rs_list, all));
        if available_pod_count <= min_available {
            return Ok(0);
        }
        let mut old = old.to_vec();
        old.sort_by_key(|&i| obj::creation_key(&rs_list[i]));
        let total_scale_down_count = available_pod_count - min_available;
        let mut total_scaled_down = 0;
        for i in old {
            if total_scaled_down >= total_scale_down_count {
                break;
            }
            let replicas = util::rs_replicas(&rs_list[i]);
            if replicas == 0 {
                continue;
            }
            let scale_down_count = replicas.min(total_scale_down_count - total_scaled_down);
            self.scale_replica_set_and_record_event(
                d,
                spec,
                rs_list,
                i,
                replicas - scale_down_count,
            )?;
            total_scaled_down += scale_down_count;
        }
        Ok(total_scaled_down)
    }

    /// `rolloutRecreate`: old RSes to zero, wait for their pods to go, then the new RS.
    fn rollout_recreate(
        &mut self,
        mut d: Value,
        spec: &DeploymentSpec,
        rs_list: &mut Vec<Value>,
    ) -> Result<(), ClusterError> {
        let mut split =
            self.get_all_replica_sets_and_sync_revision(&mut d, spec, rs_list, false)?;
        let mut scaled_down = false;
        for i in split.old.clone() {
            if util::rs_replicas(&rs_list[i]) > 0 {
                self.scale_replica_set_and_record_event(&d, spec, rs_list, i, 0)?;
                scaled_down = true;
            }
        }
        if scaled_down || self.old_pods_running(&d, rs_list, &split) {
            return self.sync_rollout_status(d, spec, rs_list, &split);
        }
        if split.new.is_none() {
            split = self.get_all_replica_sets_and_sync_revision(&mut d, spec, rs_list, true)?;
        }
        if let Some(new) = split.new {
            // scaleUpNewReplicaSetForRecreate
            self.scale_replica_set_and_record_event(&d, spec, rs_list, new, spec.replicas)?;
        }
        let status = d.get("status").cloned().unwrap_or_default();
        if util::deployment_complete(&d, spec, &status) {
            self.cleanup_deployment(spec, rs_list, &split.old)?;
        }
        self.sync_rollout_status(d, spec, rs_list, &split)
    }

    /// `oldPodsRunning`: any old RS still reports pods, or any pod of an old RS is not finished.
    fn old_pods_running(&self, d: &Value, rs_list: &[Value], split: &Split) -> bool {
        if util::get_actual_replica_count_for_replica_sets(refs(rs_list, &split.old)) > 0 {
            return true;
        }
        let old_uids: Vec<&str> = split.old.iter().map(|&i| obj::uid(&rs_list[i])).collect();
        if old_uids.is_empty() {
            return false;
        }
        self.cluster
            .list(Kind::Pod, obj::namespace(d))
            .iter()
            .filter(|p| obj::controller_uid(p).is_some_and(|u| old_uids.contains(&u)))
            .any(|p| {
                !matches!(
                    obj::str_at(p, &["status", "phase"]),
                    Some("Failed" | "Succeeded")
                )
            })
    }

    /// `cleanupDeployment`: delete the oldest fully scaled-down RSes beyond
    /// `revisionHistoryLimit`.
    fn cleanup_deployment(
        &mut self,
        spec: &DeploymentSpec,
        rs_list: &[Value],
        old: &[usize],
    ) -> Result<(), ClusterError> {
        let Some(limit) = spec.revision_history_limit else {
            return Ok(());
        };
        let mut cleanable: Vec<&Value> = old
            .iter()
            .map(|&i| &rs_list[i])
            .filter(|rs| !obj::is_being_deleted(rs))
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit);
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| (util::revision(rs), obj::creation_key(rs)));
        for rs in cleanable.into_iter().take(diff as usize) {
            let busy = obj::int_at(rs, &["status", "replicas"]) != 0
                || util::rs_replicas(rs) != 0
                || obj::generation(rs)
                    > obj::i64_at(rs, &["status", "observedGeneration"]).unwrap_or(0);
            if busy {
                continue;
            }
            match self
                .cluster
                .delete(Kind::ReplicaSet, obj::namespace(rs), obj::name(rs))
            {
                Ok(()) | Err(ClusterError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// `syncRolloutStatus`: status plus the Progressing condition (progress, completion or the
    /// deadline).
    fn sync_rollout_status(
        &mut self,
        mut d: Value,
        spec: &DeploymentSpec,
        rs_list: &[Value],
        split: &Split,
    ) -> Result<(), ClusterError> {
        let mut new_status = calculate_status(&d, spec, rs_list, split, self.now);
        if !spec.has_progress_deadline() {
            util::remove_condition(&mut new_status, "Progressing");
        }
        let old_status = d.get("status").cloned().unwrap_or_else(|| json!({}));
        let current_cond = util::get_condition(&old_status, "Progressing").cloned();
        let is_complete_deployment = obj::int_at(&new_status, &["replicas"])
            == obj::int_at(&new_status, &["updatedReplicas"])
            && current_cond.as_ref().is_some_and(|c| {
                c.get("reason").and_then(Value::as_str) == Some(util::NEW_RS_AVAILABLE_REASON)
            });
        if spec.has_progress_deadline() && !is_complete_deployment {
            let subject = match split.new {
                Some(i) => format!("ReplicaSet {}", q(obj::name(&rs_list[i]))),
                None => format!("Deployment {}", q(obj::name(&d))),
            };
            if util::deployment_complete(&d, spec, &new_status) {
                let message = format!("{subject} has successfully progressed.");
                let cond = util::new_condition(
                    "Progressing",
                    "True",
                    util::NEW_RS_AVAILABLE_REASON,
                    &message,
                    self.now,
                );
                util::set_condition(&mut new_status, cond);
            } else if util::deployment_progressing(&d, &new_status) {
                let message = format!("{subject} is progressing.");
                let mut cond = util::new_condition(
                    "Progressing",
                    "True",
                    util::RS_UPDATED_REASON,
                    &message,
                    self.now,
                );
                // Progress bumps lastUpdateTime even when the reason stays the same.
                if let Some(current) = &current_cond {
                    if current.get("status").and_then(Value::as_str) == Some("True") {
                        cond["lastTransitionTime"] = current["lastTransitionTime"].clone();
                    }
                    util::remove_condition(&mut new_status, "Progressing");
                }
                util::set_condition(&mut new_status, cond);
            } else if util::deployment_timed_out(spec, &new_status, self.now) {
                let message = format!("{subject} has timed out progressing.");
                let cond = util::new_condition(
                    "Progressing",
                    "False",
                    util::TIMED_OUT_REASON,
                    &message,
                    self.now,
                );
                util::set_condition(&mut new_status, cond);
            }
        }
        if obj::status_eq(&old_status, &new_status) {
            return Ok(());
        }
        d["status"] = new_status;
        self.update_status(&mut d)
    }

    /// `syncDeploymentStatus`: status only, no progress estimation.
    fn sync_deployment_status(
        &mut self,
        mut d: Value,
        spec: &DeploymentSpec,
        rs_list: &[Value],
        split: &Split,
    ) -> Result<(), ClusterError> {
        let new_status = calculate_status(&d, spec, rs_list, split, self.now);
        let old_status = d.get("status").cloned().unwrap_or_else(|| json!({}));
        if obj::status_eq(&old_status, &new_status) {
            return Ok(());
        }
        d["status"] = new_status;
        self.update_status(&mut d)
    }
}

/// `SetDeploymentRevision`: the Deployment's revision annotation; returns whether it changed.
fn set_deployment_revision(d: &mut Value, revision: &str) -> bool {
    if obj::annotation(d, util::REVISION_ANNOTATION) == Some(revision) {
        return false;
    }
    obj::set_annotation(d, util::REVISION_ANNOTATION, revision);
    true
}

/// `spec.minReadySeconds` as Go serialises it (`omitempty`).
fn set_min_ready_seconds(rs: &mut Value, seconds: i32) {
    let spec = obj::obj_mut(rs, &["spec"]);
    if seconds == 0 {
        spec.remove("minReadySeconds");
    } else {
        spec.insert("minReadySeconds".to_owned(), json!(seconds));
    }
}

/// `FindActiveOrLatest`: the only active RS, or the newest when none is active.
fn find_active_or_latest(rs_list: &[Value], split: &Split) -> Option<usize> {
    if split.new.is_none() && split.old.is_empty() {
        return None;
    }
    let mut old = split.old.clone();
    old.sort_by_key(|&i| std::cmp::Reverse(obj::creation_key(&rs_list[i])));
    let active: Vec<usize> = old
        .iter()
        .copied()
        .chain(split.new)
        .filter(|&i| util::rs_replicas(&rs_list[i]) > 0)
        .collect();
    match active.len() {
        0 => split.new.or_else(|| old.first().copied()),
        1 => Some(active[0]),
        _ => None,
    }
}

/// `calculateStatus`: counts from the ReplicaSets and the Available condition.
fn calculate_status(
    d: &Value,
    spec: &DeploymentSpec,
    rs_list: &[Value],
    split: &Split,
    now: Timestamp,
) -> Value {
    let all = refs(rs_list, &split.all());
    let available = util::get_available_replica_count_for_replica_sets(all.iter().copied());
    let total = util::get_replica_count_for_replica_sets(all.iter().copied());
    let unavailable = (total - available).max(0);
    let updated = split
        .new
        .map_or(0, |i| obj::int_at(&rs_list[i], &["status", "replicas"]));
    let mut status = Map::new();
    let mut put = |k: &str, n: i64| {
        if n != 0 {
            status.insert(k.to_owned(), json!(n));
        }
    };
    put("observedGeneration", obj::generation(d));
    put(
        "replicas",
        util::get_actual_replica_count_for_replica_sets(all.iter().copied()).into(),
    );
    put("updatedReplicas", updated.into());
    put(
        "readyReplicas",
        util::get_ready_replica_count_for_replica_sets(all.iter().copied()).into(),
    );
    put("availableReplicas", available.into());
    put("unavailableReplicas", unavailable.into());
    if let Some(count) = d.pointer("/status/collisionCount").filter(|v| !v.is_null()) {
        status.insert("collisionCount".to_owned(), count.clone());
    }
    if let Some(conditions) = d.pointer("/status/conditions").filter(|v| v.is_array()) {
        status.insert("conditions".to_owned(), conditions.clone());
    }
    let mut status = Value::Object(status);
    let condition = if available >= spec.replicas - util::max_unavailable(spec) {
        util::new_condition(
            "Available",
            "True",
            util::MINIMUM_REPLICAS_AVAILABLE,
            "Deployment has minimum availability.",
            now,
        )
    } else {
        util::new_condition(
            "Available",
            "False",
            util::MINIMUM_REPLICAS_UNAVAILABLE,
            "Deployment does not have minimum availability.",
            now,
        )
    };
    util::set_condition(&mut status, condition);
    status
}
