//! Chat slash commands and buttons: `POST /v1/chat/slack/commands`,
//! `POST /v1/chat/slack/interactions` (Block Kit `block_actions`: the Approve / Deny buttons of
//! an approval request), `POST /v1/chat/mattermost/commands` and
//! `POST /v1/chat/mattermost/actions` (its buttons' clicks).
//!
//! Mattermost signs neither commands nor clicks: a button's `context` carries the run, the
//! decision, the request's expiry and what the approver is shown, with firebreak's own
//! HMAC-SHA256 over them ([`ActionKey`], a key kept in `<data_dir>/chat.key`); a click whose
//! context does not verify, or came after the expiry, is refused (401) and counted.
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
//! `run RUNBOOK key=value … [--dry-run]`, `status [RUN]`, `approve RUN [why]`,
//! `deny RUN REASON`. The answer is ephemeral and
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

/// The HTTP client chat calls go out on (Slack and Mattermost APIs, response URLs), made on
/// first use: an engine without chat never builds it.
pub fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("an HTTP client")
    })
}

/// firebreak's key for the contexts of its Mattermost buttons.
pub struct ActionKey(ring::hmac::Key);

impl ActionKey {
    /// Loads `<dir>/chat.key` (32 random bytes, hex), or creates it (mode 0600).
    pub fn load_or_create(dir: &std::path::Path) -> anyhow::Result<ActionKey> {
        use anyhow::Context as _;
        let path = dir.join("chat.key");
        let bytes = match std::fs::read_to_string(&path) {
            Ok(text) => firebreak_audit::checkpoint::from_hex(text.trim())
                .filter(|b| b.len() == 32)
                .with_context(|| format!("{} is not 32 bytes of hex", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| anyhow::anyhow!("no randomness for {}", path.display()))?;
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                file.write_all(firebreak_audit::checkpoint::to_hex(&bytes).as_bytes())?;
                file.sync_all()?;
                bytes.to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(ActionKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        )))
    }

    fn message(run: &str, action: &str, expires: i64, seen: &str) -> Vec<u8> {
        format!("firebreak-action-v1\n{run}\n{action}\n{expires}\n{seen}").into_bytes()
    }

    /// A button's signed context.
    pub fn context(&self, run: &str, action: &str, expires: i64, seen: &str) -> Value {
        let tag = ring::hmac::sign(&self.0, &Self::message(run, action, expires, seen));
        json!({"run": run, "action": action, "expires": expires, "seen": seen,
               "sig": firebreak_audit::checkpoint::to_hex(tag.as_ref())})
    }

    /// The run, decision and what was seen, if `context` is one firebreak signed and it has
    /// not expired.
    pub fn verify(
        &self,
        context: &Value,
        now_unix: i64,
    ) -> Result<(String, bool, String), &'static str> {
        let text = |k: &str| context.get(k).and_then(Value::as_str);
        let (Some(run), Some(action), Some(expires), Some(seen), Some(sig)) = (
            text("run"),
            text("action"),
            context.get("expires").and_then(Value::as_i64),
            text("seen"),
            text("sig"),
        ) else {
            return Err("the button's context is not firebreak's");
        };
        let tag =
            firebreak_audit::checkpoint::from_hex(sig).ok_or("malformed context signature")?;
        ring::hmac::verify(&self.0, &Self::message(run, action, expires, seen), &tag)
            .map_err(|_| "the button's context signature does not hold")?;
        if now_unix >= expires {
            return Err("the approval request has expired");
        }
        let approved = match action {
            "approve" => true,
            "deny" => false,
            _ => return Err("unknown action"),
        };
        Ok((run.to_owned(), approved, seen.to_owned()))
    }
}

#[derive(Clone)]
struct ChatState {
    dispatcher: Arc<Dispatcher>,
    bus: Arc<dyn Bus>,
    key: Arc<ActionKey>,
    follow_ups: crate::notify::FollowUps,
    secret: Option<Arc<[u8]>>,
    mattermost_token: Option<Arc<str>>,
    validate: firebreak_ingest::ValidateTrigger,
}

/// The chat routes, merged into the engine's router by `serve`.
pub fn router(
    dispatcher: Arc<Dispatcher>,
    bus: Arc<dyn Bus>,
    key: Arc<ActionKey>,
    follow_ups: crate::notify::FollowUps,
    slack_signing_secret: Option<&str>,
    mattermost_token: Option<&str>,
) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/slack/commands", post(slack_command))
        .route("/v1/chat/slack/interactions", post(slack_interaction))
        .route("/v1/chat/mattermost/commands", post(mattermost_command))
        .route("/v1/chat/mattermost/actions", post(mattermost_action))
        .with_state(ChatState {
            validate: crate::serve::validate_trigger(dispatcher.clone()),
            dispatcher,
            bus,
            key,
            follow_ups,
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
    response_url: Option<String>,
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
    let reply = command.response_url.as_deref();
    ephemeral(answer(&st, &command.user_id, &command.text, reply, "mattermost").await)
}

/// The fields of a slash command firebreak reads (Slack sends more).
#[derive(Debug, Deserialize)]
struct SlashCommand {
    user_id: String,
    #[serde(default)]
    text: String,
    response_url: Option<String>,
}

fn ephemeral(text: impl Into<String>) -> Response {
    Json(json!({"response_type": "ephemeral", "text": text.into()})).into_response()
}

async fn slack_command(State(st): State<ChatState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = slack_verified(&st, &headers, &body) {
        return *response;
    }
    let Ok(command) = serde_urlencoded::from_bytes::<SlashCommand>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "not a slash command (form fields user_id, text)"})),
        )
            .into_response();
    };
    let reply = command.response_url.as_deref();
    ephemeral(answer(&st, &command.user_id, &command.text, reply, "slack").await)
}

/// Checks a request is Slack's (see the module docs); the 401 to answer if not.
fn slack_verified(st: &ChatState, headers: &HeaderMap, body: &[u8]) -> Result<(), Box<Response>> {
    let Some(secret) = &st.secret else {
        return Err(Box::new(
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "slack is not configured (auth.slack_signing_secret)"})),
            )
                .into_response(),
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    verify_slack(
        secret,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        body,
        jiff::Timestamp::now().as_second(),
    )
    .map_err(|why| {
        st.dispatcher.note_unauthenticated("chat:slack");
        Box::new((StatusCode::UNAUTHORIZED, Json(json!({"error": why}))).into_response())
    })
}

/// The form of an interaction: one field, `payload`, holding JSON.
#[derive(Debug, Deserialize)]
struct InteractionForm {
    payload: String,
}

/// A click on an approval message's Approve or Deny button in Slack. Answered at once; the
/// clicker hears the outcome on the interaction's `response_url`, and a decided request's
/// message is replaced by the decision (so its buttons cannot be clicked again).
async fn slack_interaction(
    State(st): State<ChatState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = slack_verified(&st, &headers, &body) {
        return *response;
    }
    let payload = serde_urlencoded::from_bytes::<InteractionForm>(&body)
        .ok()
        .and_then(|f| serde_json::from_str::<Value>(&f.payload).ok());
    let Some(payload) = payload.filter(|p| p["type"] == "block_actions") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "not a block_actions interaction (form field payload)"})),
        )
            .into_response();
    };
    let user = payload["user"]["id"].as_str().unwrap_or_default();
    let action = &payload["actions"][0];
    let run = action["value"].as_str().unwrap_or_default();
    let approved = match action["action_id"].as_str() {
        Some("approve") => true,
        Some("deny") => false,
        _ => return StatusCode::OK.into_response(),
    };
    let seen = payload["message"]["text"].as_str().map(str::to_owned);
    let comment = (!approved).then(|| "denied with the button in Slack".to_owned());
    let (text, settled) = decide(&st, user, run, approved, comment, "slack", seen).await;
    if let Some(url) = payload["response_url"].as_str() {
        let reply = if settled {
            json!({"replace_original": true, "text": text})
        } else {
            json!({"response_type": "ephemeral", "replace_original": false, "text": text})
        };
        let (http, url) = (http_client(), url.to_owned());
        tokio::spawn(async move {
            if let Err(e) = http.post(&url).json(&reply).send().await {
                tracing::warn!(error = %e, "slack interaction reply not sent");
            }
        });
    }
    StatusCode::OK.into_response()
}

/// A click on a Mattermost button: its context must be one firebreak signed, unexpired.
async fn mattermost_action(State(st): State<ChatState>, body: Bytes) -> Response {
    let Ok(click) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "not a Mattermost button click (JSON with user_id, context)"})),
        )
            .into_response();
    };
    let now = jiff::Timestamp::now().as_second();
    let (run, approved, seen) = match st.key.verify(&click["context"], now) {
        Ok(v) => v,
        Err(why) => {
            st.dispatcher.note_unauthenticated("chat:mattermost-action");
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": why}))).into_response();
        }
    };
    let user = click["user_id"].as_str().unwrap_or_default();
    let comment = (!approved).then(|| "denied with the button in Mattermost".to_owned());
    let (text, settled) =
        decide(&st, user, &run, approved, comment, "mattermost", Some(seen)).await;
    if settled {
        Json(json!({"update": {"message": text, "props": {"attachments": []}}})).into_response()
    } else {
        Json(json!({"ephemeral_text": text})).into_response()
    }
}

/// A chat user's decision on a run: what to tell them, and whether the request is settled
/// (approved or denied: its message loses its buttons).
async fn decide(
    st: &ChatState,
    chat_id: &str,
    run: &str,
    approved: bool,
    comment: Option<String>,
    channel: &str,
    seen: Option<String>,
) -> (String, bool) {
    let loaded = st.dispatcher.runbooks.current();
    let Some(teams) = loaded.set.teams() else {
        return (
            "firebreak maps chat users to team members through its teams file; none is configured"
                .into(),
            false,
        );
    };
    let Some((_, member)) = teams.member_by_chat_id(chat_id) else {
        return (
            format!("you ({chat_id}) are not a member of any team: you cannot decide on runs"),
            false,
        );
    };
    // A run id may be given by its first characters, as `status` shows them.
    let pending = st.dispatcher.pending_approvals();
    let matching: Vec<&firebreak_runtime::Pending> = pending
        .iter()
        .filter(|p| !run.is_empty() && p.run_id.starts_with(run))
        .collect();
    let run_id = match matching.as_slice() {
        [one] => one.run_id.clone(),
        [] => run.to_owned(),
        _ => {
            return (
                format!("`{run}` names more than one waiting run; give more of its id"),
                false,
            );
        }
    };
    let decision = firebreak_runtime::Decision {
        approver: member.name.clone(),
        teams: Some(teams.teams_of(&member.name)),
        approved,
        comment,
        channel: channel.to_owned(),
        seen,
    };
    match st.dispatcher.decide(&run_id, decision).await {
        Ok(standing) => match standing.state {
            "denied" => (format!("🛑 run {run_id} denied by {}", member.name), true),
            "approved" => (
                format!(
                    "✅ run {run_id} approved by {}: it goes on",
                    standing.approved_by.join(", ")
                ),
                true,
            ),
            _ => (
                format!(
                    "✔ your approval of run {run_id} is counted ({} of {})",
                    standing.approved_by.len(),
                    standing.required
                ),
                false,
            ),
        },
        Err(e) => (format!("not taken: {e}"), false),
    }
}

const HELP: &str = "firebreak commands:\n\
  • `list`: the runbooks you may run\n\
  • `run RUNBOOK key=value … [--dry-run]`: start one\n\
  • `status [RUN]`: your team's latest runs, or one run\n\
  • `approve RUN [why]` / `deny RUN REASON`: decide on a run waiting for approval\n\
  • `help`: this";

/// What firebreak says to chat user `user_id` for `text`; `reply`: the command's response URL,
/// for follow-ups on a run it starts.
async fn answer(
    st: &ChatState,
    user_id: &str,
    text: &str,
    reply: Option<&str>,
    channel: &str,
) -> String {
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
            run(st, &loaded, (team, member), runbook, params, dry_run, reply).await
        }
        "status" => status(st, &team.name, words.next()).await,
        verb @ ("approve" | "deny") => {
            let Some(run) = words.next() else {
                return format!(
                    "usage: `{verb} RUN{}`",
                    if verb == "deny" { " REASON" } else { " [why]" }
                );
            };
            let comment = words.collect::<Vec<_>>().join(" ");
            if verb == "deny" && comment.is_empty() {
                return "a deny needs a reason: `deny RUN REASON`".into();
            }
            let comment = (!comment.is_empty()).then_some(comment);
            decide(
                st,
                user_id,
                run,
                verb == "approve",
                comment,
                channel,
                Some(text.to_owned()),
            )
            .await
            .0
        }
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
    reply: Option<&str>,
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
    if let Some(url) = reply.filter(|u| u.starts_with("http://") || u.starts_with("https://")) {
        st.follow_ups
            .lock()
            .expect("follow-ups lock")
            .insert(id.clone(), crate::notify::FollowUp::new(url.to_owned()));
    }
    match st.bus.publish(vec![event]).await {
        Ok(()) => format!(
            "▶ `{runbook}` accepted{} for {name} (event {id}); `status` follows it",
            if dry_run { " as a dry run" } else { "" }
        ),
        Err(e) => format!("firebreak cannot take work right now ({e}); try again shortly"),
    }
}

/// The team's latest runs, or one run by its id or the first characters of one it lists; a
/// run older than the listing (see `audit.finished_runs_kept`) is read from the journal on
/// disk, by its full id.
async fn status(st: &ChatState, team: &str, run: Option<&str>) -> String {
    let line = |r: &firebreak_audit::RunSummary| {
        format!(
            "• `{}` {} {} ({})",
            r.runbook,
            r.run_id,
            r.status.map_or("running".to_owned(), |s| s.to_string()),
            r.actor
        )
    };
    let ours = |r: &firebreak_audit::RunSummary| {
        r.team == team && r.kind == firebreak_audit::EntryKind::Run
    };
    let runs: Vec<_> = st
        .dispatcher
        .journal
        .runs()
        .into_iter()
        .filter(|r| ours(r))
        .collect();
    match run {
        Some(id) => match runs.iter().find(|r| r.run_id.starts_with(id)) {
            Some(found) => line(found),
            None => {
                let reader = st.dispatcher.journal.reader();
                let wanted = id.to_owned();
                let on_disk = tokio::task::spawn_blocking(move || reader.run(&wanted)).await;
                match on_disk {
                    Ok(Ok(Some(found))) if ours(&found) => line(&found),
                    Ok(Err(e)) => format!("could not read the audit journal: {e}"),
                    _ => format!(
                        "no run {id} of team {team} (a run older than `status` lists is found by its full id)"
                    ),
                }
            }
        },
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
