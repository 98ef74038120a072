//! Integration tests of the runtime: the sandbox's limits, journaled steps, the connector
//! bridge (a fake connector), cancellation, timeouts and resume.

mod budget;
mod compute;
mod connectors;
mod fake;
mod park;
mod resume;
mod sandbox;
mod steps;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_audit::{Journal, Record, RecordBody};
use firebreak_connector::Registry;
use firebreak_event::Event;
use firebreak_runtime::{
    CancellationToken, RetryPolicy, RunOutcome, RunPlan, Runner, RunnerConfig, compile,
};
use serde_json::json;

/// A journal in a temp dir and a runner over it.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub journal: Arc<Journal>,
    pub runner: Runner,
}

pub fn config() -> RunnerConfig {
    RunnerConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        ..RunnerConfig::default()
    }
}

pub fn harness(registry: Registry, config: RunnerConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(dir.path().join("audit.jsonl")).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config);
    Harness {
        dir,
        journal,
        runner,
    }
}

pub fn event() -> Event {
    Event {
        id: "ev-1".into(),
        source: "alertmanager".into(),
        kind: "firing".into(),
        subject: "HighLatency".into(),
        time: jiff::Timestamp::UNIX_EPOCH,
        namespace: Some("shop".into()),
        fingerprint: Some("f00d".into()),
        traceparent: None,
        data: json!({"labels": {"alertname": "HighLatency", "namespace": "shop"},
                     "annotations": {"summary": "p99 above 2s"}}),
        written: Default::default(),
    }
}

/// A plan for `source` with sane defaults; tweak fields before starting.
pub fn plan(run_id: &str, source: &str) -> RunPlan {
    RunPlan {
        run_id: run_id.into(),
        runbook: "test-runbook".into(),
        team: "payments".into(),
        namespaces: vec!["shop".into()],
        cluster_actions: None,
        approval: None,
        ast: compile(Path::new("test.rhai"), source).unwrap_or_else(|e| panic!("{e}")),
        event: Arc::new(event()),
        params: json!({"replicas": 3}).as_object().unwrap().clone(),
        actor: "alertmanager".into(),
        dry_run: false,
        timeout: Duration::from_secs(30),
        progress: None,
        cancel: CancellationToken::new(),
        lock_key: None,
        cooldown: Duration::ZERO,
        interactive: false,
    }
}

/// Resumes run `run_id` from the runner's journal.
pub async fn resume(
    runner: &firebreak_runtime::Runner,
    run_id: &str,
    ast: Arc<firebreak_runtime::Script>,
) -> Result<firebreak_runtime::RunHandle, firebreak_runtime::RuntimeError> {
    let plan = runner.prepare_resume(run_id)?;
    runner.resume(plan, ast).await
}

/// Runs a plan to its end; returns the outcome and the run's records.
pub async fn run(h: &Harness, plan: RunPlan) -> (RunOutcome, Vec<Record>) {
    let handle = h.runner.start(plan).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), handle.join())
        .await
        .expect("run did not end within 20 s");
    let records = h.journal.records_for_run(&outcome.run_id).unwrap();
    (outcome, records)
}

/// A progress sink that keeps what it gets.
pub fn collecting_sink() -> (firebreak_runtime::ProgressSink, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = lines.clone();
    (
        Arc::new(move |l: &str| keep.lock().unwrap().push(l.to_owned())),
        lines,
    )
}

/// The `type` of each record, for compact assertions.
pub fn kinds(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| match &r.body {
            RecordBody::StepStarted { step, name, .. } => format!("started {step} {name}"),
            RecordBody::StepFinished {
                step, name, status, ..
            } => format!("finished {step} {name} {}", json!(status).as_str().unwrap()),
            other => other.kind().to_owned(),
        })
        .collect()
}

/// Waits (bounded) until the run `run_id` has a record described as `what` (see [`kinds`]).
pub async fn wait_for(h: &Harness, run_id: &str, what: &str) {
    for _ in 0..1000 {
        let records = h.journal.records_for_run(run_id).unwrap();
        if kinds(&records).iter().any(|k| k == what) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("run {run_id} never journaled {what:?} within 5 s");
}
