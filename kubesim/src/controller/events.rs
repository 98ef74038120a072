//! The controllers' event recorder: core/v1 Events as client-go's `record.EventRecorder` writes
//! them, including its aggregation (the same source, object, type, reason and message bump
//! `count` and `lastTimestamp` of one Event instead of creating another).
//!
//! An event's name is `<object>.<16 hex digits>` like the real `<object>.<unix nanos in hex>`,
//! but the hex is a hash of the aggregation key, so finding the Event to bump is one `get`.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::obj;
use crate::cluster::{Cluster, ClusterError, Kind};

pub(crate) const NORMAL: &str = "Normal";
pub(crate) const WARNING: &str = "Warning";

/// Who reports an event (`source.component` / `reportingComponent`, and the node for kubelets).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub component: &'a str,
    pub host: Option<&'a str>,
}

impl Source<'static> {
    pub(crate) const DEPLOYMENT: Source<'static> = Source {
        component: "deployment-controller",
        host: None,
    };
    pub(crate) const REPLICASET: Source<'static> = Source {
        component: "replicaset-controller",
        host: None,
    };
    pub(crate) const SCHEDULER: Source<'static> = Source {
        component: "default-scheduler",
        host: None,
    };
    pub(crate) const NODE_CONTROLLER: Source<'static> = Source {
        component: "node-controller",
        host: None,
    };
    pub(crate) const TAINT_EVICTION: Source<'static> = Source {
        component: "taint-eviction-controller",
        host: None,
    };
}

/// What an event is about (`involvedObject`).
pub(crate) struct Involved<'a> {
    pub object: &'a Value,
    pub kind: &'a str,
    pub api_version: &'a str,
    /// `spec.containers{app}` for container events.
    pub field_path: Option<String>,
}

impl<'a> Involved<'a> {
    pub(crate) fn new(object: &'a Value, kind: &'a str, api_version: &'a str) -> Self {
        Self {
            object,
            kind,
            api_version,
            field_path: None,
        }
    }
}

/// Records (or aggregates into) an Event. Failures are logged, never fatal: the real recorder
/// drops events it cannot write too.
pub(crate) fn record(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    source: Source<'_>,
    involved: &Involved<'_>,
    type_: &str,
    reason: &str,
    message: &str,
) {
    if let Err(error) = try_record(cluster, now, source, involved, type_, reason, message) {
        tracing::debug!(reason, error = %error, "event dropped");
    }
}

fn try_record(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    source: Source<'_>,
    involved: &Involved<'_>,
    type_: &str,
    reason: &str,
    message: &str,
) -> Result<(), ClusterError> {
    let object = involved.object;
    let namespace = obj::namespace(object).unwrap_or("default").to_owned();
    // Nodes are referred to by name, with the name as uid, as the kubelet does.
    let uid = match obj::uid(object) {
        "" => obj::name(object),
        uid => uid,
    };
    let agg_key = format!(
        "{}|{}|{}|{}|{}|{}|{}|{}",
        source.component,
        source.host.unwrap_or(""),
        involved.kind,
        uid,
        involved.field_path.as_deref().unwrap_or(""),
        type_,
        reason,
        message
    );
    let name = format!(
        "{}.{:016x}",
        obj::name(object),
        obj::fnv64a(agg_key.as_bytes())
    );
    let stamp = obj::fmt_time(now);
    if let Some(mut existing) = cluster.get(Kind::Event, Some(&namespace), &name) {
        let count = obj::i64_at(&existing, &["count"]).unwrap_or(1) + 1;
        existing["count"] = json!(count);
        existing["lastTimestamp"] = json!(stamp);
        cluster.update(Kind::Event, existing)?;
        return Ok(());
    }
    let mut involved_object = json!({
        "kind": involved.kind,
        "name": obj::name(object),
        "uid": uid,
        "apiVersion": involved.api_version,
    });
    if let Some(ns) = obj::namespace(object) {
        involved_object["namespace"] = json!(ns);
    }
    if let Some(rv) = obj::str_at(object, &["metadata", "resourceVersion"]) {
        involved_object["resourceVersion"] = json!(rv);
    }
    if let Some(path) = &involved.field_path {
        involved_object["fieldPath"] = json!(path);
    }
    let mut source_json = json!({"component": source.component});
    if let Some(host) = source.host {
        source_json["host"] = json!(host);
    }
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": involved_object,
        "reason": reason,
        "message": message,
        "source": source_json,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "type": type_,
        "eventTime": null,
        "reportingComponent": source.component,
        "reportingInstance": source.host.unwrap_or(""),
    });
    cluster.create(Kind::Event, event)?;
    Ok(())
}
