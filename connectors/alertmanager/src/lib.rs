//! firebreak's Alertmanager connector (`am::` in runbooks), on Alertmanager's v2 API: a run can
//! silence the alert it is handling while it acts and lift the silence when it ends, and read
//! the alerts Alertmanager holds.
//!
//! Start at [`AlertmanagerConnector`] and [`spec::actions`]:
//! - `am::silence(matchers, duration, comment)`: `POST /api/v2/silences`, answering the id the
//!   server returned (an update may return a new one: always the returned id). Idempotent: the
//!   silence's comment carries a marker of the run and its matchers, so a retry or a resume
//!   finds the silence it made instead of making a second one.
//! - `am::expire(id)`: `DELETE /api/v2/silence/{id}`; an expired silence is left as it is.
//! - `am::alerts(filter)`: `GET /api/v2/alerts` with `filter=` matchers, as evidence.
//!
//! Matchers are a map of label → value (equality) or a list of Alertmanager matchers
//! (`alertname="X"`, `service=~"a|b"`, `env!="dev"`).

pub mod spec;

use std::time::Duration;

use firebreak_connector::{ActionContext, ActionError, ActionSpec, Connector, ErrorKind, Intent};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::info;

/// Longest a request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The Alertmanager connector, backed by one Alertmanager.
#[derive(Debug, Clone)]
pub struct AlertmanagerConnector {
    base: String,
    http: reqwest::Client,
}

impl AlertmanagerConnector {
    /// A connector for the Alertmanager at `base_url` (e.g. `http://alertmanager:9093`).
    pub fn new(base_url: &str, http: reqwest::Client) -> Result<Self, ActionError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ActionError::new(
                ErrorKind::Permanent,
                format!("alertmanager url {base_url:?} is not http(s)"),
            ));
        }
        Ok(Self { base, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `req` and reads a JSON answer (or `Null` for an empty body).
    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, ActionError> {
        // A child of the step's span when traces are exported (see firebreak_runtime::trace).
        let span = tracing::info_span!(
            target: "firebreak::trace",
            "HTTP",
            otel.name = %format!("alertmanager {what}"),
            otel.kind = "client",
            http.response.status_code = tracing::field::Empty,
        );
        let sent = tracing::Instrument::instrument(req.timeout(TIMEOUT).send(), span.clone()).await;
        if let Ok(resp) = &sent {
            span.record("http.response.status_code", resp.status().as_u16());
        }
        let resp = sent.map_err(|e| {
            let kind = if e.is_timeout() {
                ErrorKind::Timeout
            } else if e.is_connect() || e.is_request() {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            };
            ActionError::new(kind, format!("{what}: {e}"))
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| ActionError::new(ErrorKind::Transient, format!("{what}: {e}")))?;
        if !(200..300).contains(&status) {
            let kind = match status {
                404 => ErrorKind::NotFound,
                401 | 403 => ErrorKind::Denied,
                429 | 500..=599 => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            };
            return Err(ActionError::new(
                kind,
                format!("{what}: alertmanager answered {status}: {}", body.trim()),
            ));
        }
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body).map_err(|e| {
            ActionError::new(
                ErrorKind::Permanent,
                format!("{what}: alertmanager's answer is not JSON: {e}"),
            )
        })
    }

    /// The silences whose comment carries `marker`, not expired.
    async fn silences_marked(&self, marker: &str) -> Result<Vec<Value>, ActionError> {
        let all = self
            .send(
                self.http.get(self.url("/api/v2/silences")),
                "listing silences",
            )
            .await?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["comment"].as_str().is_some_and(|c| c.contains(marker)))
            .filter(|s| s["status"]["state"] != "expired")
            .cloned()
            .collect())
    }

    async fn plan_silence(
        &self,
        args: &Map<String, Value>,
        cx: &ActionContext,
    ) -> Result<Intent, ActionError> {
        let matchers = matchers(args.get("matchers").unwrap_or(&Value::Null))?;
        let duration = duration(args.get("duration").unwrap_or(&Value::Null))?;
        let comment = args
            .get("comment")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_owned();
        let digest = Sha256::digest(serde_json::to_vec(&matchers).unwrap_or_default());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let marker = format!("[firebreak run {} {hex}]", cx.run_id);
        let existing = self.silences_marked(&marker).await?;
        let shown = show_matchers(&matchers);
        let intent = Intent::new(
            format!("silence {shown} for {}s ({comment})", duration.as_secs()),
            json!({
                "matchers": matchers,
                "duration_s": duration.as_secs(),
                "comment": format!("{comment} {marker}").trim().to_owned(),
                "marker": marker,
                "id": existing.first().and_then(|s| s["id"].as_str()),
            }),
        );
        Ok(if existing.is_empty() {
            intent
        } else {
            intent.noop()
        })
    }

    async fn apply_silence(
        &self,
        intent: &Intent,
        cx: &ActionContext,
    ) -> Result<Value, ActionError> {
        let marker: String = intent.field("marker")?;
        let mut answer = Value::Object(intent.detail.clone());
        if let Some(existing) = self.silences_marked(&marker).await?.first() {
            answer["id"] = existing["id"].clone();
            answer["ends_at"] = existing["endsAt"].clone();
            answer["changed"] = json!(false);
            return Ok(answer);
        }
        let duration: u64 = intent.field("duration_s")?;
        let now = jiff::Timestamp::now();
        let ends = now + jiff::SignedDuration::from_secs(duration as i64);
        let body = json!({
            "matchers": intent.get("matchers"),
            "startsAt": now.to_string(),
            "endsAt": ends.to_string(),
            "createdBy": format!("firebreak ({})", cx.runbook),
            "comment": intent.get("comment"),
        });
        let created = self
            .send(
                self.http.post(self.url("/api/v2/silences")).json(&body),
                "creating a silence",
            )
            .await?;
        let id = created["silenceID"].as_str().ok_or_else(|| {
            ActionError::new(
                ErrorKind::Permanent,
                format!("alertmanager created a silence but returned no silenceID: {created}"),
            )
        })?;
        // Confirm the effect: the silence is there and active.
        let got = self
            .send(
                self.http.get(self.url(&format!("/api/v2/silence/{id}"))),
                "reading the silence",
            )
            .await?;
        if got["status"]["state"] != "active" && got["status"]["state"] != "pending" {
            return Err(ActionError::new(
                ErrorKind::Permanent,
                format!("silence {id} was created but is {}", got["status"]["state"]),
            ));
        }
        info!(run_id = %cx.run_id, silence = %id, "silence created");
        answer["id"] = json!(id);
        answer["ends_at"] = json!(ends.to_string());
        answer["changed"] = json!(true);
        Ok(answer)
    }

    async fn plan_expire(&self, args: &Map<String, Value>) -> Result<Intent, ActionError> {
        let id = silence_id(args)?;
        let got = self
            .send(
                self.http.get(self.url(&format!("/api/v2/silence/{id}"))),
                &format!("reading silence {id}"),
            )
            .await?;
        let state = got["status"]["state"].as_str().unwrap_or("?").to_owned();
        let intent = Intent::new(
            format!("expire silence {id} (now {state})"),
            json!({"id": id, "state": "expired", "was": state}),
        );
        Ok(if state == "expired" {
            intent.noop()
        } else {
            intent
        })
    }

    async fn apply_expire(
        &self,
        intent: &Intent,
        cx: &ActionContext,
    ) -> Result<Value, ActionError> {
        let id: String = intent.field("id")?;
        let mut answer = Value::Object(intent.detail.clone());
        let url = self.url(&format!("/api/v2/silence/{id}"));
        let got = self
            .send(self.http.get(&url), &format!("reading silence {id}"))
            .await?;
        if got["status"]["state"] == "expired" {
            answer["changed"] = json!(false);
            return Ok(answer);
        }
        self.send(self.http.delete(&url), &format!("expiring silence {id}"))
            .await?;
        let got = self
            .send(self.http.get(&url), &format!("reading silence {id}"))
            .await?;
        if got["status"]["state"] != "expired" {
            return Err(ActionError::new(
                ErrorKind::Permanent,
                format!(
                    "silence {id} was expired but reads {}",
                    got["status"]["state"]
                ),
            ));
        }
        info!(run_id = %cx.run_id, silence = %id, "silence expired");
        answer["changed"] = json!(true);
        Ok(answer)
    }

    async fn alerts(&self, args: &Map<String, Value>) -> Result<Value, ActionError> {
        let filter = match args.get("filter") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => matchers(v)?,
        };
        let query: Vec<String> = filter
            .iter()
            .map(|m| format!("filter={}", percent_encode(&matcher_text(m))))
            .collect();
        let url = if query.is_empty() {
            self.url("/api/v2/alerts")
        } else {
            self.url(&format!("/api/v2/alerts?{}", query.join("&")))
        };
        let all = self.send(self.http.get(url), "listing alerts").await?;
        let alerts: Vec<Value> = all
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                json!({
                    "labels": a["labels"], "annotations": a["annotations"],
                    "state": a["status"]["state"], "silenced_by": a["status"]["silencedBy"],
                    "starts_at": a["startsAt"], "fingerprint": a["fingerprint"],
                })
            })
            .collect();
        Ok(json!({"count": alerts.len(), "alerts": alerts}))
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn silence_id(args: &Map<String, Value>) -> Result<String, ActionError> {
    args.get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .map(str::to_owned)
        .ok_or_else(|| ActionError::new(ErrorKind::Permanent, "`id` must be a silence id (a UUID)"))
}

/// Alertmanager's matcher objects from a map (equality) or a list of matcher texts.
pub fn matchers(v: &Value) -> Result<Vec<Value>, ActionError> {
    let bad = |m: String| ActionError::new(ErrorKind::Permanent, m);
    let list: Vec<Value> = match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let value = v
                    .as_str()
                    .ok_or_else(|| bad(format!("matcher {k}: the value must be a string")))?;
                Ok(json!({"name": k, "value": value, "isRegex": false, "isEqual": true}))
            })
            .collect::<Result<_, ActionError>>()?,
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let text = item
                    .as_str()
                    .ok_or_else(|| bad(format!("matcher {item} is not a string")))?;
                parse_matcher(text).ok_or_else(|| {
                    bad(format!(
                        "matcher {text:?} is not `name=\"value\"` (or !=, =~, !~)"
                    ))
                })
            })
            .collect::<Result<_, ActionError>>()?,
        other => {
            return Err(bad(format!(
                "matchers must be a map or a list, got {other}"
            )));
        }
    };
    if list.is_empty() {
        return Err(bad("at least one matcher is needed".into()));
    }
    Ok(list)
}

/// `name="value"`, `name!="value"`, `name=~"regex"`, `name!~"regex"`.
fn parse_matcher(text: &str) -> Option<Value> {
    let text = text.trim();
    let at = text.find(['=', '!'])?;
    let name = text[..at].trim();
    let rest = &text[at..];
    let (op, value) = ["!~", "=~", "!=", "="]
        .iter()
        .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v)))?;
    let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some(json!({
        "name": name, "value": value,
        "isRegex": op.contains('~'), "isEqual": !op.starts_with('!'),
    }))
}

fn matcher_text(m: &Value) -> String {
    let op = match (m["isRegex"] == true, m["isEqual"] != false) {
        (false, true) => "=",
        (false, false) => "!=",
        (true, true) => "=~",
        (true, false) => "!~",
    };
    format!(
        "{}{op}\"{}\"",
        m["name"].as_str().unwrap_or_default(),
        m["value"].as_str().unwrap_or_default()
    )
}

fn show_matchers(ms: &[Value]) -> String {
    format!(
        "{{{}}}",
        ms.iter().map(matcher_text).collect::<Vec<_>>().join(", ")
    )
}

/// A duration: whole seconds, or `"90s"`, `"30m"`, `"2h"`
/// ([`firebreak_connector::parse_duration`]); between 1 s and 7 days.
pub fn duration(v: &Value) -> Result<Duration, ActionError> {
    let bad = |m: String| ActionError::new(ErrorKind::Permanent, format!("duration: {m}"));
    let secs = firebreak_connector::parse_duration(v)
        .map_err(bad)?
        .as_secs();
    if secs == 0 || secs > 7 * 24 * 3600 {
        return Err(bad(format!("{secs}s is out of range (1s to 7 days)")));
    }
    Ok(Duration::from_secs(secs))
}

impl Connector for AlertmanagerConnector {
    fn name(&self) -> &'static str {
        "am"
    }

    fn actions(&self) -> Vec<ActionSpec> {
        spec::actions()
    }

    fn call<'a>(
        &'a self,
        action: &'a str,
        args: Map<String, Value>,
        _cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        async move {
            match action {
                "alerts" => self.alerts(&args).await,
                other => Err(ActionError::new(
                    ErrorKind::Permanent,
                    format!("am::{other} is not an observing action"),
                )),
            }
        }
        .boxed()
    }

    fn plan<'a>(
        &'a self,
        action: &'a str,
        args: Map<String, Value>,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Intent, ActionError>> {
        async move {
            match action {
                "silence" => self.plan_silence(&args, cx).await,
                "expire" => self.plan_expire(&args).await,
                other => Err(ActionError::new(
                    ErrorKind::Permanent,
                    format!("am::{other} is not a mutating action"),
                )),
            }
        }
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        action: &'a str,
        _args: Map<String, Value>,
        intent: &'a Intent,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        async move {
            match action {
                "silence" => self.apply_silence(intent, cx).await,
                "expire" => self.apply_expire(intent, cx).await,
                other => Err(ActionError::new(
                    ErrorKind::Permanent,
                    format!("am::{other} is not a mutating action"),
                )),
            }
        }
        .boxed()
    }
}

/// The connector's entry point for the binary: `am::` on the Alertmanager at
/// `connectors.alertmanager.url` (`FIREBREAK_ALERTMANAGER_URL`); no URL, no connector.
pub struct Plugin;

impl firebreak_connector::plugin::Plugin for Plugin {
    fn module(&self) -> &'static str {
        "am"
    }

    fn section(&self) -> &'static str {
        "alertmanager"
    }

    fn doc(&self) -> &'static str {
        "Silences (create, expire) and the alerts Alertmanager holds, on its v2 API. On when \
         `url` is set; each request is bounded by 10 s. Its mutations name no namespace: with a \
         teams file, a team needs a `cluster_actions` grant for them."
    }

    fn settings(&self) -> Vec<firebreak_connector::plugin::Setting> {
        vec![firebreak_connector::plugin::Setting {
            key: "url",
            doc: "base URL of Alertmanager, e.g. http://alertmanager:9093",
        }]
    }

    fn actions(&self) -> Vec<ActionSpec> {
        spec::actions()
    }

    fn build<'a>(
        &'a self,
        cx: firebreak_connector::plugin::BuildContext<'a>,
    ) -> BoxFuture<'a, Result<Option<std::sync::Arc<dyn Connector>>, String>> {
        // Ask for the shared HTTP client only when configured: it is made on first use.
        let built = match cx
            .text("url")
            .map(|url| (url, cx.shared.get::<reqwest::Client>()))
        {
            Some((url, Some(http))) => AlertmanagerConnector::new(url, http.clone())
                .map(|c| Some(std::sync::Arc::new(c) as _))
                .map_err(|e| format!("alertmanager.url {url}: {}", e.message)),
            _ => Ok(None),
        };
        Box::pin(std::future::ready(built))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse_from_maps_and_texts() {
        let m = matchers(&json!([
            "alertname=\"X\"",
            "svc=~\"a|b\"",
            "env!=\"dev\"",
            "x!~\"y\""
        ]))
        .unwrap();
        let texts: Vec<String> = m.iter().map(matcher_text).collect();
        assert_eq!(
            texts,
            [
                "alertname=\"X\"",
                "svc=~\"a|b\"",
                "env!=\"dev\"",
                "x!~\"y\""
            ]
        );
        let m = matchers(&json!({"alertname": "X"})).unwrap();
        assert_eq!(m[0]["isEqual"], true);
        for bad in [
            json!([]),
            json!(["noquotes=x"]),
            json!(["=\"x\""]),
            json!(3),
        ] {
            assert!(matchers(&bad).is_err(), "{bad}");
        }
        assert_eq!(duration(&json!("30m")).unwrap(), Duration::from_secs(1800));
        assert!(duration(&json!("0s")).is_err());
        assert!(duration(&json!("8d")).is_err());
    }
}
