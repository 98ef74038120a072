//! Golden replay: every shipped runbook has, under `runbooks/tests/<runbook>/`, a fixture event
//! (`event.json`), the cluster it runs against (`cluster.yaml`, then `update.yaml` if present)
//! and the expected audit trail of a real run (`expected.trail`: record types, step names and
//! statuses, one per line; no times, ids or hashes). One test replays them all with
//! `firebreak run --event FILE` against kubesim and compares. A case that queries Prometheus
//! (it has recorded answers in `prometheus.json`, for `firebreak test`'s dry runs) gets the
//! real Prometheus here, scraping kubesim's traffic metrics every second (the canary analysis
//! needs them); the replay starts once Prometheus has seen traffic.
//!
//! The same fixtures drive `firebreak test runbooks/` (dry runs against an in-process kubesim,
//! compared with each case's `dry-run.trail`): the last test here runs it.
//!
//! To re-record after an intended change: `FIREBREAK_BLESS=1 cargo test -p firebreak --test it
//! golden` (and `firebreak test runbooks --update` for the dry runs), then review the diff of
//! the `.trail` files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, Journal, Prometheus, firebreak, repo_root, wait_for};

/// The image kubesim makes crash-loop (used by `crashloop-triage/cluster.yaml`).
const CRASHLOOP_IMAGE: &str = "registry.example.invalid/ml/fraud-model:v3-crashloop";

/// Progress lines depend on timing; everything else in a trail is deterministic.
fn trail(journal: &Journal) -> Vec<String> {
    journal
        .runs()
        .iter()
        .flat_map(|run| run.records.iter().map(|r| crate::harness::trail_line(r)))
        .filter(|line| !line.starts_with("progress"))
        .collect()
}

/// Waits until every Deployment in ml-serving finished rolling out (all replicas updated,
/// no old ones left) and every pod is ready or crash-looping.
async fn settle(cluster: &Cluster) {
    wait_for(
        "ml-serving to settle",
        Duration::from_secs(60),
        String::new,
        || async {
            let deploys = cluster
                .kubectl(&["-n", "ml-serving", "get", "deploy", "-o", "json"])
                .await;
            let pods = cluster
                .kubectl(&["-n", "ml-serving", "get", "pods", "-o", "json"])
                .await;
            let deploys: Value = serde_json::from_str(&deploys.stdout).ok()?;
            let pods: Value = serde_json::from_str(&pods.stdout).ok()?;
            let rolled = deploys["items"].as_array()?.iter().all(|d| {
                let want = &d["spec"]["replicas"];
                &d["status"]["updatedReplicas"] == want && &d["status"]["replicas"] == want
            });
            let pods = pods["items"].as_array()?;
            let pods_done = !pods.is_empty()
                && pods.iter().all(|p| {
                    p["status"]["containerStatuses"]
                        .as_array()
                        .is_some_and(|cs| {
                            cs.iter().all(|c| {
                                c["ready"] == true
                                    || c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                            })
                        })
                });
            (rolled && pods_done).then_some(())
        },
    )
    .await;
}

/// Replays one golden case; returns its trail.
async fn replay(case: &Path) -> Vec<String> {
    let mut controllers = kubesim::ControllerConfig::default();
    controllers
        .image_faults
        .insert(CRASHLOOP_IMAGE.to_owned(), kubesim::Fault::CrashLoop);
    let cluster = Cluster::start(controllers).await;
    for step in ["cluster.yaml", "update.yaml"] {
        let file = case.join(step);
        if file.exists() {
            cluster
                .kubectl(&["apply", "-f", file.to_str().unwrap()])
                .await
                .ok(&format!("kubectl apply {step}"));
            settle(&cluster).await;
        }
    }
    let data = tempfile::tempdir().unwrap();
    let mut env = vec![
        (
            "FIREBREAK_RUNBOOKS",
            repo_root().join("runbooks").display().to_string(),
        ),
        ("FIREBREAK_DATA_DIR", data.path().display().to_string()),
        (
            "FIREBREAK_KUBECONFIG",
            cluster.kubeconfig.display().to_string(),
        ),
    ];
    let _prometheus = if case.join("prometheus.json").exists() {
        let prom =
            Prometheus::start(&[("kubesim", cluster.sim.addr())], "groups: []\n", None).await;
        wait_for(
            "Prometheus to see traffic",
            Duration::from_secs(30),
            || prom.log_tail(),
            || prom.value("sum(rate(istio_requests_total[5s])) > 0"),
        )
        .await;
        env.push(("FIREBREAK_PROMETHEUS_URL", prom.base.clone()));
        Some(prom)
    } else {
        None
    };
    let event = case.join("event.json");
    let out = firebreak(
        &[
            "run",
            "--event",
            event.to_str().unwrap(),
            "--actor",
            "golden",
        ],
        &env,
    )
    .await;
    let journal = Journal::read(&data.path().join("audit.jsonl"));
    let trail = trail(&journal);
    // A run that fails on purpose says so in its trail (compared below); anything else is not
    // a replay.
    let failed_run = trail.last().is_some_and(|l| l == "run_finished failed");
    assert!(
        out.success() || (out.code == Some(1) && failed_run),
        "replay of {} failed: {out}",
        case.display()
    );
    trail
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shipped_runbook_replays_to_its_golden_trail() {
    let golden = repo_root().join("runbooks/tests");
    // Every shipped runbook has a golden case, and every case a shipped runbook.
    let mut shipped: Vec<String> = std::fs::read_dir(repo_root().join("runbooks"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".yaml").map(str::to_owned)
        })
        .collect();
    let mut cases: Vec<String> = std::fs::read_dir(&golden)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    shipped.sort();
    cases.sort();
    assert_eq!(
        shipped, cases,
        "each shipped runbook needs runbooks/tests/<runbook>/"
    );

    let bless = std::env::var("FIREBREAK_BLESS").is_ok_and(|v| v == "1");
    let dirs: Vec<PathBuf> = cases.iter().map(|c| golden.join(c)).collect();
    let trails = futures::future::join_all(dirs.iter().map(|d| replay(d))).await;
    let mut mismatches = Vec::new();
    for ((case, dir), got) in cases.iter().zip(&dirs).zip(trails) {
        assert!(
            got.first().is_some_and(|l| l == "run_started"),
            "{case}: no run started: {got:?}"
        );
        let file = dir.join("expected.trail");
        let got_text = got.join("\n") + "\n";
        if bless {
            std::fs::write(&file, &got_text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!("{}: {e} (record it with FIREBREAK_BLESS=1)", file.display())
        });
        if want != got_text {
            mismatches.push(format!(
                "--- {case}: expected\n{want}--- {case}: got\n{got_text}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden trails differ:\n{}",
        mismatches.join("\n")
    );
}

/// A crash loop is reported twice, in either order: as a pod's Warning event (which names only
/// the pod) and as the watcher's crash-loop report (which names its Deployment too). Whichever
/// starts `crashloop-triage`, the run gathers the same evidence.
#[tokio::test(flavor = "multi_thread")]
async fn crashloop_triage_gathers_the_same_evidence_whichever_report_comes_first() {
    let mut controllers = kubesim::ControllerConfig::default();
    controllers
        .image_faults
        .insert(CRASHLOOP_IMAGE.to_owned(), kubesim::Fault::CrashLoop);
    let cluster = Cluster::start(controllers).await;
    let case = repo_root().join("runbooks/tests/crashloop-triage");
    cluster
        .kubectl(&["apply", "-f", case.join("cluster.yaml").to_str().unwrap()])
        .await
        .ok("kubectl apply");
    settle(&cluster).await;
    let pods: Value = serde_json::from_str(
        &cluster
            .kubectl(&["-n", "ml-serving", "get", "pods", "-o", "json"])
            .await
            .stdout,
    )
    .unwrap();
    let pod = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .and_then(|p| p["metadata"]["name"].as_str())
        .expect("a crash-looping pod")
        .to_owned();
    let warning = serde_json::json!({
        "id": "k8s-warning-1", "source": "k8s", "type": "warning", "subject": format!("pod/{pod}"),
        "time": "2026-11-27T03:41:02Z", "namespace": "ml-serving",
        "data": {"reason": "BackOff", "labels": {"reason": "BackOff", "kind": "Pod", "name": pod,
                                                  "namespace": "ml-serving", "pod": pod}}
    });
    let report = serde_json::json!({
        "id": "k8s-crashloop-1", "source": "k8s", "type": "crashloop", "subject": format!("pod/{pod}"),
        "time": "2026-11-27T03:41:02Z", "namespace": "ml-serving",
        "data": {"reason": "CrashLoopBackOff", "labels": {"reason": "CrashLoopBackOff", "kind": "Pod",
                 "name": pod, "namespace": "ml-serving", "pod": pod, "container": "model-server",
                 "deployment": "fraud-model"}}
    });
    let runbooks = tempfile::tempdir().unwrap();
    crate::harness::copy_shipped_runbooks(runbooks.path());
    let mut trails = Vec::new();
    for event in [warning, report] {
        let data = tempfile::tempdir().unwrap();
        let file = data.path().join("event.json");
        std::fs::write(&file, event.to_string()).unwrap();
        let env = vec![
            ("FIREBREAK_DATA_DIR", data.path().display().to_string()),
            ("FIREBREAK_RUNBOOKS", runbooks.path().display().to_string()),
            (
                "FIREBREAK_KUBECONFIG",
                cluster.kubeconfig.display().to_string(),
            ),
        ];
        firebreak(&["run", "--event", file.to_str().unwrap()], &env)
            .await
            .ok("replay");
        trails.push(trail(&Journal::read(&data.path().join("audit.jsonl"))));
    }
    assert!(
        trails[0]
            .iter()
            .filter(|l| l.starts_with("evidence"))
            .count()
            >= 7,
        "{:?}",
        trails[0]
    );
    assert_eq!(trails[0], trails[1], "the same evidence either way");
}

/// Copies the shipped runbooks and their fixtures (runbooks/tests/) into `dir`.
fn copy_runbooks_with_fixtures(dir: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    copy(&repo_root().join("runbooks"), dir);
}

/// `firebreak test runbooks/`: every shipped runbook's fixtures replay as dry runs against an
/// in-process kubesim (no cluster, no Prometheus: recorded answers) to their golden trails.
#[tokio::test(flavor = "multi_thread")]
async fn firebreak_test_replays_the_shipped_runbooks_as_dry_runs_to_their_golden_trails() {
    let dir = repo_root().join("runbooks");
    let out = firebreak(&["test", dir.to_str().unwrap()], &[]).await;
    assert!(out.success(), "{out}");
    for case in std::fs::read_dir(dir.join("tests")).unwrap() {
        let name = case.unwrap().file_name().into_string().unwrap();
        assert!(
            out.stdout.contains(&format!("ok       {name} (")),
            "{name} not replayed: {out}"
        );
    }
    assert!(
        !out.stdout.contains("note"),
        "a shipped runbook has no case: {out}"
    );
    // What the dry runs say they would do is in the golden files, and nothing was changed.
    let rollback =
        std::fs::read_to_string(dir.join("tests/model-latency-rollback/dry-run.trail")).unwrap();
    assert!(
        rollback.contains(
            "step_finished k8s::rollback skipped: would roll ml-serving/fraud-model back from \
             revision 2"
        ),
        "{rollback}"
    );
}

/// A change in behaviour fails the case with a diff (exit 1); `--update` records the new
/// trail; a query without a recorded answer is named in the trail.
#[tokio::test(flavor = "multi_thread")]
async fn firebreak_test_fails_on_a_changed_trail_and_update_records_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    copy_runbooks_with_fixtures(&dir);
    let dir_arg = dir.to_str().unwrap();
    // A team edits its runbook: quarantine-pod no longer collects logs first.
    let script = dir.join("quarantine-pod.rhai");
    let text = std::fs::read_to_string(&script).unwrap();
    let edited: String = text
        .lines()
        .filter(|l| !l.contains("k8s::logs("))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(edited, text, "the edit removes the logs step");
    std::fs::write(&script, edited).unwrap();
    let out = firebreak(&["test", dir_arg, "--case", "quarantine"], &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("FAILED   quarantine-pod: the trail differs"),
        "{out}"
    );
    assert!(out.stdout.contains("  - step_started k8s::logs"), "{out}");
    assert!(
        out.stderr.contains("1 of 1 cases failed: quarantine-pod"),
        "{out}"
    );

    let updated = firebreak(&["test", dir_arg, "--case", "quarantine", "--update"], &[]).await;
    assert!(updated.success(), "{updated}");
    let again = firebreak(&["test", dir_arg, "--case", "quarantine"], &[]).await;
    assert!(again.success(), "{again}");
    let trail = std::fs::read_to_string(dir.join("tests/quarantine-pod/dry-run.trail")).unwrap();
    assert!(!trail.contains("k8s::logs"), "{trail}");

    // A recorded answer goes missing: the check fails and says which query to record.
    std::fs::write(dir.join("tests/canary-progressive/prometheus.json"), "{}").unwrap();
    let out = firebreak(&["test", dir_arg, "--case", "canary-progressive"], &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("prometheus.json has no recorded answer for \"histogram_quantile(0.99"),
        "{out}"
    );
}
