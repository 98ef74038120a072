//! The read API over the audit journal: `GET /v1/runs` (filter by team, runbook, status) and
//! `GET /v1/runs/{id}` (a run's records). One central audit, each team's view of it: a
//! member's token sees only its team's runs; the operator's `auth.api_token` sees every team's;
//! without a teams file the single tenant sees all (with `auth.api_token` when one is set).
//!
//! Approvals: `GET /v1/approvals` (the requests runs wait on), `POST /v1/runs/{id}/approve`
//! and `POST /v1/runs/{id}/deny` (`{"comment": "why", "seen": "what I was shown"}`). A
//! decision is a person's: a member's token (the operator's token is no one); without a teams
//! file the body names the `approver`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use firebreak_dispatch::Dispatcher;
use serde::Deserialize;
use serde_json::json;

/// Who is reading: every team, or one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Viewer {
    All,
    Team(String),
}

#[derive(Clone)]
struct ApiState {
    dispatcher: Arc<Dispatcher>,
    api_token: Option<String>,
}

/// The read routes, merged into the engine's router by `serve`.
pub fn router(dispatcher: Arc<Dispatcher>, api_token: Option<String>) -> axum::Router {
    axum::Router::new()
        .route("/v1/runs", get(list))
        .route("/v1/runs/{id}", get(show))
        .route("/v1/runs/{id}/approve", post(approve))
        .route("/v1/runs/{id}/deny", post(deny))
        .route("/v1/approvals", get(approvals))
        .route("/v1/runs/{id}/events", get(events))
        .route("/v1/runs/{id}/export", get(export))
        .route("/v1/audit/verify", get(verify_journal))
        .with_state(ApiState {
            dispatcher,
            api_token,
        })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The viewer the bearer token stands for, checked like a trigger's token.
fn viewer(state: &ApiState, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    let token = bearer(headers);
    let operator = |t: &str| {
        state.api_token.as_deref().is_some_and(|expected| {
            firebreak_matcher::teams::constant_time_eq(t.as_bytes(), expected.as_bytes())
        })
    };
    let loaded = state.dispatcher.runbooks.current();
    match (loaded.set.teams(), token) {
        (_, Some(t)) if operator(t) => Ok(Viewer::All),
        (Some(teams), Some(t)) => teams
            .member_by_token(t)
            .map(|(team, _)| Viewer::Team(team.name.clone()))
            .ok_or_else(|| Box::new(error(StatusCode::UNAUTHORIZED, "unknown api token"))),
        // Single tenant, loopback only (see `Config::exposure_problem`).
        (None, _) if state.api_token.is_none() => Ok(Viewer::All),
        _ => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (a member's token, or auth.api_token)",
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    team: Option<String>,
    runbook: Option<String>,
    /// `succeeded`, `failed`, `cancelled`, `timed_out`, or `running` (no end yet).
    status: Option<String>,
    /// Newest N (default 100, at most 1,000).
    limit: Option<usize>,
    /// Only runs started at or after this instant (RFC 3339).
    since: Option<jiff::Timestamp>,
}

async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameters: team, runbook, status, limit, since (RFC 3339)",
        );
    };
    let team = match (&viewer, q.team) {
        (Viewer::Team(own), Some(asked)) if *own != asked => {
            return error(
                StatusCode::FORBIDDEN,
                format!("your token is team {own}'s: it reads only that team's runs"),
            );
        }
        (Viewer::Team(own), _) => Some(own.clone()),
        (Viewer::All, asked) => asked,
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    let runs: Vec<_> = state
        .dispatcher
        .journal
        .runs()
        .into_iter()
        .filter(|r| team.as_ref().is_none_or(|t| r.team == *t))
        .filter(|r| q.runbook.as_ref().is_none_or(|rb| r.runbook == *rb))
        .filter(|r| q.since.is_none_or(|since| r.started >= since))
        .filter(|r| {
            q.status.as_deref().is_none_or(|s| match r.status {
                Some(status) => status.to_string() == s,
                None => s == "running",
            })
        })
        .collect();
    let newest = &runs[runs.len().saturating_sub(limit)..];
    Json(json!({"runs": newest, "total": runs.len()})).into_response()
}

async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match run_for(&state, &headers, &id).await {
        Ok((run, records)) => Json(json!({"run": run, "records": records})).into_response(),
        Err(response) => *response,
    }
}

/// A decision's body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    comment: Option<String>,
    seen: Option<String>,
    /// Without a teams file only: who decides.
    approver: Option<String>,
    /// `api` unless a client says it is the CLI.
    channel: Option<String>,
}

/// The person a request speaks for, as a decision's approver and teams.
fn decider(
    state: &ApiState,
    headers: &HeaderMap,
    named: Option<&str>,
) -> Result<(String, Option<Vec<String>>), Box<Response>> {
    let loaded = state.dispatcher.runbooks.current();
    let viewer = viewer(state, headers)?;
    match (loaded.set.teams(), viewer) {
        (Some(teams), Viewer::Team(_)) => {
            let token = bearer(headers).unwrap_or_default();
            let (_, member) = teams
                .member_by_token(token)
                .ok_or_else(|| Box::new(error(StatusCode::UNAUTHORIZED, "unknown api token")))?;
            Ok((member.name.clone(), Some(teams.teams_of(&member.name))))
        }
        (Some(_), Viewer::All) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "the operator token is not a person: approve or deny with a member's token",
        ))),
        (None, _) => match named.map(str::trim).filter(|n| !n.is_empty()) {
            Some(name) => Ok((name.to_owned(), None)),
            None => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "without a teams file, say who decides: {\"approver\": \"name\"}",
            ))),
        },
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

async fn approve(
    state: State<ApiState>,
    headers: HeaderMap,
    id: Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide(state, headers, id, body, true).await
}

async fn deny(
    state: State<ApiState>,
    headers: HeaderMap,
    id: Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide(state, headers, id, body, false).await
}

async fn decide(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
    approved: bool,
) -> Response {
    // A decision is a write: what a browser sends on another site's behalf is refused, as for
    // triggers.
    if let Err(refused) = firebreak_ingest::browser_guard(&headers) {
        return refused.into_response();
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let (approver, teams) = match decider(&state, &headers, body.approver.as_deref()) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let comment = body.comment.filter(|c| !c.trim().is_empty());
    if !approved && comment.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "a deny needs a reason: {\"comment\": \"why\"}",
        );
    }
    let channel = match body.channel.as_deref() {
        Some("cli") => "cli",
        _ => "api",
    };
    let decision = firebreak_runtime::Decision {
        approver,
        teams,
        approved,
        comment,
        channel: channel.to_owned(),
        seen: body.seen,
    };
    match state.dispatcher.decide(&id, decision).await {
        Ok(standing) => Json(standing).into_response(),
        Err(e) => error(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::CONFLICT),
            e.to_string(),
        ),
    }
}

/// The approval requests the viewer's team's runs wait on (all for the operator), and those
/// the viewer may decide on.
async fn approvals(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let loaded = state.dispatcher.runbooks.current();
    let member = match (&viewer, loaded.set.teams()) {
        (Viewer::Team(_), Some(teams)) => bearer(&headers)
            .and_then(|t| teams.member_by_token(t))
            .map(|(_, m)| (m.name.clone(), teams.teams_of(&m.name))),
        _ => None,
    };
    let mine = member.as_ref().map(|(_, teams)| teams.clone());
    let pending: Vec<_> = state
        .dispatcher
        .pending_approvals()
        .into_iter()
        .filter(|p| match (&viewer, &mine) {
            (Viewer::All, _) => true,
            (Viewer::Team(own), mine) => {
                p.team == *own
                    || mine
                        .as_ref()
                        .is_some_and(|m| m.iter().any(|t| p.approvers.contains(t)))
            }
        })
        .map(|p| {
            // What the page offers: the server decides anyway.
            let may_decide = match (&member, loaded.set.teams()) {
                (Some((name, teams)), _) => {
                    teams.iter().any(|t| p.approvers.contains(t))
                        && (p.self_approval || *name != p.requester)
                }
                // The operator's token is no one; a single tenant names who decides.
                (None, Some(_)) => false,
                (None, None) => true,
            };
            let mut value = serde_json::to_value(&p).expect("pending approvals serialize");
            value["may_decide"] = json!(may_decide);
            value
        })
        .collect::<Vec<_>>();
    Json(json!({ "approvals": pending })).into_response()
}

/// The run `id` as the caller may see it; the answer to give otherwise (401, or 404 for a run
/// that is not theirs).
/// Another team's run is answered like a missing one: its existence is theirs too. A run
/// the journal's index no longer holds is looked up on disk, off the async workers.
async fn run_for(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(firebreak_audit::RunSummary, Vec<firebreak_audit::Record>), Box<Response>> {
    let viewer = viewer(state, headers)?;
    let reader = state.dispatcher.journal.reader();
    let wanted = id.to_owned();
    let found = tokio::task::spawn_blocking(move || reader.run_with_records(&wanted))
        .await
        .map_err(|e| e.to_string())
        .and_then(|found| found.map_err(|e| e.to_string()));
    match found {
        Ok(Some((run, records)))
            if viewer == Viewer::All || viewer == Viewer::Team(run.team.clone()) =>
        {
            Ok((run, records))
        }
        Ok(_) => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no run {id}"),
        ))),
        Err(e) => Err(Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, e))),
    }
}

/// `GET /v1/runs/{id}/events`: the run's records as server-sent events (`record`, one JSON
/// record each), those journaled so far and then each as it becomes durable, and `end` after
/// its `run_finished`. What a run page follows live.
async fn events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // Subscribed before reading, so nothing falls between the two.
    let live = state.dispatcher.journal.subscribe();
    let earlier = match run_for(&state, &headers, &id).await {
        Ok((_, records)) => records,
        Err(response) => return *response,
    };
    let last = earlier.last().map_or(0, |r| r.seq);
    let done = earlier
        .iter()
        .any(|r| matches!(r.body, firebreak_audit::RecordBody::RunFinished { .. }));
    let record_event = |r: &firebreak_audit::Record| {
        Event::default()
            .event("record")
            .json_data(r)
            .expect("records serialize")
    };
    let first: Vec<Result<Event, std::convert::Infallible>> =
        earlier.iter().map(|r| Ok(record_event(r))).collect();
    let tail = futures::stream::unfold((live, done), move |(mut live, done)| {
        let id = id.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match live.recv().await {
                    Ok(r) if r.run_id == id && r.seq > last => {
                        let end = matches!(r.body, firebreak_audit::RecordBody::RunFinished { .. });
                        return Some((Ok(record_event(&r)), (live, end)));
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: the page reloads the run from the journal.
                        return Some((
                            Ok(Event::default().event("lagged").data("reload")),
                            (live, true),
                        ));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let end = futures::stream::once(async { Ok(Event::default().event("end").data("")) });
    use futures::StreamExt as _;
    let stream = futures::stream::iter(first).chain(tail).chain(end);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /v1/runs/{id}/export`: the run's records as JSON lines, exactly as journaled (with
/// their hashes), for whoever may see the run.
async fn export(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match run_for(&state, &headers, &id).await {
        Ok((_, records)) => {
            let mut out = String::new();
            for r in &records {
                out.push_str(&serde_json::to_string(r).expect("records serialize"));
                out.push('\n');
            }
            (
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "application/x-ndjson".to_owned(),
                    ),
                    (
                        axum::http::header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"firebreak-run-{id}.jsonl\""),
                    ),
                ],
                out,
            )
                .into_response()
        }
        Err(response) => *response,
    }
}

/// `GET /v1/audit/verify`: whether the journal's hash chain and signed checkpoints hold, as
/// `firebreak audit verify` says it.
async fn verify_journal(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(response) = viewer(&state, &headers) {
        return *response;
    }
    let path = state.dispatcher.journal.path().to_owned();
    let verified = tokio::task::spawn_blocking(move || {
        firebreak_audit::verify(&path).map_err(|e| e.to_string())
    })
    .await;
    match verified {
        Ok(Ok(report)) => Json(json!({
            "ok": true,
            "records": report.records,
            "last_hash": report.last_hash,
        }))
        .into_response(),
        Ok(Err(problem)) => Json(json!({"ok": false, "problem": problem})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
