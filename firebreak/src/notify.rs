//! Team notifications and chat follow-ups, derived from the audit trail as it is written.
//!
//! [`Notifier::follow`] reads every durable record ([`firebreak_audit::Journal::subscribe`])
//! and tells the run's team, in its `slack_channel` / `mattermost_channel` (teams file): a run
//! started, waits for approval (with Approve / Deny buttons), was approved or denied, finished,
//! or was refused. The approval message is updated as decisions come and its buttons replaced
//! by the decision once there is one. A run started by a slash command also gets follow-ups on
//! the command's `response_url` (at most 5 uses within 30 minutes, as Slack and Mattermost
//! allow). Chat APIs are called with the bot token; Slack's `{"ok": false}` answers are errors,
//! and a 429 is retried after its `Retry-After`. A failing chat never slows a run: this task
//! only reads the journal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebreak_audit::{Record, RecordBody, RunStatus};
use firebreak_dispatch::Dispatcher;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long and how often a slash command's `response_url` may be used.
pub const RESPONSE_URL_LIFETIME: Duration = Duration::from_secs(30 * 60);
pub const RESPONSE_URL_USES: u32 = 5;

/// A chat's API: base URL and bot token.
#[derive(Clone)]
struct Api {
    base: String,
    token: String,
}

/// Where to follow up on a slash command.
#[derive(Debug, Clone)]
pub struct FollowUp {
    pub url: String,
    uses: u32,
    since: Instant,
}

impl FollowUp {
    pub fn new(url: String) -> FollowUp {
        FollowUp {
            url,
            uses: 0,
            since: Instant::now(),
        }
    }
}

/// Slash commands' follow-up URLs, by the event their `run` published (then by run).
pub type FollowUps = Arc<Mutex<HashMap<String, FollowUp>>>;

/// A message firebreak posted about a run's approval.
#[derive(Debug, Clone)]
enum Posted {
    Slack { channel: String, ts: String },
    Mattermost { post_id: String },
}

/// What the notifier remembers of a run.
#[derive(Debug, Default)]
struct RunNote {
    required: u32,
    approvers: Vec<String>,
    approved_by: Vec<String>,
    request: Option<String>,
    expires_at: Option<jiff::Timestamp>,
    posted: Vec<Posted>,
    /// The approval messages no longer carry buttons.
    settled: bool,
    updates: u32,
}

pub struct Notifier {
    slack: Option<Api>,
    mattermost: Option<Api>,
    /// Base URL Mattermost posts button clicks to.
    public_url: String,
    key: Arc<crate::chat::ActionKey>,
    dispatcher: Arc<Dispatcher>,
    follow_ups: FollowUps,
    runs: HashMap<String, RunNote>,
}

impl Notifier {
    pub fn new(
        cfg: &crate::config::Config,
        listening: std::net::SocketAddr,
        dispatcher: Arc<Dispatcher>,
        key: Arc<crate::chat::ActionKey>,
        follow_ups: FollowUps,
    ) -> Notifier {
        let slack = cfg.chat.slack_bot_token.clone().map(|token| Api {
            base: cfg
                .chat
                .slack_api_url
                .clone()
                .unwrap_or_else(|| "https://slack.com/api".into())
                .trim_end_matches('/')
                .to_owned(),
            token,
        });
        let mattermost = match (&cfg.chat.mattermost_url, &cfg.chat.mattermost_bot_token) {
            (Some(url), Some(token)) => Some(Api {
                base: url.trim_end_matches('/').to_owned(),
                token: token.clone(),
            }),
            _ => None,
        };
        Notifier {
            slack,
            mattermost,
            public_url: cfg
                .chat
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{listening}"))
                .trim_end_matches('/')
                .to_owned(),
            key,
            dispatcher,
            follow_ups,
            runs: HashMap::new(),
        }
    }

    /// Follows the journal until `shutdown`.
    pub async fn follow(
        mut self,
        mut records: tokio::sync::broadcast::Receiver<Arc<Record>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let record = tokio::select! {
                () = shutdown.cancelled() => return,
                record = records.recv() => record,
            };
            match record {
                Ok(record) => self.on_record(&record).await,
                Err(RecvError::Lagged(missed)) => {
                    warn!(
                        missed,
                        "chat notifications fell behind the journal; some were not sent"
                    );
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn on_record(&mut self, record: &Record) {
        let run = &record.run_id;
        let short = &run[..run.len().min(8)];
        match &record.body {
            RecordBody::RunStarted {
                dry_run, approval, ..
            } => {
                if let Some(policy) = approval {
                    let note = self.runs.entry(run.clone()).or_default();
                    note.required = policy.required;
                    note.approvers = policy.approvers.clone();
                }
                // A slash command's follow-up moves from its event to its run.
                let follow_up = self
                    .follow_ups
                    .lock()
                    .expect("follow-ups lock")
                    .remove(&record.event_id);
                if let Some(f) = follow_up {
                    self.follow_ups
                        .lock()
                        .expect("follow-ups lock")
                        .insert(run.clone(), f);
                }
                let text = format!(
                    "▶ `{}` started by {} (run {run}){}",
                    record.runbook,
                    record.actor,
                    if *dry_run { " as a dry run" } else { "" }
                );
                self.tell(record, &text).await;
            }
            RecordBody::ApprovalRequested {
                action,
                reason,
                plan,
                expires_at,
                ..
            } => {
                let note = self.runs.entry(run.clone()).or_default();
                if note.required == 0 {
                    note.required = 1;
                    note.approvers = vec![record.team.clone()];
                }
                let would = plan
                    .get("would")
                    .map(summarize)
                    .or_else(|| reason.clone())
                    .unwrap_or_default();
                let text = format!(
                    "⏸ `{}` (run {run}), started by {}, waits for {} approval(s) from {} before `{action}`:\n{would}\nExpires {expires_at}. Or: `approve {run}` / `deny {run} REASON`.",
                    record.runbook,
                    record.actor,
                    note.required,
                    note.approvers.join(", "),
                );
                note.request = Some(text.clone());
                note.expires_at = Some(*expires_at);
                self.post_request(record, &text).await;
                self.follow_up(run, &text).await;
            }
            RecordBody::Approval {
                approver,
                approved,
                comment,
                channel,
                ..
            } => {
                let via = channel.as_deref().unwrap_or("api");
                let (text, settled) = {
                    let note = self.runs.entry(run.clone()).or_default();
                    if *approved {
                        note.approved_by.push(approver.clone());
                    }
                    let required = note.required.max(1) as usize;
                    if !*approved {
                        let why = comment.as_deref().unwrap_or("no reason given");
                        (
                            format!(
                                "🛑 `{}` (run {short}) denied by {approver} via {via}: {why}. Nothing was changed.",
                                record.runbook
                            ),
                            true,
                        )
                    } else if note.approved_by.len() >= required {
                        (
                            format!(
                                "✅ `{}` (run {short}) approved by {} — it goes on.",
                                record.runbook,
                                note.approved_by.join(", ")
                            ),
                            true,
                        )
                    } else {
                        (
                            format!(
                                "{}\n✔ approved by {} ({} of {required})",
                                note.request.clone().unwrap_or_default(),
                                note.approved_by.join(", "),
                                note.approved_by.len()
                            ),
                            false,
                        )
                    }
                };
                self.update_request(record, &text, settled).await;
                if settled {
                    self.follow_up(run, &text).await;
                }
            }
            RecordBody::RunFinished { status, error } => {
                let mark = match status {
                    RunStatus::Succeeded => "✅",
                    RunStatus::Denied => "🛑",
                    RunStatus::Expired => "⌛",
                    _ => "❌",
                };
                let error = error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                let text = format!("{mark} `{}` {status} (run {run}){error}", record.runbook);
                let unsettled = self
                    .runs
                    .get(run)
                    .is_some_and(|n| !n.settled && !n.posted.is_empty());
                if unsettled {
                    let closing = format!("{text}\nThe approval request is closed.");
                    self.update_request(record, &closing, true).await;
                }
                self.tell(record, &text).await;
                self.follow_up(run, &text).await;
                self.runs.remove(run);
                self.follow_ups.lock().expect("follow-ups lock").remove(run);
            }
            RecordBody::Refusal { action, reason, .. } => {
                let text = format!(
                    "⛔ refused `{action}` in `{}` for {}: {reason}",
                    record.runbook, record.actor
                );
                self.tell(record, &text).await;
                self.follow_up(run, &text).await;
            }
            _ => {}
        }
    }

    /// The team's channels, from the teams file.
    fn channels(&self, team: &str) -> (Option<String>, Option<String>) {
        let loaded = self.dispatcher.runbooks.current();
        let team = loaded.set.teams().and_then(|t| t.get(team));
        (
            team.and_then(|t| t.slack_channel.clone()),
            team.and_then(|t| t.mattermost_channel.clone()),
        )
    }

    /// Posts a plain notice to the team's channels.
    async fn tell(&self, record: &Record, text: &str) {
        let (slack_channel, mm_channel) = self.channels(&record.team);
        if let (Some(api), Some(channel)) = (&self.slack, slack_channel) {
            let body = json!({"channel": channel, "text": text, "unfurl_links": false});
            if let Err(e) = self.slack_call(api, "chat.postMessage", &body).await {
                warn!(team = %record.team, error = %e, "slack notification not posted");
            }
        }
        if let (Some(api), Some(channel)) = (&self.mattermost, mm_channel) {
            let body = json!({"channel_id": channel, "message": text});
            if let Err(e) = self
                .mattermost_call(api, reqwest::Method::POST, "/api/v4/posts", &body)
                .await
            {
                warn!(team = %record.team, error = %e, "mattermost notification not posted");
            }
        }
    }

    /// Posts the approval request with its buttons, and remembers where.
    async fn post_request(&mut self, record: &Record, text: &str) {
        let (slack_channel, mm_channel) = self.channels(&record.team);
        let run = record.run_id.clone();
        let mut posted = Vec::new();
        if let (Some(api), Some(channel)) = (&self.slack, slack_channel) {
            let body = json!({"channel": channel, "text": text,
                              "blocks": slack_blocks(&run, text, true, 0)});
            match self.slack_call(api, "chat.postMessage", &body).await {
                Ok(answer) => posted.push(Posted::Slack {
                    channel: answer["channel"].as_str().unwrap_or(&channel).to_owned(),
                    ts: answer["ts"].as_str().unwrap_or_default().to_owned(),
                }),
                Err(e) => warn!(run_id = %run, error = %e, "slack approval request not posted"),
            }
        }
        if let (Some(api), Some(channel)) = (&self.mattermost, mm_channel) {
            let expires = self
                .runs
                .get(&run)
                .and_then(|n| n.expires_at)
                .map_or(0, |t| t.as_second());
            let body = json!({"channel_id": channel, "message": text,
                              "props": {"attachments": self.mattermost_buttons(&run, text, expires)}});
            match self
                .mattermost_call(api, reqwest::Method::POST, "/api/v4/posts", &body)
                .await
            {
                Ok(answer) => posted.push(Posted::Mattermost {
                    post_id: answer["id"].as_str().unwrap_or_default().to_owned(),
                }),
                Err(e) => {
                    warn!(run_id = %run, error = %e, "mattermost approval request not posted")
                }
            }
        }
        if !posted.is_empty() {
            info!(run_id = %run, messages = posted.len(), "approval request posted to chat");
        }
        self.runs.entry(run).or_default().posted = posted;
    }

    /// Rewrites the approval messages: still open (buttons kept), or settled (buttons gone).
    async fn update_request(&mut self, record: &Record, text: &str, settled: bool) {
        let run = record.run_id.clone();
        let Some(note) = self.runs.get_mut(&run) else {
            return;
        };
        if note.settled {
            return;
        }
        note.settled = settled;
        note.updates += 1;
        let (posted, updates, expires) = (
            note.posted.clone(),
            note.updates,
            note.expires_at.map_or(0, |t| t.as_second()),
        );
        for message in posted {
            let result = match (&message, &self.slack, &self.mattermost) {
                (Posted::Slack { channel, ts }, Some(api), _) => {
                    let body = json!({"channel": channel, "ts": ts, "text": text,
                                      "blocks": slack_blocks(&run, text, !settled, updates)});
                    self.slack_call(api, "chat.update", &body).await.map(drop)
                }
                (Posted::Mattermost { post_id }, _, Some(api)) => {
                    let attachments = if settled {
                        json!([])
                    } else {
                        self.mattermost_buttons(&run, text, expires)
                    };
                    let body = json!({"id": post_id, "message": text,
                                      "props": {"attachments": attachments}});
                    self.mattermost_call(
                        api,
                        reqwest::Method::PUT,
                        &format!("/api/v4/posts/{post_id}"),
                        &body,
                    )
                    .await
                    .map(drop)
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                warn!(run_id = %run, error = %e, "approval message not updated");
            }
        }
    }

    /// Tells a slash command's user, within its response URL's uses and lifetime.
    async fn follow_up(&self, run: &str, text: &str) {
        let url = {
            let mut follow_ups = self.follow_ups.lock().expect("follow-ups lock");
            let Some(f) = follow_ups.get_mut(run) else {
                return;
            };
            if f.uses >= RESPONSE_URL_USES || f.since.elapsed() > RESPONSE_URL_LIFETIME {
                return;
            }
            f.uses += 1;
            f.url.clone()
        };
        let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        match crate::chat::http_client()
            .post(&url)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => warn!(run_id = %run, status = %r.status(), "slash command follow-up refused"),
            Err(e) => warn!(run_id = %run, error = %e, "slash command follow-up not sent"),
        }
    }

    /// Mattermost attachment buttons whose contexts firebreak signs (Mattermost does not sign
    /// clicks): the run, the decision, the expiry and what the approver sees.
    fn mattermost_buttons(&self, run: &str, text: &str, expires: i64) -> Value {
        let button = |action: &str, name: &str, style: &str| {
            json!({"id": action, "type": "button", "name": name, "style": style,
                   "integration": {"url": format!("{}/v1/chat/mattermost/actions", self.public_url),
                                   "context": self.key.context(run, action, expires, text)}})
        };
        json!([{"text": "", "actions": [
            button("approve", "Approve", "primary"),
            button("deny", "Deny", "danger"),
        ]}])
    }

    /// A Slack Web API call: 429 waits `Retry-After` (at most three tries); `ok: false` is an
    /// error naming Slack's reason.
    async fn slack_call(&self, api: &Api, method: &str, body: &Value) -> Result<Value, String> {
        for _ in 0..3 {
            let resp = crate::chat::http_client()
                .post(format!("{}/{method}", api.base))
                .bearer_auth(&api.token)
                .json(body)
                .send()
                .await
                .map_err(|e| format!("{method}: {e}"))?;
            if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                tokio::time::sleep(retry_after(&resp)).await;
                continue;
            }
            if !resp.status().is_success() {
                return Err(format!("{method}: HTTP {}", resp.status()));
            }
            let answer: Value = resp.json().await.map_err(|e| format!("{method}: {e}"))?;
            if answer["ok"] == true {
                return Ok(answer);
            }
            let error = answer["error"].as_str().unwrap_or("unknown error");
            if error != "ratelimited" && error != "rate_limited" {
                return Err(format!("{method}: slack says {error}"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(format!("{method}: still rate limited after three tries"))
    }

    /// A Mattermost REST call with the bot token: 429 waits `Retry-After` (three tries).
    async fn mattermost_call(
        &self,
        api: &Api,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, String> {
        for _ in 0..3 {
            let resp = crate::chat::http_client()
                .request(method.clone(), format!("{}{path}", api.base))
                .bearer_auth(&api.token)
                .json(body)
                .send()
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                tokio::time::sleep(retry_after(&resp)).await;
                continue;
            }
            let status = resp.status();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                return Err(format!(
                    "{path}: HTTP {status}: {}",
                    answer["message"].as_str().unwrap_or("")
                ));
            }
            return Ok(answer);
        }
        Err(format!("{path}: still rate limited after three tries"))
    }
}

/// A 429's `Retry-After` in seconds (1 s when absent, at most 30 s).
fn retry_after(resp: &reqwest::Response) -> Duration {
    let secs = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.clamp(1, 30))
}

/// The Block Kit approval message; the actions block's id changes with every update.
fn slack_blocks(run: &str, text: &str, buttons: bool, version: u32) -> Value {
    let section = json!({"type": "section", "text": {"type": "mrkdwn", "text": text}});
    if !buttons {
        return json!([section]);
    }
    json!([section, {"type": "actions", "block_id": format!("approval:{run}:v{version}"), "elements": [
        {"type": "button", "action_id": "approve", "value": run, "style": "primary",
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": "deny", "value": run, "style": "danger",
         "text": {"type": "plain_text", "text": "Deny"},
         "confirm": {"title": {"type": "plain_text", "text": "Deny?"},
                     "text": {"type": "plain_text", "text": "Stops the run."},
                     "confirm": {"type": "plain_text", "text": "Deny"},
                     "deny": {"type": "plain_text", "text": "Cancel"}}}]}])
}

/// A dry-run answer as one line for people.
fn summarize(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .get("would")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string()),
        other => other.to_string(),
    }
}
