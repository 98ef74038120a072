//! Slack and Mattermost stood in for by a local HTTP server that records what firebreak posts:
//! Slack's Web API (`/slack/api/chat.postMessage`, `/slack/api/chat.update`), Mattermost's REST
//! API (`/mm/api/v4/posts`), and response URLs (`/response/NAME`). It answers as they do
//! (`{"ok": true, "ts": …}`, a post with its `id`; `{"ok": false, "error":
//! "channel_not_found"}` for channel `CGONE`) and, when told to, throttles the next Slack
//! call with a 429 and `Retry-After: 1`. Requests made to Slack and Mattermost by the tests
//! themselves are signed here as Slack signs them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One request firebreak made to the stand-in.
#[derive(Debug, Clone)]
pub struct Posted {
    pub method: String,
    /// `slack/chat.postMessage`, `mm/posts`, `mm/posts/ID`, `response/NAME`.
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    posted: Vec<Posted>,
    next_id: u64,
    throttle_next: bool,
}

/// The stand-in server; stops when dropped.
pub struct ChatStandIn {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    _server: tokio::task::JoinHandle<()>,
}

impl ChatStandIn {
    pub async fn start() -> ChatStandIn {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/slack/api/{method}", axum::routing::post(slack))
            .route("/mm/api/v4/posts", axum::routing::post(mm))
            .route("/mm/api/v4/posts/{id}", axum::routing::put(mm_update))
            .route("/response/{name}", axum::routing::post(response))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the chat stand-in");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ChatStandIn {
            base: format!("http://{addr}"),
            inner,
            _server: server,
        }
    }

    /// Everything posted so far.
    pub fn posted(&self) -> Vec<Posted> {
        self.inner.lock().expect("stand-in lock").posted.clone()
    }

    /// The next Slack API call is answered 429 with `Retry-After: 1`.
    pub fn throttle_next_slack_call(&self) {
        self.inner.lock().expect("stand-in lock").throttle_next = true;
    }

    /// Texts posted (or updated) on `path`s starting with `prefix`, with their channel.
    pub fn texts(&self, prefix: &str) -> Vec<(String, String)> {
        self.posted()
            .into_iter()
            .filter(|p| p.path.starts_with(prefix))
            .map(|p| {
                let channel = p.body["channel"]
                    .as_str()
                    .or(p.body["channel_id"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let text = p.body["text"]
                    .as_str()
                    .or(p.body["message"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                (channel, text)
            })
            .collect()
    }
}

fn record(
    inner: &Mutex<Inner>,
    method: &Method,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
) -> u64 {
    let mut inner = inner.lock().expect("stand-in lock");
    inner.next_id += 1;
    inner.posted.push(Posted {
        method: method.to_string(),
        path,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
    inner.next_id
}

async fn slack(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let throttled = std::mem::take(&mut inner.lock().expect("stand-in lock").throttle_next);
    if throttled {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "").into_response();
    }
    let n = record(
        &inner,
        &Method::POST,
        format!("slack/{method}"),
        &headers,
        &body,
    );
    if headers.get("authorization").is_none() {
        return axum::Json(json!({"ok": false, "error": "not_authed"})).into_response();
    }
    let channel = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)["channel"].clone();
    // A channel the bot is not in, as Slack answers it: HTTP 200, `ok: false`.
    if channel == "CGONE" {
        return axum::Json(json!({"ok": false, "error": "channel_not_found"})).into_response();
    }
    axum::Json(json!({"ok": true, "channel": channel, "ts": format!("1700000000.{n:06}")}))
        .into_response()
}

async fn mm(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = record(&inner, &Method::POST, "mm/posts".into(), &headers, &body);
    (
        StatusCode::CREATED,
        axum::Json(json!({"id": format!("post{n}")})),
    )
        .into_response()
}

async fn mm_update(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(
        &inner,
        &Method::PUT,
        format!("mm/posts/{id}"),
        &headers,
        &body,
    );
    axum::Json(json!({"id": id})).into_response()
}

async fn response(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(
        &inner,
        &Method::POST,
        format!("response/{name}"),
        &headers,
        &body,
    );
    StatusCode::OK.into_response()
}

/// `v0=<hex>`: Slack's signature of `body` at `ts` with `secret`.
pub fn slack_signature(secret: &str, ts: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("v0:{ts}:{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

/// Posts a form `body` to `url` signed as Slack would sign it now; status and JSON answer.
pub async fn post_signed(url: &str, secret: &str, body: String) -> (u16, Value) {
    let ts = jiff::Timestamp::now().as_second();
    let resp = crate::http()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", slack_signature(secret, ts, &body))
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
