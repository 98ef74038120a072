//! The run console at `/ui`: one page, built into the binary (no build step), over the same API
//! and tokens as everything else (`/v1/runs`, `/v1/runs/{id}` and its live `/events`,
//! `/v1/approvals`, approve / deny, `/v1/audit/verify`, export). A team's token sees its
//! team's runs; values the journal redacted were never stored, so no page can show them.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const PAGE: &str = include_str!("ui/index.html");

/// `/ui` and `/`.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page loads nothing from elsewhere and is never framed.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data: blob:; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        PAGE,
    )
        .into_response()
}
