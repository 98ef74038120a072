//! Slack and Mattermost slash commands from the outside: signed requests (made here with a secret the engine
//! was given), the ways a request is not Slack's (wrong signature, replayed after 5 minutes,
//! from the future, a valid signature over another body), chat users mapped to members, and a
//! run started from chat with the member as its actor.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use crate::harness::{Serve, ServeOpts, http, write_runbooks};

const SECRET: &str = "test-signing-secret-4f0c2";

const TEAMS: &str = "teams:\n  - name: team-a\n    namespaces: [team-a]\n    members:\n      \
                     - name: alice\n        tokens: [alice-token-0001]\n        chat_ids: [U0ALICE]\n  \
                     - name: team-b\n    namespaces: [team-b]\n    members:\n      - name: bob\n        \
                     tokens: [bob-token-0002]\n        chat_ids: [U0BOB]\n";

fn sign(secret: &str, ts: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("v0:{ts}:{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

fn command(user: &str, text: &str) -> String {
    serde_urlencoded::to_string([
        ("team_id", "T1"),
        ("channel_id", "C1"),
        ("user_id", user),
        ("command", "/firebreak"),
        ("text", text),
        ("response_url", "http://127.0.0.1:9/unused"),
    ])
    .unwrap()
}

/// Posts `body` to the slash command endpoint with a timestamp and signature; status, JSON.
async fn post(serve: &Serve, ts: i64, signature: &str, body: String) -> (u16, Value) {
    let resp = http()
        .post(serve.url("/v1/chat/slack/commands"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("X-Slack-Request-Timestamp", ts.to_string())
        .header("X-Slack-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn signed(serve: &Serve, user: &str, text: &str) -> String {
    let body = command(user, text);
    let now = jiff::Timestamp::now().as_second();
    let (status, answer) = post(serve, now, &sign(SECRET, now, &body), body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response_type"], "ephemeral", "{answer}");
    answer["text"].as_str().unwrap().to_owned()
}

/// An engine with the two teams and team-a's `note-a` runbook, plus `chat` (the chat
/// credential); the temporary folder holds the runbooks and teams file.
async fn team_a_engine(chat: (&'static str, String)) -> (tempfile::TempDir, Serve) {
    team_a_engine_with(chat, None).await
}

/// [`team_a_engine`] with a config file's text.
async fn team_a_engine_with(
    chat: (&'static str, String),
    config: Option<String>,
) -> (tempfile::TempDir, Serve) {
    let tmp = tempfile::tempdir().unwrap();
    let teams = tmp.path().join("teams.yaml");
    std::fs::write(&teams, TEAMS).unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "note-a.yaml",
                "name: note-a\nteam: team-a\ndescription: notes for team a\nnamespaces: [team-a]\ntimeout: 30s\n\
                 params:\n  n: { type: int, default: 1 }\n",
            ),
            ("note-a.rhai", "log(`noted ${ctx.params.n}`);\n"),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_TEAMS", teams.display().to_string()), chat],
            config,
            ..ServeOpts::default()
        },
    )
    .await;
    (tmp, serve)
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_commands_are_verified_mapped_to_members_and_start_runs() {
    let (_tmp, serve) = team_a_engine(("FIREBREAK_SLACK_SIGNING_SECRET", SECRET.into())).await;

    let list = signed(&serve, "U0ALICE", "list").await;
    assert!(list.contains("`note-a`: notes for team a"), "{list}");
    assert!(
        signed(&serve, "U0BOB", "list")
            .await
            .contains("no runbooks")
    );
    let stranger = signed(&serve, "U0NOBODY", "run note-a").await;
    assert!(stranger.contains("not a member of any team"), "{stranger}");
    let refused = signed(&serve, "U0BOB", "run note-a").await;
    assert!(refused.starts_with("refused:"), "{refused}");

    let started = signed(&serve, "U0ALICE", "run note-a n=7").await;
    assert!(started.contains("accepted for alice"), "{started}");
    let journal = serve
        .wait_journal("alice's run from chat", Duration::from_secs(30), |j| {
            j.finished("note-a").len() == 1
        })
        .await;
    let run = &journal.finished("note-a")[0];
    assert_eq!(run.status(), Some("succeeded"), "{}", journal.summary());
    assert_eq!(run.records[0]["actor"], "alice");
    assert_eq!(run.records[0]["body"]["params"]["n"], 7);
    let status = signed(&serve, "U0ALICE", "status").await;
    assert!(
        status.contains("note-a") && status.contains("succeeded"),
        "{status}"
    );
    // bob's refusal is in the audit trail.
    assert!(
        journal
            .refusals()
            .iter()
            .any(|r| r["actor"] == "bob" && r["runbook"] == "note-a"),
        "{}",
        journal.summary()
    );

    // Requests that are not Slack's: each 401, none runs anything. (310 s, not 301: the
    // engine's clock may read a second later than this test's; the 300 s edge is unit-tested.)
    let now = jiff::Timestamp::now().as_second();
    let body = command("U0ALICE", "run note-a");
    let cases = [
        (
            "wrong secret",
            now,
            sign("not-the-secret", now, &body),
            body.clone(),
        ),
        (
            "replayed after 5 minutes",
            now - 310,
            sign(SECRET, now - 310, &body),
            body.clone(),
        ),
        (
            "from the future",
            now + 310,
            sign(SECRET, now + 310, &body),
            body.clone(),
        ),
        (
            "signature over another body",
            now,
            sign(SECRET, now, &command("U0ALICE", "list")),
            body.clone(),
        ),
        ("no signature", now, String::new(), body.clone()),
    ];
    for (what, ts, signature, body) in cases {
        let (status, answer) = post(&serve, ts, &signature, body).await;
        assert_eq!(status, 401, "{what}: {answer}");
    }
    // A signed command after them: once its run has ended, whatever they had put on the bus
    // (before it) would have started too.
    let after = signed(&serve, "U0ALICE", "run note-a n=8").await;
    assert!(after.contains("accepted for alice"), "{after}");
    let journal = serve
        .wait_journal(
            "the run after the refused requests",
            Duration::from_secs(30),
            |j| j.finished("note-a").len() == 2,
        )
        .await;
    let ns: Vec<&serde_json::Value> = journal
        .runs_of("note-a")
        .iter()
        .map(|r| &r.records[0]["body"]["params"]["n"])
        .collect();
    assert_eq!(ns, [&7, &8], "nothing else ran: {}", journal.summary());
}

/// Mattermost slash commands: the command's token (form field or `Authorization: Token`)
/// decides, compared in constant time; a wrong or missing one is 401 and runs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn mattermost_commands_need_the_command_token() {
    let (_tmp, serve) =
        team_a_engine(("FIREBREAK_MATTERMOST_TOKEN", "mm-command-token-7".into())).await;
    let post = |token: Option<&'static str>, header: Option<&'static str>, text: &'static str| {
        let serve = &serve;
        async move {
            let mut fields = vec![
                ("user_id", "U0ALICE"),
                ("command", "/firebreak"),
                ("text", text),
            ];
            if let Some(token) = token {
                fields.push(("token", token));
            }
            let mut req = http()
                .post(serve.url("/v1/chat/mattermost/commands"))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(&fields).unwrap());
            if let Some(header) = header {
                req = req.header("Authorization", format!("Token {header}"));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, answer) = post(Some("mm-command-token-7"), None, "list").await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["text"].as_str().unwrap().contains("`note-a`"),
        "{answer}"
    );
    let (status, _) = post(None, Some("mm-command-token-7"), "list").await;
    assert_eq!(status, 200, "the token in the Authorization header");
    for (token, header) in [
        (Some("mm-command-token-8"), None),
        (None, None),
        (None, Some("guess")),
        (Some(""), None),
    ] {
        let (status, answer) = post(token, header, "run note-a").await;
        assert_eq!(status, 401, "{token:?} {header:?}: {answer}");
    }
    let (status, answer) = post(Some("mm-command-token-7"), None, "run note-a").await;
    assert_eq!(status, 200, "{answer}");
    let journal = serve
        .wait_journal("the one accepted run", Duration::from_secs(30), |j| {
            j.finished("note-a").len() == 1
        })
        .await;
    assert_eq!(journal.finished("note-a")[0].records[0]["actor"], "alice");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        serve.journal().runs_of("note-a").len(),
        1,
        "refused ones ran nothing"
    );
}

/// `status RUN` answers a run the server no longer lists (older than
/// `audit.finished_runs_kept`) from the journal on disk, by its full id, and only to its team.
#[tokio::test(flavor = "multi_thread")]
async fn status_finds_a_run_older_than_the_listing_by_its_full_id() {
    let (_tmp, serve) = team_a_engine_with(
        ("FIREBREAK_SLACK_SIGNING_SECRET", SECRET.into()),
        Some("audit:\n  finished_runs_kept: 1\n".into()),
    )
    .await;
    for n in 1..=2 {
        let started = signed(&serve, "U0ALICE", &format!("run note-a n={n}")).await;
        assert!(started.contains("accepted for alice"), "{started}");
        serve
            .wait_journal("alice's run from chat", Duration::from_secs(30), |j| {
                j.finished("note-a").len() == n
            })
            .await;
    }
    let journal = serve.journal();
    let oldest = journal.finished("note-a")[0].run_id.clone();
    let newest = journal.finished("note-a")[1].run_id.clone();
    let listed = signed(&serve, "U0ALICE", "status").await;
    assert!(
        listed.contains(&newest) && !listed.contains(&oldest),
        "{listed}"
    );

    let found = signed(&serve, "U0ALICE", &format!("status {oldest}")).await;
    assert!(
        found.contains(&oldest) && found.contains("succeeded") && found.contains("alice"),
        "{found}"
    );
    // Run ids are UUIDv7s: the two share their first characters (the time).
    let shared = oldest
        .chars()
        .zip(newest.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let prefix = &oldest[..=shared];
    let prefix = signed(&serve, "U0ALICE", &format!("status {prefix}")).await;
    assert!(
        prefix.starts_with("no run") && prefix.contains("full id"),
        "{prefix}"
    );
    // Another team's member is not told about it.
    let other = signed(&serve, "U0BOB", &format!("status {oldest}")).await;
    assert!(other.starts_with("no run"), "{other}");
}
