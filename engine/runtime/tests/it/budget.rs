//! A run's budgets: memory held by the script, audit records and bytes, evidence size. A run
//! that spends one ends (failed, the reason journaled) and the others go on.

use firebreak_audit::RecordBody;
use firebreak_connector::Registry;
use firebreak_runtime::{Budget, RunStatus, RunnerConfig};

use crate::{config, harness, plan, run};

fn with_budget(budget: Budget) -> RunnerConfig {
    RunnerConfig { budget, ..config() }
}

/// The end record's error, checked to be the run's last record.
fn end_error(records: &[firebreak_audit::Record]) -> String {
    match &records.last().expect("records").body {
        RecordBody::RunFinished {
            status: RunStatus::Failed,
            error: Some(error),
        } => error.clone(),
        other => panic!("not a failed end: {other:?}"),
    }
}

/// The issue's script: 300 variables of about 1 MB each (distinct strings, not one shared).
fn memory_hog() -> String {
    let mut source = String::from("let s = \"x\"; for i in 0..20 { s += s; }\n");
    for i in 0..300 {
        source.push_str(&format!("let v{i} = s.to_upper();\n"));
    }
    source.push_str("v299.len()");
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_filling_memory_is_stopped_at_its_budget_while_another_run_finishes() {
    let h = harness(Registry::new(), config());
    let hog = h.runner.start(plan("hog", &memory_hog())).await.unwrap();
    let (normal, _) = run(&h, plan("normal", r#"log("still serving"); 42"#)).await;
    assert_eq!(normal.status, RunStatus::Succeeded);
    let outcome = hog.join().await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let records = h.journal.records_for_run("hog").unwrap();
    let error = end_error(&records);
    assert!(
        error.contains("the script's variables hold") && error.contains("limits.max_script_bytes"),
        "{error}"
    );
    // Stopped as the 17th megabyte was about to be defined, not at the 300th.
    let held: u64 = error
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a byte count");
    let budget = Budget::default().max_script_bytes;
    assert!(held > budget && held < budget + (2 << 20), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_ends_at_the_record_budget_and_writes_nothing_past_it() {
    let h = harness(
        Registry::new(),
        with_budget(Budget {
            max_records: 500,
            ..Budget::default()
        }),
    );
    let (outcome, records) = run(
        &h,
        plan("flood", r#"for i in 0..200000 { log("line " + i); }"#),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = end_error(&records);
    assert!(
        error.contains("audit records") && error.contains("limits.max_run_records"),
        "{error}"
    );
    assert!(
        records.len() <= 502,
        "{} records: the budget plus the start and end records at most",
        records.len()
    );
    let (normal, _) = run(&h, plan("normal", r#"log("after"); 1"#)).await;
    assert_eq!(normal.status, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_bytes_and_evidence_size_are_budgeted_too() {
    let h = harness(
        Registry::new(),
        with_budget(Budget {
            max_journal_bytes: 20_000,
            max_evidence_bytes: 2_000,
            ..Budget::default()
        }),
    );
    let (outcome, records) = run(
        &h,
        plan(
            "bytes",
            r#"let s = "x"; for i in 0..9 { s += s; } for i in 0..1000 { log(s); }"#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = end_error(&records);
    assert!(error.contains("limits.max_run_journal_bytes"), "{error}");

    let (outcome, records) = run(
        &h,
        plan(
            "evidence",
            r#"let s = "x"; for i in 0..12 { s += s; } evidence("dump", s); 1"#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = end_error(&records);
    assert!(
        error.contains("evidence 'dump'") && error.contains("limits.max_evidence_bytes"),
        "{error}"
    );
    assert!(
        !records
            .iter()
            .any(|r| matches!(r.body, RecordBody::Evidence { .. })),
        "the oversized evidence was not written"
    );
}
