//! The HTTP side: one GET against Prometheus's HTTP API per call, its answer unwrapped from
//! the `{status, data, warnings}` envelope, and every failure turned into an [`Error`] whose
//! kind the runtime can act on.
//!
//! Start at [`Api::get`]; [`Api::query`], [`Api::query_range`] and [`Api::alerts`] are the
//! three endpoints the actions use. Nothing here retries: the runtime does, by kind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::debug;

use crate::Error;
use crate::result::{Answer, QueryData, SampleValue, parse_value};
use crate::time::{duration_to_api, to_api};

/// The per-request timeout when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read when none is configured: far above any evidence a runbook should
/// journal, far below what would hurt the engine.
pub const DEFAULT_MAX_BODY: usize = 32 << 20;

/// How much of a non-Prometheus error body is kept for the message.
const BODY_EXCERPT: usize = 200;

/// A client for one Prometheus server's HTTP API.
#[derive(Clone)]
pub struct Api {
    /// Ends with `/`, so endpoint paths join below any path prefix (`http://host/prometheus/`).
    base: Url,
    /// `base` without credentials, for messages and logs.
    shown: String,
    http: reqwest::Client,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the base URL itself: it may carry credentials.
        f.debug_struct("Api")
            .field("base", &self.shown)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Prometheus's answer envelope (`web/api/v1/api.go`'s `Response`).
#[derive(Debug, Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

/// One alert as `/api/v1/alerts` reports it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `firing` or `pending` (Prometheus 2.x), plus `inactive` in newer versions.
    pub state: String,
    #[serde(default)]
    pub active_at: Option<String>,
    /// The value of the alert's expression when it last fired, as a number.
    #[serde(
        default,
        deserialize_with = "alert_value",
        serialize_with = "alert_value_out"
    )]
    pub value: Option<f64>,
}

fn alert_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| parse_value(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn alert_value_out<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    v.map(SampleValue).serialize(s)
}

#[derive(Debug, Deserialize)]
struct AlertsData {
    alerts: Vec<Alert>,
}

impl Api {
    /// A client for the Prometheus at `base_url` (`http://host:9090`, optionally with a path
    /// prefix), with the default per-request timeout.
    pub fn new(base_url: &str, http: reqwest::Client) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidBaseUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("no query string or fragment allowed"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut shown = base.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        Ok(Self {
            base,
            shown: shown.to_string(),
            http,
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
        })
    }

    /// Sets the per-request timeout (also sent to Prometheus as the query's own `timeout`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the largest answer read, in bytes; a larger one fails (Permanent) instead of
    /// being buffered.
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The `timeout` sent with each query: a little under ours, so a slow query ends with
    /// Prometheus's own "query timed out" answer rather than a dropped connection, and
    /// Prometheus stops evaluating it either way.
    fn server_timeout(&self) -> String {
        duration_to_api(self.timeout.mul_f64(0.9))
    }

    /// The base URL, ending with `/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// An instant query at `time` (Prometheus's "now" when absent).
    pub async fn query(
        &self,
        what: &str,
        promql: &str,
        time: Option<Timestamp>,
    ) -> Result<(Answer, Vec<String>), Error> {
        let mut params = vec![("query", promql.to_owned())];
        if let Some(t) = time {
            params.push(("time", to_api(t)));
        }
        params.push(("timeout", self.server_timeout()));
        let (data, warnings) = self.get(what, "api/v1/query", &params).await?;
        Ok((decode_query(what, data)?, warnings))
    }

    /// A range query from `start` to `end` every `step`.
    pub async fn query_range(
        &self,
        what: &str,
        promql: &str,
        start: Timestamp,
        end: Timestamp,
        step: Duration,
    ) -> Result<(Answer, Vec<String>), Error> {
        let params = [
            ("query", promql.to_owned()),
            ("start", to_api(start)),
            ("end", to_api(end)),
            ("step", duration_to_api(step)),
            ("timeout", self.server_timeout()),
        ];
        let (data, warnings) = self.get(what, "api/v1/query_range", &params).await?;
        Ok((decode_query(what, data)?, warnings))
    }

    /// Every alert the server's rules currently hold (firing and pending).
    pub async fn alerts(&self, what: &str) -> Result<Vec<Alert>, Error> {
        let (data, _) = self.get(what, "api/v1/alerts", &[]).await?;
        let data: AlertsData = serde_json::from_value(data).map_err(|source| Error::Decode {
            what: what.to_owned(),
            source,
        })?;
        Ok(data.alerts)
    }

    /// One GET; returns the envelope's `data` and `warnings`.
    pub async fn get(
        &self,
        what: &str,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<(Value, Vec<String>), Error> {
        let mut url = self.base.join(path).map_err(|e| Error::InvalidBaseUrl {
            url: self.base.to_string(),
            reason: e.to_string(),
        })?;
        if !params.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        }
        // reqwest's message would repeat the URL, query and credentials included; the
        // base URL without credentials says where we were going.
        let request_error = |source: reqwest::Error| Error::Request {
            what: format!("{what}: request to {} failed", self.shown),
            source: source.without_url(),
        };
        let started = Instant::now();
        // A child of the step's span when traces are exported (see firebreak_runtime::trace).
        let span = tracing::info_span!(
            target: "firebreak::trace",
            "HTTP",
            otel.name = %format!("GET {path}"),
            otel.kind = "client",
            http.request.method = "GET",
            url.path = %path,
            http.response.status_code = tracing::field::Empty,
        );
        let mut response = tracing::Instrument::instrument(
            self.http.get(url).timeout(self.timeout).send(),
            span.clone(),
        )
        .await
        .map_err(request_error)?;
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        let too_large = || Error::TooLarge {
            what: what.to_owned(),
            limit: self.max_body,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        debug!(
            prometheus = %self.shown,
            path,
            status = status.as_u16(),
            bytes = body.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "prometheus answered"
        );

        let envelope = serde_json::from_slice::<Envelope>(&body);
        match envelope {
            Ok(e) if e.status == "success" && status.is_success() => {
                let data = e.data.ok_or_else(|| Error::Decode {
                    what: what.to_owned(),
                    source: serde::de::Error::custom("a success answer without data"),
                })?;
                Ok((data, e.warnings))
            }
            Ok(e) if e.status == "error" => Err(Error::Prometheus {
                what: what.to_owned(),
                status: status.as_u16(),
                error_type: e.error_type.unwrap_or_else(|| "unknown".to_owned()),
                message: e.error.unwrap_or_default(),
            }),
            _ if !status.is_success() => Err(Error::Status {
                what: what.to_owned(),
                status: status.as_u16(),
                body: excerpt(&body),
            }),
            Ok(e) => Err(Error::Decode {
                what: what.to_owned(),
                source: serde::de::Error::custom(format!("unknown status {:?}", e.status)),
            }),
            Err(source) => Err(Error::Decode {
                what: what.to_owned(),
                source,
            }),
        }
    }
}

fn decode_query(what: &str, data: Value) -> Result<Answer, Error> {
    let data: QueryData = serde_json::from_value(data).map_err(|source| Error::Decode {
        what: what.to_owned(),
        source,
    })?;
    data.decode().map_err(|reason| Error::Unusable {
        what: what.to_owned(),
        reason,
    })
}

/// The start of a body, on one line, for an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > BODY_EXCERPT {
        text.chars().take(BODY_EXCERPT).chain(['…']).collect()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(url: &str) -> Result<Api, Error> {
        Api::new(url, reqwest::Client::builder().build().unwrap())
    }

    #[test]
    fn base_urls_keep_their_prefix_and_bad_ones_are_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let a = api("http://127.0.0.1:9090").unwrap();
        assert_eq!(
            a.base_url().join("api/v1/query").unwrap().as_str(),
            "http://127.0.0.1:9090/api/v1/query"
        );
        let a = api("https://mon.example/prometheus").unwrap();
        assert_eq!(
            a.base_url().join("api/v1/query").unwrap().as_str(),
            "https://mon.example/prometheus/api/v1/query"
        );
        for (url, reason) in [
            ("localhost:9090", "scheme"),
            ("ftp://host", "scheme"),
            ("not a url", "relative URL"),
            ("http://host/?x=1", "query string"),
        ] {
            let e = api(url).unwrap_err();
            assert!(matches!(e, Error::InvalidBaseUrl { .. }), "{url}");
            assert!(e.to_string().contains(reason), "{url}: {e}");
        }
    }

    #[test]
    fn credentials_never_reach_messages() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let a = api("https://firebreak:s3cret@mon.example/prom").unwrap();
        assert_eq!(a.shown, "https://mon.example/prom/");
        assert_eq!(
            a.base_url().password(),
            Some("s3cret"),
            "kept for basic auth"
        );
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn alerts_decode_with_numeric_values() {
        let data = serde_json::json!({"alerts": [{
            "labels": {"alertname": "ModelLatencyHigh", "severity": "page"},
            "annotations": {"summary": "p99 high"},
            "state": "firing",
            "activeAt": "2026-11-27T04:00:00.123Z",
            "value": "2.5e-01"
        }]});
        let data: AlertsData = serde_json::from_value(data).unwrap();
        let alert = &data.alerts[0];
        assert_eq!(alert.value, Some(0.25));
        assert_eq!(alert.labels["alertname"], "ModelLatencyHigh");
        let out = serde_json::to_value(alert).unwrap();
        assert_eq!(out["value"], serde_json::json!(0.25));
        assert_eq!(out["activeAt"], "2026-11-27T04:00:00.123Z");
    }

    #[test]
    fn error_bodies_are_excerpted_on_one_line() {
        assert_eq!(
            excerpt(b"<html>\n  <body>bad gateway</body>\n</html>"),
            "<html> <body>bad gateway</body> </html>"
        );
        let long = "x".repeat(500);
        assert_eq!(excerpt(long.as_bytes()).chars().count(), BODY_EXCERPT + 1);
    }
}
