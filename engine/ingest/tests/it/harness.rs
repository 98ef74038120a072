//! Starts the ingest router on a free loopback port in front of a given bus, with a small
//! fixed team setup, and helpers to read what reached the bus.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use firebreak_bus::{Bus, Delivery, EmbeddedBus};
use firebreak_event::Event;
use firebreak_ingest::{IngestState, Refused, router};
use futures::StreamExt;
use futures::stream::BoxStream;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use tempfile::TempDir;

/// The body limit the test servers use.
pub const LIMIT: usize = 64 * 1024;
/// The Alertmanager token when a test turns auth on.
pub const AM_TOKEN: &str = "am-s3cret";

/// Members by token: (token, member, team).
const MEMBERS: &[(&str, &str, &str)] = &[
    ("tok-ann", "ann", "ml-platform"),
    ("tok-bob", "bob", "payments"),
];
/// Runbooks and their owner team.
const RUNBOOKS: &[(&str, &str)] = &[
    ("model-error-rate", "ml-platform"),
    ("refund-replay", "payments"),
];

/// The process-wide Prometheus recorder (the facade allows one per process).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("install recorder")
        })
        .clone()
}

fn authorize(token: Option<&str>, runbook: &str) -> Result<String, Refused> {
    let token = token.ok_or_else(|| Refused::Unauthenticated("missing bearer token".into()))?;
    let (_, member, team) = MEMBERS
        .iter()
        .find(|(t, _, _)| *t == token)
        .ok_or_else(|| Refused::Unauthenticated("unknown token".into()))?;
    let owner = RUNBOOKS
        .iter()
        .find(|(r, _)| *r == runbook)
        .map(|(_, o)| *o)
        .ok_or_else(|| {
            Refused::UnknownRunbook(format!("no runbook named {runbook:?} is loaded"))
        })?;
    if owner != *team {
        return Err(Refused::Forbidden(format!(
            "{member} is not a member of team {}, which owns {runbook}",
            owner
        )));
    }
    Ok((*member).to_owned())
}

/// The runbooks' params: `namespace` (a string) and `replicas` (an int), both optional;
/// anything else is unknown.
fn validate(
    _actor: &str,
    runbook: &str,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), firebreak_ingest::Invalid> {
    use firebreak_ingest::Invalid;
    if !RUNBOOKS.iter().any(|(r, _)| *r == runbook) {
        return Err(Invalid::UnknownRunbook(format!(
            "no runbook named {runbook:?} is loaded"
        )));
    }
    for (name, value) in params {
        match name.as_str() {
            "replicas" if value.is_i64() => {}
            "namespace" if value.is_string() => {}
            "namespace" => {
                return Err(Invalid::Param {
                    field: name.clone(),
                    reason: format!("must be a string, got {value}"),
                });
            }
            "replicas" => {
                return Err(Invalid::Param {
                    field: name.clone(),
                    reason: format!("must be an int, got {value}"),
                });
            }
            _ => {
                return Err(Invalid::Param {
                    field: name.clone(),
                    reason: "not a param of this runbook".into(),
                });
            }
        }
    }
    Ok(())
}

pub struct Server {
    pub base: String,
    pub http: reqwest::Client,
    pub bus: Arc<dyn Bus>,
    /// Set to false to make the engine report not ready.
    pub engine_ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reqwest client (installing the ring provider first, as every process must).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

impl Server {
    pub async fn start(bus: Arc<dyn Bus>, alertmanager_token: Option<&str>) -> Server {
        Server::start_with_limit(bus, alertmanager_token, LIMIT).await
    }

    pub async fn start_with_limit(
        bus: Arc<dyn Bus>,
        alertmanager_token: Option<&str>,
        max_body_bytes: usize,
    ) -> Server {
        let engine_ready = Arc::new(AtomicBool::new(true));
        let ready = Arc::clone(&engine_ready);
        let state = IngestState {
            bus: Arc::clone(&bus),
            alertmanager_token: alertmanager_token.map(str::to_owned),
            max_body_bytes,
            validate_trigger: Arc::new(validate),
            authorize_trigger: Arc::new(authorize),
            metrics: metrics_handle(),
            ready: Arc::new(move || ready.load(Ordering::SeqCst)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = router(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Server {
            base,
            http: client(),
            bus,
            engine_ready,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` as JSON to `path` with an optional bearer token; returns status and JSON.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("user-agent", "Alertmanager/0.25.0")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let json = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, json)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Asserts the server still serves: `/healthz` answers 200.
    pub async fn assert_serving(&self) {
        assert_eq!(
            self.get("/healthz").await.status(),
            200,
            "server stopped serving"
        );
    }
}

/// A server in front of a fresh embedded bus in a temp dir.
pub async fn embedded(token: Option<&str>) -> (Server, Arc<EmbeddedBus>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(EmbeddedBus::open(dir.path()).expect("open bus"));
    let server = Server::start(bus.clone(), token).await;
    (server, bus, dir)
}

/// The error code of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

/// The ids a 202 body lists.
pub fn accepted(body: &Value) -> Vec<String> {
    body["accepted"]
        .as_array()
        .unwrap_or_else(|| panic!("no accepted ids in {body}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Consumes from `bus` until every id in `want` was delivered (acking each); fails after 15 s.
/// Returns the events delivered, in order.
pub async fn drain(bus: &Arc<dyn Bus>, want: &BTreeSet<String>) -> Vec<Event> {
    let mut stream: BoxStream<'static, Result<Delivery, firebreak_bus::BusError>> =
        bus.consume().await.expect("consume");
    let mut seen = BTreeSet::new();
    let mut events = Vec::new();
    while !want.is_subset(&seen) {
        let item = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("events {:?} never reached the bus", want.difference(&seen))
            });
        let delivery = item.expect("stream open").expect("delivery");
        seen.insert(delivery.event.id.clone());
        events.push((*delivery.event).clone());
        delivery.ack().await.expect("ack");
    }
    events
}

/// Asserts nothing more is delivered for half a second.
pub async fn assert_bus_quiet(bus: &Arc<dyn Bus>) {
    let mut stream = bus.consume().await.expect("consume");
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        panic!(
            "unexpected event on the bus: {:?}",
            item.map(|d| d.event.id.clone())
        );
    }
}

/// A fixture body from `tests/it/fixtures/alertmanager/` (copied from Alertmanager 0.25).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures/alertmanager")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every fixture file name.
pub const FIXTURES: &[&str] = &[
    "webhook-firing.json",
    "webhook-resolved.json",
    "webhook-grouped-firing.json",
    "webhook-grouped-resolved.json",
    "webhook-api-posted-firing.json",
];
