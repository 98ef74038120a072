//! Group-commit throughput: many tasks append at once; prints one summary line.
//!
//! `cargo bench -p firebreak-audit --bench append` (env `APPENDERS`, `RECORDS` to change the load).

use std::sync::Arc;
use std::time::Instant;

use firebreak_audit::{Journal, RecordBody, RecordDraft, RunMeta, StepStatus, verify};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let appenders = env("APPENDERS", 512);
    let records = env("RECORDS", 200_000);
    let per_task = records / appenders;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("audit.jsonl");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let journal = Arc::new(Journal::open(&path).expect("open journal"));
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..appenders {
            let journal = journal.clone();
            tasks.push(tokio::spawn(async move {
                let run = Arc::new(RunMeta {
                    run_id: format!("run-{t}"),
                    runbook: "bench".into(),
                    team: "perf".into(),
                    actor: "bench".into(),
                    event_id: format!("ev-{t}"),
                });
                for i in 0..per_task {
                    let body = RecordBody::StepFinished {
                        step: i as u32,
                        name: "log".into(),
                        inputs: None,
                        status: StepStatus::Ok,
                        outputs: json!({"message": "hello from the bench", "i": i}),
                        error: None,
                        duration_ms: 0,
                        attempts: 1,
                    };
                    journal
                        .append(RecordDraft::new(run.clone(), body))
                        .await
                        .expect("append");
                }
            }));
        }
        for task in tasks {
            task.await.expect("appender task");
        }
    });
    let elapsed = started.elapsed();
    let total = (per_task * appenders) as f64;
    drop(journal);
    let report = verify(&path).expect("bench journal verifies");
    println!(
        "audit append: {:.0} records/s durable ({} records, {} concurrent appenders, {:.2} s, chain verified: {} records)",
        total / elapsed.as_secs_f64(),
        total,
        appenders,
        elapsed.as_secs_f64(),
        report.records
    );
}
