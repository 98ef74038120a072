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
use std::sync::atomic::{AtomicU64, Ordering};
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
    #[error("audit journal {path} refuses appends after a write or sync that failed for good")]
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

/// One run as the journal knows it, for listings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run_id: String,
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
                self.runs.entry(record.run_id.clone()).or_insert(RunEntry {
                    summary: RunSummary {
                        run_id: record.run_id.clone(),
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
    pub fn unfinished_runs(&self) -> Vec<RunSummary> {
        self.runs()
            .into_iter()
            .filter(|r| r.status.is_none())
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

/// Set once a write or sync failed in a way that cannot be undone; every later append fails.
type Poison = Arc<Mutex<Option<Arc<io::Error>>>>;

/// One append of a written batch: its waiter, sealed records, their places in the file and
/// (if asked for) their lines.
type WrittenAppend = (Reply, Vec<Record>, Vec<LinePlace>, Vec<u8>);

/// A batch written to the file (not yet synced), waiting for the syncer.
struct Written {
    batch: Vec<WrittenAppend>,
    /// File length after this batch.
    end: u64,
}

/// The writer thread: take every waiting append, seal them into the chain, write them with one
/// `write`, hand them to the syncer. While the syncer's `sync_data` runs, the next batch is
/// already being sealed and written: a two-stage pipeline. Runs until every sender is gone.
fn writer_loop(
    file: File,
    mut tail: Tail,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    shared: Arc<Shared>,
) {
    let file = Arc::new(file);
    let poison: Poison = Arc::default();
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<Written>();
    let syncer = {
        let (file, shared, poison) = (file.clone(), shared.clone(), poison.clone());
        std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || sync_loop(&file, &sync_rx, &shared, &poison))
            .expect("cannot spawn the audit sync thread")
    };
    let mut batch: Vec<Pending> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        if let Some(source) = poison.lock().expect("poison lock").clone() {
            for pending in batch.drain(..) {
                let _ = pending.reply.send(Err(poisoned(&shared, &source)));
            }
            continue;
        }

        buf.clear();
        let mut next = tail.clone();
        let mut written = Written {
            batch: Vec::with_capacity(batch.len()),
            end: 0,
        };
        for pending in batch.drain(..) {
            let mut records = Vec::with_capacity(pending.drafts.len());
            let mut places = Vec::with_capacity(pending.drafts.len());
            let start = buf.len();
            for draft in pending.drafts {
                let (record, len) = draft.seal(
                    next.next_seq,
                    jiff::Timestamp::now(),
                    &next.last_hash,
                    &mut buf,
                );
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
            written.batch.push((pending.reply, records, places, lines));
        }
        written.end = next.len;

        match (&*file).write_all(&buf) {
            Ok(()) => {
                tail = next;
                if sync_tx.send(written).is_err() {
                    break;
                }
            }
            Err(error) => {
                let source = Arc::new(error);
                warn!(path = %shared.path.display(), error = %source, "audit write failed; undoing the partial batch");
                // Undo whatever part of the batch reached the file, so the chain stays whole.
                if let Err(undo) = file.set_len(tail.len) {
                    warn!(path = %shared.path.display(), error = %undo, "cannot undo a failed audit write; refusing further appends");
                    *poison.lock().expect("poison lock") = Some(source.clone());
                }
                for (reply, ..) in written.batch {
                    let _ = reply.send(Err(AuditError::Write {
                        path: shared.path.clone(),
                        source: source.clone(),
                    }));
                }
            }
        }
    }
    drop(sync_tx);
    let _ = syncer.join();
}

/// The syncer thread: one `sync_data` for every batch written so far, then the answers, in
/// order. A failed sync poisons the journal: what reached the disk is unknown, so nothing may
/// be chained onto it.
fn sync_loop(
    file: &File,
    rx: &std::sync::mpsc::Receiver<Written>,
    shared: &Shared,
    poison: &Poison,
) {
    let mut ready: Vec<Written> = Vec::new();
    let mut last_count = 0;
    while let Ok(first) = rx.recv() {
        ready.push(first);
        ready.extend(rx.try_iter());
        // Under load (the last sync served several appends) wait a moment for as many as last
        // time, so one sync serves them all; a lone append is synced at once.
        if last_count > 1 {
            let until = std::time::Instant::now() + LINGER;
            let count = |ready: &[Written]| ready.iter().map(|w| w.batch.len()).sum::<usize>();
            while count(&ready) < last_count
                && let Some(left) = until.checked_duration_since(std::time::Instant::now())
            {
                match rx.recv_timeout(left) {
                    Ok(written) => ready.push(written),
                    Err(_) => break,
                }
            }
        }
        last_count = ready.iter().map(|w| w.batch.len()).sum();
        let poisoned_by = poison.lock().expect("poison lock").clone();
        let result = match poisoned_by {
            Some(source) => Err(source),
            None => file.sync_data().map_err(Arc::new),
        };
        match result {
            Ok(()) => {
                {
                    let mut index = shared.index.lock().expect("audit index lock poisoned");
                    for written in &ready {
                        for (_, records, places, _) in &written.batch {
                            for (record, (offset, len)) in records.iter().zip(places) {
                                index.add(record, *offset, *len);
                            }
                        }
                    }
                }
                let end = ready.last().map_or(0, |w| w.end);
                shared.committed.store(end, Ordering::Release);
                let count: usize = ready.iter().map(|w| w.batch.len()).sum();
                debug!(appends = count, bytes = end, "audit batch durable");
                for written in ready.drain(..) {
                    for (reply, records, _, lines) in written.batch {
                        let _ = reply.send(Ok((records, lines)));
                    }
                }
            }
            Err(source) => {
                warn!(path = %shared.path.display(), error = %source, "audit sync failed; refusing further appends");
                poison
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
}

fn poisoned(shared: &Shared, source: &Arc<io::Error>) -> AuditError {
    AuditError::Poisoned {
        path: shared.path.clone(),
        source: source.clone(),
    }
}
