//! firebreak ingest: the HTTP endpoints that turn webhooks and manual triggers into events on
//! the bus.
//!
//! Start at [`router`] (the routes) and [`IngestState`] (what the binary hands in); the handlers
//! are in `handlers`, the JSON error shape in [`ApiError`].
//!
//! | route | answers |
//! |---|---|
//! | `POST /v1/alertmanager` | 202 `{"accepted": [ids]}` once every event is durable on the bus |
//! | `POST /v1/trigger` | 202 `{"accepted": [id], "actor": ...}` once the event is durable |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the bus and the engine are ready, else 503 |
//! | `GET /metrics` | Prometheus text format |
//!
//! Both POST routes take only `Content-Type: application/json` (else 415
//! `unsupported_media_type`: a browser can send a form or text/plain cross-site without a CORS
//! preflight) and refuse what a browser marks as cross-site (`Sec-Fetch-Site: cross-site` or
//! `same-site`, or an `Origin` other than this server: 403 `cross_site`), before reading the body.
//!
//! Every error is JSON `{"error": {"code": "...", "message": "..."}}`: malformed JSON → 400
//! `malformed_json`, a JSON body that is not the expected shape → 400 `invalid_request`, wrong
//! webhook `version` → 422 `unsupported_version`, body over the limit → 413 `body_too_large`
//! (one alert over the bus's message limit → 413 `event_too_large`),
//! unknown runbook (to an authenticated caller) → 404 `unknown_runbook`, params that do not fit the manifest → 422
//! `invalid_params` (naming the param), missing or wrong token → 401 `unauthorized`, not a
//! member of the runbook's owner team, or a namespace param outside the runbook's → 403 `forbidden`, bus unavailable → 503
//! `bus_unavailable`, engine not ready (its audit journal cannot write) → 503 `not_ready` (both
//! with `Retry-After`), so Alertmanager retries and nothing answered 2xx is ever lost.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use firebreak_bus::Bus;
use metrics_exporter_prometheus::PrometheusHandle;

mod error;
mod handlers;

pub use error::ApiError;
pub use handlers::browser_guard;

/// Decides whether the caller of `POST /v1/trigger` may run a runbook.
///
/// Arguments: the bearer token sent (if any) and the runbook name the body asks for. The token
/// is checked first, so an unauthenticated caller learns nothing about which runbooks exist
/// ([`Refused::Unauthenticated`] before [`Refused::UnknownRunbook`]). Returns the actor to
/// record: the identity the token belongs to, never a name the body gives.
pub type AuthorizeTrigger =
    Arc<dyn Fn(Option<&str>, &str) -> Result<String, Refused> + Send + Sync>;

/// Checks a trigger against the runbook's manifest before it is accepted: `Ok` or why not.
/// Arguments: the authenticated actor (for the audit of a refusal), the runbook, the params.
pub type ValidateTrigger = Arc<
    dyn Fn(&str, &str, &serde_json::Map<String, serde_json::Value>) -> Result<(), Invalid>
        + Send
        + Sync,
>;

/// Why a trigger does not fit the runbook it names ([`ValidateTrigger`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// No runbook of that name is loaded: 404.
    #[error("{0}")]
    UnknownRunbook(String),
    /// A param is unknown, missing or of the wrong type: 422, naming the field.
    #[error("param `{field}`: {reason}")]
    Param { field: String, reason: String },
    /// The params ask for something the runbook may not touch (a namespace outside its
    /// list): 403.
    #[error("{0}")]
    Forbidden(String),
}

/// Why a trigger was refused by [`AuthorizeTrigger`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No token, or a token that belongs to no one: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// An authenticated caller names a runbook that is not loaded: 404.
    #[error("{0}")]
    UnknownRunbook(String),
    /// A known member who may not run this runbook (not in its owner team): 403.
    #[error("{0}")]
    Forbidden(String),
}

/// Everything the routes need. Built by the binary, cloned into each request.
#[derive(Clone)]
pub struct IngestState {
    /// Where accepted events go; a 2xx is sent only after `publish` returned `Ok`.
    pub bus: Arc<dyn Bus>,
    /// When set (and not empty), `POST /v1/alertmanager` requires `Authorization: Bearer
    /// <token>` (what Alertmanager's `http_config.authorization.credentials` sends).
    pub alertmanager_token: Option<String>,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Whether the trigger fits a loaded runbook (404 for an unknown one, 422 for bad params),
    /// checked before it is accepted, so `202` means it will run.
    pub validate_trigger: ValidateTrigger,
    /// Who may trigger what; see [`AuthorizeTrigger`].
    pub authorize_trigger: AuthorizeTrigger,
    /// Renders `/metrics`. The binary installs the recorder; ingest records through the
    /// `metrics` facade.
    pub metrics: PrometheusHandle,
    /// Whether the rest of the engine is ready (runbooks loaded, consumer running, the audit
    /// journal writable); `/readyz` also requires `bus.ready()`. While it is `false`, alerts and
    /// triggers are answered 503: nothing is accepted that could not be journaled.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Default body limit: 4 MiB, far above any Alertmanager notification of a sane group.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// The ingest routes, ready for `axum::serve`.
pub fn router(state: IngestState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/alertmanager", post(handlers::alertmanager))
        .route("/v1/trigger", post(handlers::trigger))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Routes {
            ingest: state,
            meters: Arc::default(),
        })
}

/// The routes' state: what the binary gave, and the handles of the metrics each request
/// moves.
#[derive(Clone)]
struct Routes {
    ingest: IngestState,
    meters: Arc<handlers::Meters>,
}

impl axum::extract::FromRef<Routes> for IngestState {
    fn from_ref(routes: &Routes) -> IngestState {
        routes.ingest.clone()
    }
}

impl axum::extract::FromRef<Routes> for Arc<handlers::Meters> {
    fn from_ref(routes: &Routes) -> Arc<handlers::Meters> {
        routes.meters.clone()
    }
}
