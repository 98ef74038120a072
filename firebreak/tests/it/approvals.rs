//! Approvals with policy, from the outside: a runbook whose manifest asks two distinct people
//! of two teams pauses before its rollback; the requester, a stranger, a double click and an
//! answer after expiry are refused; a deny stops the run; a pending approval survives a
//! restart; every decision is in the audit trail with who, how, and what they saw.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Cluster, Serve, ServeOpts, fraud_model_at_v2, wait_for, write_runbooks};

const TEAMS: &str = r#"teams:
  - name: ml
    namespaces: [ml-serving]
    members:
      - { name: ann, tokens: [ann-token-0001] }
      - { name: ben, tokens: [ben-token-0002] }
      - { name: cat, tokens: [cat-token-0003] }
  - name: sre
    namespaces: [infra]
    members:
      - { name: sam, tokens: [sam-token-0004] }
  - name: web
    namespaces: [web]
    members:
      - { name: wes, tokens: [wes-token-0005] }
"#;

const RUNBOOK: &str = r#"name: gated-rollback
team: ml
description: roll a model back, approved
namespaces: [ml-serving]
timeout: 2m
params:
  namespace: { type: string, required: true }
  deployment: { type: string, required: true }
approval:
  approvers: [ml, sre]
  required: 2
  expires: EXPIRES
  on_expiry: deny
"#;

const SCRIPT: &str = "let undo = k8s::rollback(ctx.params.namespace, ctx.params.deployment);\n\
log(`rolled back: ${undo.rolled_back}`);\n";

const WAIT: Duration = Duration::from_secs(60);

async fn engine(cluster: &Cluster, expires: &str) -> (tempfile::TempDir, Serve) {
    engine_with(cluster, expires, "").await
}

/// As [`engine`], with `extra` appended to the teams file.
async fn engine_with(cluster: &Cluster, expires: &str, extra: &str) -> (tempfile::TempDir, Serve) {
    let tmp = tempfile::tempdir().unwrap();
    let teams = tmp.path().join("teams.yaml");
    std::fs::write(&teams, format!("{TEAMS}{extra}")).unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            ("gated-rollback.yaml", &RUNBOOK.replace("EXPIRES", expires)),
            ("gated-rollback.rhai", SCRIPT),
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
            ],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await;
    (tmp, serve)
}

/// ann asks for the rollback; returns once the run waits for approval, with its id.
async fn request(serve: &Serve) -> String {
    let trigger = json!({"runbook": "gated-rollback",
                         "params": {"namespace": "ml-serving", "deployment": "fraud-model"}});
    let (status, body) = serve
        .post("/v1/trigger", Some("ann-token-0001"), trigger.to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    pending(serve).await["run_id"].as_str().unwrap().to_owned()
}

/// The one approval request ben can see, once there is one.
async fn pending(serve: &Serve) -> Value {
    wait_for(
        "the run to wait for approval",
        WAIT,
        || serve.log_tail(),
        || async {
            let (status, body) = serve.get("/v1/approvals", Some("ben-token-0002")).await;
            assert_eq!(status, 200, "{body}");
            body["approvals"]
                .as_array()
                .and_then(|a| a.first().cloned())
        },
    )
    .await
}

async fn decide(serve: &Serve, run: &str, verb: &str, token: &str, body: Value) -> (u16, Value) {
    serve
        .post(
            &format!("/v1/runs/{run}/{verb}"),
            Some(token),
            body.to_string(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_distinct_approvers_release_the_rollback_and_nobody_else_counts() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let (_tmp, serve) = engine(&cluster, "5m").await;
    let run = request(&serve).await;

    // What approvers see: the action, its resolved intent and the dry run's answer.
    let waiting = pending(&serve).await;
    assert_eq!(waiting["action"], "k8s::rollback", "{waiting}");
    assert_eq!(waiting["requester"], "ann");
    assert_eq!(waiting["required"], 2);
    let would = waiting["plan"]["would"].to_string();
    assert!(would.contains("fraud-model"), "{waiting}");
    assert_eq!(
        cluster.fraud_model_revisions().await,
        vec![1, 2],
        "paused before acting"
    );

    let seen = json!({"seen": would});
    let (status, body) = decide(&serve, &run, "approve", "ann-token-0001", seen.clone()).await;
    assert_eq!(status, 403, "the requester may not approve: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("self_approval"),
        "{body}"
    );
    let (status, body) = decide(&serve, &run, "approve", "wes-token-0005", seen.clone()).await;
    assert_eq!(status, 403, "web is not an approver team: {body}");
    let (status, body) = serve
        .post(&format!("/v1/runs/{run}/approve"), None, "{}")
        .await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = decide(&serve, &run, "approve", "ben-token-0002", seen.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "waiting");
    // A double click counts once.
    let (status, body) = decide(&serve, &run, "approve", "ben-token-0002", seen.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        cluster.fraud_model_revisions().await,
        vec![1, 2],
        "one approval of two"
    );

    // sam decides from his terminal: the CLI lists the request and approves through the API.
    let listed = serve
        .cli(&[
            "approvals",
            "--server",
            &serve.base,
            "--token",
            "sam-token-0004",
        ])
        .await
        .ok("firebreak approvals");
    assert!(
        listed.stdout.contains(&run) && listed.stdout.contains("1 of 2"),
        "{listed}"
    );
    let approved = serve
        .cli(&[
            "approve",
            &run,
            "--server",
            &serve.base,
            "--token",
            "sam-token-0004",
        ])
        .await
        .ok("firebreak approve");
    assert!(
        approved.stdout.contains("approved by ben, sam"),
        "{approved}"
    );
    drop(seen);

    let journal = serve
        .wait_journal("the approved run to finish", WAIT, |j| {
            j.finished("gated-rollback").len() == 1
        })
        .await;
    let runs = journal.finished("gated-rollback");
    assert_eq!(runs[0].status(), Some("succeeded"), "{}", serve.log_tail());
    let metrics = crate::harness::scrape_checked(&serve).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "firebreak_approvals_pending 0"),
        "{metrics}"
    );
    assert_eq!(cluster.fraud_model_revisions().await, vec![2, 3]);
    assert!(cluster.fraud_model_image().await.ends_with(":v1"));

    // The trail: the request, then the two approvals (who, how, what they saw), then the action.
    let kinds: Vec<String> = runs[0]
        .records
        .iter()
        .map(|r| {
            let body = &r["body"];
            match body["type"].as_str().unwrap() {
                "approval" => format!(
                    "approval:{}:{}",
                    body["approver"].as_str().unwrap(),
                    body["channel"].as_str().unwrap()
                ),
                "step_started" => format!("start:{}", body["name"].as_str().unwrap()),
                other => other.to_owned(),
            }
        })
        .collect();
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k} in {kinds:?}"))
    };
    assert!(
        at("approval_requested") < at("approval:ben:api"),
        "{kinds:?}"
    );
    assert!(
        at("approval:sam:cli") < at("start:k8s::rollback"),
        "{kinds:?}"
    );
    let approvals: Vec<&Value> = runs[0]
        .records
        .iter()
        .copied()
        .filter(|r| r["body"]["type"] == "approval")
        .collect();
    assert_eq!(
        approvals.len(),
        2,
        "refused decisions are not counted: {kinds:?}"
    );
    assert!(
        approvals[0]["body"]["seen"]
            .as_str()
            .unwrap()
            .contains("fraud-model")
    );
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deny_stops_the_run_and_an_approval_survives_a_restart() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let (_tmp, mut serve) = engine(&cluster, "5m").await;

    // Denied: a reason is required, the run ends denied, nothing changed.
    let run = request(&serve).await;
    let (status, body) = decide(&serve, &run, "deny", "cat-token-0003", json!({})).await;
    assert_eq!(status, 400, "a deny needs a reason: {body}");
    let (status, body) = decide(
        &serve,
        &run,
        "deny",
        "cat-token-0003",
        json!({"comment": "v2 is fine, the alert is noise"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "denied");
    let journal = serve
        .wait_journal("the denied run to end", WAIT, |j| {
            j.finished("gated-rollback").len() == 1
        })
        .await;
    let denied = &journal.finished("gated-rollback")[0];
    assert_eq!(denied.status(), Some("denied"), "{}", journal.summary());
    let end = denied.records.last().unwrap();
    assert!(
        end["body"]["error"]
            .as_str()
            .unwrap()
            .contains("denied by cat: v2 is fine"),
        "{end}"
    );
    assert_eq!(cluster.fraud_model_revisions().await, vec![1, 2]);
    let (status, _) = decide(&serve, &run, "approve", "ben-token-0002", json!({})).await;
    assert_eq!(status, 409, "a denied run takes no more decisions");

    // One approval, a restart, the second approval: the first still counts.
    let run = request(&serve).await;
    let before = pending(&serve).await;
    let (status, body) = decide(&serve, &run, "approve", "ben-token-0002", json!({})).await;
    assert_eq!(status, 200, "{body}");
    serve.restart().await;
    let after = pending(&serve).await;
    assert_eq!(after["run_id"], run.as_str(), "the same run waits again");
    assert_eq!(
        after["expires_at"], before["expires_at"],
        "with the same expiry"
    );
    assert_eq!(after["approved_by"], json!(["ben"]), "and ben's approval");
    let (status, body) = decide(&serve, &run, "approve", "ben-token-0002", json!({})).await;
    assert_eq!(
        status, 409,
        "ben cannot count twice across a restart: {body}"
    );
    let (status, body) = decide(&serve, &run, "approve", "sam-token-0004", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "approved");
    serve
        .wait_journal("the resumed run to finish", WAIT, |j| {
            j.finished("gated-rollback").len() == 2
        })
        .await;
    let journal = serve.journal();
    let resumed = journal
        .finished("gated-rollback")
        .into_iter()
        .find(|r| r.records[0]["run_id"] == run.as_str())
        .unwrap();
    assert_eq!(resumed.status(), Some("succeeded"), "{}", serve.log_tail());
    assert_eq!(cluster.fraud_model_revisions().await, vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_request_expires_and_nothing_runs() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let (_tmp, serve) = engine(&cluster, "3s").await;
    let run = request(&serve).await;
    let (status, body) = decide(&serve, &run, "approve", "ben-token-0002", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let journal = serve
        .wait_journal("the request to expire", WAIT, |j| {
            j.finished("gated-rollback").len() == 1
        })
        .await;
    let expired = &journal.finished("gated-rollback")[0];
    assert_eq!(expired.status(), Some("expired"), "{}", journal.summary());
    let end = expired.records.last().unwrap();
    assert!(
        end["body"]["error"]
            .as_str()
            .unwrap()
            .contains("1 of 2 approval(s) (ben)"),
        "{end}"
    );
    let (status, body) = decide(&serve, &run, "approve", "sam-token-0004", json!({})).await;
    assert_eq!(status, 409, "too late: {body}");
    assert_eq!(cluster.fraud_model_revisions().await, vec![1, 2]);
}

/// In a freeze, a runbook not allowed to act during freezes is refused before anyone is asked
/// to approve it: no approval could let it act.
#[tokio::test(flavor = "multi_thread")]
async fn a_freeze_refuses_before_asking_for_approval() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let now = jiff::Timestamp::now();
    let freeze = format!(
        "freezes:\n  - {{ name: model-freeze, from: {}, until: {}, namespaces: [ml-serving] }}\n",
        now - jiff::SignedDuration::from_secs(60),
        now + jiff::SignedDuration::from_secs(3600)
    );
    let (_tmp, serve) = engine_with(&cluster, "5m", &freeze).await;
    let trigger = json!({"runbook": "gated-rollback",
                         "params": {"namespace": "ml-serving", "deployment": "fraud-model"}});
    let (status, body) = serve
        .post("/v1/trigger", Some("ann-token-0001"), trigger.to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    let journal = serve
        .wait_journal("the frozen run to end", WAIT, |j| {
            j.finished("gated-rollback").len() == 1
        })
        .await;
    let run = &journal.finished("gated-rollback")[0];
    assert_eq!(run.status(), Some("failed"));
    let kinds: Vec<&str> = run
        .records
        .iter()
        .map(|r| r["body"]["type"].as_str().unwrap())
        .collect();
    assert!(
        !kinds.contains(&"approval_requested"),
        "nobody was asked: {kinds:?}"
    );
    let refusal = run
        .records
        .iter()
        .find(|r| r["body"]["type"] == "refusal")
        .unwrap();
    assert!(
        refusal["body"]["reason"]
            .as_str()
            .unwrap()
            .contains("freeze window \"model-freeze\""),
        "{refusal}"
    );
    assert_eq!(cluster.fraud_model_revisions().await, vec![1, 2]);
}
