//! The engine's guard rails from the outside, whatever the script says: a team's deployment
//! policy refuses a deploy that breaks it (before anything is written, reasons audited), and
//! the blast-radius cap refuses mutations past N per namespace in its window across runs and
//! teams. Also: an approval clicked in Slack (a signed `block_actions` request), a double
//! click, and a click that is not Slack's.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::chat::{ChatStandIn, post_signed};
use crate::harness::{Cluster, Serve, ServeOpts, fraud_model_at_v2, wait_for, write_runbooks};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "guards-signing-secret-77a1";

const TEAMS: &str = r#"teams:
  - name: ml
    namespaces: [ml-serving]
    slack_channel: CML
    deploy_policy: { readiness_probe: true, resources: true, registries: [registry.example.invalid/ml/] }
    members:
      - { name: ann, tokens: [ann-token-0001], chat_ids: [U0ANN] }
      - { name: ben, tokens: [ben-token-0002], chat_ids: [U0BEN] }
  - name: web
    namespaces: [web]
    slack_channel: CGONE
    members:
      - { name: wes, tokens: [wes-token-0005], chat_ids: [U0WES] }
blast_radius: { per_namespace: 1, per_cluster: 5, window: 10m }
"#;

async fn engine(cluster: &Cluster, chat: &ChatStandIn) -> (tempfile::TempDir, Serve) {
    let tmp = tempfile::tempdir().unwrap();
    let teams = tmp.path().join("teams.yaml");
    std::fs::write(&teams, TEAMS).unwrap();
    let dir = tmp.path().join("runbooks");
    let params = "params:\n  image: { type: string, default: \"\" }\n  replicas: { type: int, default: 3 }\n";
    write_runbooks(
        &dir,
        &[
            (
                "deploy.yaml",
                &format!(
                    "name: deploy\nteam: ml\ndescription: d\nnamespaces: [ml-serving]\n{params}"
                ),
            ),
            (
                "deploy.rhai",
                "k8s::set_image(\"ml-serving\", \"fraud-model\", \"model-server\", ctx.params.image);\n",
            ),
            (
                "scale.yaml",
                &format!(
                    "name: scale\nteam: ml\ndescription: d\nnamespaces: [ml-serving]\n{params}"
                ),
            ),
            (
                "scale.rhai",
                "k8s::scale(\"ml-serving\", \"fraud-model\", ctx.params.replicas);\n",
            ),
            (
                "gated.yaml",
                &format!(
                    "name: gated\nteam: ml\ndescription: d\nnamespaces: [ml-serving]\n{params}approval: true\n"
                ),
            ),
            (
                "gated.rhai",
                "approve(\"restart the model?\");\nlog(\"approved\");\n",
            ),
            (
                "web-note.yaml",
                "name: web-note\nteam: web\ndescription: d\nnamespaces: [web]\n",
            ),
            ("web-note.rhai", "log(\"noted\");\n"),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![
                ("FIREBREAK_TEAMS", teams.display().to_string()),
                (
                    "FIREBREAK_KUBECONFIG",
                    cluster.kubeconfig.display().to_string(),
                ),
                ("FIREBREAK_SLACK_SIGNING_SECRET", SECRET.into()),
                ("FIREBREAK_SLACK_BOT_TOKEN", "xoxb-guards".into()),
                (
                    "FIREBREAK_SLACK_API_URL",
                    format!("{}/slack/api", chat.base),
                ),
            ],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await;
    (tmp, serve)
}

async fn trigger(serve: &Serve, runbook: &str, params: Value) {
    let (status, body) = serve
        .post(
            "/v1/trigger",
            Some("ann-token-0001"),
            json!({"runbook": runbook, "params": params}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

fn refusal(run: &crate::harness::Run<'_>) -> String {
    run.records
        .iter()
        .find(|r| r["body"]["type"] == "refusal")
        .map(|r| r["body"]["reason"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deployment_policy_and_the_blast_radius_refuse_whatever_the_script_says() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let chat = ChatStandIn::start().await;
    let (_tmp, serve) = engine(&cluster, &chat).await;
    let revisions = cluster.fraud_model_revisions().await;

    // fraud-model has a readiness probe but no requests and limits, and the image is foreign.
    trigger(
        &serve,
        "deploy",
        json!({"image": "docker.io/someone/fraud-model:latest"}),
    )
    .await;
    let journal = serve
        .wait_journal("the refused deploy", WAIT, |j| {
            j.finished("deploy").len() == 1
        })
        .await;
    let run = &journal.finished("deploy")[0];
    assert_eq!(run.status(), Some("failed"));
    let why = refusal(run);
    assert!(why.starts_with("deployment policy of team ml"), "{why}");
    assert!(
        why.contains("does not request and limit cpu and memory"),
        "{why}"
    );
    assert!(why.contains("not from an allowed registry"), "{why}");
    assert!(!why.contains("readinessProbe"), "it has one: {why}");
    assert_eq!(
        cluster.fraud_model_revisions().await,
        revisions,
        "nothing written"
    );

    // One mutation per namespace in ten minutes: the first scale goes, the second is refused.
    trigger(&serve, "scale", json!({"replicas": 3})).await;
    serve
        .wait_journal("the first scale", WAIT, |j| j.finished("scale").len() == 1)
        .await;
    trigger(&serve, "scale", json!({"replicas": 4})).await;
    let journal = serve
        .wait_journal("the second scale", WAIT, |j| j.finished("scale").len() == 2)
        .await;
    let runs = journal.finished("scale");
    assert_eq!(runs[0].status(), Some("succeeded"), "{}", serve.log_tail());
    assert_eq!(runs[1].status(), Some("failed"));
    assert!(
        refusal(&runs[1]).starts_with("blast radius: 1 mutating actions in namespace ml-serving"),
        "{}",
        refusal(&runs[1])
    );
    let out = cluster
        .kubectl(&[
            "-n",
            "ml-serving",
            "get",
            "deployment",
            "fraud-model",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await
        .ok("kubectl get replicas");
    assert_eq!(out.stdout.trim(), "3", "the refused scale changed nothing");

    // Counted by reason; promtool finds the metrics clean.
    let metrics = crate::harness::scrape_checked(&serve).await;
    for line in [
        r#"firebreak_refusals_total{reason="deploy_policy"} 1"#,
        r#"firebreak_refusals_total{reason="blast_radius"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }

    // The team's channel heard of both refusals.
    let texts = chat.texts("slack/chat.postMessage");
    assert!(
        texts
            .iter()
            .filter(|(ch, t)| ch == "CML" && t.starts_with("⛔ refused"))
            .count()
            >= 2,
        "{texts:?}"
    );
}

fn click(user: &str, action: &str, run: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user},
        "container": {"type": "message", "channel_id": "CML"},
        "message": {"type": "message", "text": "approve restart?"},
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": action, "value": run,
                     "block_id": format!("approval:{run}:v0")}],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_is_clicked_in_slack_once() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    let chat = ChatStandIn::start().await;
    let (_tmp, serve) = engine(&cluster, &chat).await;
    trigger(&serve, "gated", json!({})).await;

    // The request is posted to the team's channel with Approve and Deny buttons.
    let posted = wait_for(
        "the approval request in Slack",
        WAIT,
        || serve.log_tail(),
        || async {
            chat.posted().into_iter().find(|p| {
                p.path == "slack/chat.postMessage" && p.body["blocks"][1]["type"] == "actions"
            })
        },
    )
    .await;
    assert_eq!(posted.body["channel"], "CML");
    assert_eq!(posted.authorization.as_deref(), Some("Bearer xoxb-guards"));
    let run = posted.body["blocks"][1]["elements"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = serve.url("/v1/chat/slack/interactions");
    let replies = format!("{}/response/click", chat.base);

    // Not Slack's: a wrong secret, or a signature over another body.
    let (status, _) = post_signed(
        &url,
        "not-the-secret",
        click("U0BEN", "approve", &run, &replies),
    )
    .await;
    assert_eq!(status, 401);
    // The requester clicks: refused, told on the response URL; a stranger likewise.
    let (status, _) = post_signed(&url, SECRET, click("U0ANN", "approve", &run, &replies)).await;
    assert_eq!(status, 200);
    let (status, _) = post_signed(&url, SECRET, click("U0WES", "approve", &run, &replies)).await;
    assert_eq!(status, 200);
    // ben approves; his second click is not counted.
    let (status, _) = post_signed(&url, SECRET, click("U0BEN", "approve", &run, &replies)).await;
    assert_eq!(status, 200);
    let journal = serve
        .wait_journal("the approved run", WAIT, |j| j.finished("gated").len() == 1)
        .await;
    let (status, _) = post_signed(&url, SECRET, click("U0BEN", "approve", &run, &replies)).await;
    assert_eq!(status, 200);
    let run_records = &journal.finished("gated")[0];
    assert_eq!(
        run_records.status(),
        Some("succeeded"),
        "{}",
        serve.log_tail()
    );
    let approvals: Vec<&Value> = run_records
        .records
        .iter()
        .copied()
        .filter(|r| r["body"]["type"] == "approval")
        .collect();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0]["body"]["approver"], "ben");
    assert_eq!(approvals[0]["body"]["channel"], "slack");
    assert_eq!(approvals[0]["body"]["seen"], "approve restart?");

    let answers = wait_for(
        "the click answers",
        WAIT,
        || serve.log_tail(),
        || async {
            let posted: Vec<Value> = chat
                .posted()
                .into_iter()
                .filter(|p| p.path == "response/click")
                .map(|p| p.body)
                .collect();
            (posted.len() >= 4).then_some(posted)
        },
    )
    .await;
    let text = |i: usize| answers[i]["text"].as_str().unwrap_or_default().to_owned();
    let all: Vec<String> = (0..answers.len()).map(text).collect();
    assert!(all.iter().any(|t| t.contains("self_approval")), "{all:?}");
    assert!(all.iter().any(|t| t.contains("may not decide")), "{all:?}");
    let settled: Vec<&Value> = answers
        .iter()
        .filter(|a| a["replace_original"] == true)
        .collect();
    assert_eq!(settled.len(), 1, "the message is replaced once: {all:?}");
    assert!(
        settled[0]["text"]
            .as_str()
            .unwrap()
            .contains("approved by ben")
    );
    // The bot's message was updated without buttons too.
    let updated = chat
        .posted()
        .into_iter()
        .filter(|p| p.path == "slack/chat.update")
        .map(|p| p.body)
        .collect::<Vec<_>>();
    assert!(
        updated
            .iter()
            .any(|u| u["blocks"].as_array().is_some_and(|b| b.len() == 1)),
        "{updated:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_that_answers_ok_false_is_logged_and_the_run_goes_on() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    let chat = ChatStandIn::start().await;
    let (_tmp, serve) = engine(&cluster, &chat).await;
    let (status, body) = serve
        .post(
            "/v1/trigger",
            Some("wes-token-0005"),
            json!({"runbook": "web-note"}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let journal = serve
        .wait_journal("web's run", WAIT, |j| j.finished("web-note").len() == 1)
        .await;
    assert_eq!(journal.finished("web-note")[0].status(), Some("succeeded"));
    let warned = wait_for(
        "the chat failure in the log",
        WAIT,
        || serve.log_tail(),
        || async {
            serve.log_lines().into_iter().find(|l| {
                l["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("slack says channel_not_found"))
            })
        },
    )
    .await;
    assert_eq!(
        warned["fields"]["message"], "slack notification not posted",
        "{warned}"
    );
}
