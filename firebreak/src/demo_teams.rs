//! `firebreak demo --scenario 3`: three data-science teams deploy and roll back their models
//! through one audited process, from chat, on one machine (kubesim in process, the real
//! Prometheus for the deploy gates; Slack and Mattermost stood in for by a small local server
//! that prints what firebreak posts, so the exchange reads as a chat transcript).
//!
//! 1. kubesim with `team-a`, `team-b` and `team-c`, each with its model behind a Service that
//!    gets simulated traffic; team A's v2 answers half its requests with errors.
//! 2. The engine with the teams file (members, chat ids, channels, deployment policy), signed
//!    Slack commands and Mattermost commands and buttons.
//! 3. ann deploys v2 from Slack (its gate fails: rolled back); bob tries ann's runbook (refused)
//!    and deploys his own v2 (kept); cat asks for a rollback in Mattermost, which waits until dan
//!    and eve click Approve.
//! 4. Each team's audit trail, and the verified central journal.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use firebreak_audit::RunStatus;
use firebreak_bus::port::free_loopback_port;
use serde_json::{Value, json};

use crate::config::Config;
use crate::demo::{heading, write_runbooks};
use crate::demo_canary::{Program, wait_run};
use crate::progress::stdout_sink;
use crate::serve::Engine;

const MODEL: &str = include_str!("../demo/teams/model.yaml");
const TEAMS: &str = include_str!("../demo/teams/teams.yaml");
const C_ROLLBACK: (&str, &str) = (
    include_str!("../demo/teams/c-rollback.yaml"),
    include_str!("../demo/teams/c-rollback.rhai"),
);

fn model(team: &str, version: &str) -> String {
    MODEL.replace("TEAM", team).replace("VERSION", version)
}

fn image(team: &str, version: &str) -> String {
    format!("registry.local/{team}/model:{version}")
}

/// What firebreak posted to the stand-in chat, printed as it arrives.
type Posts = Arc<Mutex<Vec<(String, Value)>>>;

async fn chat_post(
    State(posts): State<Posts>,
    UrlPath(path): UrlPath<String>,
    body: Bytes,
) -> axum::Json<Value> {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |v: &Value| {
        v["text"]
            .as_str()
            .or(v["message"].as_str())
            .unwrap_or_default()
            .replace('\n', "\n                    ")
    };
    let line = if path.starts_with("slack/chat.postMessage") {
        format!(
            "   #{:<12} ◂ firebreak: {}",
            body["channel"].as_str().unwrap_or(""),
            text(&body)
        )
    } else if path.starts_with("slack/chat.update") {
        format!(
            "   #{:<12} ✎ firebreak: {}",
            body["channel"].as_str().unwrap_or(""),
            text(&body)
        )
    } else if path.starts_with("mm/api/v4/posts/") {
        format!("   ~{:<12} ✎ firebreak: {}", "mmteamc", text(&body))
    } else if path.starts_with("mm/api/v4/posts") {
        let buttons = if body["props"]["attachments"][0]["actions"].is_array() {
            "   [Approve] [Deny]"
        } else {
            ""
        };
        format!(
            "   ~{:<12} ◂ firebreak: {}{buttons}",
            body["channel_id"].as_str().unwrap_or(""),
            text(&body)
        )
    } else {
        format!(
            "   (only to {}) ◂ firebreak: {}",
            path.trim_start_matches("response/"),
            text(&body)
        )
    };
    println!("{line}");
    let mut posts = posts.lock().expect("posts lock");
    posts.push((path, body.clone()));
    let n = posts.len();
    axum::Json(
        json!({"ok": true, "channel": body["channel"], "ts": format!("1.{n}"), "id": format!("post{n}")}),
    )
}

fn sign(secret: &str, ts: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", firebreak_audit::checkpoint::to_hex(tag.as_ref()))
}

struct Chat {
    http: reqwest::Client,
    engine: String,
    secret: String,
    mm_token: String,
    replies: String,
}

impl Chat {
    /// A signed Slack slash command from `user`; prints the exchange.
    async fn slack(&self, who: &str, user: &str, text: &str) -> Result<String> {
        println!("   {who:>5} (Slack) ▸ /firebreak {text}");
        let body = serde_urlencoded::to_string([
            ("user_id", user),
            ("text", text),
            ("response_url", &format!("{}/response/{who}", self.replies)),
        ])?;
        let ts = jiff::Timestamp::now().as_second();
        let answer: Value = self
            .http
            .post(format!("{}/v1/chat/slack/commands", self.engine))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sign(&self.secret, ts, &body))
            .body(body)
            .send()
            .await?
            .json()
            .await?;
        let text = answer["text"].as_str().unwrap_or_default().to_owned();
        println!("   (only to {who}) ◂ firebreak: {text}");
        Ok(text)
    }

    async fn mattermost(&self, who: &str, user: &str, text: &str) -> Result<()> {
        println!("   {who:>5} (Mattermost) ▸ /firebreak {text}");
        let body = serde_urlencoded::to_string([
            ("token", self.mm_token.as_str()),
            ("user_id", user),
            ("text", text),
        ])?;
        let answer: Value = self
            .http
            .post(format!("{}/v1/chat/mattermost/commands", self.engine))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?
            .json()
            .await?;
        println!(
            "   (only to {who}) ◂ firebreak: {}",
            answer["text"].as_str().unwrap_or_default()
        );
        Ok(())
    }

    /// `who` clicks a Mattermost button whose context firebreak signed.
    async fn click(&self, who: &str, user: &str, context: &Value) -> Result<()> {
        println!("   {who:>5} (Mattermost) ▸ clicks [Approve]");
        let answer: Value = self
            .http
            .post(format!("{}/v1/chat/mattermost/actions", self.engine))
            .json(&json!({"user_id": user, "context": context}))
            .send()
            .await?
            .json()
            .await?;
        if let Some(text) = answer["ephemeral_text"].as_str() {
            println!("   (only to {who}) ◂ firebreak: {text}");
        }
        Ok(())
    }
}

pub async fn scenario3(work: &Path) -> Result<()> {
    heading("1. a simulated cluster: three teams, each with its model behind a Service");
    let (sim, kubeconfig) = crate::demo::start_sim(work, Duration::from_millis(300)).await?;
    for team in ["team-a", "team-b", "team-c"] {
        sim.apply_yaml(&model(team, "v1"))?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sim.apply_yaml(&model("team-c", "v2"))?;
    let http = reqwest::Client::new();
    http.post(format!("{}/_sim/traffic", sim.url()))
        .json(&json!({"image": image("team-a", "v2"), "errorRate": 0.5}))
        .send()
        .await?
        .error_for_status()?;
    println!(
        "   team-a, team-b at v1; team-c at v2 (revision 2); team A's v2 will answer 50% errors"
    );

    heading("2. Prometheus scraping kubesim; firebreak with the teams file and chat");
    let prom_port = free_loopback_port()?;
    let dir = work.join("monitoring");
    std::fs::create_dir_all(&dir)?;
    let mut prom = Program::prometheus(&dir, prom_port, sim.addr(), "")?;
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    prom.wait_ready(&format!("{prom_url}/-/ready")).await?;

    let posts = Posts::default();
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::post(chat_post).put(chat_post))
        .with_state(posts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let chat_url = format!("http://{}", listener.local_addr()?);
    let chat_server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let runbooks = work.join("runbooks");
    write_runbooks(&runbooks)?;
    let (yaml, script) = (
        crate::demo::shipped("model-deploy.yaml"),
        crate::demo::shipped("model-deploy.rhai"),
    );
    for t in ["a", "b"] {
        std::fs::write(
            runbooks.join(format!("{t}-model-deploy.yaml")),
            yaml.replace("name: model-deploy", &format!("name: {t}-model-deploy"))
                .replace("team: ml-platform", &format!("team: team-{t}"))
                .replace(
                    "namespaces: [ml-serving]",
                    &format!("namespaces: [team-{t}]"),
                ),
        )?;
        std::fs::write(runbooks.join(format!("{t}-model-deploy.rhai")), script)?;
    }
    std::fs::write(runbooks.join("c-rollback.yaml"), C_ROLLBACK.0)?;
    std::fs::write(runbooks.join("c-rollback.rhai"), C_ROLLBACK.1)?;
    // The shipped ml-platform runbooks are not these teams'.
    for (name, _) in crate::demo::SHIPPED_RUNBOOKS {
        let _ = std::fs::remove_file(runbooks.join(name));
    }
    let teams = work.join("teams.yaml");
    std::fs::write(&teams, TEAMS)?;
    let secret = format!("demo-{}", uuid::Uuid::now_v7().simple());
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: work.join("data"),
        runbooks,
        teams: Some(teams),
        ..Config::default()
    };
    cfg.kubernetes.kubeconfig = Some(kubeconfig);
    cfg.connectors
        .insert("prometheus".into(), json!({"url": prom_url}));
    cfg.auth.slack_signing_secret = Some(secret.clone());
    cfg.auth.mattermost_token = Some("demo-mattermost-token".into());
    cfg.chat.slack_bot_token = Some("xoxb-demo".into());
    cfg.chat.slack_api_url = Some(format!("{chat_url}/slack"));
    cfg.chat.mattermost_url = Some(format!("{chat_url}/mm"));
    cfg.chat.mattermost_bot_token = Some("mm-demo-bot".into());
    let (registry, _) = crate::serve::connectors(&cfg, true).await?;
    let engine = Engine::start(&cfg, registry, Some(stdout_sink("   │ "))).await?;
    let chat = Chat {
        http: http.clone(),
        engine: format!("http://{}", engine.addr),
        secret,
        mm_token: "demo-mattermost-token".into(),
        replies: chat_url.clone(),
    };
    println!(
        "   engine on {}; teams A (Slack #CTEAMA), B (Slack #CTEAMB), C (Mattermost ~mmteamc)",
        chat.engine
    );

    heading("3. the teams at work, as their chat shows it");
    chat.slack(
        "ann",
        "U0ANN",
        &format!(
            "run a-model-deploy namespace=team-a deployment=model image={} interval=2s checks=2",
            image("team-a", "v2")
        ),
    )
    .await?;
    chat.slack(
        "bob",
        "U0BOB",
        "run a-model-deploy namespace=team-a deployment=model image=registry.local/team-b/x:1",
    )
    .await?;
    chat.slack(
        "bob",
        "U0BOB",
        &format!(
            "run b-model-deploy namespace=team-b deployment=model image={} interval=2s checks=2",
            image("team-b", "v2")
        ),
    )
    .await?;
    chat.mattermost(
        "cat",
        "mm-cat",
        "run c-rollback namespace=team-c deployment=model",
    )
    .await?;
    let context = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let found = posts.lock().expect("posts lock").iter().find_map(|(_, b)| {
                let c = &b["props"]["attachments"][0]["actions"][0]["integration"]["context"];
                (!c.is_null()).then(|| c.clone())
            });
            if let Some(c) = found {
                break c;
            }
            if std::time::Instant::now() > deadline {
                bail!("team C's approval request was not posted");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    chat.click("cat", "mm-cat", &context).await?;
    chat.click("dan", "mm-dan", &context).await?;
    chat.click("eve", "mm-eve", &context).await?;

    let journal = engine.dispatcher.journal.clone();
    let a = wait_run(&journal, "a-model-deploy", Duration::from_secs(180)).await?;
    let b = wait_run(&journal, "b-model-deploy", Duration::from_secs(180)).await?;
    let c = wait_run(&journal, "c-rollback", Duration::from_secs(180)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    heading("4. one central audit, each team's view of it");
    for team in ["team-a", "team-b", "team-c"] {
        println!("\n   ── {team}");
        for run in journal.runs().into_iter().filter(|r| r.team == team) {
            print!(
                "{}",
                firebreak_audit::render_timeline(&journal.records_for_run(&run.run_id)?)
            );
        }
    }
    crate::demo::print_verified(&journal)?;
    engine.stop().await?;
    chat_server.abort();
    sim.shutdown().await;
    drop(prom);
    let expected = (
        RunStatus::Failed,
        RunStatus::Succeeded,
        RunStatus::Succeeded,
    );
    if (a.status, b.status, c.status) != (Some(expected.0), Some(expected.1), Some(expected.2)) {
        bail!(
            "expected team A's deploy rolled back by its gate, team B's kept, team C's rollback approved; got {:?}, {:?}, {:?}",
            a.status,
            b.status,
            c.status
        );
    }
    println!(
        "   scenario 3: A's bad v2 rolled back by its gate, B keeps v2, C rolled back after dan and eve approved"
    );
    Ok(())
}
