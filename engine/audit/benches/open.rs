//! Start-up with a long history: how long `Journal::open` takes before the engine is ready,
//! against the size of the journal. Prints one summary line.
//!
//! `cargo bench -p firebreak-audit --bench open` (env `HISTORY_MIB`, default 1024; `OPEN_DIR`
//! to keep the generated journal somewhere other than a temporary folder).
//!
//! The history is written through the journal itself (runs of 6 records, a few hundred bytes
//! each, signed checkpoints, the default segment size), with a few runs left unfinished along the way, so
//! the open has runs to resume from old segments.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firebreak_audit::{
    Journal, JournalOptions, JournalReader, RecordBody, RecordDraft, RunMeta, RunStatus,
    SigningKey, StepStatus,
};
use serde_json::json;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn meta(run: u64) -> Arc<RunMeta> {
    Arc::new(RunMeta {
        run_id: format!("0193a1b2-{run:012}"),
        runbook: "model-latency-rollback".into(),
        team: "ml-serving".into(),
        actor: "alertmanager".into(),
        event_id: format!("ev-{run}"),
    })
}

fn run(run: u64, finished: bool) -> Vec<RecordDraft> {
    let m = meta(run);
    let mut drafts = vec![
        RecordDraft::new(
            m.clone(),
            RecordBody::RunStarted {
                event: json!({"id": format!("ev-{run}"), "source": "alertmanager", "type": "firing",
                    "labels": {"alertname": "ModelLatencyHigh", "namespace": "ml-serving", "deployment": "recommender"}})
                .into(),
                params: json!({"namespace": "ml-serving", "deployment": "recommender"}),
                dry_run: false,
                namespaces: vec!["ml-serving".into()],
                cluster_actions: None,
                timeout_ms: Some(600_000),
                lock_key: Some("model-latency-rollback/ml-serving/recommender".into()),
                cooldown_ms: None,
                interactive: false,
                approval: None,
                trace_id: None,
            },
        ),
        RecordDraft::new(
            m.clone(),
            RecordBody::StepStarted {
                step: 1,
                name: "k8s::rollback".into(),
                inputs: json!({"namespace": "ml-serving", "deployment": "recommender"}),
                intent: Some(json!({"revision": 4, "template_hash": "5d8f7c9b6"})),
            },
        ),
        RecordDraft::new(
            m.clone(),
            RecordBody::StepFinished {
                step: 1,
                name: "k8s::rollback".into(),
                inputs: None,
                status: StepStatus::Ok,
                outputs: json!({"from_revision": 5, "to_revision": 6, "image": "registry.example/recommender:v1"}),
                error: None,
                duration_ms: 2130,
                attempts: 1,
            },
        ),
        RecordDraft::new(
            m.clone(),
            RecordBody::Evidence {
                step: 2,
                name: "p99 latency".into(),
                data: json!({"query": "histogram_quantile(0.99, ...)", "value": 0.182}),
            },
        ),
        RecordDraft::new(
            m.clone(),
            RecordBody::Progress {
                step: 1,
                message: "3/3 replicas updated, 3 available".into(),
            },
        ),
    ];
    if finished {
        drafts.push(RecordDraft::new(
            m,
            RecordBody::RunFinished {
                status: RunStatus::Succeeded,
                error: None,
            },
        ));
    }
    drafts
}

fn options(dir: &std::path::Path) -> JournalOptions {
    let key = SigningKey::load_or_create(&dir.join("audit.key"))
        .expect("signing key")
        .0;
    JournalOptions {
        signing_key: Some(Arc::new(key)),
        // Every run stays indexed, so the child can tell when the whole history is.
        finished_runs_kept: usize::MAX,
        ..JournalOptions::default()
    }
}

/// The child: open the journal once, wait for the history, print the times in µs.
fn open_once(path: &std::path::Path, runs: usize) {
    let dir = path.parent().expect("journal dir");
    let started = Instant::now();
    let journal = Journal::open_with(path, options(dir)).expect("reopen");
    let ready = started.elapsed();
    let unfinished = journal.unfinished_runs().len();
    while journal.runs().len() < runs {
        std::thread::sleep(Duration::from_millis(2));
    }
    let history = started.elapsed();
    println!("{} {} {unfinished}", ready.as_micros(), history.as_micros());
}

fn main() {
    if let Ok(path) = std::env::var("OPEN_ONCE") {
        let runs = env("OPEN_RUNS", 0) as usize;
        return open_once(std::path::Path::new(&path), runs);
    }
    let history = env("HISTORY_MIB", 1024) << 20;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = std::env::var("OPEN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).expect("bench dir");
    let path = dir.join("audit.jsonl");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let written = Instant::now();
    let runs = if path.exists() {
        // A journal left from an earlier run (OPEN_DIR): measure it as it is.
        JournalReader::open(&path).expect("reader").runs().len() as u64
    } else {
        rt.block_on(async {
            let journal = Journal::open_with(&path, options(&dir)).expect("open journal");
            let mut size = 0u64;
            let mut n = 0u64;
            while size < history {
                // 256 runs per batch of appends, one of every 50k left unfinished.
                let appends: Vec<_> = (n..n + 256)
                    .map(|r| journal.append_all(run(r, r % 50_000 != 7)))
                    .collect();
                n += 256;
                for records in futures::future::join_all(appends).await {
                    records.expect("append");
                }
                size = std::fs::read_dir(&dir)
                    .expect("dir")
                    .map(|e| e.expect("entry").metadata().expect("meta").len())
                    .sum();
            }
            journal.checkpoint(true).await.expect("closing checkpoint");
            n
        })
    };
    let write_time = written.elapsed();
    let size: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    let segments = std::fs::read_dir(&dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        })
        .count();
    // Each open in a fresh process, as an engine restarts: one that has just freed a big
    // index (or written a gigabyte) measures its allocator, not the journal.
    let mut opens = Vec::new();
    let mut unfinished = 0;
    let mut history_ready = Duration::ZERO;
    for _ in 0..5 {
        let out = std::process::Command::new(std::env::current_exe().expect("bench binary"))
            .env("OPEN_ONCE", &path)
            .env("OPEN_RUNS", runs.to_string())
            .output()
            .expect("open child");
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(out.status.success() && fields.len() == 3, "{text}");
        opens.push(Duration::from_micros(fields[0]));
        history_ready = Duration::from_micros(fields[1]);
        unfinished = fields[2];
    }
    opens.sort();
    let full = Instant::now();
    let reader = JournalReader::open(&path).expect("reader");
    let full_scan = full.elapsed();
    assert_eq!(reader.runs().len() as u64, runs);
    println!(
        "audit open: {:.0} MiB history, {} segments, {} runs ({} unfinished): ready in {:.1} ms (p50 of 5, max {:.1}); full history indexed in the background after {:.2} s; a reader indexing everything takes {:.2} s (written in {:.1} s)",
        size as f64 / f64::from(1 << 20),
        segments,
        runs,
        unfinished,
        opens[2].as_secs_f64() * 1e3,
        opens[4].as_secs_f64() * 1e3,
        history_ready.as_secs_f64(),
        full_scan.as_secs_f64(),
        write_time.as_secs_f64(),
    );
}
