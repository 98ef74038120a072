//! Scenario 3: three data-science teams deploy and roll back their models independently,
//! through one central, audited process. Real parts: kubesim (each team's model behind a
//! Service, served by kubesim's traffic model), the real Prometheus scraping it, nats-server
//! with JetStream, `firebreak serve`, and Slack and Mattermost stood in for by a local server
//! that records what firebreak posts (requests to firebreak are signed as Slack signs them).
//!
//! Concurrently: team A deploys v2 from a Slack command and its gate rolls it back (v2 answers
//! half its requests with 500); team B deploys v2 through the API and keeps it; team C's
//! rollback waits for two approvals clicked in Mattermost. Team B's user cannot start team A's
//! runbook; a deploy inside a freeze window is refused; the central audit verifies and each
//! team's view holds only its own runs.

use std::time::Duration;

use firebreak_bus::testutil::NatsServer;
use serde_json::{Value, json};

use crate::harness::chat::{ChatStandIn, post_signed};
use crate::harness::{
    Cluster, Journal, Prometheus, Serve, ServeOpts, crate_dir, repo_root, wait_for,
};

const SECRET: &str = "scenario3-signing-secret-9d1e";
const MM_TOKEN: &str = "scenario3-mattermost-cmd-token";
const WAIT: Duration = Duration::from_secs(180);

fn image(team: &str, version: &str) -> String {
    format!("registry.local/{team}/model:{version}")
}

/// A team's model at `version` (firebreak/demo/teams/model.yaml).
fn model(team: &str, version: &str) -> String {
    std::fs::read_to_string(crate_dir().join("demo/teams/model.yaml"))
        .unwrap()
        .replace("TEAM", team)
        .replace("VERSION", version)
}

/// The teams file (firebreak/demo/teams/teams.yaml), with `extra` appended.
fn teams(extra: &str) -> String {
    std::fs::read_to_string(crate_dir().join("demo/teams/teams.yaml")).unwrap() + extra
}

/// The shipped `model-deploy` as teams A's and B's own runbooks, plus team C's gated
/// rollback (firebreak/demo/teams/).
fn runbooks(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let shipped = repo_root().join("runbooks");
    let yaml = std::fs::read_to_string(shipped.join("model-deploy.yaml")).unwrap();
    let script = std::fs::read_to_string(shipped.join("model-deploy.rhai")).unwrap();
    for t in ["a", "b"] {
        let name = format!("{t}-model-deploy");
        let ours = yaml
            .replace("name: model-deploy", &format!("name: {name}"))
            .replace("team: ml-platform", &format!("team: team-{t}"))
            .replace(
                "namespaces: [ml-serving]",
                &format!("namespaces: [team-{t}]"),
            );
        std::fs::write(dir.join(format!("{name}.yaml")), ours).unwrap();
        std::fs::write(dir.join(format!("{name}.rhai")), &script).unwrap();
    }
    for file in ["c-rollback.yaml", "c-rollback.rhai"] {
        std::fs::copy(crate_dir().join("demo/teams").join(file), dir.join(file)).unwrap();
    }
}

fn slash(user: &str, text: &str, response_url: &str) -> String {
    serde_urlencoded::to_string([
        ("team_id", "T1"),
        ("channel_id", "C1"),
        ("user_id", user),
        ("command", "/firebreak"),
        ("text", text),
        ("response_url", response_url),
    ])
    .unwrap()
}

async fn mattermost(serve: &Serve, user: &str, text: &str) -> Value {
    let body = serde_urlencoded::to_string([
        ("token", MM_TOKEN),
        ("user_id", user),
        ("command", "/firebreak"),
        ("text", text),
    ])
    .unwrap();
    let resp = crate::harness::http()
        .post(serve.url("/v1/chat/mattermost/commands"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

async fn click(serve: &Serve, user: &str, context: &Value) -> (u16, Value) {
    serve
        .post(
            "/v1/chat/mattermost/actions",
            None,
            json!({"user_id": user, "post_id": "post1", "context": context}).to_string(),
        )
        .await
}

async fn rollout(cluster: &Cluster, team: &str) {
    cluster
        .kubectl(&[
            "-n",
            team,
            "rollout",
            "status",
            "deployment/model",
            "--timeout=60s",
        ])
        .await
        .ok("rollout status");
}

async fn deployed_image(cluster: &Cluster, team: &str) -> String {
    let out = cluster
        .kubectl(&[
            "-n",
            team,
            "get",
            "deployment",
            "model",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await
        .ok("kubectl get image");
    out.stdout.trim().to_owned()
}

fn the_run<'a>(journal: &'a Journal, runbook: &str) -> crate::harness::Run<'a> {
    let mut runs = journal.finished(runbook);
    assert_eq!(runs.len(), 1, "one {runbook} run: {}", journal.summary());
    runs.remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_teams_deploy_and_roll_back_independently_through_one_audited_process() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    for team in ["team-a", "team-b", "team-c"] {
        cluster
            .sim
            .apply_yaml(&model(team, "v1"))
            .expect("apply v1");
        rollout(&cluster, team).await;
    }
    cluster
        .sim
        .apply_yaml(&model("team-c", "v2"))
        .expect("apply v2");
    rollout(&cluster, "team-c").await;
    // Team A's v2 answers half its requests with 500.
    let bad = crate::harness::http()
        .post(format!("http://{}/_sim/traffic", cluster.sim.addr()))
        .json(&json!({"image": image("team-a", "v2"), "errorRate": 0.5}))
        .send()
        .await
        .unwrap();
    assert!(bad.status().is_success());

    let nats = NatsServer::start().expect("nats-server -js");
    let prom = Prometheus::start(&[("kubesim", cluster.sim.addr())], "groups: []\n", None).await;
    let chat = ChatStandIn::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let teams_file = tmp.path().join("teams.yaml");
    std::fs::write(&teams_file, teams("")).unwrap();
    let dir = tmp.path().join("runbooks");
    runbooks(&dir);
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![
                ("FIREBREAK_TEAMS", teams_file.display().to_string()),
                ("FIREBREAK_NATS_URL", nats.url()),
                (
                    "FIREBREAK_KUBECONFIG",
                    cluster.kubeconfig.display().to_string(),
                ),
                ("FIREBREAK_PROMETHEUS_URL", prom.base.clone()),
                ("FIREBREAK_SLACK_SIGNING_SECRET", SECRET.into()),
                ("FIREBREAK_MATTERMOST_TOKEN", MM_TOKEN.into()),
                ("FIREBREAK_SLACK_BOT_TOKEN", "xoxb-scenario3".into()),
                (
                    "FIREBREAK_SLACK_API_URL",
                    format!("{}/slack/api", chat.base),
                ),
                ("FIREBREAK_MATTERMOST_URL", format!("{}/mm", chat.base)),
                ("FIREBREAK_MATTERMOST_BOT_TOKEN", "mm-bot-scenario3".into()),
            ],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await;
    let context = || format!("{}\n{}", serve.journal().summary(), serve.log_tail());
    let commands = serve.url("/v1/chat/slack/commands");

    // Team B's user cannot start team A's runbook.
    let deploy_a = format!(
        "run a-model-deploy namespace=team-a deployment=model image={} interval=2s checks=2",
        image("team-a", "v2")
    );
    let (status, answer) = post_signed(&commands, SECRET, slash("U0BOB", &deploy_a, "")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["text"].as_str().unwrap().starts_with("refused:"),
        "{answer}"
    );

    // Concurrently: A from Slack (its first Slack call is throttled), B through the API, C's
    // rollback from Mattermost.
    chat.throttle_next_slack_call();
    let ann_replies = format!("{}/response/ann", chat.base);
    let (status, answer) =
        post_signed(&commands, SECRET, slash("U0ANN", &deploy_a, &ann_replies)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("accepted for ann"),
        "{answer}"
    );
    let (status, body) = serve
        .post(
            "/v1/trigger",
            Some("bob-token-0002"),
            json!({"runbook": "b-model-deploy", "params": {"namespace": "team-b", "deployment": "model",
                   "image": image("team-b", "v2"), "interval": "2s", "checks": 2}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let answer = mattermost(
        &serve,
        "mm-cat",
        "run c-rollback namespace=team-c deployment=model",
    )
    .await;
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("accepted for cat"),
        "{answer}"
    );

    // Team C's approval request arrives in its Mattermost channel with two signed buttons.
    let request = wait_for(
        "team C's approval request in Mattermost",
        WAIT,
        context,
        || async {
            chat.posted().into_iter().find(|p| {
                p.path == "mm/posts" && p.body["props"]["attachments"][0]["actions"].is_array()
            })
        },
    )
    .await;
    assert_eq!(request.body["channel_id"], "mmteamc");
    assert_eq!(
        request.authorization.as_deref(),
        Some("Bearer mm-bot-scenario3")
    );
    let actions = request.body["props"]["attachments"][0]["actions"]
        .as_array()
        .unwrap()
        .clone();
    let approve = actions[0]["integration"]["context"].clone();
    assert_eq!(
        actions[0]["integration"]["url"],
        serve.url("/v1/chat/mattermost/actions")
    );
    assert!(
        request.body["message"]
            .as_str()
            .unwrap()
            .contains("k8s::rollback"),
        "{request:?}"
    );

    // Forged contexts are refused: another run, another decision, no signature.
    let mut forged = approve.clone();
    forged["action"] = json!("deny");
    assert_eq!(click(&serve, "mm-dan", &forged).await.0, 401);
    let mut forged = approve.clone();
    forged["run"] = json!("0190aaaa-0000-7000-8000-000000000000");
    assert_eq!(click(&serve, "mm-dan", &forged).await.0, 401);
    let mut forged = approve.clone();
    forged.as_object_mut().unwrap().remove("sig");
    assert_eq!(click(&serve, "mm-dan", &forged).await.0, 401);
    // The requester may not approve; dan counts once; eve's approval settles it.
    for (user, told) in [
        ("mm-cat", "self_approval"),
        ("mm-dan", "1 of 2"),
        ("mm-dan", "already approved"),
    ] {
        let (status, answer) = click(&serve, user, &approve).await;
        assert_eq!(status, 200, "{answer}");
        let text = answer["ephemeral_text"].as_str().unwrap_or_default();
        assert!(text.contains(told), "{user} is told {told:?}: {answer}");
    }
    let (_, answer) = click(&serve, "mm-eve", &approve).await;
    assert!(
        answer["update"]["message"]
            .as_str()
            .unwrap()
            .contains("approved by dan, eve"),
        "{answer}"
    );
    assert_eq!(
        answer["update"]["props"]["attachments"],
        json!([]),
        "the buttons are gone"
    );

    let journal = serve
        .wait_journal("the three teams' runs to finish", WAIT, |j| {
            ["a-model-deploy", "b-model-deploy", "c-rollback"]
                .iter()
                .all(|rb| j.finished(rb).len() == 1)
        })
        .await;
    let a = the_run(&journal, "a-model-deploy");
    assert_eq!(a.status(), Some("failed"), "{}", context());
    let a_end = a.records.last().unwrap()["body"]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        a_end.contains("the gate failed") && a_end.contains("error rate"),
        "{a_end}"
    );
    assert_eq!(
        deployed_image(&cluster, "team-a").await,
        image("team-a", "v1"),
        "A's gate rolled v2 back"
    );
    let b = the_run(&journal, "b-model-deploy");
    assert_eq!(b.status(), Some("succeeded"), "{}", context());
    assert_eq!(
        deployed_image(&cluster, "team-b").await,
        image("team-b", "v2"),
        "B keeps v2"
    );
    let c = the_run(&journal, "c-rollback");
    let trail: Vec<String> = c
        .records
        .iter()
        .map(|r| crate::harness::trail_line(r))
        .collect();
    assert_eq!(c.status(), Some("succeeded"), "{}", trail.join("\n"));
    assert_eq!(
        deployed_image(&cluster, "team-c").await,
        image("team-c", "v1")
    );
    let approvers: Vec<(String, String)> = c
        .records
        .iter()
        .filter(|r| r["body"]["type"] == "approval")
        .map(|r| {
            (
                r["body"]["approver"].as_str().unwrap().to_owned(),
                r["body"]["channel"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        approvers,
        [
            ("dan".to_owned(), "mattermost".to_owned()),
            ("eve".to_owned(), "mattermost".to_owned())
        ]
    );

    // What the teams were told: A in its Slack channel (despite the 429) and on the command's
    // response URL; C's approval message updated to the decision.
    let slack = chat.texts("slack/chat.postMessage");
    assert!(
        slack.iter().any(|(ch, t)| ch == "CTEAMA"
            && t.contains("a-model-deploy")
            && t.contains("started by ann")),
        "{slack:?}"
    );
    assert!(
        slack
            .iter()
            .any(|(ch, t)| ch == "CTEAMA" && t.contains("failed")),
        "{slack:?}"
    );
    assert!(
        slack
            .iter()
            .any(|(ch, t)| ch == "CTEAMB" && t.contains("succeeded")),
        "{slack:?}"
    );
    assert!(
        !slack.iter().any(|(ch, t)| ch == "CTEAMB"
            && t.contains("a-model-deploy")
            && !t.contains("refused")),
        "B's channel hears nothing of A's runs: {slack:?}"
    );
    let follow_ups = chat.texts("response/ann");
    assert!(
        follow_ups.iter().any(|(_, t)| t.contains("failed")),
        "{follow_ups:?}"
    );
    assert!(
        follow_ups.len() <= 5,
        "a response URL is used at most 5 times: {follow_ups:?}"
    );
    let updates = chat.texts("mm/posts/");
    assert!(
        updates
            .iter()
            .any(|(_, t)| t.contains("approved by dan, eve")),
        "{updates:?}"
    );

    // A freeze on team B: its next deploy is refused, and says why.
    let freeze = format!(
        "freezes:\n  - name: quarter-end\n    from: {}\n    until: {}\n    teams: [team-b]\n",
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60),
        jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600)
    );
    let reloads = |s: &Serve| {
        s.log_lines()
            .iter()
            .filter(|l| l["fields"]["message"] == "runbooks reloaded")
            .count()
    };
    let before = reloads(&serve);
    std::fs::write(&teams_file, teams(&freeze)).unwrap();
    wait_for(
        "the teams file to reload",
        Duration::from_secs(30),
        context,
        || async { (reloads(&serve) > before).then_some(()) },
    )
    .await;
    let (status, body) = serve
        .post(
            "/v1/trigger",
            Some("bob-token-0002"),
            json!({"runbook": "b-model-deploy", "params": {"namespace": "team-b", "deployment": "model",
                   "image": image("team-b", "v3")}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let journal = serve
        .wait_journal("the frozen deploy to end", WAIT, |j| {
            j.finished("b-model-deploy").len() == 2
        })
        .await;
    let frozen = journal.finished("b-model-deploy").pop().unwrap();
    assert_eq!(frozen.status(), Some("failed"));
    let refusal = frozen
        .records
        .iter()
        .find(|r| r["body"]["type"] == "refusal")
        .expect("the refusal is audited");
    assert!(
        refusal["body"]["reason"]
            .as_str()
            .unwrap()
            .contains("quarter-end"),
        "{refusal}"
    );
    assert_eq!(
        deployed_image(&cluster, "team-b").await,
        image("team-b", "v2"),
        "nothing deployed"
    );

    // One central audit that verifies; each team's view holds only its own runs.
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
    for (token, team) in [
        ("ann-token-0001", "team-a"),
        ("bob-token-0002", "team-b"),
        ("cat-token-0003", "team-c"),
    ] {
        let (status, body) = serve.get("/v1/runs", Some(token)).await;
        assert_eq!(status, 200, "{body}");
        let runs = body["runs"].as_array().unwrap();
        assert!(!runs.is_empty(), "{team} sees its runs");
        assert!(
            runs.iter().all(|r| r["team"] == team),
            "{team}'s view: {body}"
        );
    }
}
