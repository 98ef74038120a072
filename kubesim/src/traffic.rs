//! kubesim's traffic model: simulated requests, split the way a mesh or a Service would split
//! them, served by the pods with each pod's own error rate and latency, counted as the metrics
//! meshes and applications export, at `GET /metrics` (Prometheus text format).
//!
//! Start at [`Traffic::advance`]. Where traffic comes from: a rate in requests per second, the
//! annotation `kubesim.io/rps` on
//! - an `HTTPRoute` (gateway.networking.k8s.io/v1): split across its rules evenly, within a rule
//!   across `backendRefs` by `weight` (default 1; weights are proportions, not percentages);
//! - a `VirtualService` (networking.istio.io): across `http[]` evenly, within one across
//!   `route[]` by `weight` (a lone destination takes it all); a destination's `host` names a
//!   Service (`name` or `name.ns.svc.cluster.local`);
//! - a `Service`: across its ready pods (no mesh: the replica-ratio canary).
//!
//! A backend Service's share goes to its ready pods evenly. What a pod does with its requests:
//! the pod annotations `kubesim.io/error-rate` (0..1, the share answered 500) and
//! `kubesim.io/latency-ms` (the median), else what `/_sim/traffic` set for its image, else no
//! errors and 40 ms. Latency is log-normal around the median (σ 0.4), so histogram quantiles
//! look like real ones. Everything is a deterministic function of time: no randomness.
//!
//! Exported series (per workload = the pod's Deployment):
//! - `istio_requests_total{reporter="destination",destination_workload,
//!   destination_workload_namespace,destination_service_name,response_code}`;
//! - `istio_request_duration_milliseconds_bucket|_sum|_count{reporter,destination_workload,
//!   destination_workload_namespace,le}`;
//! - per pod, `http_request_duration_seconds_bucket|_sum|_count{kubernetes_namespace,
//!   kubernetes_pod_name,app,status,le}` (what Flagger's generic observer queries).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde_json::Value;

use crate::cluster::{Cluster, Kind};
use crate::controller::obj;

/// Annotation giving a route's, VirtualService's or Service's request rate (per second).
pub const RPS: &str = "kubesim.io/rps";
/// Pod (template) annotation: the share of requests answered 500.
pub const ERROR_RATE: &str = "kubesim.io/error-rate";
/// Pod (template) annotation: the median latency in milliseconds.
pub const LATENCY_MS: &str = "kubesim.io/latency-ms";

/// Upper bounds of the latency buckets, in milliseconds (Istio's default boundaries).
const BUCKETS_MS: [f64; 11] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
/// The spread of the log-normal latency.
const SIGMA: f64 = 0.4;

/// How a pod answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behavior {
    pub error_rate: f64,
    pub latency_ms: f64,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            error_rate: 0.0,
            latency_ms: 40.0,
        }
    }
}

/// What one pod has served so far.
#[derive(Debug, Clone, Default)]
struct Served {
    workload: String,
    service: String,
    app: String,
    ok: f64,
    errors: f64,
    /// Requests at or under each bound of [`BUCKETS_MS`].
    buckets: [f64; BUCKETS_MS.len()],
    sum_ms: f64,
}

/// The model's state: counters per pod, and behaviors set per image.
#[derive(Debug, Default)]
pub struct Traffic {
    last: Option<Instant>,
    /// By (namespace, pod).
    served: BTreeMap<(String, String), Served>,
    /// Set through `/_sim/traffic`, by exact image reference.
    pub behaviors: BTreeMap<String, Behavior>,
}

/// One stream of requests: a pod's share of some rate.
#[derive(Debug, Clone)]
struct Flow {
    namespace: String,
    pod: String,
    workload: String,
    service: String,
    app: String,
    rps: f64,
    behavior: Behavior,
}

impl Traffic {
    /// Counts what was served since the last call, with the routes, weights and pods as they
    /// are now (call it before and after every change, so a change applies from its moment).
    pub fn advance(&mut self, cluster: &dyn Cluster, now: Instant) {
        let Some(last) = self.last.replace(now) else {
            return;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        for flow in self.flows(cluster) {
            let n = flow.rps * dt;
            let served = self
                .served
                .entry((flow.namespace.clone(), flow.pod.clone()))
                .or_default();
            served.workload = flow.workload;
            served.service = flow.service;
            served.app = flow.app;
            let error_rate = flow.behavior.error_rate.clamp(0.0, 1.0);
            served.errors += n * error_rate;
            served.ok += n * (1.0 - error_rate);
            let median = flow.behavior.latency_ms.max(0.1);
            for (bucket, le) in served.buckets.iter_mut().zip(BUCKETS_MS) {
                *bucket += n * lognormal_cdf(le, median);
            }
            served.sum_ms += n * median * (SIGMA * SIGMA / 2.0).exp();
        }
    }

    /// Every pod's share of every configured rate.
    fn flows(&self, cluster: &dyn Cluster) -> Vec<Flow> {
        let services = cluster.list(Kind::Service, None);
        let pods: Vec<Value> = cluster
            .list(Kind::Pod, None)
            .into_iter()
            .filter(is_serving)
            .collect();
        let mut flows = Vec::new();
        let to_service = |ns: &str, service: &str, rps: f64, flows: &mut Vec<Flow>| {
            let Some(svc) = services
                .iter()
                .find(|s| obj::namespace(s) == Some(ns) && obj::name(s) == service)
            else {
                return;
            };
            let backends: Vec<&Value> = pods
                .iter()
                .filter(|p| obj::namespace(p) == Some(ns) && selects(svc, p))
                .collect();
            if backends.is_empty() {
                return;
            }
            let share = rps / backends.len() as f64;
            for pod in backends {
                flows.push(self.flow(pod, service, share));
            }
        };
        for route in cluster.list(Kind::HttpRoute, None) {
            let (Some(rps), Some(ns)) = (rate(&route), obj::namespace(&route)) else {
                continue;
            };
            let rules = route
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let per_rule = rps / rules.len().max(1) as f64;
            for rule in &rules {
                let refs = rule
                    .get("backendRefs")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let weight = |r: &Value| r.get("weight").and_then(Value::as_f64).unwrap_or(1.0);
                let total: f64 = refs.iter().map(weight).sum();
                if total <= 0.0 {
                    continue;
                }
                for r in &refs {
                    let kind = r.get("kind").and_then(Value::as_str).unwrap_or("Service");
                    let Some(name) = r.get("name").and_then(Value::as_str) else {
                        continue;
                    };
                    if kind != "Service" {
                        continue;
                    }
                    let backend_ns = r.get("namespace").and_then(Value::as_str).unwrap_or(ns);
                    to_service(backend_ns, name, per_rule * weight(r) / total, &mut flows);
                }
            }
        }
        for vs in cluster.list(Kind::VirtualService, None) {
            let (Some(rps), Some(ns)) = (rate(&vs), obj::namespace(&vs)) else {
                continue;
            };
            let http = vs
                .pointer("/spec/http")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let per_route = rps / http.len().max(1) as f64;
            for h in &http {
                let dests = h
                    .get("route")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let lone = dests.len() == 1;
                let weight = |d: &Value| {
                    d.get("weight").and_then(Value::as_f64).unwrap_or(if lone {
                        100.0
                    } else {
                        0.0
                    })
                };
                let total: f64 = dests.iter().map(weight).sum();
                if total <= 0.0 {
                    continue;
                }
                for d in &dests {
                    let Some(host) = d.pointer("/destination/host").and_then(Value::as_str) else {
                        continue;
                    };
                    let mut parts = host.split('.');
                    let service = parts.next().unwrap_or(host);
                    let host_ns = parts.next().unwrap_or(ns);
                    to_service(host_ns, service, per_route * weight(d) / total, &mut flows);
                }
            }
        }
        for svc in &services {
            let (Some(rps), Some(ns)) = (rate(svc), obj::namespace(svc)) else {
                continue;
            };
            to_service(ns, obj::name(svc), rps, &mut flows);
        }
        flows
    }

    fn flow(&self, pod: &Value, service: &str, rps: f64) -> Flow {
        let annotation =
            |key: &str| obj::annotation(pod, key).and_then(|v| v.trim().parse::<f64>().ok());
        let image = pod
            .pointer("/spec/containers/0/image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let by_image = self.behaviors.get(&image).copied().unwrap_or_default();
        let behavior = Behavior {
            error_rate: annotation(ERROR_RATE).unwrap_or(by_image.error_rate),
            latency_ms: annotation(LATENCY_MS).unwrap_or(by_image.latency_ms),
        };
        let app = obj::at(pod, &["metadata", "labels", "app"])
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Flow {
            namespace: obj::namespace(pod).unwrap_or_default().to_owned(),
            pod: obj::name(pod).to_owned(),
            workload: workload(pod),
            service: service.to_owned(),
            app,
            rps,
            behavior,
        }
    }

    /// The metrics, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Istio's destination-side series, per workload.
        let mut by_workload: BTreeMap<(String, String, String), Served> = BTreeMap::new();
        for ((ns, _), s) in &self.served {
            let w = by_workload
                .entry((ns.clone(), s.workload.clone(), s.service.clone()))
                .or_default();
            w.ok += s.ok;
            w.errors += s.errors;
            w.sum_ms += s.sum_ms;
            for (a, b) in w.buckets.iter_mut().zip(s.buckets) {
                *a += b;
            }
        }
        let _ = writeln!(
            out,
            "# HELP istio_requests_total Requests to a workload, counted by its destination proxy (kubesim traffic model).\n# TYPE istio_requests_total counter"
        );
        for ((ns, workload, service), s) in &by_workload {
            for (code, n) in [("200", s.ok), ("500", s.errors)] {
                let _ = writeln!(
                    out,
                    "istio_requests_total{{reporter=\"destination\",destination_workload=\"{workload}\",destination_workload_namespace=\"{ns}\",destination_service_name=\"{service}\",response_code=\"{code}\"}} {}",
                    n.floor()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP istio_request_duration_milliseconds Request duration at the destination proxy (kubesim traffic model).\n# TYPE istio_request_duration_milliseconds histogram"
        );
        for ((ns, workload, _), s) in &by_workload {
            let labels = format!(
                "reporter=\"destination\",destination_workload=\"{workload}\",destination_workload_namespace=\"{ns}\""
            );
            histogram(
                &mut out,
                "istio_request_duration_milliseconds",
                &labels,
                s,
                1.0,
            );
        }
        let _ = writeln!(
            out,
            "# HELP http_request_duration_seconds Request duration as the application measures it (kubesim traffic model).\n# TYPE http_request_duration_seconds histogram"
        );
        for ((ns, pod), s) in &self.served {
            for (status, share) in [("200", ok_share(s)), ("500", 1.0 - ok_share(s))] {
                let part = scaled(s, share);
                let labels = format!(
                    "kubernetes_namespace=\"{ns}\",kubernetes_pod_name=\"{pod}\",app=\"{}\",status=\"{status}\"",
                    s.app
                );
                histogram(
                    &mut out,
                    "http_request_duration_seconds",
                    &labels,
                    &part,
                    0.001,
                );
            }
        }
        out
    }
}

/// The share of a pod's requests that were answered 200.
fn ok_share(s: &Served) -> f64 {
    let total = s.ok + s.errors;
    if total <= 0.0 { 1.0 } else { s.ok / total }
}

/// `s` with every count multiplied by `share`.
fn scaled(s: &Served, share: f64) -> Served {
    let mut out = s.clone();
    out.ok = (s.ok + s.errors) * share;
    out.errors = 0.0;
    out.sum_ms = s.sum_ms * share;
    for b in &mut out.buckets {
        *b *= share;
    }
    out
}

/// A histogram's `_bucket`, `_sum` and `_count` lines; `unit` converts milliseconds.
fn histogram(out: &mut String, name: &str, labels: &str, s: &Served, unit: f64) {
    let count = (s.ok + s.errors).floor();
    for (le, n) in BUCKETS_MS.iter().zip(s.buckets) {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {}",
            le * unit,
            n.floor().min(count)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", s.sum_ms * unit);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// The `kubesim.io/rps` annotation, when positive.
fn rate(o: &Value) -> Option<f64> {
    obj::annotation(o, RPS)
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0)
}

/// A pod that takes traffic: running, ready, not being deleted.
fn is_serving(pod: &Value) -> bool {
    !obj::is_being_deleted(pod)
        && obj::str_at(pod, &["status", "phase"]) == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Ready")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
}

/// Whether the Service's selector picks the pod.
fn selects(service: &Value, pod: &Value) -> bool {
    let Some(selector) = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    selector
        .iter()
        .all(|(k, v)| obj::at(pod, &["metadata", "labels", k.as_str()]) == Some(v))
}

/// The pod's workload: its Deployment (the ReplicaSet `<deployment>-<pod-template-hash>`
/// that owns it), else its own name.
fn workload(pod: &Value) -> String {
    let hash = obj::at(pod, &["metadata", "labels", "pod-template-hash"]).and_then(Value::as_str);
    let owner = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("kind").and_then(Value::as_str) == Some("ReplicaSet"))
        })
        .and_then(|r| r.get("name").and_then(Value::as_str));
    match (owner, hash) {
        (Some(rs), Some(hash)) => rs
            .strip_suffix(hash)
            .and_then(|s| s.strip_suffix('-'))
            .unwrap_or(rs)
            .to_owned(),
        _ => obj::name(pod).to_owned(),
    }
}

/// P(latency <= x) for a log-normal with this median and [`SIGMA`].
fn lognormal_cdf(x: f64, median: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let z = (x.ln() - median.ln()) / (SIGMA * std::f64::consts::SQRT_2);
    0.5 * (1.0 + erf(z))
}

/// The error function (Abramowitz and Stegun 7.1.26, error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    sign * y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_distribution_has_its_median_where_asked() {
        assert!((lognormal_cdf(100.0, 100.0) - 0.5).abs() < 1e-6);
        assert!(lognormal_cdf(250.0, 100.0) > 0.98);
        assert!(lognormal_cdf(50.0, 100.0) < 0.05);
        assert!((erf(0.5) - 0.520_499_877_8).abs() < 1e-6);
        assert!((erf(-1.0) + 0.842_700_792_9).abs() < 1e-6);
    }
}
