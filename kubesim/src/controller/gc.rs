//! The garbage collector, reduced to what kubesim's controllers create: a ReplicaSet whose
//! controlling Deployment is gone, and a Pod whose controlling ReplicaSet is gone, are deleted
//! (background propagation). Objects with owners of other kinds are left alone, and an
//! orphaning delete (which strips ownerReferences) leaves nothing for it to do.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::{PassCluster, obj};
use crate::cluster::{Cluster, ClusterError, Kind};

/// Deletes ReplicaSets and Pods whose every ownerReference points at a Deployment or ReplicaSet
/// that no longer exists.
pub(crate) fn collect_garbage(cluster: &mut PassCluster<'_>) {
    let deployments = uids(&cluster.all(Kind::Deployment));
    let rses = cluster.all(Kind::ReplicaSet);
    let mut live_rses = HashSet::new();
    for rs in rses.iter() {
        if is_orphaned(rs, "Deployment", &deployments) {
            delete(cluster, Kind::ReplicaSet, rs);
        } else {
            live_rses.insert(obj::uid(rs).to_owned());
        }
    }
    let pods = cluster.all(Kind::Pod);
    for pod in pods.iter() {
        if is_orphaned(pod, "ReplicaSet", &live_rses) {
            delete(cluster, Kind::Pod, pod);
        }
    }
}

fn uids(objects: &[Arc<Value>]) -> HashSet<String> {
    objects.iter().map(|o| obj::uid(o).to_owned()).collect()
}

/// Whether `dependent` has owners, all of `owner_kind`, none of them alive.
fn is_orphaned(dependent: &Value, owner_kind: &str, alive: &HashSet<String>) -> bool {
    let Some(refs) = dependent
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    else {
        return false;
    };
    refs.iter().all(|r| {
        r.get("kind").and_then(Value::as_str) == Some(owner_kind)
            && r.get("uid")
                .and_then(Value::as_str)
                .is_some_and(|uid| !alive.contains(uid))
    })
}

fn delete(cluster: &mut dyn Cluster, kind: Kind, object: &Value) {
    match cluster.delete(kind, obj::namespace(object), obj::name(object)) {
        Ok(()) | Err(ClusterError::NotFound(_)) => {}
        Err(error) => super::log_error("garbage-collector", &obj::key(object), &error),
    }
}
