//! Restarts mid-run. A crash: `serve` is killed (SIGKILL) while a run sleeps and started again
//! on the same data dir; the run resumes from the journal (finished steps are replayed, not
//! repeated) and finishes; the alert starts no second run; the chain still verifies. A
//! graceful stop (SIGTERM, as a deploy does): exit 0, and the interrupted run is resumed by the
//! next start, as `serve.rs` documents.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Serve, ServeOpts, wait_for, write_runbooks};

/// Returns once the journal shows a run in its `sleep` step.
async fn wait_until_sleeping(serve: &Serve) {
    serve
        .wait_journal(
            "the run to be in its sleep step",
            Duration::from_secs(20),
            |j| {
                j.records
                    .iter()
                    .any(|r| r["body"]["type"] == "step_started" && r["body"]["name"] == "sleep")
            },
        )
        .await;
}

/// A `serve` with the `drain` runbook (log, sleep `sleep_ms`, log), and one `NodeBad` alert for
/// `node` posted to it; returns once the run is in its sleep step.
async fn serve_with_a_run_in_its_sleep(
    tmp: &tempfile::TempDir,
    node: &str,
    fingerprint: &str,
    sleep_ms: u32,
) -> Serve {
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "drain.yaml",
                "name: drain\nteam: sre\ndescription: drains a node slowly\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"NodeBad\"']\n\
                 params:\n  node: { from: label, key: node, type: string, required: true }\n\
                 concurrency: \"{{params.node}}\"\ntimeout: 60s\n",
            ),
            (
                "drain.rhai",
                &format!(
                    "log(`draining ${{ctx.params.node}}`);\nsleep({sleep_ms});\nlog(`drained ${{ctx.params.node}}`);\n"
                ),
            ),
        ],
    );
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    let alert = json!({
        "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "g",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
        "alerts": [{"status": "firing",
            "labels": {"alertname": "NodeBad", "namespace": "shop", "node": node},
            "annotations": {}, "startsAt": "2026-11-27T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": fingerprint}],
    })
    .to_string();
    let (status, body) = serve.post("/v1/alertmanager", None, alert).await;
    assert_eq!(status, 202, "{body}");
    wait_until_sleeping(&serve).await;
    serve
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_interrupted_by_a_crash_resumes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut serve = serve_with_a_run_in_its_sleep(&tmp, "n1", "00000000000000aa", 1500).await;

    serve.restart().await;
    let journal = serve
        .wait_journal(
            "the interrupted run to finish",
            Duration::from_secs(30),
            |j| j.finished("drain").len() == 1,
        )
        .await;
    let runs = journal.runs_of("drain");
    assert_eq!(runs.len(), 1, "no second run: {}", journal.summary());
    let run = &runs[0];
    assert_eq!(run.status(), Some("succeeded"), "{}", serve.log_tail());
    assert!(
        run.records
            .iter()
            .any(|r| r["body"]["type"] == "run_resumed"),
        "the run resumed: {:?}",
        run.records
            .iter()
            .map(|r| crate::harness::trail_line(r))
            .collect::<Vec<_>>()
    );
    // The first log step ran once; after the resume it is replayed from the journal.
    let first_log_runs = run
        .records
        .iter()
        .filter(|r| {
            r["body"]["type"] == "step_finished"
                && r["body"]["name"] == "log"
                && r["body"]["status"] == "ok"
                && r["body"]["step"] == 1
        })
        .count();
    assert_eq!(first_log_runs, 1, "a finished step is not repeated");
    assert!(
        run.records
            .iter()
            .any(|r| r["body"]["type"] == "step_finished"
                && r["body"]["name"] == "log"
                && r["body"]["status"] == "ok"
                && r["body"]["step"] != 1),
        "the last step ran after the resume"
    );
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_by_sigterm_is_finished_after_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "drain.yaml",
                "name: drain\nteam: sre\ndescription: drains a node slowly\nnamespaces: [shop]\ntimeout: 60s\n",
            ),
            (
                "drain.rhai",
                "log(\"draining\");\nsleep(5000);\nlog(\"drained\");\n",
            ),
        ],
    );
    let mut serve = Serve::start(&dir, ServeOpts::default()).await;
    let (status, body) = serve
        .post(
            "/v1/trigger",
            None,
            json!({"runbook": "drain", "params": {}}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_until_sleeping(&serve).await;
    let code = serve.terminate().await;
    assert_eq!(
        code,
        Some(0),
        "a graceful stop exits 0\n{}",
        serve.log_tail()
    );
    serve.restart().await;
    let journal = serve
        .wait_journal(
            "the drain run to succeed after the restart",
            Duration::from_secs(30),
            |j| {
                j.runs_of("drain")
                    .iter()
                    .any(|r| r.status() == Some("succeeded"))
            },
        )
        .await;
    let runs = journal.runs_of("drain");
    assert_eq!(runs.len(), 1, "the same run went on: {}", journal.summary());
    assert!(
        runs[0]
            .records
            .iter()
            .any(|r| r["body"]["type"] == "run_resumed")
    );
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
}

/// The engine crashed after journaling a run's start but before the bus had the ack (here the
/// ack line is cut from the bus log, which is what a crash in that window leaves): on restart
/// the run resumes from the journal and the redelivered alert starts no second run.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_after_a_lost_ack_starts_no_second_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut serve = serve_with_a_run_in_its_sleep(&tmp, "n2", "00000000000000ab", 1000).await;
    serve.kill();
    let log = serve.data_dir.join("bus/events.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(r#""op":"publish""#), "{text}");
    let without_acks: String = text
        .lines()
        .filter(|l| !l.contains(r#""op":"ack""#))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, without_acks).unwrap();

    serve.restart().await;
    let journal = serve
        .wait_journal("the resumed run to finish", Duration::from_secs(30), |j| {
            j.finished("drain").len() == 1
        })
        .await;
    assert_eq!(
        journal.runs_of("drain").len(),
        1,
        "no second run: {}",
        journal.summary()
    );
    wait_for(
        "the redelivery to be skipped",
        Duration::from_secs(10),
        || serve.log_tail(),
        || async {
            serve
                .log_lines()
                .iter()
                .any(|l| {
                    l["fields"]["message"] == "skipped: this delivery's run was started before"
                })
                .then_some(())
        },
    )
    .await;
}

/// A run stopped by SIGTERM is resumed by the next start, which takes its concurrency lock
/// again first: an alert for the same incident posted after the restart starts no second,
/// concurrent remediation; it is joined to the resumed run (in its trail).
#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_the_same_incident_joins_the_resumed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut serve = serve_with_a_run_in_its_sleep(&tmp, "n3", "00000000000000ac", 4000).await;
    assert_eq!(serve.terminate().await, Some(0), "{}", serve.log_tail());
    serve.restart().await;
    // Same node (the concurrency key), a new alert (another fingerprint, so a new event).
    let alert = json!({
        "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "g",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
        "alerts": [{"status": "firing",
            "labels": {"alertname": "NodeBad", "namespace": "shop", "node": "n3", "zone": "b"},
            "annotations": {}, "startsAt": "2026-11-27T03:05:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": "00000000000000ad"}],
    })
    .to_string();
    let (status, body) = serve.post("/v1/alertmanager", None, alert).await;
    assert_eq!(status, 202, "{body}");
    let journal = serve
        .wait_journal("the resumed run to finish", Duration::from_secs(30), |j| {
            j.finished("drain").len() == 1
        })
        .await;
    let runs = journal.runs_of("drain");
    assert_eq!(runs.len(), 1, "one run for the node: {}", journal.summary());
    assert!(
        runs[0]
            .records
            .iter()
            .any(|r| r["body"]["type"] == "event_joined"),
        "the second alert joined the resumed run: {}",
        serve.log_tail()
    );
}

/// A SIGTERM during a long wait stops the engine at once (not at the end of the wait); the
/// next start resumes the run with the wait's remaining time.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_long_sleep_stops_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut serve = serve_with_a_run_in_its_sleep(&tmp, "n4", "00000000000000ae", 20_000).await;
    // The run is counted as waiting in a step.
    wait_for(
        "firebreak_runs_waiting 1",
        Duration::from_secs(10),
        || serve.log_tail(),
        || async {
            let metrics = crate::harness::scrape_checked(&serve).await;
            metrics
                .lines()
                .any(|l| l == "firebreak_runs_waiting 1")
                .then_some(())
        },
    )
    .await;
    assert_eq!(serve.terminate().await, Some(0), "{}", serve.log_tail());
    let journal = serve.journal();
    assert!(
        journal.finished("drain").is_empty(),
        "suspended, not finished: {}",
        journal.summary()
    );
    // Stopped inside the sleep, not after waiting it out: the step has no end.
    assert!(
        !journal
            .records
            .iter()
            .any(|r| { r["body"]["type"] == "step_finished" && r["body"]["name"] == "sleep" }),
        "the sleep was interrupted"
    );
}
