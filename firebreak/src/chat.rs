//! Chat slash commands: `POST /v1/chat/slack/commands` and `POST /v1/chat/mattermost/commands`.
//!
//! Mattermost does not sign requests: its slash command's token (form field `token`, or
//! `Authorization: Token …`) is compared in constant time; put it behind TLS. The commands and
//! answers are Slack's.
//!
//! A request is taken only with a valid `X-Slack-Signature` (v0, HMAC-SHA256 of
//! `v0:<timestamp>:<raw body>` with the app's signing secret, compared in constant time) and a
//! `X-Slack-Request-Timestamp` within 5 minutes either way; anything else is 401 and counted
//! in the journal's unauthenticated-request notice. The Slack user is the teams file member
//! whose `chat_ids` hold its id; an unknown user can do nothing. Commands: `help`, `list`,
//! `run RUNBOOK key=value … [--dry-run]`, `status [RUN]`. The answer is ephemeral and
//! immediate (Slack waits 3 s): a run is accepted onto the bus like `POST /v1/trigger`, with
//! the member as its actor.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use firebreak_bus::Bus;
use firebreak_dispatch::Dispatcher;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Slack's replay window, both ways (python-slack-sdk's check; bolt-js checks only the past).
const WINDOW_SECS: i64 = 5 * 60;

/// Why a request does not come from Slack.
pub fn verify_slack(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), &'static str> {
    let ts: i64 = timestamp
        .and_then(|t| t.trim().parse().ok())
        .ok_or("missing or malformed X-Slack-Request-Timestamp")?;
    if (now_unix - ts).abs() > WINDOW_SECS {
        return Err("X-Slack-Request-Timestamp is more than 5 minutes from now (a replay?)");
    }
    let tag = signature
        .and_then(|s| s.trim().strip_prefix("v0="))
        .ok_or("missing X-Slack-Signature, or not a v0 signature")?;
    let tag = firebreak_audit::checkpoint::from_hex(tag).ok_or("malformed X-Slack-Signature")?;
    let mut signed = format!("v0:{ts}:").into_bytes();
    signed.extend_from_slice(body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &signed, &tag).map_err(|_| "X-Slack-Signature does not match")
}

#[derive(Clone)]
struct ChatState {
    dispatcher: Arc<Dispatcher>,
    bus: Arc<dyn Bus>,
    secret: Option<Arc<[u8]>>,
    mattermost_token: Option<Arc<str>>,
    validate: firebreak_ingest::ValidateTrigger,
}

/// The chat routes, merged into the engine's router by `serve`.
pub fn router(
    dispatcher: Arc<Dispatcher>,
    bus: Arc<dyn Bus>,
    slack_signing_secret: Option<&str>,
    mattermost_token: Option<&str>,
) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/slack/commands", post(slack_command))
        .route("/v1/chat/mattermost/commands", post(mattermost_command))
        .with_state(ChatState {
            validate: crate::serve::validate_trigger(dispatcher.clone()),
            dispatcher,
            bus,
            secret: slack_signing_secret.map(|s| Arc::from(s.as_bytes())),
            mattermost_token: mattermost_token.map(Arc::from),
        })
}

/// The fields of a Mattermost slash command firebreak reads.
#[derive(Debug, Deserialize)]
struct MattermostCommand {
    #[serde(default)]
    token: String,
    user_id: String,
    #[serde(default)]
    text: String,
}

async fn mattermost_command(
    State(st): State<ChatState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(expected) = &st.mattermost_token else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "mattermost is not configured (auth.mattermost_token)"})),
        )
            .into_response();
    };
    let form = serde_urlencoded::from_bytes::<MattermostCommand>(&body);
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "));
    let sent = header_token.or(form.as_ref().ok().map(|f| f.token.as_str()));
    let valid = sent.is_some_and(|t| {
        firebreak_matcher::teams::constant_time_eq(t.as_bytes(), expected.as_bytes())
    });
    if !valid {
        st.dispatcher.note_unauthenticated("chat:mattermost");
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "missing or wrong slash command token"})),
        )
            .into_response();
    }
    let Ok(command) = form else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "not a slash command (form fields token, user_id, text)"})),
        )
            .into_response();
    };
    ephemeral(answer(&st, &command.user_id, &command.text).await)
}

/// The fields of a slash command firebreak reads (Slack sends more).
#[derive(Debug, Deserialize)]
struct SlashCommand {
    user_id: String,
    #[serde(default)]
    text: String,
}

fn ephemeral(text: impl Into<String>) -> Response {
    Json(json!({"response_type": "ephemeral", "text": text.into()})).into_response()
}

async fn slack_command(State(st): State<ChatState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &st.secret else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "slack is not configured (auth.slack_signing_secret)"})),
        )
            .into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = jiff::Timestamp::now().as_second();
    if let Err(why) = verify_slack(
        secret,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        now,
    ) {
        st.dispatcher.note_unauthenticated("chat:slack");
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": why}))).into_response();
    }
    let Ok(command) = serde_urlencoded::from_bytes::<SlashCommand>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "not a slash command (form fields user_id, text)"})),
        )
            .into_response();
    };
    ephemeral(answer(&st, &command.user_id, &command.text).await)
}

const HELP: &str = "firebreak commands:\n\
  • `list`: the runbooks you may run\n\
  • `run RUNBOOK key=value … [--dry-run]`: start one\n\
  • `status [RUN]`: your team's latest runs, or one run\n\
  • `help`: this";

/// What firebreak says to chat user `user_id` for `text`.
async fn answer(st: &ChatState, user_id: &str, text: &str) -> String {
    let loaded = st.dispatcher.runbooks.current();
    let Some(teams) = loaded.set.teams() else {
        return "firebreak maps chat users to team members through its teams file; none is configured".into();
    };
    let Some((team, member)) = teams.member_by_chat_id(user_id) else {
        return format!(
            "you ({user_id}) are not a member of any team: ask for your chat id to be added to `chat_ids` in the teams file"
        );
    };
    let mut words = text.split_whitespace();
    match words.next().unwrap_or("help") {
        "list" => {
            let mine: Vec<String> = loaded
                .set
                .iter()
                .filter(|rb| teams.can_trigger((team, member), rb).is_ok())
                .map(|rb| format!("• `{}`: {}", rb.manifest.name, rb.manifest.description))
                .collect();
            if mine.is_empty() {
                format!("team {} has no runbooks", team.name)
            } else {
                format!("runbooks of team {}:\n{}", team.name, mine.join("\n"))
            }
        }
        "run" => {
            let Some(runbook) = words.next() else {
                return "usage: `run RUNBOOK key=value … [--dry-run]`".into();
            };
            let mut params = Map::new();
            let mut dry_run = false;
            for word in words {
                match word.split_once('=') {
                    _ if word == "--dry-run" => dry_run = true,
                    Some((key, value)) => {
                        params.insert(key.to_owned(), param_value(value));
                    }
                    None => return format!("`{word}` is not key=value"),
                }
            }
            run(st, &loaded, (team, member), runbook, params, dry_run).await
        }
        "status" => status(st, &team.name, words.next()),
        "approve" | "deny" => "approvals are not available from chat yet".into(),
        _ => HELP.into(),
    }
}

/// A chat word as a param value: a number or boolean when it reads as one, else text.
fn param_value(text: &str) -> Value {
    if let Ok(n) = text.parse::<i64>() {
        return Value::from(n);
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(text.to_owned()),
    }
}

async fn run(
    st: &ChatState,
    loaded: &firebreak_dispatch::Loaded,
    actor: (&firebreak_matcher::Team, &firebreak_matcher::Member),
    runbook: &str,
    params: Map<String, Value>,
    dry_run: bool,
) -> String {
    let Some(rb) = loaded.set.get(runbook) else {
        return format!("no runbook named `{runbook}`; `list` shows yours");
    };
    let teams = loaded.set.teams().expect("chat needs a teams file");
    let name = &actor.1.name;
    if let Err(refusal) = teams.can_trigger(actor, rb) {
        crate::serve::journal_refusal_later(
            &st.dispatcher,
            &rb.manifest.name,
            &rb.manifest.team,
            name,
            refusal.to_string(),
        );
        return format!("refused: {refusal}");
    }
    if let Err(invalid) = (st.validate)(name, runbook, &params) {
        return format!("refused: {invalid}");
    }
    let event = firebreak_event::manual::trigger(runbook, params, name, dry_run);
    let id = event.id.clone();
    match st.bus.publish(vec![event]).await {
        Ok(()) => format!(
            "▶ `{runbook}` accepted{} for {name} (event {id}); `status` follows it",
            if dry_run { " as a dry run" } else { "" }
        ),
        Err(e) => format!("firebreak cannot take work right now ({e}); try again shortly"),
    }
}

fn status(st: &ChatState, team: &str, run: Option<&str>) -> String {
    let line = |r: &firebreak_audit::RunSummary| {
        format!(
            "• `{}` {} {} ({})",
            r.runbook,
            r.run_id,
            r.status.map_or("running".to_owned(), |s| s.to_string()),
            r.actor
        )
    };
    let runs: Vec<_> = st
        .dispatcher
        .journal
        .runs()
        .into_iter()
        .filter(|r| r.team == team && r.kind == firebreak_audit::EntryKind::Run)
        .collect();
    match run {
        Some(id) => runs
            .iter()
            .find(|r| r.run_id.starts_with(id))
            .map_or_else(|| format!("no run {id} of team {team}"), line),
        None if runs.is_empty() => format!("team {team} has no runs yet"),
        None => {
            let latest: Vec<String> = runs.iter().rev().take(5).map(line).collect();
            format!("latest runs of team {team}:\n{}", latest.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's published example (../shared/fixtures/slack): the signature holds at its own
    /// time, and fails for any other body, secret or time outside the window.
    #[test]
    fn slacks_published_example_verifies_and_nothing_else_does() {
        let fixture: Value = serde_json::from_str(include_str!(
            "../../../shared/fixtures/slack/slash-command-signed.json"
        ))
        .unwrap();
        let body = include_bytes!("../../../shared/fixtures/slack/slash-command-signed.body");
        let secret = fixture["signing_secret"].as_str().unwrap().as_bytes();
        let ts = fixture["headers"]["X-Slack-Request-Timestamp"].as_str();
        let sig = fixture["headers"]["X-Slack-Signature"].as_str();
        let at: i64 = ts.unwrap().parse().unwrap();
        assert_eq!(verify_slack(secret, ts, sig, body, at), Ok(()));
        assert_eq!(verify_slack(secret, ts, sig, body, at + 300), Ok(()));
        let mut other = body.to_vec();
        other.push(b'x');
        assert!(verify_slack(secret, ts, sig, &other, at).is_err());
        assert!(verify_slack(b"another secret", ts, sig, body, at).is_err());
        let late = verify_slack(secret, ts, sig, body, at + 301).unwrap_err();
        assert!(late.contains("5 minutes"), "{late}");
        // A timestamp from the future is refused too.
        assert!(verify_slack(secret, ts, sig, body, at - 301).is_err());
        assert!(verify_slack(secret, None, sig, body, at).is_err());
        let v1 = sig.unwrap().replace("v0=", "v1=");
        assert!(verify_slack(secret, ts, Some(&v1), body, at).is_err());
    }
}
