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
    long_step_of("long", step)
}

fn long_step_of(run: &str, step: u32) -> RecordDraft {
    RecordDraft::new(
        meta(run),
        RecordBody::StepFinished {
            step,
            name: "k8s::wait_rollout".into(),
            inputs: None,
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

/// Sealing a segment hands its carried index to a thread of its own: appends go on while it
/// is written. The index's temporary file is a FIFO here, so writing it blocks until the test
/// reads it; before, the writer wrote it itself (~15 ms per sealing under load, a p99 stall
/// of every append) and here every later append hung.
#[tokio::test]
async fn appends_go_on_while_the_carried_index_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let tmp = dir.path().join("audit.index.json.tmp");
    let made = std::process::Command::new("mkfifo")
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo: {made}");
    let journal = Journal::open_with(&path, options(dir.path())).unwrap();
    journal
        .append(run_drafts("long").swap_remove(0))
        .await
        .unwrap();
    let sealed_count = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name().into_string().unwrap();
                name.len() == "audit.000000000001.jsonl".len() && name.ends_with(".jsonl")
            })
            .count()
    };
    let appended = async {
        let mut i = 0;
        while sealed_count() < 3 {
            journal
                .append_all(run_drafts(&format!("r{i}")))
                .await
                .unwrap();
            i += 1;
        }
        i
    };
    let Ok(runs) = tokio::time::timeout(Duration::from_secs(10), appended).await else {
        // Let the writer go first, or dropping the journal waits for it for ever.
        drain_fifo(&tmp).join().unwrap();
        panic!("appends held up behind the carried index");
    };
    assert!(
        !dir.path().join("audit.index.json").exists(),
        "nothing could be written yet"
    );
    let sealed = sealed_count();

    // Unblock the index thread: open the FIFO for reading (the thread's open returns) and
    // unlink it at once, so later writes make a regular file; read the first index from it.
    let reading = drain_fifo(&tmp);
    let read = reading.join().unwrap();
    let first: serde_json::Value = serde_json::Deserializer::from_slice(&read)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    // The thread writes the newest index it was handed, at the lowest priority: the first
    // sealing's if it took that before the others came (it then held it in the FIFO's open
    // while they did), or a later one's (it got the CPU only after them; seen once in a busy
    // test run, naming all three). Either way it names what was sealed, and no more.
    let named = first["sealed"].as_array().unwrap().len();
    assert!((1..=sealed).contains(&named), "{sealed} sealed: {first}");
    // Those writes fail (a FIFO cannot be synced; the newest may have reached it before the
    // unlink). One more sealing: its index is written whole and renamed into place before
    // the journal closes.
    let before = sealed_count();
    let mut runs = runs;
    while sealed_count() == before {
        journal
            .append_all(run_drafts(&format!("r{runs}")))
            .await
            .unwrap();
        runs += 1;
    }
    drop(journal);
    let carried: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("audit.index.json")).unwrap())
            .unwrap();
    assert_eq!(
        carried["sealed"].as_array().unwrap().len(),
        sealed_count(),
        "the newest index names every sealed segment"
    );
    // It is the one a restart uses: the unfinished run is known at once, the rest follows.
    let journal = Journal::open_with(&path, options(dir.path())).unwrap();
    assert_eq!(journal.unfinished_runs()[0].run_id, "long");
    let until = Instant::now() + Duration::from_secs(10);
    while journal.runs().len() < runs + 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(journal.runs().len(), runs + 1);
    drop(journal);
    verify(&path).unwrap();
}

/// Opens the FIFO at `path` for reading (a writer blocked opening it goes on) and unlinks it
/// at once, so later writes make a regular file; returns what was written to it.
fn drain_fifo(path: &std::path::Path) -> std::thread::JoinHandle<Vec<u8>> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut fifo = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut fifo, &mut bytes).unwrap();
        bytes
    })
}

/// A server that runs for months: the index holds every unfinished run and the newest
/// `finished_runs_kept` others, not every run ever; an older run is still found, on disk, with
/// all its records, before and after a restart, and a late record of one is not listed as a
/// run of its own.
#[tokio::test]
async fn the_index_keeps_open_and_recent_runs_and_finds_older_ones_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let options = JournalOptions {
        finished_runs_kept: 20,
        ..options(dir.path())
    };
    let journal = Journal::open_with(&path, options.clone()).unwrap();
    let long_started = run_drafts("long").swap_remove(0);
    journal.append(long_started).await.unwrap();
    let mut written = Vec::new();
    for i in 0..200 {
        written.push(
            journal
                .append_all(run_drafts(&format!("r{i}")))
                .await
                .unwrap(),
        );
        if i % 50 == 0 {
            journal.append(long_step(i)).await.unwrap();
        }
    }
    let expected: Vec<String> = std::iter::once("long".to_owned())
        .chain((180..200).map(|i| format!("r{i}")))
        .collect();
    let listed = |journal: &Journal| -> Vec<String> {
        journal.runs().into_iter().map(|r| r.run_id).collect()
    };
    assert_eq!(listed(&journal), expected);
    assert_eq!(journal.unfinished_runs()[0].run_id, "long");
    assert_eq!(journal.unfinished_runs().len(), 1);
    assert_eq!(journal.records_for_run("long").unwrap().len(), 5);
    let reader = journal.reader();
    let check_old = |reader: &JournalReader| {
        for i in [0usize, 7, 150, 179] {
            let id = format!("r{i}");
            assert_eq!(reader.records_for_run(&id).unwrap(), written[i], "{id}");
            let summary = reader
                .run(&id)
                .unwrap()
                .expect("an old run is found on disk");
            assert_eq!(summary.records, 4);
            assert_eq!(summary.status, Some(firebreak_audit::RunStatus::Succeeded));
        }
        assert_eq!(reader.run("r1").unwrap().unwrap().run_id, "r1");
        assert!(reader.run("r1x").unwrap().is_none());
        assert!(reader.records_for_run("nope").unwrap().is_empty());
    };
    check_old(&reader);
    assert_eq!(journal.runs_for_event("ev-r199")[0].run_id, "r199");
    // A late record of a forgotten run joins its records on disk, not the listing.
    journal.append(long_step_of("r3", 9)).await.unwrap();
    assert_eq!(listed(&journal), expected);
    assert_eq!(journal.records_for_run("r3").unwrap().len(), 5);
    drop(reader);
    drop(journal);

    // After a restart the history indexed in the background is bounded the same way.
    let journal = Journal::open_with(&path, options).unwrap();
    assert_eq!(journal.unfinished_runs().len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed(&journal) != expected {
        assert!(Instant::now() < deadline, "listed {:?}", listed(&journal));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check_old(&journal.reader());
    // A reader of the files (`firebreak audit list`) still lists the whole history.
    assert_eq!(JournalReader::open(&path).unwrap().runs().len(), 201);
}

/// A read from a seq on opens only the segment that holds it and those after (the mirror's
/// catch-up reads a journal's tail), and gives each record with its line byte for byte as
/// journaled; a reopened journal says where its own records begin.
#[tokio::test]
async fn a_read_from_a_seq_skips_the_segments_before_and_gives_the_lines_as_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (journal, export) = sixty_runs(&path).await;
    let lines: Vec<&[u8]> = export.split_inclusive(|b| *b == b'\n').collect();
    let last = lines.len() as u64;
    assert!(last > 200, "{last} records");

    let from = last - 30;
    let mut read = journal.reader().iter_from(from).unwrap();
    let mut got = Vec::new();
    while let Some(next) = read.next_with_line() {
        got.push(next.unwrap());
    }
    // Only the tail's segments: the records before `from` in them, not the whole journal.
    let first = got[0].0.seq;
    assert!(first <= from && first > 1, "read from seq {first}");
    assert!(
        got.len() < 200,
        "read {} records for the last 31",
        got.len()
    );
    for (record, line) in &got {
        assert_eq!(
            line.as_slice(),
            lines[record.seq as usize - 1],
            "seq {}",
            record.seq
        );
    }
    assert_eq!(got.last().unwrap().0.seq, last);
    drop(journal);

    let journal = Journal::open_with(&path, options(dir.path())).unwrap();
    assert_eq!(journal.opened_at(), last + 1);
}

/// A new journal at `path` in segments of [`options`], with 60 runs in it, and its export.
async fn sixty_runs(path: &std::path::Path) -> (Journal, Vec<u8>) {
    let journal = Journal::open_with(path, options(path.parent().unwrap())).unwrap();
    assert_eq!(
        journal.opened_at(),
        1,
        "a new journal's opening checkpoint is its first"
    );
    for i in 0..60 {
        journal
            .append_all(run_drafts(&format!("r{i}")))
            .await
            .unwrap();
    }
    let mut export = Vec::new();
    journal.export(&mut export).unwrap();
    (journal, export)
}

/// `firebreak audit` and `firebreak bench` read a journal a server writes through a reader
/// opened on its path: every segment's records, the last sealed one's too.
#[tokio::test]
async fn a_reader_opened_on_the_path_reads_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (_journal, export) = sixty_runs(&path).await;
    let journaled = export.iter().filter(|b| **b == b'\n').count() as u64;

    let reader = JournalReader::open(&path).unwrap();
    let seqs: Vec<u64> = reader.iter_all().unwrap().map(|r| r.unwrap().seq).collect();
    assert_eq!(seqs, (1..=journaled).collect::<Vec<_>>());
    let mut reread = Vec::new();
    reader.export(&mut reread).unwrap();
    assert_eq!(reread, export, "the reader's export is the writer's");
    let from = journaled - 30;
    let tail: Vec<u64> = reader
        .iter_from(from)
        .unwrap()
        .map(|r| r.unwrap().seq)
        .filter(|seq| *seq >= from)
        .collect();
    assert_eq!(tail, (from..=journaled).collect::<Vec<_>>());
}

/// The nice value of each of this process's threads named `name` (field 19 of its stat).
#[cfg(target_os = "linux")]
fn nice_of_threads(name: &str) -> Vec<i64> {
    let mut nices = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        nices.push(nice_in(&stat));
    }
    nices
}

/// The nice value in a `/proc/.../stat` line: field 19, the 17th after the parenthesised name.
#[cfg(target_os = "linux")]
fn nice_in(stat: &str) -> i64 {
    stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(16)
        .unwrap()
        .parse()
        .unwrap()
}

/// The carried index's thread serializes and writes some 380 bytes per run of the segment just
/// sealed (2.3 MB every 0.4 s at 15,000 runs/s): at the default priority each of those bursts
/// took one of two cores from the appends and the webhooks, which set the p99 under load. No
/// caller waits for it, so it yields the CPU to everything else.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_carried_index_is_written_at_the_lowest_priority() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open_with(&path, options(dir.path())).unwrap();
    for i in 0..20 {
        journal
            .append_all(run_drafts(&format!("r{i}")))
            .await
            .unwrap();
    }
    // The thread lowers itself when it starts; the carried index it writes after that shows
    // it has (the appends sealed segments of 4 KiB).
    let carried = dir.path().join("audit.index.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !carried.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let nices = nice_of_threads("audit-index");
    assert!(!nices.is_empty(), "no audit-index thread found");
    assert!(
        nices.iter().all(|&n| n == 19),
        "audit-index threads' nice values: {nices:?}"
    );
    // The appending threads keep the process's priority.
    let own = nice_in(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let writers = nice_of_threads("audit-writer");
    assert!(
        !writers.is_empty() && writers.iter().all(|&n| n == own),
        "{writers:?}, the process {own}"
    );
}
