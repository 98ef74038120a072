//! The endpoints controller: for every Service with a selector, an `Endpoints` object of the
//! same name listing the selected pods' IPs (ready ones under `addresses`, the others under
//! `notReadyAddresses`) and the Service's target ports resolved against the pods' container
//! ports. Services without a selector keep whatever Endpoints the user wrote.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::replicaset::{is_pod_active, is_pod_ready};
use super::{PassCluster, obj};
use crate::cluster::{Cluster, ClusterError, Kind};

/// Syncs the Endpoints of every Service once.
pub(crate) fn sync_endpoints(cluster: &mut PassCluster<'_>) {
    let services = cluster.all(Kind::Service);
    if services.is_empty() {
        return;
    }
    let all_pods = cluster.all(Kind::Pod);
    let mut pods_by_namespace: HashMap<&str, Vec<&Value>> = HashMap::new();
    for pod in all_pods.iter() {
        pods_by_namespace
            .entry(obj::namespace(pod).unwrap_or(""))
            .or_default()
            .push(pod);
    }
    for service in services.iter() {
        let pods = pods_by_namespace
            .get(obj::namespace(service).unwrap_or(""))
            .map_or(&[][..], Vec::as_slice);
        if let Err(error) = sync_service(cluster, service, pods) {
            super::log_error("endpoints", &obj::key(service), &error);
        }
    }
}

/// `syncService`.
fn sync_service(
    cluster: &mut dyn Cluster,
    service: &Value,
    pods: &[&Value],
) -> Result<(), ClusterError> {
    let Some(selector) = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
    else {
        return Ok(());
    };
    let selector = json!({"matchLabels": selector});
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut ports = None;
    let mut selected: Vec<&Value> = pods
        .iter()
        .copied()
        .filter(|p| is_pod_active(p))
        .filter(|p| obj::selector_matches(&selector, obj::labels_at(p, &["metadata", "labels"])))
        .collect();
    selected.sort_by(|a, b| obj::name(a).cmp(obj::name(b)));
    for pod in selected {
        let Some(ip) = obj::str_at(pod, &["status", "podIP"]) else {
            continue;
        };
        let mut address = json!({
            "ip": ip,
            "targetRef": {"kind": "Pod", "namespace": obj::namespace(pod), "name": obj::name(pod), "uid": obj::uid(pod)},
        });
        if let Some(node) = obj::str_at(pod, &["spec", "nodeName"]) {
            address["nodeName"] = json!(node);
        }
        ports.get_or_insert_with(|| endpoint_ports(service, pod));
        if is_pod_ready(pod) {
            ready.push(address);
        } else {
            not_ready.push(address);
        }
    }
    let mut subset = Map::new();
    if !ready.is_empty() {
        subset.insert("addresses".to_owned(), json!(ready));
    }
    if !not_ready.is_empty() {
        subset.insert("notReadyAddresses".to_owned(), json!(not_ready));
    }
    let subsets = if subset.is_empty() {
        json!([])
    } else {
        subset.insert("ports".to_owned(), json!(ports.unwrap_or_default()));
        json!([subset])
    };
    let namespace = obj::namespace(service);
    match cluster.get(Kind::Endpoints, namespace, obj::name(service)) {
        Some(existing)
            if obj::semantic_eq(existing.get("subsets").unwrap_or(&Value::Null), &subsets) =>
        {
            Ok(())
        }
        Some(mut existing) => {
            existing["subsets"] = subsets;
            cluster.update(Kind::Endpoints, existing).map(drop)
        }
        None => {
            let mut endpoints = json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": obj::name(service), "namespace": namespace.unwrap_or("default")},
                "subsets": subsets,
            });
            if let Some(labels) = service.pointer("/metadata/labels").filter(|l| !l.is_null()) {
                endpoints["metadata"]["labels"] = labels.clone();
            }
            cluster.create(Kind::Endpoints, endpoints).map(drop)
        }
    }
}

/// The Service's ports with `targetPort` resolved against `pod` (`podutil.FindPort`).
fn endpoint_ports(service: &Value, pod: &Value) -> Vec<Value> {
    let Some(ports) = service.pointer("/spec/ports").and_then(Value::as_array) else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|p| {
            let port = p.get("port").and_then(Value::as_i64)?;
            let target = match p.get("targetPort") {
                Some(Value::Number(n)) => n.as_i64()?,
                Some(Value::String(name)) => find_named_port(pod, name)?,
                _ => port,
            };
            let mut out = json!({
                "port": target,
                "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
            });
            if let Some(name) = p.get("name").and_then(Value::as_str) {
                out["name"] = json!(name);
            }
            Some(out)
        })
        .collect()
}

fn find_named_port(pod: &Value, name: &str) -> Option<i64> {
    pod.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("ports")?.as_array())
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get("containerPort")?
        .as_i64()
}
