//! A journal in segments: the chain runs across them, reads and exports span them, and a
//! restart reads only the carried index and the active file before it is ready.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firebreak_audit::{
    Journal, JournalOptions, JournalReader, RecordBody, RecordDraft, SigningKey, StepStatus, verify,
};
use serde_json::json;

use crate::{meta, run_drafts};

fn options(dir: &std::path::Path) -> JournalOptions {
    let key = SigningKey::load_or_create(&dir.join("audit.key"))
        .unwrap()
        .0;
    JournalOptions {
        signing_key: Some(Arc::new(key)),
        segment_bytes: 4096,
        ..JournalOptions::default()
    }
}

fn long_step(step: u32) -> RecordDraft {
    RecordDraft::new(
        meta("long"),
        RecordBody::StepFinished {
            step,
            name: "k8s::wait_rollout".into(),
            status: StepStatus::Ok,
            outputs: json!({"ready": step}),
            error: None,
            duration_ms: 5,
            attempts: 1,
        },
    )
}

#[tokio::test]
async fn the_chain_reads_and_resume_span_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open_with(&path, options(dir.path())).unwrap();
    // One run that stays open across many segments.
    let long_started = run_drafts("long").swap_remove(0);
    journal.append(long_started).await.unwrap();
    for i in 0..60 {
        journal
            .append_all(run_drafts(&format!("r{i}")))
            .await
            .unwrap();
        if i % 10 == 0 {
            journal.append(long_step(i)).await.unwrap();
        }
    }
    let sealed: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == "audit.000000000001.jsonl".len() && n.ends_with(".jsonl"))
        .collect();
    assert!(sealed.len() >= 5, "sealed segments: {sealed:?}");
    let long = journal.records_for_run("long").unwrap();
    assert_eq!(long.len(), 7, "read back across segments");
    let mut export = Vec::new();
    journal.export(&mut export).unwrap();
    let all: Vec<_> = journal
        .iter_all()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all.len(), export.iter().filter(|b| **b == b'\n').count());
    journal.checkpoint(true).await.unwrap();
    drop(journal);

    let report = verify(&path).unwrap();
    assert_eq!(report.files.len(), sealed.len() + 1);
    assert!(report.closed, "{report:?}");
    assert_eq!(report.runs, 61);
    let exported = dir.path().join("export.jsonl");
    std::fs::write(&exported, &export).unwrap();
    assert_eq!(
        verify(&exported).unwrap().records + 1,
        report.records,
        "export + close"
    );

    // Restart: the unfinished run is known at once, with all its records.
    let journal = Journal::open_with(&path, options(dir.path())).unwrap();
    let unfinished = journal.unfinished_runs();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].run_id, "long");
    assert_eq!(journal.records_for_run("long").unwrap(), long);
    // The rest of the history follows from the background thread, oldest first.
    let until = Instant::now() + Duration::from_secs(10);
    while journal.runs().len() < 61 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let runs = journal.runs();
    assert_eq!(runs.len(), 61);
    assert_eq!(runs[0].run_id, "long");
    assert_eq!(runs[1].run_id, "r0");
    assert_eq!(journal.records_for_run("r0").unwrap().len(), 4);
    assert_eq!(journal.runs_for_event("ev-r0").len(), 1);
    drop(journal);

    // A reader indexes every segment, like the engine's full history.
    let reader = JournalReader::open(&path).unwrap();
    assert_eq!(reader.runs().len(), 61);
    assert_eq!(reader.records_for_run("long").unwrap(), long);
}

/// Without the carried index (lost, or from another layout) the engine indexes every
/// segment before it is ready: slower, never wrong.
#[tokio::test]
async fn a_missing_carried_index_means_a_full_scan_not_a_lost_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open_with(&path, options(dir.path())).unwrap();
    journal
        .append(run_drafts("long").swap_remove(0))
        .await
        .unwrap();
    for i in 0..30 {
        journal
            .append_all(run_drafts(&format!("r{i}")))
            .await
            .unwrap();
    }
    drop(journal);
    std::fs::remove_file(dir.path().join("audit.index.json")).unwrap();
    let journal = Journal::open_with(&path, options(dir.path())).unwrap();
    assert_eq!(journal.runs().len(), 31, "indexed before open returned");
    assert_eq!(journal.unfinished_runs()[0].run_id, "long");
    drop(journal);
    verify(&path).unwrap();
}
