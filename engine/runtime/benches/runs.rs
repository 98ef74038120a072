//! End-to-end run throughput: many runs of a one-`log`-step script, each journaled
//! (run_started durable, the step, run_finished durable). Prints one summary line.
//!
//! `cargo bench -p firebreak-runtime --bench runs` (env `RUNS`, `CLIENTS` to change the load).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firebreak_audit::{Journal, verify};
use firebreak_connector::Registry;
use firebreak_event::Event;
use firebreak_runtime::{CancellationToken, RunPlan, RunStatus, Runner, RunnerConfig, compile};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = env("RUNS", 50_000);
    let clients = env("CLIENTS", 128);
    let per_client = runs / clients;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("audit.jsonl");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(512)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ast = compile(
        Path::new("bench.rhai"),
        r#"log(`alert ${ctx.labels.alertname} fired`);"#,
    )
    .expect("bench script compiles");
    let event = Event {
        id: "ev".into(),
        source: "alertmanager".into(),
        kind: "firing".into(),
        subject: "HighLatency".into(),
        time: jiff::Timestamp::now(),
        namespace: Some("shop".into()),
        fingerprint: Some("f00d".into()),
        traceparent: None,
        data: json!({"labels": {"alertname": "HighLatency", "namespace": "shop", "severity": "page"},
                     "annotations": {"summary": "p99 latency above 2s"}}),
        written: Default::default(),
    };
    let journal = Arc::new(Journal::open(&path).expect("open journal"));
    let (elapsed, failed) = rt.block_on(async {
        let runner = Arc::new(Runner::new(
            &Registry::new(),
            journal.clone(),
            RunnerConfig {
                max_concurrent_runs: clients,
                ..RunnerConfig::default()
            },
        ));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (runner, ast, event) = (runner.clone(), ast.clone(), event.clone());
            tasks.push(tokio::spawn(async move {
                let mut failed = 0;
                for i in 0..per_client {
                    let plan = RunPlan {
                        run_id: format!("run-{c}-{i}"),
                        runbook: "bench".into(),
                        team: "perf".into(),
                        namespaces: vec!["shop".into()],
                        cluster_actions: None,
                        approval: None,
                        ast: ast.clone(),
                        event: Arc::new(event.clone()),
                        params: serde_json::Map::new(),
                        actor: "bench".into(),
                        dry_run: false,
                        timeout: Duration::from_secs(30),
                        progress: None,
                        cancel: CancellationToken::new(),
                        lock_key: None,
                        cooldown: Duration::ZERO,
                        interactive: false,
                    };
                    let outcome = runner.start(plan).await.expect("start").join().await;
                    if outcome.status != RunStatus::Succeeded {
                        failed += 1;
                    }
                }
                failed
            }));
        }
        let mut failed = 0;
        for task in tasks {
            failed += task.await.expect("client task");
        }
        (started.elapsed(), failed)
    });
    let total = (per_client * clients) as f64;
    drop(journal);
    drop(rt);
    let report = verify(&path).expect("bench journal verifies");
    println!(
        "runtime: {:.0} runs/s end to end ({} runs of a one-log-step script, {} concurrent, {:.2} s, {} failed, {} audit records verified)",
        total / elapsed.as_secs_f64(),
        total,
        clients,
        elapsed.as_secs_f64(),
        failed,
        report.records
    );
}
