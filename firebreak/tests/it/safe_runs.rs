//! Runs that never do the wrong thing twice, tried from the outside against kubesim and the
//! real kubectl: dry runs on every trigger path change nothing; a crash between the rollback's
//! write and its end does not roll back twice (nor at any other point); a second run for the
//! same incident does not roll the rollback back; the shipped quarantine isolates exactly its
//! pod; a trigger whose params do not fit is refused before it is accepted.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Cluster, Serve, ServeOpts, copy_shipped_runbooks, firebreak, fraud_model_at_v2, latency_alert,
    wait_for,
};

const RUN_WAIT: Duration = Duration::from_secs(90);
const ROLLBACK: &str = "model-latency-rollback";

/// `firebreak serve` with the shipped runbooks and the Kubernetes connector on `cluster`.
async fn serve_on(cluster: &Cluster, tmp: &tempfile::TempDir) -> Serve {
    let runbooks = tmp.path().join("runbooks");
    copy_shipped_runbooks(&runbooks);
    Serve::start(
        &runbooks,
        ServeOpts {
            env: vec![(
                "FIREBREAK_KUBECONFIG",
                cluster.kubeconfig.display().to_string(),
            )],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await
}

/// The `run_started` record of a journaled run says dry run, and its rollback step was
/// planned but not applied (skipped).
fn assert_dry(run: &crate::harness::Run<'_>) {
    assert_eq!(run.started().unwrap()["body"]["dry_run"], true);
    let rollback = run
        .records
        .iter()
        .find(|r| r["body"]["type"] == "step_finished" && r["body"]["name"] == "k8s::rollback")
        .expect("a rollback step");
    assert_eq!(rollback["body"]["status"], "skipped", "{rollback}");
    assert_eq!(rollback["body"]["outputs"]["dry_run"], true);
    assert!(
        rollback["body"]["outputs"]["would"]
            .as_str()
            .unwrap()
            .starts_with("roll ml-serving/fraud-model back"),
        "{rollback}"
    );
}

/// A dry run asked for on each trigger path (the CLI in process, the CLI against a server,
/// `POST /v1/trigger`) is journaled as one and leaves the cluster exactly as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_on_every_trigger_path_changes_nothing() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let version = cluster.fraud_model_version().await;
    let revisions = cluster.fraud_model_revisions().await;
    let params = ["-p", "namespace=ml-serving", "-p", "deployment=fraud-model"];

    // 1. `firebreak run --dry-run`, in process.
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    copy_shipped_runbooks(&runbooks);
    let env = vec![
        (
            "FIREBREAK_DATA_DIR",
            tmp.path().join("cli").display().to_string(),
        ),
        ("FIREBREAK_RUNBOOKS", runbooks.display().to_string()),
        (
            "FIREBREAK_KUBECONFIG",
            cluster.kubeconfig.display().to_string(),
        ),
    ];
    let mut args = vec!["run", ROLLBACK];
    args.extend(params);
    args.push("--dry-run");
    let out = firebreak(&args, &env).await.ok("firebreak run --dry-run");
    assert!(out.stdout.contains("[dry run]"), "{out}");
    assert!(
        out.stdout.contains("dry run, nothing changed: would roll"),
        "the runbook says what it would do: {out}"
    );
    let journal = crate::harness::Journal::read(&tmp.path().join("cli/audit.jsonl"));
    assert_dry(&journal.finished(ROLLBACK)[0]);

    // 2. `firebreak run --server URL --dry-run`, and 3. `POST /v1/trigger` with `dry_run`.
    let serve = serve_on(&cluster, &tmp).await;
    let mut args = vec!["run", "--server", &serve.base, ROLLBACK];
    args.extend(params);
    args.push("--dry-run");
    let out = serve
        .cli(&args)
        .await
        .ok("firebreak run --server --dry-run");
    assert!(out.stdout.contains("accepted as a dry run"), "{out}");
    // One dry run of an incident at a time, like real runs: let the first one end.
    serve
        .wait_journal("the first remote dry run to finish", RUN_WAIT, |j| {
            j.finished(ROLLBACK).len() == 1
        })
        .await;
    let (status, body) = serve
        .post(
            "/v1/trigger",
            None,
            json!({"runbook": ROLLBACK, "dry_run": true,
                   "params": {"namespace": "ml-serving", "deployment": "fraud-model"}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["dry_run"], true);
    let journal = serve
        .wait_journal("both remote dry runs to finish", RUN_WAIT, |j| {
            j.finished(ROLLBACK).len() == 2
        })
        .await;
    for run in journal.finished(ROLLBACK) {
        assert_eq!(run.status(), Some("succeeded"), "{}", serve.log_tail());
        assert_dry(&run);
    }

    assert_eq!(
        cluster.fraud_model_version().await,
        version,
        "nothing wrote to the Deployment"
    );
    assert_eq!(cluster.fraud_model_revisions().await, revisions);
    assert!(cluster.fraud_model_image().await.ends_with(":v2"));
}

/// Posts the ModelLatencyHigh alert; returns once it is accepted.
async fn post_alert(serve: &Serve) {
    let (status, body) = serve.post("/v1/alertmanager", None, latency_alert()).await;
    assert_eq!(status, 202, "{body}");
}

/// After everything: the rollback happened exactly once (v1's revision 1 became 3), the
/// Deployment runs v1, and the journal shows one run whose rollback step started once.
async fn assert_rolled_back_once(cluster: &Cluster, serve: &Serve) {
    let journal = serve
        .wait_journal("the rollback run to finish", RUN_WAIT, |j| {
            !j.finished(ROLLBACK).is_empty()
        })
        .await;
    let runs = journal.runs_of(ROLLBACK);
    assert_eq!(runs.len(), 1, "one run: {}", journal.summary());
    assert_eq!(runs[0].status(), Some("succeeded"), "{}", serve.log_tail());
    assert_eq!(
        cluster.fraud_model_revisions().await,
        vec![2, 3],
        "exactly one rollback in kubectl rollout history"
    );
    assert!(cluster.fraud_model_image().await.ends_with(":v1"));
    let started = runs[0]
        .records
        .iter()
        .filter(|r| r["body"]["type"] == "step_started" && r["body"]["name"] == "k8s::rollback")
        .count();
    assert_eq!(started, 1, "the audit shows one rollback action");
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
}

/// The engine dies (kill -9) after kubesim committed the rollback's write and before the
/// engine heard of it, so before the step's end was journaled. The restarted engine resumes
/// the run, applies the journaled intent, finds the Deployment already at the target
/// template and writes nothing: one rollback, not two (which would put v2 back).
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_the_rollback_write_and_its_end_rolls_back_once() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    // The rollback's PUT is committed, its answer held back long enough to kill the engine.
    cluster.sim.sim().delay_answers(
        "PUT",
        "/namespaces/ml-serving/deployments/fraud-model",
        Duration::from_secs(30),
        1,
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut serve = serve_on(&cluster, &tmp).await;
    post_alert(&serve).await;
    wait_for(
        "kubesim to commit the rollback's write",
        RUN_WAIT,
        || serve.log_tail(),
        || async {
            cluster
                .sim
                .sim()
                .requests()
                .iter()
                .any(|r| {
                    r.method == "PUT"
                        && r.path.ends_with("/deployments/fraud-model")
                        && r.code == 200
                })
                .then_some(())
        },
    )
    .await;
    let journal = serve.journal();
    let run = &journal.runs_of(ROLLBACK)[0];
    assert!(
        !run.records
            .iter()
            .any(|r| r["body"]["type"] == "step_finished" && r["body"]["name"] == "k8s::rollback"),
        "the crash comes before the step's end"
    );
    serve.restart().await;
    assert_rolled_back_once(&cluster, &serve).await;
    let journal = serve.journal();
    let run = &journal.runs_of(ROLLBACK)[0];
    let finished = run
        .records
        .iter()
        .find(|r| r["body"]["type"] == "step_finished" && r["body"]["name"] == "k8s::rollback")
        .unwrap();
    assert_eq!(
        finished["body"]["outputs"]["changed"], false,
        "the resumed apply found it done: {finished}"
    );
    assert!(
        run.records
            .iter()
            .any(|r| r["body"]["type"] == "run_resumed")
    );
}

/// A small deterministic sequence of kill points (ms after the alert is accepted).
fn kill_points(trials: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..trials)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 600
        })
        .collect()
}

/// kill -9 at scattered points of the scenario-1 run (before, during and after its rollback),
/// then restart: every time, one rollback in `kubectl rollout history` and v1 running.
/// `FIREBREAK_KILL_TRIALS` sets how many (default 4; the check runs 50).
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_any_point_of_the_rollback_run_rolls_back_once() {
    let trials: usize = std::env::var("FIREBREAK_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for (trial, after_ms) in kill_points(trials).into_iter().enumerate() {
        let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
        fraud_model_at_v2(&cluster).await;
        let tmp = tempfile::tempdir().unwrap();
        let mut serve = serve_on(&cluster, &tmp).await;
        post_alert(&serve).await;
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        serve.restart().await;
        assert_rolled_back_once(&cluster, &serve).await;
        eprintln!("kill trial {trial}: killed {after_ms} ms after the alert; one rollback");
    }
}

/// The same incident handled twice (the alert fired again after the cooldown): the second
/// run gets the version the first one blamed, finds the Deployment no longer runs it, and
/// does nothing, saying so. Without that it would roll the rollback back (v2 → v1 → v2).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_for_the_same_incident_does_not_roll_back_the_rollback() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    copy_shipped_runbooks(&runbooks);
    // The alert without its `version` label: the blamed version is the revision running
    // when the incident began, remembered by the first run.
    let mut body: Value = serde_json::from_str(&latency_alert()).unwrap();
    body["alerts"][0]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("version");
    let event = tmp.path().join("alert.json");
    std::fs::write(&event, body.to_string()).unwrap();
    let env = vec![
        (
            "FIREBREAK_DATA_DIR",
            tmp.path().join("data").display().to_string(),
        ),
        ("FIREBREAK_RUNBOOKS", runbooks.display().to_string()),
        (
            "FIREBREAK_KUBECONFIG",
            cluster.kubeconfig.display().to_string(),
        ),
    ];
    let args = ["run", "--event", event.to_str().unwrap()];
    firebreak(&args, &env).await.ok("first run");
    assert_eq!(cluster.fraud_model_revisions().await, vec![2, 3]);
    assert!(cluster.fraud_model_image().await.ends_with(":v1"));

    let out = firebreak(&args, &env).await.ok("second run");
    assert!(
        out.stdout.contains("nothing rolled back")
            && out.stdout.contains("no longer runs \\\"2\\\""),
        "{out}"
    );
    assert_eq!(
        cluster.fraud_model_revisions().await,
        vec![2, 3],
        "not rolled back again"
    );
    assert!(cluster.fraud_model_image().await.ends_with(":v1"));
}

/// The shipped quarantine, driven by a SuspiciousEgress alert: kubectl sees a deny-all
/// NetworkPolicy whose selector picks exactly the alerting pod, and no other.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_quarantine_isolates_exactly_its_pod() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let pods = cluster
        .kubectl(&["-n", "ml-serving", "get", "pods", "-o", "name"])
        .await
        .ok("kubectl get pods")
        .stdout;
    let pods: Vec<&str> = pods.lines().map(|l| l.trim_start_matches("pod/")).collect();
    assert!(pods.len() >= 3, "{pods:?}");
    let target = pods[0];
    let tmp = tempfile::tempdir().unwrap();
    let serve = serve_on(&cluster, &tmp).await;
    let mut body: Value = serde_json::from_str(
        &std::fs::read_to_string(
            crate::harness::crate_dir().join("fixtures/alertmanager-suspicious-egress.json"),
        )
        .unwrap(),
    )
    .unwrap();
    body["alerts"][0]["labels"]["pod"] = json!(target);
    body["alerts"][0]["labels"]["namespace"] = json!("ml-serving");
    let (status, answer) = serve.post("/v1/alertmanager", None, body.to_string()).await;
    assert_eq!(status, 202, "{answer}");
    let journal = serve
        .wait_journal("the quarantine to finish", RUN_WAIT, |j| {
            !j.finished("quarantine-pod").is_empty()
        })
        .await;
    assert_eq!(
        journal.finished("quarantine-pod")[0].status(),
        Some("succeeded"),
        "{}",
        serve.log_tail()
    );
    let policies: Value = serde_json::from_str(
        &cluster
            .kubectl(&["-n", "ml-serving", "get", "networkpolicy", "-o", "json"])
            .await
            .ok("kubectl get networkpolicy")
            .stdout,
    )
    .unwrap();
    let items = policies["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{policies}");
    let spec = &items[0]["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    let selector: Vec<String> = spec["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    let selected = cluster
        .kubectl(&[
            "-n",
            "ml-serving",
            "get",
            "pods",
            "-l",
            &selector.join(","),
            "-o",
            "name",
        ])
        .await
        .ok("kubectl get pods -l")
        .stdout;
    assert_eq!(
        selected.trim(),
        format!("pod/{target}"),
        "the policy selects exactly the alerting pod"
    );
}

/// A trigger whose params do not fit the runbook is refused before it is accepted (422,
/// naming the param), so `run --server` never says "accepted" for a run that will not start.
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_with_bad_params_is_refused_before_it_is_accepted() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let serve = serve_on(&cluster, &tmp).await;
    for (params, field) in [
        (vec!["-p", "namespace=ml-serving"], "deployment"),
        (
            vec![
                "-p",
                "namespace=ml-serving",
                "-p",
                "deployment=x",
                "-p",
                "nope=1",
            ],
            "nope",
        ),
    ] {
        let mut args = vec!["run", "--server", &serve.base, ROLLBACK];
        args.extend(params);
        let out = serve.cli(&args).await;
        assert!(!out.success(), "{out}");
        assert!(
            out.stderr.contains("422")
                && out.stderr.contains("invalid_params")
                && out.stderr.contains(&format!("`{field}`")),
            "{out}"
        );
        assert!(!out.stdout.contains("accepted"), "{out}");
    }
    let (status, body) = serve
        .post(
            "/v1/trigger",
            None,
            json!({"runbook": ROLLBACK, "params": {"namespace": "ml-serving", "deployment": "x", "rollout_timeout": "soon"}})
                .to_string(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rollout_timeout"),
        "{body}"
    );
    assert!(serve.journal().runs().is_empty(), "nothing started");
}
