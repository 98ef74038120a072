//! A Gateway API implementation's part in HTTPRoute status: for every parent a route names,
//! the `Accepted` and `ResolvedRefs` conditions at the route's current generation, as a real
//! gateway controller writes them (apis/v1/httproute_types.go, RouteConditionType): `Accepted`
//! is True once the route is attached; `ResolvedRefs` is True when every backend Service
//! exists and False with reason `BackendNotFound` (naming the missing ones) otherwise.
//! Routes without parents get no status, as no controller would claim them.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{PassCluster, obj};
use crate::cluster::{Cluster, ClusterError, Kind};

/// The `controllerName` kubesim reports in route status.
pub const CONTROLLER_NAME: &str = "kubesim.io/gateway-controller";

/// Syncs the status of every HTTPRoute once.
pub(crate) fn sync_routes(cluster: &mut PassCluster<'_>) {
    let routes = cluster.all(Kind::HttpRoute);
    if routes.is_empty() {
        return;
    }
    let services = cluster.all(Kind::Service);
    for route in routes.iter() {
        if let Err(error) = sync_route(cluster, route, &services) {
            super::log_error("gateway", &obj::key(route), &error);
        }
    }
}

fn sync_route(
    cluster: &mut dyn Cluster,
    route: &Value,
    services: &[Arc<Value>],
) -> Result<(), ClusterError> {
    let ns = obj::namespace(route).unwrap_or("default");
    let parents = route
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let generation = obj::generation(route);
    let missing: Vec<String> = route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|rule| rule.get("backendRefs").and_then(Value::as_array))
        .flatten()
        .filter(|r| r.get("kind").and_then(Value::as_str).unwrap_or("Service") == "Service")
        .filter_map(|r| {
            let name = r.get("name").and_then(Value::as_str)?;
            let backend_ns = r.get("namespace").and_then(Value::as_str).unwrap_or(ns);
            let exists = services
                .iter()
                .any(|s| obj::namespace(s) == Some(backend_ns) && obj::name(s) == name);
            (!exists).then(|| format!("{backend_ns}/{name}"))
        })
        .collect();
    let now = crate::store::format_time(cluster.now());
    let old = route
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let wanted: Vec<Value> = parents
        .iter()
        .map(|parent| {
            let mut parent_ref = parent.clone();
            if parent_ref.get("group").is_none() {
                parent_ref["group"] = json!("gateway.networking.k8s.io");
            }
            if parent_ref.get("kind").is_none() {
                parent_ref["kind"] = json!("Gateway");
            }
            let resolved = if missing.is_empty() {
                ("True", "ResolvedRefs", "All references resolved".to_owned())
            } else {
                (
                    "False",
                    "BackendNotFound",
                    format!("backend Service(s) not found: {}", missing.join(", ")),
                )
            };
            let previous = old.iter().find(|p| p.get("parentRef") == Some(&parent_ref));
            let condition = |kind: &str, status: &str, reason: &str, message: &str| {
                // Keep the transition time while the status stays the same.
                let since = previous
                    .and_then(|p| p.get("conditions")?.as_array())
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c.get("type").and_then(Value::as_str) == Some(kind)
                                && c.get("status").and_then(Value::as_str) == Some(status)
                        })
                    })
                    .and_then(|c| c.get("lastTransitionTime").cloned())
                    .unwrap_or_else(|| json!(now));
                json!({
                    "type": kind, "status": status, "reason": reason, "message": message,
                    "observedGeneration": generation, "lastTransitionTime": since,
                })
            };
            json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": [
                    condition("Accepted", "True", "Accepted", "Route is accepted"),
                    condition("ResolvedRefs", resolved.0, resolved.1, &resolved.2),
                ],
            })
        })
        .collect();
    if obj::semantic_eq(&Value::Array(old), &Value::Array(wanted.clone())) {
        return Ok(());
    }
    let mut updated = route.clone();
    if wanted.is_empty() {
        if let Some(m) = updated.as_object_mut() {
            m.remove("status");
        }
    } else {
        updated["status"] = json!({ "parents": wanted });
    }
    cluster.update_status(Kind::HttpRoute, updated).map(drop)
}
