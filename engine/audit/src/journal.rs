//! The journal: an append-only JSONL file, one sealed [`Record`] per line.
//!
//! Start at [`Journal::open`] and [`Journal::append`]. One writer thread owns the file: it
//! takes every append waiting in its queue, seals them into the chain, writes them with one
//! `write`, makes them durable with one `sync_data`, and only then answers each waiter (group
//! commit). Reads ([`JournalReader`]) go through a second file handle and an in-memory index
//! run id → line offsets, so they never wait for the writer.
//!
//! Crash safety: a crash can leave a torn last line (no trailing newline). [`Journal::open`]
//! truncates it with a warning; records before it were each written and synced whole. A
//! complete last line that does not parse is refused: chaining onto it would hide damage.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::record::{GENESIS_HASH, Record, RecordBody, RecordDraft, RunStatus, redact};

/// Most appends sealed into one write + fsync.
const MAX_BATCH: usize = 8192;

/// How long a sync under load waits for more appends to share it. Longer than the bus log's
/// wait: no HTTP answer waits on the journal (record times are taken before the wait), only
/// run starts and steps, and an fsync costs this VM about as much CPU as a whole alert.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// A second home for every record, e.g. a NATS JetStream stream. Called after the records are
/// durable in the journal; an error fails the append.
pub trait AuditMirror: Send + Sync {
    /// Publishes the records of one append, in journal order. `lines` holds them exactly as the
    /// journal file does (one newline-terminated line each), so a mirror can store the very
    /// bytes `audit verify` checks. On failure: the `seq` of the first record not taken, and
    /// why. Bound the wait inside: the append waits for this future.
    fn publish<'a>(
        &'a self,
        records: &'a [Record],
        lines: bytes::Bytes,
    ) -> BoxFuture<'a, Result<(), (u64, String)>>;
}

/// Why the journal could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit journal {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("audit journal {path} is in use by another writer")]
    Locked { path: PathBuf },
    #[error("audit journal {path} line {line} is corrupt ({reason}); run `firebreak audit verify`")]
    Corrupt {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("cannot write audit journal {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("cannot read audit journal {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "audit journal {path} refuses appends after a write or sync failed; it retries on its own"
    )]
    Poisoned {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("audit journal is closed")]
    Closed,
    #[error("audit mirror did not take record {seq}: {message}")]
    Mirror { seq: u64, message: String },
}

/// What an entry of the journal is: a run, or a notice that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A run: begins with `run_started`.
    Run,
    /// A refusal before any run started (a trigger by a non-member, a spent budget).
    Refused,
    /// A matched event that started no run (cooldown, its incident handled elsewhere).
    Skipped,
    /// A message from the bus that could not be processed, kept in the journal.
    Parked,
}

/// One run (or notice) as the journal knows it, for listings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    /// A run, or a notice that is listed but never resumed.
    pub kind: EntryKind,
    pub runbook: String,
    pub team: String,
    pub actor: String,
    pub event_id: String,
    /// Time of the run's first record.
    pub started: jiff::Timestamp,
    pub finished: Option<jiff::Timestamp>,
    /// `None` while the run has no `RunFinished` record (running, or interrupted by a crash).
    pub status: Option<RunStatus>,
    /// Records of the run in the journal.
    pub records: usize,
}

/// run id → where its records are, plus a summary per run.
#[derive(Default)]
struct Index {
    runs: HashMap<String, RunEntry>,
    /// Run ids in order of first appearance.
    order: Vec<String>,
    /// Trigger event id → ids of the runs it started.
    by_event: HashMap<String, Vec<String>>,
}

/// (byte offset, length including the newline) of one record line.
type LinePlace = (u64, u32);

struct RunEntry {
    summary: RunSummary,
    /// (byte offset, length including the newline) of each record line.
    lines: Vec<(u64, u32)>,
}

impl Index {
    fn add(&mut self, record: &Record, offset: u64, len: u32) {
        let entry = match self.runs.get_mut(&record.run_id) {
            Some(entry) => entry,
            None => {
                self.order.push(record.run_id.clone());
                let kind = match &record.body {
                    RecordBody::Refusal { step: None, .. } => EntryKind::Refused,
                    RecordBody::Skipped { .. } => EntryKind::Skipped,
                    RecordBody::Parked { .. } => EntryKind::Parked,
                    _ => EntryKind::Run,
                };
                self.runs.entry(record.run_id.clone()).or_insert(RunEntry {
                    summary: RunSummary {
                        run_id: record.run_id.clone(),
                        kind,
                        runbook: record.runbook.clone(),
                        team: record.team.clone(),
                        actor: record.actor.clone(),
                        event_id: record.event_id.clone(),
                        started: record.time,
                        finished: None,
                        status: None,
                        records: 0,
                    },
                    lines: Vec::new(),
                })
            }
        };
        entry.lines.push((offset, len));
        entry.summary.records += 1;
        if let RecordBody::RunStarted { .. } = &record.body {
            self.by_event
                .entry(record.event_id.clone())
                .or_default()
                .push(record.run_id.clone());
        }
        if let RecordBody::RunFinished { status, .. } = &record.body {
            entry.summary.finished = Some(record.time);
            entry.summary.status = Some(*status);
        }
    }
}

/// Where the chain ends.
#[derive(Debug, Clone)]
struct Tail {
    next_seq: u64,
    last_hash: String,
    len: u64,
}

/// What reading the file from the start found.
struct Scan {
    index: Index,
    tail: Tail,
    /// Byte offset and 1-based line number of a trailing incomplete line.
    torn: Option<(u64, u64)>,
    /// 1-based line number and parse error of the last complete line, when it does not parse.
    bad_last_line: Option<(u64, String)>,
}

fn scan(path: &Path, file: &File) -> Result<Scan, AuditError> {
    let read_err = |source| AuditError::Read {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut index = Index::default();
    let mut tail = Tail {
        next_seq: 1,
        last_hash: GENESIS_HASH.to_owned(),
        len: 0,
    };
    let mut torn = None;
    let mut bad_last_line = None;
    let mut offset = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            torn = Some((offset, line_no));
            break;
        }
        match serde_json::from_slice::<Record>(&buf) {
            Ok(record) => {
                index.add(&record, offset, n as u32);
                tail.next_seq = record.seq + 1;
                tail.last_hash = record.hash;
                bad_last_line = None;
            }
            Err(e) => {
                warn!(path = %path.display(), line = line_no, error = %e, "unparsable audit record");
                bad_last_line = Some((line_no, e.to_string()));
            }
        }
        offset += n as u64;
    }
    tail.len = offset;
    Ok(Scan {
        index,
        tail,
        torn,
        bad_last_line,
    })
}

/// State shared by the writer thread and readers.
struct Shared {
    path: PathBuf,
    /// Read-only handle for positional reads.
    file: File,
    index: Mutex<Index>,
    /// Bytes of the file that hold complete, synced records.
    committed: AtomicU64,
    /// Whether the last write or sync succeeded (see [`Journal::healthy`]).
    healthy: AtomicBool,
    /// Failures to inject, for tests and drills (see [`Journal::inject_failures`]).
    faults: Faults,
}

/// Injected failures: the next `writes` writes and `syncs` syncs fail as a full disk would.
#[derive(Default)]
struct Faults {
    writes: AtomicU32,
    syncs: AtomicU32,
}

impl Faults {
    /// Takes one injected failure of `counter`, if any is left.
    fn take(counter: &AtomicU32) -> Option<io::Error> {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()
            .map(|_| {
                io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected failure: no space left on device",
                )
            })
    }
}

/// Read access to a journal file: listings, one run's records, the whole file.
#[derive(Clone)]
pub struct JournalReader {
    shared: Arc<Shared>,
}

impl JournalReader {
    /// Opens a journal for reading only (e.g. `firebreak audit show` while a server writes
    /// it). The index is a snapshot as of opening; a torn tail is ignored, not truncated.
    pub fn open(path: impl AsRef<Path>) -> Result<JournalReader, AuditError> {
        let path = path.as_ref().to_owned();
        let file = File::open(&path).map_err(|source| AuditError::Open {
            path: path.clone(),
            source,
        })?;
        let scan = scan(&path, &file)?;
        Ok(JournalReader {
            shared: Arc::new(Shared {
                path,
                file,
                index: Mutex::new(scan.index),
                committed: AtomicU64::new(scan.tail.len),
                healthy: AtomicBool::new(true),
                faults: Faults::default(),
            }),
        })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Every record of one run, in journal order (empty for an unknown run).
    pub fn records_for_run(&self, run_id: &str) -> Result<Vec<Record>, AuditError> {
        let lines = {
            let index = self.shared.index.lock().expect("audit index lock poisoned");
            match index.runs.get(run_id) {
                Some(entry) => entry.lines.clone(),
                None => return Ok(Vec::new()),
            }
        };
        let mut records = Vec::with_capacity(lines.len());
        let mut buf = Vec::new();
        for (offset, len) in lines {
            buf.resize(len as usize, 0);
            self.shared
                .file
                .read_exact_at(&mut buf, offset)
                .map_err(|source| AuditError::Read {
                    path: self.shared.path.clone(),
                    source,
                })?;
            let record = serde_json::from_slice(&buf).map_err(|e| AuditError::Corrupt {
                path: self.shared.path.clone(),
                line: 0,
                reason: format!("record at byte {offset} no longer parses: {e}"),
            })?;
            records.push(record);
        }
        Ok(records)
    }

    /// Every run, in order of first appearance.
    pub fn runs(&self) -> Vec<RunSummary> {
        let index = self.shared.index.lock().expect("audit index lock poisoned");
        index
            .order
            .iter()
            .map(|id| index.runs[id].summary.clone())
            .collect()
    }

    /// One run's summary.
    pub fn run(&self, run_id: &str) -> Option<RunSummary> {
        let index = self.shared.index.lock().expect("audit index lock poisoned");
        index.runs.get(run_id).map(|e| e.summary.clone())
    }

    /// The runs the event `event_id` started (by their `run_started` records), oldest first.
    pub fn runs_for_event(&self, event_id: &str) -> Vec<RunSummary> {
        let index = self.shared.index.lock().expect("audit index lock poisoned");
        index
            .by_event
            .get(event_id)
            .into_iter()
            .flatten()
            .filter_map(|run_id| index.runs.get(run_id).map(|e| e.summary.clone()))
            .collect()
    }

    /// Runs with a `RunStarted` but no `RunFinished`: what a restarted engine resumes.
    /// Notices (refusals, skipped events, parked messages) are never among them.
    pub fn unfinished_runs(&self) -> Vec<RunSummary> {
        self.runs()
            .into_iter()
            .filter(|r| r.kind == EntryKind::Run && r.status.is_none())
            .collect()
    }

    /// Every committed record, in order. Unparsable lines come out as `Err(Corrupt)`.
    pub fn iter_all(&self) -> Result<RecordIter, AuditError> {
        let file = File::open(&self.shared.path).map_err(|source| AuditError::Read {
            path: self.shared.path.clone(),
            source,
        })?;
        let committed = self.shared.committed.load(Ordering::Acquire);
        Ok(RecordIter {
            path: self.shared.path.clone(),
            reader: BufReader::with_capacity(1 << 16, file.take(committed)),
            line: 0,
            buf: Vec::new(),
        })
    }

    /// Writes every committed record as JSONL, byte for byte as journaled, so the export
    /// verifies like the journal itself.
    pub fn export(&self, mut writer: impl Write) -> Result<u64, AuditError> {
        let file = File::open(&self.shared.path).map_err(|source| AuditError::Read {
            path: self.shared.path.clone(),
            source,
        })?;
        let committed = self.shared.committed.load(Ordering::Acquire);
        io::copy(&mut file.take(committed), &mut writer).map_err(|source| AuditError::Read {
            path: self.shared.path.clone(),
            source,
        })
    }
}

/// Iterator over a journal's records, from [`JournalReader::iter_all`].
pub struct RecordIter {
    path: PathBuf,
    reader: BufReader<io::Take<File>>,
    line: u64,
    buf: Vec<u8>,
}

impl Iterator for RecordIter {
    type Item = Result<Record, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.buf.clear();
        match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => None,
            Ok(_) => {
                self.line += 1;
                Some(
                    serde_json::from_slice(&self.buf).map_err(|e| AuditError::Corrupt {
                        path: self.path.clone(),
                        line: self.line,
                        reason: e.to_string(),
                    }),
                )
            }
            Err(source) => Some(Err(AuditError::Read {
                path: self.path.clone(),
                source,
            })),
        }
    }
}

/// Where a caller waits for its sealed records.
/// The sealed records and, if asked for, their journal lines.
type Reply = oneshot::Sender<Result<(Vec<Record>, Vec<u8>), AuditError>>;

/// One caller's records waiting for the writer.
struct Pending {
    drafts: Vec<RecordDraft>,
    /// Hand the journal lines back with the records (for the mirror).
    keep_lines: bool,
    reply: Reply,
}

/// How often a journal that cannot write retries on its own (see [`Journal::probe`]).
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The append-only audit journal. Share it as `Arc<Journal>`.
pub struct Journal {
    reader: JournalReader,
    tx: Option<mpsc::UnboundedSender<Pending>>,
    writer: Option<JoinHandle<()>>,
    mirror: Option<Arc<dyn AuditMirror>>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` for appending. Takes an exclusive lock on the
    /// file, finds the chain's tail, indexes runs, truncates a torn last line (with a warning)
    /// and starts the writer thread. Verifies nothing: that is [`crate::verify`].
    pub fn open(path: impl AsRef<Path>) -> Result<Journal, AuditError> {
        let path = path.as_ref().to_owned();
        let open_err = |source| AuditError::Open {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(open_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(AuditError::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => return Err(open_err(source)),
        }
        let scan = scan(&path, &file)?;
        if let Some((line, reason)) = scan.bad_last_line {
            return Err(AuditError::Corrupt { path, line, reason });
        }
        if let Some((offset, line)) = scan.torn {
            warn!(
                path = %path.display(),
                line,
                offset,
                "audit journal ends in a torn record (crash mid-write); truncating it"
            );
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(|source| AuditError::Write {
                    path: path.clone(),
                    source: Arc::new(source),
                })?;
        }
        let read_file = File::open(&path).map_err(open_err)?;
        let shared = Arc::new(Shared {
            path: path.clone(),
            file: read_file,
            index: Mutex::new(scan.index),
            committed: AtomicU64::new(scan.tail.len),
            healthy: AtomicBool::new(true),
            faults: Faults::default(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_shared = shared.clone();
        let tail = scan.tail;
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(file, tail, rx, writer_shared))
            .map_err(open_err)?;
        Ok(Journal {
            reader: JournalReader { shared },
            tx: Some(tx),
            writer: Some(writer),
            mirror: None,
        })
    }

    /// Also publishes every appended record to `mirror`; a mirror failure fails the append.
    pub fn with_mirror(mut self, mirror: Arc<dyn AuditMirror>) -> Journal {
        self.mirror = Some(mirror);
        self
    }

    /// Appends one record and returns it sealed, once it is durable (and mirrored).
    pub async fn append(&self, draft: RecordDraft) -> Result<Record, AuditError> {
        let mut records = self.append_all(vec![draft]).await?;
        Ok(records.pop().expect("one draft gives one record"))
    }

    /// Appends several records of one caller contiguously, with one durability wait.
    pub async fn append_all(
        &self,
        mut drafts: Vec<RecordDraft>,
    ) -> Result<Vec<Record>, AuditError> {
        for draft in &mut drafts {
            redact(&mut draft.body);
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(AuditError::Closed)?
            .send(Pending {
                drafts,
                keep_lines: self.mirror.is_some(),
                reply,
            })
            .map_err(|_| AuditError::Closed)?;
        let (records, lines) = answer.await.map_err(|_| AuditError::Closed)??;
        if let Some(mirror) = &self.mirror {
            mirror
                .publish(&records, bytes::Bytes::from(lines))
                .await
                .map_err(|(seq, message)| AuditError::Mirror { seq, message })?;
        }
        Ok(records)
    }

    /// Whether the journal can write: `false` from a failed write or sync until a later one
    /// (or a [`Journal::probe`]) succeeds. While it is `false` the engine takes no new work
    /// (`/readyz` and the ingest answer 503), so nothing is accepted that cannot be journaled.
    pub fn healthy(&self) -> bool {
        self.reader.shared.healthy.load(Ordering::Relaxed)
    }

    /// Checks whether the journal can write again and repairs it if it can: a journal
    /// poisoned by a failed sync is cut back to its last durable record, synced and reopened
    /// for appends; then a small write and sync next to it tests the disk. Returns
    /// [`Journal::healthy`] afterwards. The engine calls this every [`PROBE_EVERY`] while the
    /// journal is unhealthy, so it recovers by itself once the disk has room again.
    pub async fn probe(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.as_ref().is_some_and(|tx| {
            tx.send(Pending {
                drafts: Vec::new(),
                keep_lines: false,
                reply,
            })
            .is_ok()
        });
        if sent {
            let _ = answer.await;
        }
        self.healthy()
    }

    /// Makes the next `writes` batch writes and the next `syncs` syncs fail as if the disk
    /// were full (for tests and fire drills; nothing else calls it).
    pub fn inject_failures(&self, writes: u32, syncs: u32) {
        let faults = &self.reader.shared.faults;
        faults.writes.store(writes, Ordering::Relaxed);
        faults.syncs.store(syncs, Ordering::Relaxed);
    }

    /// Read access sharing this journal's live index.
    pub fn reader(&self) -> JournalReader {
        self.reader.clone()
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        self.reader.path()
    }

    /// See [`JournalReader::records_for_run`].
    pub fn records_for_run(&self, run_id: &str) -> Result<Vec<Record>, AuditError> {
        self.reader.records_for_run(run_id)
    }

    /// See [`JournalReader::runs`].
    pub fn runs(&self) -> Vec<RunSummary> {
        self.reader.runs()
    }

    /// See [`JournalReader::runs_for_event`].
    pub fn runs_for_event(&self, event_id: &str) -> Vec<RunSummary> {
        self.reader.runs_for_event(event_id)
    }

    /// See [`JournalReader::unfinished_runs`].
    pub fn unfinished_runs(&self) -> Vec<RunSummary> {
        self.reader.unfinished_runs()
    }

    /// See [`JournalReader::iter_all`].
    pub fn iter_all(&self) -> Result<RecordIter, AuditError> {
        self.reader.iter_all()
    }

    /// See [`JournalReader::export`].
    pub fn export(&self, writer: impl Write) -> Result<u64, AuditError> {
        self.reader.export(writer)
    }
}

impl Drop for Journal {
    /// Closes the queue and waits for the writer to finish what it holds, so the file lock is
    /// released when this returns.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Set once a write or sync failed in a way that cannot be undone; appends fail until
/// [`recover`] cuts the file back to its last durable record.
type Poison = Arc<Mutex<Option<Arc<io::Error>>>>;

/// One append of a written batch: its waiter, sealed records, their places in the file and
/// (if asked for) their lines.
type WrittenAppend = (Reply, Vec<Record>, Vec<LinePlace>, Vec<u8>);

/// A batch written to the file (not yet synced), waiting for the syncer.
struct Written {
    batch: Vec<WrittenAppend>,
    /// Where the chain ends after this batch.
    tail: Tail,
}

/// What the writer hands the syncer.
enum ToSyncer {
    Written(Written),
    /// Answered once every batch sent before it has been synced or failed.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// State the writer and the syncer share.
struct Pipeline {
    poison: Poison,
    /// The chain's end as far as it is durable (updated by the syncer).
    durable: Mutex<Tail>,
}

/// The writer thread: take every waiting append, seal them into the chain, write them with one
/// `write`, hand them to the syncer. While the syncer's `sync_data` runs, the next batch is
/// already being sealed and written: a two-stage pipeline. Runs until every sender is gone.
///
/// After a failure: a failed write is undone (the file cut back to where the batch began); a
/// failed sync, or an undo that fails, poisons the journal. A poisoned journal is repaired
/// ([`recover`]) before the next batch, at most once per [`PROBE_EVERY`], or on a probe.
fn writer_loop(
    file: File,
    mut tail: Tail,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    shared: Arc<Shared>,
) {
    let file = Arc::new(file);
    let pipeline = Arc::new(Pipeline {
        poison: Arc::default(),
        durable: Mutex::new(tail.clone()),
    });
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<ToSyncer>();
    let syncer = {
        let (file, shared, pipeline) = (file.clone(), shared.clone(), pipeline.clone());
        std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || sync_loop(&file, &sync_rx, &shared, &pipeline))
            .expect("cannot spawn the audit sync thread")
    };
    let mut batch: Vec<Pending> = Vec::new();
    let mut probes: Vec<Reply> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut last_recovery: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        // Probes carry no records: they ask for a repair and a disk test.
        let (appends, asked): (Vec<Pending>, Vec<Pending>) =
            batch.drain(..).partition(|p| !p.drafts.is_empty());
        probes.extend(asked.into_iter().map(|p| p.reply));
        let probing = !probes.is_empty();
        let poisoned_now = pipeline.poison.lock().expect("poison lock").is_some();
        if poisoned_now && (probing || last_recovery.is_none_or(|at| at.elapsed() >= PROBE_EVERY)) {
            last_recovery = Some(std::time::Instant::now());
            if let Some(durable) = recover(&file, &sync_tx, &shared, &pipeline) {
                tail = durable;
            }
        }
        if let Some(source) = pipeline.poison.lock().expect("poison lock").clone() {
            for pending in appends {
                let _ = pending.reply.send(Err(poisoned(&shared, &source)));
            }
        } else if !appends.is_empty() {
            tail = write_batch(&file, tail, appends, &mut buf, &sync_tx, &shared, &pipeline);
        }
        if probing {
            let poisoned = pipeline.poison.lock().expect("poison lock").is_some();
            let disk = test_disk(&shared.path);
            if let Err(e) = &disk {
                debug!(path = %shared.path.display(), error = %e, "audit disk test failed");
            }
            if !poisoned && disk.is_ok() {
                shared.healthy.store(true, Ordering::Relaxed);
            }
            for reply in probes.drain(..) {
                let _ = reply.send(Ok((Vec::new(), Vec::new())));
            }
        }
    }
    drop(sync_tx);
    let _ = syncer.join();
}

/// Seals and writes one batch and hands it to the syncer; returns the chain's new end (the
/// old one if the write failed and was undone).
fn write_batch(
    file: &File,
    tail: Tail,
    appends: Vec<Pending>,
    buf: &mut Vec<u8>,
    sync_tx: &std::sync::mpsc::Sender<ToSyncer>,
    shared: &Shared,
    pipeline: &Pipeline,
) -> Tail {
    buf.clear();
    let mut next = tail.clone();
    let mut batch = Vec::with_capacity(appends.len());
    for pending in appends {
        let mut records = Vec::with_capacity(pending.drafts.len());
        let mut places = Vec::with_capacity(pending.drafts.len());
        let start = buf.len();
        for draft in pending.drafts {
            let (record, len) =
                draft.seal(next.next_seq, jiff::Timestamp::now(), &next.last_hash, buf);
            places.push((next.len, len as u32));
            next.len += len as u64;
            next.next_seq += 1;
            next.last_hash.clone_from(&record.hash);
            records.push(record);
        }
        let lines = if pending.keep_lines {
            buf[start..].to_vec()
        } else {
            Vec::new()
        };
        batch.push((pending.reply, records, places, lines));
    }
    let written = match Faults::take(&shared.faults.writes) {
        Some(injected) => Err(injected),
        None => {
            let mut out: &File = file;
            out.write_all(buf)
        }
    };
    match written {
        Ok(()) => {
            let written = Written {
                batch,
                tail: next.clone(),
            };
            if sync_tx.send(ToSyncer::Written(written)).is_err() {
                return tail;
            }
            next
        }
        Err(error) => {
            let source = Arc::new(error);
            shared.healthy.store(false, Ordering::Relaxed);
            warn!(path = %shared.path.display(), error = %source, "audit write failed; undoing the partial batch");
            // Undo whatever part of the batch reached the file, so the chain stays whole.
            if let Err(undo) = file.set_len(tail.len) {
                warn!(path = %shared.path.display(), error = %undo, "cannot undo a failed audit write; refusing appends until the journal is repaired");
                *pipeline.poison.lock().expect("poison lock") = Some(source.clone());
            }
            for (reply, ..) in batch {
                let _ = reply.send(Err(AuditError::Write {
                    path: shared.path.clone(),
                    source: source.clone(),
                }));
            }
            tail
        }
    }
}

/// Repairs a poisoned journal: waits until the syncer has answered everything written before,
/// cuts the file back to the last durable record, syncs it and lifts the poison. Returns the
/// chain's end to continue from, or `None` (still poisoned) when the disk refuses.
fn recover(
    file: &File,
    sync_tx: &std::sync::mpsc::Sender<ToSyncer>,
    shared: &Shared,
    pipeline: &Pipeline,
) -> Option<Tail> {
    let (done, wait) = std::sync::mpsc::channel();
    if sync_tx.send(ToSyncer::Barrier(done)).is_ok() {
        let _ = wait.recv();
    }
    let durable = pipeline.durable.lock().expect("durable tail lock").clone();
    let repaired = file
        .set_len(durable.len)
        .and_then(|()| Faults::take(&shared.faults.syncs).map_or_else(|| file.sync_all(), Err));
    match repaired {
        Ok(()) => {
            *pipeline.poison.lock().expect("poison lock") = None;
            warn!(path = %shared.path.display(), seq = durable.next_seq - 1, bytes = durable.len, "audit journal repaired: cut back to its last durable record; appends resume");
            Some(durable)
        }
        Err(e) => {
            debug!(path = %shared.path.display(), error = %e, "audit journal still cannot be repaired");
            None
        }
    }
}

/// Writes and syncs a small file beside the journal, then removes it: can the disk take
/// writes again?
fn test_disk(journal: &Path) -> io::Result<()> {
    let mut name = journal.file_name().unwrap_or_default().to_owned();
    name.push(".probe");
    let path = journal.with_file_name(name);
    let result = (|| {
        let mut f = File::create(&path)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The syncer thread: one `sync_data` for every batch written so far, then the answers, in
/// order. A failed sync poisons the journal: what reached the disk is unknown, so nothing may
/// be chained onto it until [`recover`] cuts it back.
fn sync_loop(
    file: &File,
    rx: &std::sync::mpsc::Receiver<ToSyncer>,
    shared: &Shared,
    pipeline: &Pipeline,
) {
    let mut ready: Vec<Written> = Vec::new();
    let mut barriers: Vec<std::sync::mpsc::Sender<()>> = Vec::new();
    let mut last_count = 0;
    let take = |message: ToSyncer, ready: &mut Vec<Written>, barriers: &mut Vec<_>| match message {
        ToSyncer::Written(w) => ready.push(w),
        ToSyncer::Barrier(b) => barriers.push(b),
    };
    while let Ok(first) = rx.recv() {
        take(first, &mut ready, &mut barriers);
        for message in rx.try_iter() {
            take(message, &mut ready, &mut barriers);
        }
        // Under load (the last sync served several appends) wait a moment for as many as last
        // time, so one sync serves them all; a lone append is synced at once.
        if last_count > 1 && barriers.is_empty() {
            let until = std::time::Instant::now() + LINGER;
            let count = |ready: &[Written]| ready.iter().map(|w| w.batch.len()).sum::<usize>();
            while count(&ready) < last_count
                && let Some(left) = until.checked_duration_since(std::time::Instant::now())
            {
                match rx.recv_timeout(left) {
                    Ok(message) => take(message, &mut ready, &mut barriers),
                    Err(_) => break,
                }
            }
        }
        if !ready.is_empty() {
            last_count = ready.iter().map(|w| w.batch.len()).sum();
            sync_ready(file, &mut ready, shared, pipeline);
        }
        for barrier in barriers.drain(..) {
            let _ = barrier.send(());
        }
    }
}

/// Syncs the written batches and answers their appends.
fn sync_ready(file: &File, ready: &mut Vec<Written>, shared: &Shared, pipeline: &Pipeline) {
    let poisoned_by = pipeline.poison.lock().expect("poison lock").clone();
    let result = match poisoned_by {
        Some(source) => Err(source),
        None => Faults::take(&shared.faults.syncs)
            .map_or_else(|| file.sync_data(), Err)
            .map_err(Arc::new),
    };
    match result {
        Ok(()) => {
            {
                let mut index = shared.index.lock().expect("audit index lock poisoned");
                for written in ready.iter() {
                    for (_, records, places, _) in &written.batch {
                        for (record, (offset, len)) in records.iter().zip(places) {
                            index.add(record, *offset, *len);
                        }
                    }
                }
            }
            let tail = ready
                .last()
                .map(|w| w.tail.clone())
                .expect("ready is not empty");
            shared.committed.store(tail.len, Ordering::Release);
            shared.healthy.store(true, Ordering::Relaxed);
            let count: usize = ready.iter().map(|w| w.batch.len()).sum();
            debug!(appends = count, bytes = tail.len, "audit batch durable");
            *pipeline.durable.lock().expect("durable tail lock") = tail;
            for written in ready.drain(..) {
                for (reply, records, _, lines) in written.batch {
                    let _ = reply.send(Ok((records, lines)));
                }
            }
        }
        Err(source) => {
            shared.healthy.store(false, Ordering::Relaxed);
            warn!(path = %shared.path.display(), error = %source, "audit sync failed; refusing appends until the journal is repaired");
            pipeline
                .poison
                .lock()
                .expect("poison lock")
                .get_or_insert_with(|| source.clone());
            for written in ready.drain(..) {
                for (reply, ..) in written.batch {
                    let _ = reply.send(Err(poisoned(shared, &source)));
                }
            }
        }
    }
}

fn poisoned(shared: &Shared, source: &Arc<io::Error>) -> AuditError {
    AuditError::Poisoned {
        path: shared.path.clone(),
        source: source.clone(),
    }
}
