//! firebreak's Prometheus connector (`prom::` in runbooks): PromQL queries as evidence and
//! metric checks that can say **inconclusive**.
//!
//! Start at [`PrometheusConnector`]: [`spec::actions`] describes every action, and
//! [`PrometheusConnector::call`](firebreak_connector::Connector::call) parses the arguments
//! and dispatches to [`actions`]. [`api`] talks HTTP to Prometheus, [`result`] decodes its
//! answers, [`check`] decides verdicts, [`time`] reads durations and instants, and [`error`]
//! maps every failure to an [`ErrorKind`](firebreak_connector::ErrorKind) (the runtime
//! retries by kind; nothing here retries).
//!
//! Every action is `Observe`: they read metrics and change nothing, so they also run in dry
//! runs and need no namespace check.

pub mod actions;
pub mod api;
pub mod check;
pub mod error;
pub mod result;
pub mod spec;
pub mod time;

use std::time::Duration;

use firebreak_connector::{ActionContext, ActionError, ActionSpec, Connector};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use api::{Api, DEFAULT_TIMEOUT};
pub use check::{CheckOutcome, Op, Verdict};
pub use error::Error;

/// The Prometheus connector: every `prom::` action, backed by one Prometheus server.
#[derive(Debug, Clone)]
pub struct PrometheusConnector {
    api: Api,
}

impl PrometheusConnector {
    /// A connector for the Prometheus at `base_url` (e.g. `http://prometheus:9090`, a path
    /// prefix is kept), sharing `http`. Each request is bounded by [`DEFAULT_TIMEOUT`].
    /// Fails on a URL that is not http(s) with a host.
    pub fn new(base_url: &str, http: reqwest::Client) -> Result<Self, Error> {
        Ok(Self {
            api: Api::new(base_url, http)?,
        })
    }

    /// Sets the per-request timeout; a request that takes longer fails with
    /// [`ErrorKind::Timeout`](firebreak_connector::ErrorKind::Timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.api = self.api.with_timeout(timeout);
        self
    }

    /// Sets the largest answer read, in bytes (default [`api::DEFAULT_MAX_BODY`]); a larger
    /// one fails as Permanent instead of being buffered.
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.api = self.api.with_max_body(bytes);
        self
    }

    /// The HTTP API client (for tests and the binary's health checks).
    pub fn api(&self) -> &Api {
        &self.api
    }

    async fn dispatch(
        &self,
        action: &str,
        args: serde_json::Map<String, Value>,
    ) -> Result<Value, Error> {
        let api = &self.api;
        let args = Value::Object(args);
        match action {
            "query" => actions::query(api, parse(action, args)?).await,
            "query_range" => actions::query_range(api, parse(action, args)?).await,
            "check" => actions::check(api, parse(action, args)?).await,
            "alerts" => actions::alerts(api, parse(action, args)?).await,
            other => Err(Error::UnknownAction(other.to_owned())),
        }
    }
}

/// Parses an action's named arguments into its typed argument struct.
fn parse<T: DeserializeOwned>(action: &str, args: Value) -> Result<T, Error> {
    serde_json::from_value(args).map_err(|source| Error::InvalidArgs {
        action: action.to_owned(),
        source,
    })
}

impl Connector for PrometheusConnector {
    fn name(&self) -> &'static str {
        "prom"
    }

    fn actions(&self) -> Vec<ActionSpec> {
        spec::actions()
    }

    fn call<'a>(
        &'a self,
        action: &'a str,
        args: serde_json::Map<String, Value>,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        async move {
            let result = self.dispatch(action, args).await;
            if let Err(e) = &result {
                tracing::warn!(run_id = %cx.run_id, action, kind = ?e.kind(), error = %e.message(), "prom action failed");
            }
            result.map_err(Error::into_action_error)
        }
        .boxed()
    }
}

/// The connector's entry point for the binary: `prom::` on the Prometheus at
/// `connectors.prometheus.url` (`FIREBREAK_PROMETHEUS_URL`); no URL, no connector.
pub struct Plugin;

impl firebreak_connector::plugin::Plugin for Plugin {
    fn module(&self) -> &'static str {
        "prom"
    }

    fn section(&self) -> &'static str {
        "prometheus"
    }

    fn doc(&self) -> &'static str {
        "PromQL queries as evidence and metric checks that answer pass, fail or inconclusive. \
         Every action only reads. On when `url` is set; each request is bounded by 10 s."
    }

    fn settings(&self) -> Vec<firebreak_connector::plugin::Setting> {
        vec![firebreak_connector::plugin::Setting {
            key: "url",
            doc: "base URL of the Prometheus HTTP API, e.g. http://prometheus:9090",
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
            Some((url, Some(http))) => PrometheusConnector::new(url, http.clone())
                .map(|c| Some(std::sync::Arc::new(c) as _))
                .map_err(|e| format!("prometheus.url {url}: {}", e.message())),
            _ => Ok(None),
        };
        Box::pin(std::future::ready(built))
    }
}
