//! Admin endpoints under `/_sim/` (not Kubernetes API): reported version, clock, watch-window
//! expiry, node readiness, per-image faults, controller delays, per-image traffic behavior
//! (error rate, latency), held-back answers (a write committed whose answer waits, for
//! clients' crash tests), the request log.
//!
//! Start at [`handle`]; the table of endpoints is its `match`. Bodies are JSON; answers are JSON.
//! Every change runs the controllers before answering.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::Method;
use serde_json::{Value, json};

use crate::api::{Req, ok_json};
use crate::hook::Fault;
use crate::sim::{Inner, Sim};
use crate::status::ApiError;
use crate::store::format_time;

fn body(req: &Req) -> Result<Value, ApiError> {
    if req.body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("admin body is not JSON: {e}")))
}

fn state(inner: &Inner) -> Value {
    json!({
        "version": inner.version,
        "resourceVersion": inner.store.current_rv().to_string(),
        "oldestWatchableResourceVersion": inner.store.oldest_watchable().to_string(),
        "now": format_time(inner.store.clock.now()),
        "frozen": inner.store.clock.is_frozen(),
        "podReadyDelayMs": inner.controllers.pod_ready_delay.as_millis() as u64,
        "podStartDelayMs": inner.controllers.pod_start_delay.as_millis() as u64,
        "notReadyNodes": inner.controllers.not_ready_nodes,
        "imageFaults": inner.controllers.image_faults.iter().map(|(k, v)| (k.clone(), json!(format!("{v:?}")))).collect::<serde_json::Map<_, _>>(),
    })
}

/// Serves `/_sim/<rest>`.
pub(crate) fn handle(sim: &Sim, req: &Req, rest: &[&str]) -> Response {
    match dispatch(sim, req, rest) {
        Ok(v) => ok_json(&v),
        Err(e) => e.into_response(),
    }
}

fn dispatch(sim: &Sim, req: &Req, rest: &[&str]) -> Result<Value, ApiError> {
    let m = &req.method;
    match (m, rest) {
        (&Method::GET, ["state"]) => Ok(state(&sim.lock())),
        (&Method::POST | &Method::PUT, ["version"]) => {
            let b = body(req)?;
            let v = b
                .get("gitVersion")
                .and_then(Value::as_str)
                .filter(|v| v.starts_with('v') && v.split('.').count() >= 2);
            let v = v.ok_or_else(|| ApiError::bad_request("gitVersion must look like v1.32.4"))?;
            let mut inner = sim.lock();
            inner.version = v.to_string();
            Ok(state(&inner))
        }
        (&Method::POST, ["clock"]) => {
            let b = body(req)?;
            let mut inner = sim.lock();
            if let Some(freeze) = b.get("freeze") {
                let f = freeze
                    .as_bool()
                    .ok_or_else(|| ApiError::bad_request("freeze must be a boolean"))?;
                inner.store.clock.freeze(f);
            }
            if let Some(at) = b.get("set") {
                let t = at
                    .as_str()
                    .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                    .ok_or_else(|| ApiError::bad_request("set must be an RFC 3339 time"))?;
                inner.store.clock.set(t);
            }
            if let Some(secs) = b.get("advanceSeconds") {
                let s = secs
                    .as_f64()
                    .filter(|s| s.is_finite())
                    .ok_or_else(|| ApiError::bad_request("advanceSeconds must be a number"))?;
                let d = jiff::SignedDuration::try_from_secs_f64(s)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                inner.store.clock.advance(d);
            }
            inner.reconcile();
            Ok(state(&inner))
        }
        (&Method::POST, ["compact"]) => {
            let mut inner = sim.lock();
            inner.store.compact();
            inner.watch_reset.cancel();
            inner.watch_reset = tokio_util::sync::CancellationToken::new();
            Ok(state(&inner))
        }
        (&Method::POST, ["reconcile"]) => {
            let mut inner = sim.lock();
            inner.reconcile();
            Ok(state(&inner))
        }
        (&Method::POST, ["nodes", name, "ready"]) => {
            let b = body(req)?;
            let ready = b
                .get("ready")
                .and_then(Value::as_bool)
                .ok_or_else(|| ApiError::bad_request("ready must be a boolean"))?;
            let mut inner = sim.lock();
            let node_rt = crate::resources::by_kind("v1", "Node").expect("nodes are served");
            inner.store.get_resource(node_rt, None, name)?;
            inner.controllers.not_ready_nodes.retain(|n| n != name);
            if !ready {
                inner.controllers.not_ready_nodes.push(name.to_string());
            }
            inner.reconcile();
            Ok(state(&inner))
        }
        (&Method::POST, ["faults"]) => {
            let b = body(req)?;
            let image = b
                .get("image")
                .and_then(Value::as_str)
                .filter(|i| !i.is_empty());
            let image = image
                .ok_or_else(|| ApiError::bad_request("image is required"))?
                .to_string();
            let mut inner = sim.lock();
            match b.get("fault") {
                None | Some(Value::Null) => {
                    inner.controllers.image_faults.remove(&image);
                }
                Some(f) => {
                    let text = f.as_str().unwrap_or_default();
                    let fault = Fault::parse(text).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "unknown fault {text:?}: use crashloop, never-ready, slow-ready=<ms> or oomkilled"
                        ))
                    })?;
                    inner.controllers.image_faults.insert(image, fault);
                }
            }
            inner.reconcile();
            Ok(state(&inner))
        }
        (&Method::POST, ["config"]) => {
            let b = body(req)?;
            let ms = |k: &str| -> Result<Option<Duration>, ApiError> {
                match b.get(k) {
                    None => Ok(None),
                    Some(v) => v
                        .as_u64()
                        .map(|ms| Some(Duration::from_millis(ms)))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!("{k} must be a non-negative integer"))
                        }),
                }
            };
            let (ready, start) = (ms("podReadyDelayMs")?, ms("podStartDelayMs")?);
            let mut inner = sim.lock();
            if let Some(d) = ready {
                inner.controllers.pod_ready_delay = d;
            }
            if let Some(d) = start {
                inner.controllers.pod_start_delay = d;
            }
            inner.reconcile();
            Ok(state(&inner))
        }
        (&Method::POST, ["apply"]) => {
            let text =
                std::str::from_utf8(&req.body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let objs = sim.apply_yaml(text).map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                ApiError::bad_request(msg)
            })?;
            Ok(json!({"applied": objs.len()}))
        }
        (&Method::GET, ["traffic"]) => {
            let inner = sim.lock();
            Ok(
                json!({"behaviors": inner.traffic.behaviors.iter().map(|(image, b)| {
                (image.clone(), json!({"errorRate": b.error_rate, "latencyMs": b.latency_ms}))
            }).collect::<serde_json::Map<_, _>>()}),
            )
        }
        (&Method::POST, ["traffic"]) => {
            let b = body(req)?;
            let image = b
                .get("image")
                .and_then(Value::as_str)
                .filter(|i| !i.is_empty())
                .ok_or_else(|| ApiError::bad_request("image is required"))?
                .to_owned();
            let number = |k: &str, default: f64| -> Result<f64, ApiError> {
                match b.get(k) {
                    None => Ok(default),
                    Some(v) => v
                        .as_f64()
                        .filter(|n| n.is_finite() && *n >= 0.0)
                        .ok_or_else(|| ApiError::bad_request(format!("{k} must be a number >= 0"))),
                }
            };
            let behavior = crate::traffic::Behavior {
                error_rate: number("errorRate", 0.0)?.min(1.0),
                latency_ms: number("latencyMs", 40.0)?,
            };
            let mut inner = sim.lock();
            let now = std::time::Instant::now();
            let Inner { traffic, store, .. } = &mut *inner;
            traffic.advance(store, now);
            traffic.behaviors.insert(image, behavior);
            Ok(json!({"errorRate": behavior.error_rate, "latencyMs": behavior.latency_ms}))
        }
        (&Method::POST, ["delay-answers"]) => {
            let b = body(req)?;
            let text = |k: &str| {
                b.get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request(format!("{k} is required")))
            };
            let delay = b
                .get("ms")
                .and_then(Value::as_u64)
                .ok_or_else(|| ApiError::bad_request("ms must be a non-negative integer"))?;
            let count = b.get("count").and_then(Value::as_u64).unwrap_or(1);
            let fault = crate::sim::AnswerDelay {
                method: text("method")?.to_ascii_uppercase(),
                path: text("path")?,
                delay: Duration::from_millis(delay),
                count: u32::try_from(count).unwrap_or(u32::MAX),
            };
            sim.lock().answer_delays.push(fault);
            Ok(json!({"held": count}))
        }
        (&Method::GET, ["requests"]) => Ok(json!(sim.lock().audit.iter().collect::<Vec<_>>())),
        (&Method::DELETE, ["requests"]) => {
            sim.lock().audit.clear();
            Ok(json!({}))
        }
        _ => Err(ApiError::no_route()),
    }
}
