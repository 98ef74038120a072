//! The route handlers. Each turns its input into events, publishes them, and answers 202 only
//! once the bus said every event is durable; every refusal is an [`ApiError`].

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use firebreak_bus::BusErrorKind;
use firebreak_event::manual::TriggerRequest;
use firebreak_event::{Event, alertmanager, manual};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::{ApiError, IngestState, Invalid, Refused};

type Accepted = (StatusCode, Json<Value>);

/// The body, or 413 when it is over the limit (and 400 when it could not be read).
fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("cannot read the request body: {rejection}"),
            )
        }
    })
}

/// A well-formed W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if there is one:
/// the trace of whatever sent the request, which the run's trace links to.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?.trim();
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "00000000000000000000000000000000")
        .then(|| value.to_ascii_lowercase())
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The browser guard of both POST routes: a JSON body (415 otherwise) from no other site (403).
/// A browser may send `text/plain` or a form to any address without asking first (no CORS
/// preflight), and marks what it sends on another page's behalf with `Sec-Fetch-Site` and
/// `Origin`; Alertmanager, curl and the CLI send neither.
pub fn browser_guard(headers: &HeaderMap) -> Result<(), ApiError> {
    let cross_site = |what: String| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            format!(
                "{what}: firebreak does not take requests a browser sends on another site's behalf"
            ),
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("?");
        if !matches!(site, "same-origin" | "none") {
            return cross_site(format!("Sec-Fetch-Site: {site}"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own = host
            .is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}"));
        if !own {
            return cross_site(format!("Origin: {origin}"));
        }
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    Ok(())
}

/// Compares in time that does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The handles of the metrics every request moves, registered at the first: a labelled
/// `counter!` builds its key, clones its labels and looks it up in the recorder's registry
/// at every call. One per router, so made once the binary's recorder is installed.
#[derive(Default)]
pub(crate) struct Meters {
    received: OnceLock<metrics::Counter>,
    alertmanager: RouteMeters,
    trigger: RouteMeters,
}

#[derive(Default)]
struct RouteMeters {
    publish_seconds: OnceLock<metrics::Histogram>,
    /// Events published, for the first source seen on the route (each route has one; any
    /// other goes through the macro).
    published: OnceLock<(String, metrics::Counter)>,
}

impl Meters {
    fn route(&self, route: &'static str) -> &RouteMeters {
        match route {
            "alertmanager" => &self.alertmanager,
            _ => &self.trigger,
        }
    }
}

/// Publishes and maps a bus failure to 503 (retry later) or 500.
async fn publish(
    state: &IngestState,
    meters: &Meters,
    route: &'static str,
    events: Vec<Event>,
) -> Result<(), ApiError> {
    let count = events.len() as u64;
    let sources: Vec<String> = events.iter().map(|e| e.source.clone()).collect();
    let started = Instant::now();
    let result = state.bus.publish(events).await;
    let meters = meters.route(route);
    meters
        .publish_seconds
        .get_or_init(|| metrics::histogram!("firebreak_ingest_publish_seconds", "route" => route))
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            for source in sources {
                let (first, counter) = meters.published.get_or_init(|| {
                    let counter = metrics::counter!("firebreak_ingest_events_published_total", "source" => source.clone());
                    (source.clone(), counter)
                });
                if *first == source {
                    counter.increment(1);
                } else {
                    metrics::counter!("firebreak_ingest_events_published_total", "source" => source)
                        .increment(1);
                }
            }
            debug!(route, count, "events published");
            Ok(())
        }
        Err(e @ firebreak_bus::BusError::EventTooLarge { .. }) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!("{e}; split the notification or shorten its annotations"),
        )),
        Err(e) => {
            warn!(route, count, error = %e, "publish failed");
            match e.kind() {
                BusErrorKind::Unavailable | BusErrorKind::Transient => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "bus_unavailable",
                    format!("the event bus cannot accept events right now ({e}); retry later"),
                )),
                BusErrorKind::Permanent => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "bus_error",
                    format!("the event bus refused the events: {e}"),
                )),
            }
        }
    }
}

fn accepted(ids: Vec<String>, extra: Option<(&str, Value)>) -> Accepted {
    let mut body = json!({ "accepted": ids });
    if let Some((key, value)) = extra {
        body[key] = value;
    }
    (StatusCode::ACCEPTED, Json(body))
}

/// 503 while the engine cannot journal runs (its audit journal cannot write): accepting now
/// would only pile up work it cannot do.
fn engine_ready(state: &IngestState) -> Result<(), ApiError> {
    if (state.ready)() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the engine cannot journal runs right now (see /readyz); retry later",
    ))
}

/// `POST /v1/alertmanager`: an Alertmanager v4 webhook, one event per alert.
pub(crate) async fn alertmanager(
    State(state): State<IngestState>,
    State(meters): State<Arc<Meters>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Accepted, ApiError> {
    browser_guard(&headers)?;
    // An empty configured token means none (an unset environment variable, say).
    if let Some(expected) = state
        .alertmanager_token
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        let ok =
            bearer(&headers).is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()));
        if !ok {
            let message = if headers.contains_key(header::AUTHORIZATION) {
                "the bearer token is not the configured alertmanager token"
            } else {
                "missing Authorization: Bearer header (set http_config.authorization in the alertmanager receiver)"
            };
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                message,
            ));
        }
    }
    engine_ready(&state)?;
    let raw = body(raw, state.max_body_bytes)?;
    let events = alertmanager::decode(&raw).map_err(|e| {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let code = match e {
            alertmanager::DecodeError::Malformed { .. } => "malformed_json",
            alertmanager::DecodeError::UnsupportedVersion(_) => "unsupported_version",
            alertmanager::DecodeError::Invalid(_) => "invalid_request",
        };
        ApiError::new(status, code, e.to_string())
    })?;
    meters
        .received
        .get_or_init(|| metrics::counter!("firebreak_ingest_alerts_received_total"))
        .increment(events.len() as u64);
    let mut events = events;
    if let Some(parent) = traceparent(&headers) {
        for event in &mut events {
            event.traceparent = Some(parent.clone());
        }
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    publish(&state, &meters, "alertmanager", events).await?;
    // Per-notification lines are debug: at thousands of alerts a second info would flood.
    debug!(alerts = ids.len(), "alertmanager notification accepted");
    Ok(accepted(ids, None))
}

/// The `Idempotency-Key` header: a retried trigger with the same key is the same event.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=128).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Idempotency-Key must be 1 to 128 visible ASCII characters",
            )
        })?;
    Ok(Some(key))
}

/// `POST /v1/trigger`: a person asks for a runbook to run.
pub(crate) async fn trigger(
    State(state): State<IngestState>,
    State(meters): State<Arc<Meters>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Accepted, ApiError> {
    browser_guard(&headers)?;
    let raw = body(raw, state.max_body_bytes)?;
    let request: TriggerRequest = serde_json::from_slice(&raw).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed json: {e}"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("not a trigger request: {e}"),
            )
        }
    })?;
    if request.runbook.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "runbook must not be empty",
        ));
    }
    let key = idempotency_key(&headers)?;
    // The token first, then the runbook: names cannot be probed without a token.
    let actor =
        (state.authorize_trigger)(bearer(&headers), &request.runbook).map_err(|refused| {
            match refused {
                Refused::Unauthenticated(m) => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
                }
                Refused::UnknownRunbook(m) => {
                    ApiError::new(StatusCode::NOT_FOUND, "unknown_runbook", m)
                }
                Refused::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            }
        })?;
    // Checked now, not when the run would start: 202 means it will run.
    (state.validate_trigger)(&actor, &request.runbook, &request.params).map_err(|invalid| {
        match invalid {
            Invalid::UnknownRunbook(m) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_runbook", m)
            }
            Invalid::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            Invalid::Param { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_params",
                invalid.to_string(),
            ),
        }
    })?;
    engine_ready(&state)?;
    let runbook = request.runbook.clone();
    let dry_run = request.dry_run;
    let mut event = manual::trigger(&request.runbook, request.params, &actor, dry_run);
    event.traceparent = traceparent(&headers);
    if let Some(key) = key {
        event.id = format!("trigger-{actor}-{key}");
    }
    let id = event.id.clone();
    publish(&state, &meters, "trigger", vec![event]).await?;
    info!(runbook = %runbook, actor = %actor, event_id = %id, dry_run, "manual trigger accepted");
    let (status, Json(mut body)) = accepted(vec![id], Some(("actor", Value::String(actor))));
    body["dry_run"] = Value::Bool(dry_run);
    Ok((status, Json(body)))
}

/// `GET /healthz`: the process is up and serving.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the bus can take events and the engine says it is ready.
pub(crate) async fn readyz(State(state): State<IngestState>) -> Response {
    let bus = state.bus.ready();
    let engine = (state.ready)();
    if bus && engine {
        return Json(json!({"status": "ready"})).into_response();
    }
    let what = match (bus, engine) {
        (false, false) => "the event bus and the engine are not ready",
        (false, true) => "the event bus is not ready",
        _ => "the engine is not ready",
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", what).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<IngestState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render() + &process_metrics(),
    )
        .into_response()
}

/// The standard `process_*` metrics (Prometheus client conventions), read from `/proc/self`
/// at each scrape; empty where there is no `/proc`.
fn process_metrics() -> String {
    // /proc reports CPU times in USER_HZ, 100 on every Linux architecture.
    const TICKS: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return String::new();
    };
    // Fields after the command name (which may hold spaces) from `) `: state is field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let (Some(utime), Some(stime), Some(threads), Some(start), Some(vsize), Some(rss_pages)) = (
        field(14),
        field(15),
        field(20),
        field(22),
        field(23),
        field(24),
    ) else {
        return String::new();
    };
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let page = 4096.0;
    format!(
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n\
         # HELP process_virtual_memory_bytes Virtual memory size in bytes.\n\
         # TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {vsize}\n\
         # HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
         # HELP process_max_fds Maximum number of open file descriptors.\n\
         # TYPE process_max_fds gauge\nprocess_max_fds {max_fds}\n\
         # HELP process_threads Number of OS threads in the process.\n\
         # TYPE process_threads gauge\nprocess_threads {threads}\n\
         # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n",
        (utime + stime) / TICKS,
        rss_pages * page,
        boot + start / TICKS,
    )
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /v1/alertmanager, /v1/trigger, /healthz, /readyz, /metrics",
    )
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(bearer(&headers), Some("s3cret"));
        headers.insert(header::AUTHORIZATION, "bearer  s3cret ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("s3cret"));
        headers.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
