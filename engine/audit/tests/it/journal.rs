use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_audit::{
    AuditError, AuditMirror, GENESIS_HASH, Journal, JournalOptions, JournalReader, REDACTED,
    Record, RecordBody, RecordDraft, RunStatus, SigningKey, StepStatus, verify,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::{meta, run_drafts};

#[tokio::test]
async fn appends_chain_from_genesis_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    let first = journal.append_all(run_drafts("r1")).await.unwrap();
    assert_eq!(first[0].seq, 1);
    assert_eq!(first[0].prev_hash, GENESIS_HASH);
    for pair in first.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    drop(journal);

    let journal = Journal::open(&path).unwrap();
    let next = journal.append_all(run_drafts("r2")).await.unwrap();
    assert_eq!(next[0].seq, 5);
    assert_eq!(next[0].prev_hash, first[3].hash);
    let runs = journal.runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].run_id, "r1");
    assert_eq!(runs[0].status, Some(RunStatus::Succeeded));
    assert_eq!(runs[0].records, 4);
    assert_eq!(journal.records_for_run("r2").unwrap(), next);
    assert!(journal.records_for_run("nope").unwrap().is_empty());
    drop(journal);
    let report = verify(&path).unwrap();
    assert_eq!(report.records, 8);
    assert_eq!(report.runs, 2);
    assert_eq!(report.last_hash, next[3].hash);
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let _journal = Journal::open(&path).unwrap();
    assert!(matches!(
        Journal::open(&path),
        Err(AuditError::Locked { .. })
    ));
}

/// `body` appended alone to a new journal: the record the append returned and the journal's
/// text on disk, its chain verified.
async fn journaled_alone(body: RecordBody) -> (firebreak_audit::Record, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    let record = journal
        .append(RecordDraft::new(meta("r1"), body))
        .await
        .unwrap();
    drop(journal);
    let text = std::fs::read_to_string(&path).unwrap();
    verify(&path).unwrap();
    (record, text)
}

#[tokio::test]
async fn secrets_are_redacted_before_hashing_and_never_reach_the_disk() {
    let (record, text) = journaled_alone(RecordBody::StepStarted {
        step: 1,
        name: "http::post".into(),
        inputs: json!({"url": "https://x", "headers": {"Authorization": "Bearer hunter2"},
                       "body": [{"db_password": "hunter2"}], "ApiKey": "hunter2"}),
        intent: None,
    })
    .await;
    let RecordBody::StepStarted { inputs, .. } = &record.body else {
        panic!("wrong body")
    };
    assert_eq!(inputs["headers"]["Authorization"], REDACTED);
    assert_eq!(inputs["body"][0]["db_password"], REDACTED);
    assert_eq!(inputs["ApiKey"], REDACTED);
    assert_eq!(inputs["url"], "https://x");
    assert!(!text.contains("hunter2"), "{text}");
}

/// A local step's one record carries its inputs in `step_finished`: redacted the same way.
#[tokio::test]
async fn the_inputs_of_a_one_record_step_are_redacted_too() {
    let (record, text) = journaled_alone(RecordBody::StepFinished {
        step: 1,
        name: "log".into(),
        inputs: Some(json!({
            "message": "token ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "api_token": "hunter2",
        })),
        status: StepStatus::Ok,
        outputs: Value::Null,
        error: None,
        duration_ms: 0,
        attempts: 1,
    })
    .await;
    let RecordBody::StepFinished {
        inputs: Some(inputs),
        ..
    } = &record.body
    else {
        panic!("wrong body: {:?}", record.body)
    };
    assert_eq!(inputs["api_token"], REDACTED);
    assert_eq!(inputs["message"], format!("token {REDACTED}"));
    assert!(
        !text.contains("hunter2") && !text.contains("ghp_"),
        "{text}"
    );
}

#[tokio::test]
async fn a_torn_last_line_is_reported_then_truncated_at_open_and_never_chained_onto() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    let first = journal.append_all(run_drafts("r1")).await.unwrap();
    drop(journal);
    let good_len = std::fs::metadata(&path).unwrap().len();
    // A crash mid-write: half a record, no newline.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(br#"{"body":{"type":"step_started","step":2,"na"#)
        .unwrap();
    drop(f);
    assert_eq!(verify(&path).unwrap().torn_tail_line, Some(5));

    let journal = Journal::open(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    let next = journal.append_all(run_drafts("r2")).await.unwrap();
    assert_eq!(next[0].seq, 5);
    assert_eq!(next[0].prev_hash, first[3].hash);
    drop(journal);
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.torn_tail_line), (8, None));
}

#[tokio::test]
async fn a_complete_but_unparsable_last_line_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    journal.append_all(run_drafts("r1")).await.unwrap();
    drop(journal);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"not json at all\n").unwrap();
    drop(f);
    let before = std::fs::read(&path).unwrap();
    match Journal::open(&path) {
        Err(AuditError::Tampered { line, problem, .. }) => {
            assert_eq!(line, 5);
            assert!(problem.contains("unparsable"), "{problem}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("opened a journal whose last line is garbage"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_keep_one_valid_chain_and_each_callers_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Arc::new(Journal::open(&path).unwrap());
    let mut tasks = Vec::new();
    for t in 0..64 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let m = meta(&format!("run-{t}"));
            let mut seqs = Vec::new();
            for i in 0..40u32 {
                let record = journal
                    .append(RecordDraft::new(
                        m.clone(),
                        RecordBody::Progress {
                            step: i,
                            message: format!("task {t} message {i}"),
                        },
                    ))
                    .await
                    .unwrap();
                seqs.push(record.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one caller's records are ordered"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=64 * 40).collect::<Vec<u64>>());
    for t in 0..64 {
        let records = journal.records_for_run(&format!("run-{t}")).unwrap();
        let steps: Vec<u32> = records
            .iter()
            .map(|r| match r.body {
                RecordBody::Progress { step, .. } => step,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(steps, (0..40).collect::<Vec<u32>>());
    }
    drop(tasks_done(journal));
    assert_eq!(verify(&path).unwrap().records, 64 * 40);
}

fn tasks_done(journal: Arc<Journal>) -> Journal {
    Arc::try_unwrap(journal).unwrap_or_else(|_| panic!("journal still shared"))
}

#[tokio::test]
async fn reads_list_runs_export_byte_for_byte_and_iterate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    journal.append_all(run_drafts("r1")).await.unwrap();
    let unfinished = run_drafts("r2");
    journal.append_all(unfinished[..2].to_vec()).await.unwrap();
    let open: Vec<String> = journal
        .unfinished_runs()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(open, vec!["r2".to_owned()]);

    let mut exported = Vec::new();
    journal.export(&mut exported).unwrap();
    assert_eq!(exported, std::fs::read(&path).unwrap());
    let all: Vec<Record> = journal
        .iter_all()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );

    // A read-only reader works beside the live writer and sees the same runs.
    let reader = JournalReader::open(&path).unwrap();
    assert_eq!(reader.runs(), journal.runs());
    assert_eq!(
        reader.records_for_run("r1").unwrap(),
        journal.records_for_run("r1").unwrap()
    );
}

#[derive(Default)]
struct RecordingMirror {
    seen: Mutex<Vec<u64>>,
    /// Every `lines` handed over, concatenated.
    lines: Mutex<Vec<u8>>,
    fail_on: Option<u64>,
}

impl AuditMirror for RecordingMirror {
    fn publish<'a>(
        &'a self,
        records: &'a [Record],
        lines: bytes::Bytes,
    ) -> BoxFuture<'a, Result<firebreak_audit::MirrorStored, (u64, String)>> {
        Box::pin(async move {
            if let Some(r) = records.iter().find(|r| Some(r.seq) == self.fail_on) {
                return Err((r.seq, "stream unavailable".to_owned()));
            }
            self.seen
                .lock()
                .unwrap()
                .extend(records.iter().map(|r| r.seq));
            self.lines.lock().unwrap().extend_from_slice(&lines);
            Ok(Box::pin(async { Ok(()) }) as firebreak_audit::MirrorStored)
        })
    }
}

#[tokio::test]
async fn the_mirror_gets_every_record_with_its_journal_line_and_its_failure_fails_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mirror = Arc::new(RecordingMirror {
        fail_on: Some(4),
        ..Default::default()
    });
    let journal = Journal::open(&path).unwrap().with_mirror(mirror.clone());
    let drafts = run_drafts("r1");
    journal.append(drafts[0].clone()).await.unwrap();
    journal.append_all(drafts[1..3].to_vec()).await.unwrap();
    assert_eq!(*mirror.seen.lock().unwrap(), vec![1, 2, 3]);
    assert_eq!(
        *mirror.lines.lock().unwrap(),
        std::fs::read(&path).unwrap(),
        "the mirror gets the journal's own bytes"
    );
    let err = journal.append(drafts[3].clone()).await.unwrap_err();
    assert!(matches!(err, AuditError::Mirror { seq: 4, .. }), "{err}");
    assert!(err.to_string().contains("stream unavailable"));
}

/// A mirror whose publishes wait at a gate the test opens, and that notes each record's seq
/// as its publish completes.
struct GatedMirror {
    gate: tokio::sync::Semaphore,
    /// Each publish first waits this long (the first call only), to let a later one overtake.
    slow_first: Duration,
    calls: std::sync::atomic::AtomicU32,
    seen: Mutex<Vec<u64>>,
}

impl GatedMirror {
    fn new(open: bool, slow_first: Duration) -> Arc<GatedMirror> {
        Arc::new(GatedMirror {
            gate: tokio::sync::Semaphore::new(if open {
                tokio::sync::Semaphore::MAX_PERMITS
            } else {
                0
            }),
            slow_first,
            calls: Default::default(),
            seen: Mutex::default(),
        })
    }

    async fn wait_seen(&self, seqs: &[u64]) -> Vec<u64> {
        for _ in 0..500 {
            if self.seen.lock().unwrap().len() >= seqs.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.seen.lock().unwrap().clone()
    }
}

impl AuditMirror for GatedMirror {
    fn publish<'a>(
        &'a self,
        records: &'a [Record],
        _lines: bytes::Bytes,
    ) -> BoxFuture<'a, Result<firebreak_audit::MirrorStored, (u64, String)>> {
        Box::pin(async move {
            if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::time::sleep(self.slow_first).await;
            }
            self.gate.acquire().await.unwrap().forget();
            self.seen
                .lock()
                .unwrap()
                .extend(records.iter().map(|r| r.seq));
            Ok(Box::pin(async { Ok(()) }) as firebreak_audit::MirrorStored)
        })
    }
}

/// A caller that stops waiting for its append (a step cancelled or suspended mid-append)
/// does not take the record's publication with it: what the journal holds, the mirror gets,
/// and so does whoever follows the journal.
#[tokio::test]
async fn an_append_given_up_by_its_caller_still_reaches_the_mirror_and_followers() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = GatedMirror::new(false, std::time::Duration::ZERO);
    let (journal, mut follower, drafts) = mirrored(dir.path(), mirror.clone());
    let given_up = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        journal.append(drafts[0].clone()),
    )
    .await;
    assert!(given_up.is_err(), "the append waits for the gated mirror");
    assert_eq!(journal.records_for_run("r1").unwrap().len(), 1, "durable");
    mirror.gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    assert_eq!(mirror.wait_seen(&[1]).await, vec![1], "the mirror got it");
    let followed = tokio::time::timeout(std::time::Duration::from_secs(5), follower.recv())
        .await
        .expect("the follower gets the record")
        .unwrap();
    assert_eq!(followed.seq, 1);
    journal.append(drafts[1].clone()).await.unwrap();
    assert_eq!(mirror.wait_seen(&[1, 2]).await, vec![1, 2]);
}

/// Two callers appending one after the other: the mirror and the followers get the records
/// in the journal's order even when the first publish is the slower one, so the last record a
/// stream holds of a run is the journal's last.
#[tokio::test]
async fn the_mirror_and_followers_get_records_in_journal_order() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = GatedMirror::new(true, std::time::Duration::from_millis(300));
    let (journal, mut follower, drafts) = mirrored(dir.path(), mirror.clone());
    let journal = Arc::new(journal);
    let first = tokio::spawn({
        let (journal, draft) = (journal.clone(), drafts[0].clone());
        async move { journal.append(draft).await.unwrap().seq }
    });
    // The first record is durable (its publish is under way) before the second is appended.
    for _ in 0..100 {
        if !journal.records_for_run("r1").unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let second = journal.append(drafts[1].clone()).await.unwrap().seq;
    assert_eq!((first.await.unwrap(), second), (1, 2));
    assert_eq!(mirror.wait_seen(&[1, 2]).await, vec![1, 2]);
    let followed = [
        follower.recv().await.unwrap().seq,
        follower.recv().await.unwrap().seq,
    ];
    assert_eq!(followed, [1, 2]);
}

/// A mirror that notes what it was sent at once and reports it stored only when the test
/// opens its gate.
struct SlowStoring {
    sent: Mutex<Vec<u64>>,
    stored: Arc<tokio::sync::Semaphore>,
}

impl AuditMirror for SlowStoring {
    fn publish<'a>(
        &'a self,
        records: &'a [Record],
        _lines: bytes::Bytes,
    ) -> BoxFuture<'a, Result<firebreak_audit::MirrorStored, (u64, String)>> {
        self.sent
            .lock()
            .unwrap()
            .extend(records.iter().map(|r| r.seq));
        let stored = self.stored.clone();
        Box::pin(async move {
            Ok(Box::pin(async move {
                stored.acquire().await.unwrap().forget();
                Ok(())
            }) as firebreak_audit::MirrorStored)
        })
    }
}

/// The journal sends the next records while the last ones are still being stored (a stream's
/// round trip does not hold every other run's appends back), and still answers them, and
/// hands them to followers, in journal order.
#[tokio::test]
async fn the_mirror_is_sent_the_next_records_before_the_last_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = Arc::new(SlowStoring {
        sent: Mutex::default(),
        stored: Arc::new(tokio::sync::Semaphore::new(0)),
    });
    let (journal, mut follower, drafts) = mirrored(dir.path(), mirror.clone());
    let journal = Arc::new(journal);
    let append = |draft: RecordDraft| {
        let journal = journal.clone();
        tokio::spawn(async move { journal.append(draft).await.unwrap().seq })
    };
    let sent = |n: usize| {
        let mirror = mirror.clone();
        async move {
            for _ in 0..200 {
                if mirror.sent.lock().unwrap().len() >= n {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            mirror.sent.lock().unwrap().clone()
        }
    };
    let first = append(drafts[0].clone());
    assert_eq!(sent(1).await, vec![1]);
    let second = append(drafts[1].clone());
    assert_eq!(
        sent(2).await,
        vec![1, 2],
        "sent before the first was stored"
    );
    assert!(
        !first.is_finished() && !second.is_finished(),
        "nothing stored yet"
    );
    mirror.stored.add_permits(2);
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (1, 2));
    let followed = [
        follower.recv().await.unwrap().seq,
        follower.recv().await.unwrap().seq,
    ];
    assert_eq!(followed, [1, 2]);
}

#[tokio::test]
async fn bad_paths_get_clear_errors_and_an_empty_journal_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/audit.jsonl");
    let err = Journal::open(&missing)
        .err()
        .expect("opening in a missing directory fails");
    assert!(matches!(err, AuditError::Open { .. }), "{err}");
    assert!(err.to_string().contains("no/such/dir/audit.jsonl"), "{err}");
    let err = JournalReader::open(dir.path().join("absent.jsonl"))
        .err()
        .unwrap();
    assert!(matches!(err, AuditError::Open { .. }), "{err}");

    let path = dir.path().join("audit.jsonl");
    drop(Journal::open(&path).unwrap());
    let report = verify(&path).unwrap();
    assert_eq!(
        (report.records, report.runs, report.last_hash.as_str()),
        (0, 0, GENESIS_HASH)
    );
}

/// A garbage line in the middle: `verify` names it, the engine refuses to chain onto it, and
/// told to go on it sets the file aside whole and continues from the record before it, with
/// the break journaled.
#[tokio::test]
async fn a_garbage_line_in_the_middle_is_refused_at_open_named_by_verify_and_can_be_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    let first = journal.append_all(run_drafts("r1")).await.unwrap();
    drop(journal);
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines[1] = "garbage".into();
    let broken = lines.join("\n") + "\n";
    std::fs::write(&path, &broken).unwrap();

    match verify(&path) {
        Err(firebreak_audit::VerifyError::Broken { line, .. }) => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
    let err = Journal::open(&path)
        .err()
        .expect("a broken chain is refused");
    assert!(matches!(err, AuditError::Tampered { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("--audit-relink"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        broken,
        "nothing changed"
    );

    let key = Arc::new(
        SigningKey::load_or_create(&dir.path().join("audit.key"))
            .unwrap()
            .0,
    );
    let options = JournalOptions {
        signing_key: Some(key),
        relink_broken: true,
        ..JournalOptions::default()
    };
    let journal = Journal::open_with(&path, options).unwrap();
    let next = journal.append_all(run_drafts("r2")).await.unwrap();
    // Record 1 survived; checkpoint (2), relinked (3), then r2.
    assert_eq!(next[0].seq, 4);
    assert_eq!(journal.records_for_run("r1").unwrap(), first[..1].to_vec());
    drop(journal);
    let report = verify(&path).unwrap();
    assert_eq!(report.relinks.len(), 1, "{report:?}");
    assert!(report.relinks[0].contains("line 2"), "{report:?}");
    let set_aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("audit.broken-"))
        .collect();
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&set_aside[0])).unwrap(),
        broken,
        "the broken file is kept whole"
    );
}

/// A sync that fails (a full or failing disk) poisons the journal: appends fail and it says it
/// is unhealthy. A probe cuts the file back to the last durable record and appends resume,
/// chained onto that record; nothing the failed sync held is in the file.
#[tokio::test]
async fn a_failed_sync_poisons_the_journal_until_a_probe_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    let first = journal.append_all(run_drafts("r1")).await.unwrap();
    assert!(journal.healthy());

    // The batch's sync fails, and so does the repair the next append tries first.
    journal.inject_failures(0, 2);
    let err = journal.append_all(run_drafts("r2")).await.unwrap_err();
    assert!(matches!(err, AuditError::Poisoned { .. }), "{err}");
    assert!(!journal.healthy());
    let err = journal.append_all(run_drafts("r3")).await.unwrap_err();
    assert!(matches!(err, AuditError::Poisoned { .. }), "{err}");
    // Within PROBE_EVERY of that attempt, appends are refused without another one.
    let err = journal.append_all(run_drafts("r3")).await.unwrap_err();
    assert!(matches!(err, AuditError::Poisoned { .. }), "{err}");
    assert!(!journal.healthy());

    assert!(journal.probe().await, "the probe repairs the journal");
    let next = journal.append_all(run_drafts("r4")).await.unwrap();
    assert_eq!(next[0].seq, first[3].seq + 1, "the chain goes on after r1");
    assert_eq!(next[0].prev_hash, first[3].hash);
    drop(journal);
    let report = verify(&path).unwrap();
    assert_eq!(report.records, 8, "r1 and r4 only");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("\"r2\"") && !text.contains("\"r3\""),
        "{text}"
    );
}

/// A write that fails is undone; the journal says it is unhealthy until a write (or a probe's
/// disk test) succeeds again.
#[tokio::test]
async fn a_failed_write_is_undone_and_health_returns_with_the_next_good_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    journal.inject_failures(1, 0);
    let err = journal.append_all(run_drafts("r1")).await.unwrap_err();
    assert!(matches!(err, AuditError::Write { .. }), "{err}");
    assert!(!journal.healthy());
    assert!(
        journal.probe().await,
        "the disk takes writes: healthy again"
    );
    let records = journal.append_all(run_drafts("r2")).await.unwrap();
    assert_eq!(records[0].seq, 1, "nothing of r1 stayed in the chain");
    drop(journal);
    assert_eq!(verify(&path).unwrap().records, 4);
}

/// Refusals, skipped events and parked messages are entries of their own: listed with their
/// kind, never among the runs a restart resumes.
#[tokio::test]
async fn notices_are_listed_by_kind_and_never_resumed() {
    use firebreak_audit::EntryKind;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    let notices = [
        (
            "refused",
            RecordBody::Refusal {
                step: None,
                action: "trigger".into(),
                reason: "not a member".into(),
            },
        ),
        (
            "skipped",
            RecordBody::Skipped {
                reason: "in cooldown".into(),
                active_run: None,
            },
        ),
        (
            "parked",
            RecordBody::Parked {
                origin: "firebreak.events.x.y".into(),
                reason: "not an event".into(),
                payload: "garbage".into(),
            },
        ),
    ];
    for (id, body) in notices {
        journal
            .append(RecordDraft::new(meta(id), body))
            .await
            .unwrap();
    }
    let mut unfinished = run_drafts("running");
    unfinished.pop();
    journal.append_all(unfinished).await.unwrap();
    let kinds: Vec<_> = journal
        .runs()
        .iter()
        .map(|r| (r.run_id.clone(), r.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("refused".to_owned(), EntryKind::Refused),
            ("skipped".to_owned(), EntryKind::Skipped),
            ("parked".to_owned(), EntryKind::Parked),
            ("running".to_owned(), EntryKind::Run),
        ]
    );
    let resumable: Vec<_> = journal
        .unfinished_runs()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(resumable, vec!["running".to_owned()]);
}

/// A journal in `dir` publishing to `mirror`, a follower of it, and one run's drafts.
fn mirrored(
    dir: &std::path::Path,
    mirror: Arc<dyn AuditMirror>,
) -> (
    Journal,
    tokio::sync::broadcast::Receiver<Arc<Record>>,
    Vec<RecordDraft>,
) {
    let journal = Journal::open(dir.join("audit.jsonl"))
        .unwrap()
        .with_mirror(mirror);
    let follower = journal.subscribe();
    (journal, follower, run_drafts("r1"))
}

/// The head file is written beside the journal, not on the way of its appends: while it
/// cannot be written (a FIFO no one reads stands where its temp file goes, so creating it
/// blocks), a checkpoint and the appends after it are answered; the head line is written
/// once it can be.
#[tokio::test]
async fn appends_are_answered_while_the_head_file_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = SigningKey::load_or_create(&dir.path().join("audit.key"))
        .unwrap()
        .0;
    let options = JournalOptions {
        signing_key: Some(Arc::new(key)),
        ..JournalOptions::default()
    };
    let journal = Journal::open_with(&path, options).unwrap();
    let fifo = dir.path().join("audit.head.tmp");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success(), "mkfifo");
    journal.append_all(run_drafts("r1")).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let checkpoint = journal.checkpoint(false).await.unwrap();
        journal.append_all(run_drafts("r2")).await.unwrap();
        checkpoint.expect("records came since the last checkpoint")
    })
    .await;
    // Whatever happened, the head's writer is let go: it writes the line into the FIFO.
    let written = tokio::task::spawn_blocking(move || std::fs::read(&fifo))
        .await
        .unwrap()
        .unwrap();
    let checkpoint = answered.expect("the checkpoint and the next append were answered");
    let head: Record = serde_json::from_slice(&written).unwrap();
    assert_eq!(head, checkpoint, "the head line is the checkpoint's");
    drop(journal);
}
