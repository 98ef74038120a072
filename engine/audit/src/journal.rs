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
//!
//! Segments: the journal is the active file (`audit.jsonl`) plus sealed segments named by
//! their first seq (`audit.000000000001.jsonl`), oldest first; the chain runs across them.
//! The writer seals the active file once it holds [`JournalOptions::segment_bytes`]; a thread
//! of its own then writes the *carried index* (`audit.index.json`): every run not finished yet
//! or with records in the segment just sealed, with where its records are. [`Journal::open`] reads
//! that index and the active file, which is all it needs to resume and to tell a redelivery
//! from new work; the rest of the history is indexed on a background thread.
//!
//! Tamper evidence: with a [`SigningKey`], the writer signs checkpoints (see
//! [`crate::checkpoint`]); the newest durable one is also the head file, written by the
//! carried index's thread. `open` checks the tail against the head file and recomputes the
//! chain from the last checkpoint; a tail that does not verify is refused, or with
//! [`JournalOptions::relink_broken`] set aside and journaled (`relinked`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::checkpoint::{CHECKPOINT_EVERY, SigningKey, write_atomic};
use crate::handoff::{ConsumerEnd, Handoff};
use crate::record::{GENESIS_HASH, Record, RecordBody, RecordDraft, RunMeta, RunStatus, redact};
use crate::verify::{Checker, Problem, read_head};

/// Most appends sealed into one write + fsync.
const MAX_BATCH: usize = 8192;

/// How long the writer, under load, waits for more appends to share its write and the next
/// sync. Longer than the bus log's wait: no HTTP answer waits on the journal, only run starts
/// and steps, and an fsync costs this VM about as much CPU as a whole alert. Records are timed
/// when their append was asked for, before the wait.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Records a live follower may fall behind before it loses the oldest.
pub const WATCH_BACKLOG: usize = 4096;

/// A second home for every record, e.g. a NATS JetStream stream. Called after the records are
/// durable in the journal, in journal order; an error fails the appends.
pub trait AuditMirror: Send + Sync {
    /// Sends records (of one or more appends), in journal order. `lines` holds them exactly as
    /// the journal file does (one newline-terminated line each), so a mirror can store the very
    /// bytes `audit verify` checks. Resolves once they are sent (what is published next lands
    /// after them) to a [`MirrorStored`] that resolves once the mirror stored them; the journal
    /// sends the next records meanwhile. On failure: the `seq` of the first record not taken,
    /// and why. Bound both waits inside: the appends wait for them.
    fn publish<'a>(
        &'a self,
        records: &'a [Record],
        lines: bytes::Bytes,
    ) -> BoxFuture<'a, Result<MirrorStored, (u64, String)>>;
}

/// Resolves once the mirror stored what [`AuditMirror::publish`] sent; an error as there.
pub type MirrorStored = BoxFuture<'static, Result<(), (u64, String)>>;

/// Sends to the mirror that may wait for their storing at once, before the next waits.
const MIRROR_IN_FLIGHT: usize = 64;

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
    #[error("audit signing key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "audit journal {path} line {line} does not verify: {problem}. Nothing is appended to a chain that does not verify: inspect it with `firebreak audit verify`; to go on, start with --audit-relink (the broken file is set aside whole and the break journaled)"
    )]
    Tampered {
        path: PathBuf,
        line: u64,
        problem: String,
    },
}

/// What an entry of the journal is: a run, or a notice that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// run id → where its records are, plus a summary per run: every open run and the newest
/// `keep_closed` closed ones (finished runs and notices). Older ones are forgotten, oldest
/// first, and looked up on disk when asked for ([`JournalReader::run`]).
struct Index {
    /// Shared with the carried index being written (a sealing copies pointers, not runs,
    /// while it holds the index); a run changed meanwhile is copied on its first change.
    runs: foldhash::HashMap<String, Arc<RunEntry>>,
    /// Run ids in order of first appearance; may still hold forgotten ones (skipped, and
    /// swept out once they are half of it).
    order: IdList,
    /// Trigger event id → ids of the runs it started, under a lock of its own (see
    /// [`EventRuns`]).
    by_event: EventRuns,
    /// Runs (kind `Run`) without a `RunFinished` record yet.
    open: foldhash::HashSet<String>,
    /// Runs with records in the newest segment indexed, each once: with `open`, what the
    /// carried index holds when that segment is sealed, found without a pass over every run.
    in_last_segment: IdList,
    /// Runs that change no more (finished runs, notices), oldest first: the next to forget.
    closed: VecDeque<String>,
    /// Closed runs kept.
    keep_closed: usize,
    /// Runs forgotten so far.
    forgotten: u64,
}

impl Default for Index {
    fn default() -> Index {
        Index::keeping(usize::MAX)
    }
}

/// (segment number, byte offset, length including the newline) of one record line. Segment
/// numbers index [`Shared::segments`]: sealed segments oldest first, the active one last.
type LinePlace = (u32, u64, u32);

#[derive(Clone, Serialize, Deserialize)]
struct RunEntry {
    summary: RunSummary,
    lines: Vec<LinePlace>,
    /// Indexed from a late record, without the run's start: a run that began in history not
    /// indexed yet (or forgotten). Never resumed; merged with its start when that is indexed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    partial: bool,
}

/// Trigger event id → ids of the runs it started. Changed only with the index locked, but
/// read without it: the dispatcher asks for each delivery whether its event started a run
/// before ([`JournalReader::runs_for_event`]), on the async worker, and the syncer holds the
/// index while it indexes a durable batch (a few hundred records under load). Waiting there,
/// `serve`'s one worker held every webhook: 1,500 times in 6 s under `wrk -c16`.
#[derive(Default)]
struct EventRuns(Arc<Mutex<foldhash::HashMap<String, Vec<String>>>>);

impl EventRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, foldhash::HashMap<String, Vec<String>>> {
        // Plain data: a panic while it was held leaves nothing half done that matters.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Another handle on the same map.
    fn share(&self) -> EventRuns {
        EventRuns(self.0.clone())
    }

    fn add(&self, event: &str, run_id: &str) {
        self.lock()
            .entry(event.to_owned())
            .or_default()
            .push(run_id.to_owned());
    }

    /// The run ids `event` started, oldest first.
    fn get(&self, event: &str) -> Vec<String> {
        self.lock().get(event).cloned().unwrap_or_default()
    }
}

impl Index {
    /// An empty index that keeps `keep_closed` closed runs.
    fn keeping(keep_closed: usize) -> Index {
        Index {
            runs: foldhash::HashMap::default(),
            order: IdList::default(),
            by_event: EventRuns::default(),
            open: foldhash::HashSet::default(),
            in_last_segment: IdList::default(),
            closed: VecDeque::new(),
            keep_closed,
            forgotten: 0,
        }
    }

    fn add(&mut self, record: &Record, place: LinePlace) {
        self.add_line(&Indexed::of(record), place);
    }

    fn add_line(&mut self, record: &Indexed<'_>, place: LinePlace) {
        if matches!(record.body, Kind::Checkpoint { .. } | Kind::Relinked) {
            return;
        }
        let entry = match self.runs.get_mut(record.run_id) {
            Some(entry) => Arc::make_mut(entry),
            None => {
                let kind = match record.body {
                    Kind::Refused => EntryKind::Refused,
                    Kind::Skipped => EntryKind::Skipped,
                    Kind::Parked => EntryKind::Parked,
                    _ => EntryKind::Run,
                };
                let partial = kind == EntryKind::Run
                    && !matches!(record.body, Kind::RunStarted | Kind::RunTakenOver);
                // A late record of a run this index forgot: the run is looked up on disk.
                if partial && self.forgotten > 0 {
                    return;
                }
                self.order.push(record.run_id.to_owned());
                // Late records are few (only before anything is forgotten) and wait for
                // their start: not counted among the runs to forget.
                if kind != EntryKind::Run {
                    self.closed.push_back(record.run_id.to_owned());
                }
                let entry = self
                    .runs
                    .entry(record.run_id.to_owned())
                    .or_insert_with(|| {
                        Arc::new(RunEntry {
                            summary: RunSummary {
                                run_id: record.run_id.to_owned(),
                                kind,
                                runbook: record.runbook.to_owned(),
                                team: record.team.to_owned(),
                                actor: record.actor.to_owned(),
                                event_id: record.event_id.to_owned(),
                                started: record.time,
                                finished: None,
                                status: None,
                                records: 0,
                            },
                            lines: Vec::new(),
                            partial,
                        })
                    });
                Arc::make_mut(entry)
            }
        };
        if entry.summary.kind == EntryKind::Run && entry.summary.status.is_none() && !entry.partial
        {
            self.open.insert(record.run_id.to_owned());
        }
        if entry
            .lines
            .last()
            .is_none_or(|(segment, ..)| *segment < place.0)
        {
            self.in_last_segment.push(record.run_id.to_owned());
        }
        entry.lines.push(place);
        entry.summary.records += 1;
        if record.body == Kind::RunStarted {
            self.by_event.add(record.event_id, record.run_id);
        }
        if let Kind::RunFinished(status) = record.body {
            entry.summary.finished = Some(record.time);
            entry.summary.status = Some(status);
            if entry.summary.kind == EntryKind::Run && !entry.partial {
                self.open.remove(record.run_id);
                self.closed.push_back(record.run_id.to_owned());
                self.shed();
            }
        } else if entry.summary.kind != EntryKind::Run && entry.summary.records == 1 {
            self.shed();
        }
    }

    /// Forgets the oldest closed runs past `keep_closed`.
    fn shed(&mut self) {
        while self.closed.len() > self.keep_closed {
            let Some(id) = self.closed.pop_front() else {
                break;
            };
            if self.open.contains(&id) {
                continue;
            }
            let Some(entry) = self.runs.remove(&id) else {
                continue;
            };
            let event = &entry.summary.event_id;
            let mut by_event = self.by_event.lock();
            if let Some(ids) = by_event.get_mut(event) {
                ids.retain(|r| *r != id);
                if ids.is_empty() {
                    by_event.remove(event);
                }
            }
            drop(by_event);
            self.forgotten += 1;
        }
        let runs = &self.runs;
        self.order.tidy(runs.len(), |id| runs.contains_key(id));
        // Only an index that seals segments empties this; one indexing history never does.
        self.in_last_segment
            .tidy(runs.len(), |id| runs.contains_key(id));
    }

    /// The runs a carried index holds when segment `sealed` is sealed: the open ones and
    /// those with records in it (the carried index's thread puts them oldest first). Starts
    /// the next segment's list.
    fn carried_runs(&mut self, sealed: u32) -> Vec<Arc<RunEntry>> {
        let in_sealed = |e: &RunEntry| e.lines.iter().any(|l| l.0 == sealed);
        // Each run once: those with records in the sealed segment (all of them are in
        // `in_last_segment`, only records of the active segment being indexed between two
        // sealings), then the open runs without any there.
        let ids = self.in_last_segment.take();
        let mut runs = Vec::with_capacity(ids.len() + self.open.len());
        runs.extend(
            ids.iter()
                .filter_map(|id| self.runs.get(id))
                .filter(|e| in_sealed(e))
                .cloned(),
        );
        runs.extend(
            self.open
                .iter()
                .map(|id| &self.runs[id])
                .filter(|e| !in_sealed(e))
                .cloned(),
        );
        // Sorted by the carried index's thread, without the index held.
        runs
    }

    /// Adds a run known whole (from the carried index).
    fn insert(&mut self, entry: Arc<RunEntry>) {
        let id = entry.summary.run_id.clone();
        if entry.summary.kind == EntryKind::Run {
            self.by_event.add(&entry.summary.event_id, &id);
        }
        if entry.summary.kind == EntryKind::Run && entry.summary.status.is_none() && !entry.partial
        {
            self.open.insert(id.clone());
        } else if !entry.partial {
            self.closed.push_back(id.clone());
        }
        self.order.push(id.clone());
        self.runs.insert(id, entry);
        self.shed();
    }

    /// Puts `older` (runs indexed from older segments) before this index's runs. Runs this
    /// index already knows stay as they are.
    fn prepend(&mut self, older: Index) {
        let Index {
            mut runs,
            mut order,
            by_event,
            open,
            in_last_segment: _,
            closed,
            keep_closed: _,
            forgotten,
        } = older;
        for id in open {
            if !self.runs.contains_key(&id) {
                self.open.insert(id);
            }
        }
        let mut merged_order = Vec::with_capacity(order.len() + self.order.len());
        let mut added = HashSet::new();
        // Runs whose late records were indexed first, now whole and finished.
        let mut joined = Vec::new();
        for id in order.take() {
            let Some(older_entry) = runs.remove(&id) else {
                continue;
            };
            match self.runs.get_mut(&id) {
                None => {
                    merged_order.push(id.clone());
                    added.insert(id.clone());
                    self.runs.insert(id, older_entry);
                }
                // Late records indexed before the run's start: one entry, from its start.
                Some(late) if late.partial => {
                    let late = Arc::make_mut(late);
                    let mut entry = Arc::unwrap_or_clone(older_entry);
                    entry.lines.append(&mut late.lines);
                    entry.summary.records += late.summary.records;
                    if late.summary.status.is_some() {
                        entry.summary.status = late.summary.status;
                        entry.summary.finished = late.summary.finished;
                    }
                    if entry.summary.status.is_none() {
                        self.open.insert(id);
                    } else {
                        joined.push(id);
                    }
                    *late = entry;
                }
                Some(_) => {}
            }
        }
        // Late records of runs the older history forgot: looked up on disk like those.
        if forgotten > 0 {
            self.runs.retain(|_, e| !e.partial);
        }
        // The older closed runs are the first to forget.
        let mut merged_closed: VecDeque<String> = joined.into();
        merged_closed.extend(closed.into_iter().filter(|id| added.contains(id)));
        merged_closed.append(&mut self.closed);
        self.closed = merged_closed;
        self.forgotten += forgotten;
        let older_by_event = std::mem::take(&mut *by_event.lock());
        let mut newer_by_event = self.by_event.lock();
        for (event, ids) in older_by_event {
            let known = newer_by_event.entry(event).or_default();
            let mut ids: Vec<String> = ids.into_iter().filter(|id| !known.contains(id)).collect();
            ids.append(known);
            *known = ids;
        }
        drop(newer_by_event);
        merged_order.append(&mut self.order.take());
        merged_order.retain(|id| self.runs.contains_key(id));
        // Runs carried across a sealing began before the history around them.
        merged_order.sort_by_key(|id| self.runs[id].summary.started);
        self.order = IdList::from(merged_order);
        self.shed();
    }
}

/// Ids, oldest first, from which those no longer wanted are swept out a few at a time: once
/// more than half of the list is unwanted, each [`IdList::tidy`] looks at [`SWEEP_STEP`] ids.
/// The index is held while the journal answers each commit, and filtering a list of 21,000
/// ids at once held it (and so every commit's answer) 2–3 ms: at 1,000 alerts/s the runs
/// starting then were 3–6 ms late, every ~11,000 runs.
#[derive(Default)]
struct IdList {
    ids: Vec<String>,
    /// While a sweep is under way, `(read, write)`: the ids before `read` have been looked
    /// at, and the wanted ones among them moved, in order, to `ids[..write]`.
    sweep: Option<(usize, usize)>,
}

/// Ids an [`IdList::tidy`] looks at: a sweep of a list of `n` ids, to which one id is added
/// per call, ends after `n / 7` calls, the list grown by a seventh at most.
const SWEEP_STEP: usize = 8;

impl IdList {
    fn push(&mut self, id: String) {
        self.ids.push(id);
    }

    /// Every id, in order, unwanted ones among them (callers skip those).
    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.ids.iter()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// The ids, leaving the list empty.
    fn take(&mut self) -> Vec<String> {
        self.sweep = None;
        std::mem::take(&mut self.ids)
    }

    /// Goes on with the sweep, or starts one when the list holds more than twice `wanted`
    /// ids (plus some slack, so a small list is not swept over and over).
    fn tidy(&mut self, wanted: usize, keep: impl Fn(&str) -> bool) {
        let (mut read, mut write) = match self.sweep {
            Some(at) => at,
            None if self.ids.len() > 2 * wanted + 1024 => (0, 0),
            None => return,
        };
        let end = (read + SWEEP_STEP).min(self.ids.len());
        while read < end {
            if keep(&self.ids[read]) {
                self.ids.swap(read, write);
                write += 1;
            } else {
                // Freed now, a few at a time, not all at the truncation.
                self.ids[read] = String::new();
            }
            read += 1;
        }
        if read == self.ids.len() {
            self.ids.truncate(write);
            self.sweep = None;
        } else {
            self.sweep = Some((read, write));
        }
    }
}

impl From<Vec<String>> for IdList {
    fn from(ids: Vec<String>) -> IdList {
        IdList { ids, sweep: None }
    }
}

/// What the index and a scan take from a record.
struct Indexed<'a> {
    seq: u64,
    time: jiff::Timestamp,
    run_id: &'a str,
    runbook: &'a str,
    team: &'a str,
    actor: &'a str,
    event_id: &'a str,
    body: Kind,
    hash: &'a str,
}

/// The kinds of record body the index tells apart.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    RunStarted,
    RunTakenOver,
    RunFinished(RunStatus),
    /// A refusal before any step: a notice of its own.
    Refused,
    Skipped,
    Parked,
    Checkpoint {
        last: bool,
    },
    Relinked,
    Other,
}

impl<'a> Indexed<'a> {
    fn of(record: &'a Record) -> Indexed<'a> {
        let body = match &record.body {
            RecordBody::RunStarted { .. } => Kind::RunStarted,
            RecordBody::RunTakenOver { .. } => Kind::RunTakenOver,
            RecordBody::RunFinished { status, .. } => Kind::RunFinished(*status),
            RecordBody::Refusal { step: None, .. } => Kind::Refused,
            RecordBody::Skipped { .. } => Kind::Skipped,
            RecordBody::Parked { .. } => Kind::Parked,
            RecordBody::Checkpoint { last, .. } => Kind::Checkpoint { last: *last },
            RecordBody::Relinked { .. } => Kind::Relinked,
            _ => Kind::Other,
        };
        Indexed {
            seq: record.seq,
            time: record.time,
            run_id: &record.run_id,
            runbook: &record.runbook,
            team: &record.team,
            actor: &record.actor,
            event_id: &record.event_id,
            body,
            hash: &record.hash,
        }
    }
}

/// A record line read for the index only: strings borrowed from the line, the body's other
/// fields skipped. Indexing history this way allocates a few bytes per line instead of the
/// whole record.
#[derive(Deserialize)]
struct Line<'a> {
    seq: u64,
    time: jiff::Timestamp,
    #[serde(borrow)]
    run_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    runbook: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    team: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    actor: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    body: LineBody<'a>,
    #[serde(borrow)]
    hash: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct LineBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    /// A run's or a step's status (only a run's is read).
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    step: Option<serde::de::IgnoredAny>,
    /// A checkpoint's, written only when true.
    #[serde(default)]
    last: bool,
}

impl Line<'_> {
    fn indexed(&self) -> Result<Indexed<'_>, String> {
        let body = match &*self.body.kind {
            "run_started" => Kind::RunStarted,
            "run_taken_over" => Kind::RunTakenOver,
            "run_finished" => Kind::RunFinished(
                self.body
                    .status
                    .as_ref()
                    .ok_or("run_finished without a status")
                    .and_then(|s| RunStatus::deserialize(s).map_err(|_| "an unknown run status"))?,
            ),
            "refusal" if self.body.step.is_none() => Kind::Refused,
            "skipped" => Kind::Skipped,
            "parked" => Kind::Parked,
            "checkpoint" => Kind::Checkpoint {
                last: self.body.last,
            },
            "relinked" => Kind::Relinked,
            _ => Kind::Other,
        };
        Ok(Indexed {
            seq: self.seq,
            time: self.time,
            run_id: &self.run_id,
            runbook: &self.runbook,
            team: &self.team,
            actor: &self.actor,
            event_id: &self.event_id,
            body,
            hash: &self.hash,
        })
    }
}

/// How a scan reads each line: whole (what the writer resumes from must be a record), or only
/// what the index needs (history).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Parse {
    Whole,
    ForIndex,
}

/// The carried index: written when a segment is sealed, read by [`Journal::open`].
#[derive(Serialize, Deserialize)]
struct Carried {
    /// First seq of each sealed segment, oldest first, when this was written; segment
    /// numbers in `runs` index this list (the active segment is the one after it).
    sealed: Vec<u64>,
    #[serde(with = "shared_entries")]
    runs: Vec<Arc<RunEntry>>,
}

/// The carried index's runs, shared with the index while they are written (see
/// [`Index::runs`]), as a plain list of runs on disk.
mod shared_entries {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::RunEntry;

    pub(super) fn serialize<S: Serializer>(
        runs: &[Arc<RunEntry>],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(runs.iter().map(|run| &**run))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Arc<RunEntry>>, D::Error> {
        Ok(Vec::<RunEntry>::deserialize(deserializer)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

/// Where the chain ends.
#[derive(Debug, Clone)]
struct Tail {
    next_seq: u64,
    last_hash: String,
    /// Bytes in the active segment.
    len: u64,
    /// The active segment's number and first seq.
    segment: u32,
    first_seq: u64,
    /// Records since the last checkpoint.
    since_checkpoint: u64,
    /// The time of the last record sealed by this writer (`MIN` before the first): a record
    /// is never timed before the one it follows.
    last_time: jiff::Timestamp,
}

/// What reading one segment found.
struct Scan {
    /// The chain's end after this segment (`len`: bytes of complete lines).
    next_seq: u64,
    last_hash: String,
    len: u64,
    /// Byte offset and 1-based line number of a trailing incomplete line.
    torn: Option<(u64, u64)>,
    /// 1-based line number and parse error of the last complete line, when it does not parse.
    bad_last_line: Option<(u64, String)>,
    /// Byte offset, line number and seq of the last checkpoint line (where the chain must be
    /// recomputed from at open), and whether it was written at a stop.
    last_checkpoint: Option<(u64, u64, u64, bool)>,
    /// Records after the last checkpoint (or in the whole segment, without one).
    since_checkpoint: u64,
    /// Hashes of the checkpoint records by seq (to find the head file's).
    checkpoints: HashMap<u64, String>,
}

/// Reads one segment, adding its runs to `index` as segment `segment`. `keep`: which runs to
/// index (all of them when `None`).
fn scan(
    path: &Path,
    file: &File,
    segment: u32,
    index: &mut Index,
    keep: Option<&dyn Fn(&str) -> bool>,
    parse: Parse,
) -> Result<Scan, AuditError> {
    let read_err = |source| AuditError::Read {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut out = Scan {
        next_seq: 0,
        last_hash: String::new(),
        len: 0,
        torn: None,
        bad_last_line: None,
        last_checkpoint: None,
        since_checkpoint: 0,
        checkpoints: HashMap::new(),
    };
    let mut offset = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    (&*file).seek(SeekFrom::Start(0)).map_err(read_err)?;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            out.torn = Some((offset, line_no));
            break;
        }
        let mut whole: Option<Record> = None;
        let mut line: Option<Line> = None;
        let parsed = match parse {
            Parse::Whole => match serde_json::from_slice::<Record>(&buf) {
                Ok(record) => Ok(Indexed::of(whole.insert(record))),
                Err(e) => Err(e.to_string()),
            },
            Parse::ForIndex => match serde_json::from_slice::<Line>(&buf) {
                Ok(parsed) => line.insert(parsed).indexed(),
                Err(e) => Err(e.to_string()),
            },
        };
        match parsed {
            Ok(record) => {
                if keep.is_none_or(|keep| keep(record.run_id)) {
                    index.add_line(&record, (segment, offset, n as u32));
                }
                if let Kind::Checkpoint { last } = record.body {
                    out.last_checkpoint = Some((offset, line_no, record.seq, last));
                    out.checkpoints.insert(record.seq, record.hash.to_owned());
                    out.since_checkpoint = 0;
                } else {
                    out.since_checkpoint += 1;
                }
                out.next_seq = record.seq + 1;
                out.last_hash.clear();
                out.last_hash.push_str(record.hash);
                out.bad_last_line = None;
            }
            Err(e) => {
                warn!(path = %path.display(), line = line_no, error = %e, "unparsable audit record");
                out.bad_last_line = Some((line_no, e));
                out.since_checkpoint += 1;
            }
        }
        offset += n as u64;
    }
    out.len = offset;
    Ok(out)
}

/// Indexes every sealed segment of `files`, oldest first.
fn scan_sealed(files: &[SegmentFile], index: &mut Index) -> Result<(), AuditError> {
    for (i, segment) in files.iter().enumerate() {
        let path = &segment.path;
        scan(path, &segment.file, i as u32, index, None, Parse::ForIndex)?;
    }
    Ok(())
}

/// The seq and hash of the last complete record of `file` (reads backwards from the end).
fn last_record(path: &Path, file: &File) -> Result<Option<(u64, String)>, AuditError> {
    #[derive(Deserialize)]
    struct Place {
        seq: u64,
        hash: String,
    }
    let read_err = |source| AuditError::Read {
        path: path.to_owned(),
        source,
    };
    let len = file.metadata().map_err(read_err)?.len();
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; (len - start) as usize];
        file.read_exact_at(&mut buf, start).map_err(read_err)?;
        // Complete lines only: drop a torn end.
        let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let body = &buf[..end];
        let line_start = body[..body.len().saturating_sub(1)]
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| i + 1);
        match line_start {
            Some(i) if end > 0 => {
                return Ok(serde_json::from_slice::<Place>(&body[i..])
                    .ok()
                    .map(|p| (p.seq, p.hash)));
            }
            _ if start == 0 => {
                return Ok(serde_json::from_slice::<Place>(body)
                    .ok()
                    .map(|p| (p.seq, p.hash)));
            }
            _ => window *= 4,
        }
    }
}

/// Where the files of a journal live, named after its active file `DIR/STEM.EXT`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    active: PathBuf,
    dir: PathBuf,
    stem: String,
    ext: String,
}

impl Layout {
    pub(crate) fn new(active: &Path) -> Layout {
        let dir = match active.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = active
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stem, ext) = match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
            _ => (name, String::new()),
        };
        Layout {
            active: active.to_owned(),
            dir,
            stem,
            ext,
        }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.stem))
    }

    /// `STEM.<first seq, 12 digits>.EXT`.
    pub(crate) fn sealed_path(&self, first_seq: u64) -> PathBuf {
        self.sibling(&format!("{first_seq:012}{}", self.ext))
    }

    /// The sealed segments, oldest first: (first seq, path).
    pub(crate) fn sealed(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let prefix = format!("{}.", self.stem);
        let mut out = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let Some(middle) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(self.ext.as_str()))
            else {
                continue;
            };
            if middle.len() == 12
                && middle.bytes().all(|b| b.is_ascii_digit())
                && let Ok(seq) = middle.parse()
            {
                out.push((seq, self.dir.join(name.as_ref())));
            }
        }
        out.sort();
        Ok(out)
    }

    pub(crate) fn head(&self) -> PathBuf {
        self.sibling("head")
    }

    pub(crate) fn public_key(&self) -> PathBuf {
        self.sibling("pub")
    }

    fn lock(&self) -> PathBuf {
        self.sibling("lock")
    }

    fn carried(&self) -> PathBuf {
        self.sibling("index.json")
    }

    fn set_aside(&self) -> PathBuf {
        let millis = jiff::Timestamp::now().as_millisecond();
        self.sibling(&format!("broken-{millis}{}", self.ext))
    }
}

/// One segment file as readers see it.
struct SegmentFile {
    path: PathBuf,
    /// Its first seq (the active one's: where it began, even while empty).
    first_seq: u64,
    file: Arc<File>,
}

/// The segments readers can read: sealed ones oldest first, the active one last.
struct Segments {
    files: Vec<SegmentFile>,
    /// Bytes of the active segment that hold complete, synced records.
    committed: u64,
}

/// State shared by the writer thread and readers.
struct Shared {
    layout: Layout,
    /// The active file.
    path: PathBuf,
    segments: RwLock<Segments>,
    index: Mutex<Index>,
    /// The index's map of events to the runs they started, read without the index's lock.
    by_event: EventRuns,
    /// Whether the last write or sync succeeded (see [`Journal::healthy`]).
    healthy: AtomicBool,
    /// Failures to inject, for tests and drills (see [`Journal::inject_failures`]).
    faults: Faults,
    /// Every durable record, for whoever follows the journal live (see [`Journal::subscribe`]).
    watch: tokio::sync::broadcast::Sender<Arc<Record>>,
    /// With a mirror: where the syncer hands durable appends, in journal order, for
    /// [`mirror_loop`] to publish before they are answered.
    mirror: Mutex<Option<mpsc::UnboundedSender<Vec<DurableAppend>>>>,
}

impl Shared {
    /// A reader of each segment's committed bytes (all of a sealed one, the synced records of
    /// the active one), oldest first.
    fn committed(&self) -> Result<Vec<(PathBuf, io::Take<ReadAt>)>, AuditError> {
        self.committed_from(0)
    }

    /// [`Self::committed`] without the sealed segments that end before `seq`.
    fn committed_from(&self, seq: u64) -> Result<Vec<(PathBuf, io::Take<ReadAt>)>, AuditError> {
        let mut out = Vec::new();
        for (path, file, limit) in self.snapshot_from(seq) {
            let len = match limit {
                Some(limit) => limit,
                None => match file.metadata() {
                    Ok(meta) => meta.len(),
                    Err(source) => return Err(AuditError::Read { path, source }),
                },
            };
            out.push((path, ReadAt { file, at: 0 }.take(len)));
        }
        Ok(out)
    }

    /// Every segment's read handle with the bytes to read of it (the active one: committed
    /// bytes only), oldest first, from the segment that holds `seq` on (0: all of them).
    fn snapshot_from(&self, seq: u64) -> Vec<(PathBuf, Arc<File>, Option<u64>)> {
        let segments = self.segments.read().expect("segments lock poisoned");
        let last = segments.files.len() - 1;
        segments
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                segments
                    .files
                    .get(i + 1)
                    .is_none_or(|next| next.first_seq > seq)
            })
            .map(|(i, s)| {
                let limit = (i == last).then_some(segments.committed);
                (s.path.clone(), s.file.clone(), limit)
            })
            .collect()
    }
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

/// Read access to a journal: listings, one run's records, the whole history.
#[derive(Clone)]
pub struct JournalReader {
    shared: Arc<Shared>,
}

impl JournalReader {
    /// Opens a journal for reading only (e.g. `firebreak audit show` while a server writes
    /// it): indexes every segment. The index is a snapshot as of opening; a torn tail is
    /// ignored, not truncated.
    pub fn open(path: impl AsRef<Path>) -> Result<JournalReader, AuditError> {
        let path = path.as_ref().to_owned();
        let layout = Layout::new(&path);
        let open_err = |source| AuditError::Open {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(open_err)?;
        let mut files = open_sealed(&layout, &path)?;
        // The active segment's first seq: a read from a seq skips the segments before it.
        let (first_seq, _) = chain_start(&files)?;
        let mut index = Index::default();
        scan_sealed(&files, &mut index)?;
        let active = scan(
            &path,
            &file,
            files.len() as u32,
            &mut index,
            None,
            Parse::ForIndex,
        )?;
        files.push(SegmentFile {
            path: path.clone(),
            first_seq,
            file: Arc::new(file),
        });
        Ok(JournalReader {
            shared: Arc::new(Shared {
                layout,
                path,
                segments: RwLock::new(Segments {
                    files,
                    committed: active.len,
                }),
                by_event: index.by_event.share(),
                index: Mutex::new(index),
                healthy: AtomicBool::new(true),
                faults: Faults::default(),
                watch: tokio::sync::broadcast::channel(1).0,
                mirror: Mutex::new(None),
            }),
        })
    }

    /// The journal's (active file's) path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Every record of one run, in journal order (empty for an unknown run). A run the index
    /// no longer holds is looked up on disk (see [`JournalReader::run`]).
    pub fn records_for_run(&self, run_id: &str) -> Result<Vec<Record>, AuditError> {
        match self.entry(run_id)? {
            Some(entry) => self.read_lines(entry.lines),
            None => Ok(Vec::new()),
        }
    }

    /// One run's summary and records, with one lookup (see [`JournalReader::run`]).
    pub fn run_with_records(
        &self,
        run_id: &str,
    ) -> Result<Option<(RunSummary, Vec<Record>)>, AuditError> {
        match self.entry(run_id)? {
            Some(entry) => Ok(Some((entry.summary, self.read_lines(entry.lines)?))),
            None => Ok(None),
        }
    }

    /// A run's entry: from the index, else (once the index has forgotten runs) from disk.
    fn entry(&self, run_id: &str) -> Result<Option<RunEntry>, AuditError> {
        {
            let index = self.shared.index.lock().expect("audit index lock poisoned");
            if let Some(entry) = index.runs.get(run_id) {
                return Ok(Some(RunEntry::clone(entry)));
            }
            if index.forgotten == 0 {
                return Ok(None);
            }
        }
        self.find_on_disk(run_id)
    }

    fn read_lines(&self, lines: Vec<LinePlace>) -> Result<Vec<Record>, AuditError> {
        let files: Vec<(PathBuf, Arc<File>)> = {
            let segments = self.shared.segments.read().expect("segments lock poisoned");
            segments
                .files
                .iter()
                .map(|s| (s.path.clone(), s.file.clone()))
                .collect()
        };
        let mut records = Vec::with_capacity(lines.len());
        let mut buf = Vec::new();
        for (segment, offset, len) in lines {
            let (path, file) = &files[segment as usize];
            buf.resize(len as usize, 0);
            file.read_exact_at(&mut buf, offset)
                .map_err(|source| AuditError::Read {
                    path: path.clone(),
                    source,
                })?;
            let record = serde_json::from_slice(&buf).map_err(|e| AuditError::Corrupt {
                path: path.clone(),
                line: 0,
                reason: format!("record at byte {offset} no longer parses: {e}"),
            })?;
            records.push(record);
        }
        Ok(records)
    }

    /// The runs the index holds, in order of first appearance: every unfinished run and the
    /// newest [`JournalOptions::finished_runs_kept`] others (a reader opened with
    /// [`JournalReader::open`] holds them all).
    pub fn runs(&self) -> Vec<RunSummary> {
        let index = self.shared.index.lock().expect("audit index lock poisoned");
        index
            .order
            .iter()
            .filter_map(|id| index.runs.get(id))
            .map(|e| e.summary.clone())
            .collect()
    }

    /// One run's summary; a run the index no longer holds is looked up on disk (a read of
    /// the whole history, skipping lines without its id).
    pub fn run(&self, run_id: &str) -> Result<Option<RunSummary>, AuditError> {
        Ok(self.entry(run_id)?.map(|e| e.summary))
    }

    /// Indexes the one run `run_id` from every committed line that mentions it.
    fn find_on_disk(&self, run_id: &str) -> Result<Option<RunEntry>, AuditError> {
        let needle = format!(
            "\"run_id\":{}",
            serde_json::to_string(run_id).expect("a string serializes")
        );
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let mut found = Index::default();
        for (segment, (path, committed)) in self.shared.committed()?.into_iter().enumerate() {
            let read_err = |source| AuditError::Read {
                path: path.clone(),
                source,
            };
            let mut reader = BufReader::with_capacity(1 << 20, committed);
            let mut buf = Vec::new();
            let mut offset = 0u64;
            loop {
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                if finder.find(&buf).is_some()
                    && let Ok(record) = serde_json::from_slice::<Record>(&buf)
                    && record.run_id == run_id
                {
                    found.add(&record, (segment as u32, offset, n as u32));
                }
                offset += n as u64;
            }
        }
        Ok(found.runs.remove(run_id).map(Arc::unwrap_or_clone))
    }

    /// The runs the event `event_id` started (by their `run_started` records), oldest first.
    /// Most events started none: those are answered without the index's lock.
    pub fn runs_for_event(&self, event_id: &str) -> Vec<RunSummary> {
        let run_ids = self.shared.by_event.get(event_id);
        if run_ids.is_empty() {
            return Vec::new();
        }
        let index = self.shared.index.lock().expect("audit index lock poisoned");
        run_ids
            .iter()
            .filter_map(|run_id| index.runs.get(run_id).map(|e| e.summary.clone()))
            .collect()
    }

    /// Runs with a `RunStarted` but no `RunFinished`: what a restarted engine resumes.
    /// Notices (refusals, skipped events, parked messages) are never among them.
    pub fn unfinished_runs(&self) -> Vec<RunSummary> {
        let index = self.shared.index.lock().expect("audit index lock poisoned");
        index
            .order
            .iter()
            .filter(|id| index.open.contains(*id))
            .filter_map(|id| index.runs.get(id))
            .map(|e| e.summary.clone())
            .collect()
    }

    /// Every committed record of every segment, in order. Unparsable lines come out as
    /// `Err(Corrupt)`.
    pub fn iter_all(&self) -> Result<RecordIter, AuditError> {
        Ok(RecordIter {
            files: self.shared.committed()?.into(),
            reader: None,
            line: 0,
            buf: Vec::new(),
        })
    }

    /// Committed records from the segment that holds `seq` on (records before `seq` in that
    /// segment included: skip them by their seq), without reading the sealed segments before.
    pub fn iter_from(&self, seq: u64) -> Result<RecordIter, AuditError> {
        Ok(RecordIter {
            files: self.shared.committed_from(seq)?.into(),
            reader: None,
            line: 0,
            buf: Vec::new(),
        })
    }

    /// Writes every committed record of every segment as JSONL, byte for byte as journaled,
    /// so the export verifies like the journal itself.
    pub fn export(&self, mut writer: impl Write) -> Result<u64, AuditError> {
        let mut total = 0;
        for (path, mut segment) in self.shared.committed()? {
            total += io::copy(&mut segment, &mut writer)
                .map_err(|source| AuditError::Read { path, source })?;
        }
        Ok(total)
    }
}

/// Reads a shared file from a position of its own (the writer appends to the same file).
struct ReadAt {
    file: Arc<File>,
    at: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Iterator over a journal's records, from [`JournalReader::iter_all`].
pub struct RecordIter {
    files: VecDeque<(PathBuf, io::Take<ReadAt>)>,
    reader: Option<(PathBuf, BufReader<io::Take<ReadAt>>)>,
    line: u64,
    buf: Vec<u8>,
}

impl RecordIter {
    /// The next record with its line as journaled (the newline included): the bytes its hash
    /// covers, as a mirror publishes them.
    pub fn next_with_line(&mut self) -> Option<Result<(Record, Vec<u8>), AuditError>> {
        self.advance()
            .map(|record| record.map(|record| (record, self.buf.clone())))
    }

    /// Reads and parses the next line, leaving it in `buf`.
    fn advance(&mut self) -> Option<Result<Record, AuditError>> {
        loop {
            if self.reader.is_none() {
                let (path, file) = self.files.pop_front()?;
                self.reader = Some((path, BufReader::with_capacity(1 << 16, file)));
                self.line = 0;
            }
            let (path, reader) = self.reader.as_mut().expect("set above");
            self.buf.clear();
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => self.reader = None,
                Ok(_) => {
                    self.line += 1;
                    return Some(serde_json::from_slice(&self.buf).map_err(|e| {
                        AuditError::Corrupt {
                            path: path.clone(),
                            line: self.line,
                            reason: e.to_string(),
                        }
                    }));
                }
                Err(source) => {
                    return Some(Err(AuditError::Read {
                        path: path.clone(),
                        source,
                    }));
                }
            }
        }
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.advance()
    }
}

/// Opens the sealed segments of `layout` for reading.
fn open_sealed(layout: &Layout, path: &Path) -> Result<Vec<SegmentFile>, AuditError> {
    let open_err = |source| AuditError::Open {
        path: path.to_owned(),
        source,
    };
    layout
        .sealed()
        .map_err(open_err)?
        .into_iter()
        .map(|(first_seq, path)| {
            let file = File::open(&path).map_err(|source| AuditError::Open {
                path: path.clone(),
                source,
            })?;
            Ok(SegmentFile {
                path,
                first_seq,
                file: Arc::new(file),
            })
        })
        .collect()
}

/// Where a caller waits for its sealed records.
/// The sealed records and, if asked for, their journal lines.
type Reply = oneshot::Sender<Result<Vec<Record>, AuditError>>;

/// One append made durable: its waiter, its records and (with a mirror) their lines.
type DurableAppend = (Reply, Vec<Record>, Vec<u8>);

/// What a caller asks of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Append,
    /// Repair if poisoned and test the disk.
    Probe,
    /// Sign a checkpoint if records came since the last one (always when `last`).
    Checkpoint {
        last: bool,
    },
}

/// One caller's records waiting for the writer.
struct Pending {
    request: Request,
    /// When the caller asked: what its records are timed (the writer may linger before it
    /// seals them).
    at: jiff::Timestamp,
    drafts: Vec<RecordDraft>,
    /// Hand the journal lines back with the records (for the mirror).
    keep_lines: bool,
    reply: Reply,
}

/// How often a journal that cannot write retries on its own (see [`Journal::probe`]).
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How a journal is opened for writing. `Default`: no signing, 16 MiB segments.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Signs checkpoints; `None`: no checkpoints (a journal with a head file refuses to open
    /// without its key).
    pub signing_key: Option<Arc<SigningKey>>,
    /// Records between checkpoints, at most.
    pub checkpoint_every: u64,
    /// The active segment is sealed once it holds this many bytes.
    pub segment_bytes: u64,
    /// A tail that does not verify at open: set the file aside and go on from the last
    /// record that verifies (journaled as `relinked`), instead of refusing to open.
    pub relink_broken: bool,
    /// How many finished runs (and notices), the newest, keep their summaries and record
    /// places in memory beside every unfinished run; older ones are looked up on disk when
    /// asked for (see [`JournalReader::run`]) and no longer listed by [`JournalReader::runs`].
    pub finished_runs_kept: usize,
}

/// [`JournalOptions::finished_runs_kept`] by default: about 13 MB of index.
pub const FINISHED_RUNS_KEPT: usize = 10_000;

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            signing_key: None,
            checkpoint_every: CHECKPOINT_EVERY,
            segment_bytes: 16 << 20,
            relink_broken: false,
            finished_runs_kept: FINISHED_RUNS_KEPT,
        }
    }
}

/// The append-only audit journal. Share it as `Arc<Journal>`.
pub struct Journal {
    reader: JournalReader,
    /// Appends, probes and checkpoint requests, for the writer thread.
    queue: Arc<Handoff<Pending>>,
    writer: Option<JoinHandle<()>>,
    /// Whether a mirror takes the records (their lines are kept for it).
    mirrored: bool,
    /// Records `open` wrote itself (the opening checkpoint, a relink notice) and their lines,
    /// for a mirror to publish before anything else.
    opening: Option<(Vec<Record>, Vec<u8>)>,
    /// The seq of the first record this opening wrote or writes: before it, the journal as
    /// earlier engines left it.
    opened_at: u64,
    /// Held for the journal's life: one writer per journal.
    _lock: File,
}

/// A break found at open: where, what, and the last record before it that verified.
struct Break {
    line: u64,
    problem: Problem,
    /// Bytes of the active file up to the last good record.
    good_len: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path` without signing; see [`Journal::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<Journal, AuditError> {
        Journal::open_with(path, JournalOptions::default())
    }

    /// Opens (or creates) the journal at `path` for appending. Takes the journal's lock file,
    /// indexes the runs to resume (carried index + active file; older history on a
    /// background thread), recomputes the chain from the last checkpoint and checks the head
    /// file, truncates a torn last line of a crash (with a warning), signs an opening
    /// checkpoint, and starts the writer thread.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: JournalOptions,
    ) -> Result<Journal, AuditError> {
        let path = path.as_ref().to_owned();
        let layout = Layout::new(&path);
        let open_err = |source| AuditError::Open {
            path: path.clone(),
            source,
        };
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(layout.lock())
            .map_err(open_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(AuditError::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => return Err(open_err(source)),
        }
        let key = options
            .signing_key
            .as_ref()
            .map(|k| k.public_hex().to_owned());
        let head = read_head(&layout.head(), key.as_deref());
        if options.signing_key.is_none() && matches!(head, Ok(Some(_)) | Err(_)) {
            return Err(AuditError::Key {
                path: layout.head(),
                reason: "this journal is signed (it has a head file); open it with its signing key"
                    .into(),
            });
        }
        let keep = options.finished_runs_kept;
        let mut opened = load(&layout, &path, keep)?;
        let mut relinked = None;
        if let Some(found) = check_tail(&layout, &opened, key.clone(), head)? {
            if !options.relink_broken {
                return Err(AuditError::Tampered {
                    path,
                    line: found.line,
                    problem: found.problem.to_string(),
                });
            }
            let set_aside = layout.set_aside();
            warn!(path = %path.display(), line = found.line, problem = %found.problem, set_aside = %set_aside.display(), "audit journal tail does not verify; setting it aside and going on from the last good record");
            relink(&path, &set_aside, found.good_len).map_err(open_err)?;
            relinked = Some(RecordBody::Relinked {
                set_aside: set_aside.display().to_string(),
                problem: format!("line {}: {}", found.line, found.problem),
            });
            opened = load(&layout, &path, keep)?;
        } else if let Some((offset, line)) = opened.scan.torn {
            warn!(
                path = %path.display(),
                line,
                offset,
                "audit journal ends in a torn record (crash mid-write); truncating it"
            );
            opened
                .file
                .set_len(offset)
                .and_then(|()| opened.file.sync_all())
                .map_err(|source| AuditError::Write {
                    path: path.clone(),
                    source: Arc::new(source),
                })?;
        }
        let Opened {
            file,
            files,
            index,
            scan,
            history,
            chain_start,
        } = opened;
        let segment = (files.len() - 1) as u32;
        let mut tail = Tail {
            next_seq: if scan.next_seq == 0 {
                chain_start.0
            } else {
                scan.next_seq
            },
            last_hash: if scan.next_seq == 0 {
                chain_start.1.clone()
            } else {
                scan.last_hash.clone()
            },
            len: scan.len,
            last_time: jiff::Timestamp::MIN,
            segment,
            first_seq: chain_start.0,
            since_checkpoint: scan.since_checkpoint,
        };
        // The opening checkpoint (and the relink notice): before any other append, so a
        // record after a stop's checkpoint is always this engine's.
        let mut opening = None;
        let opened_at = tail.next_seq;
        if let Some(signer) = &options.signing_key {
            let mut buf = Vec::new();
            let mut records = vec![seal_checkpoint(signer, false, &mut tail, &mut buf)];
            let checkpoint_line = buf.clone();
            if let Some(body) = relinked.take() {
                records.push(seal_notice(body, &mut tail, &mut buf));
            }
            let write_err = |source| AuditError::Write {
                path: path.clone(),
                source: Arc::new(source),
            };
            (&file).write_all(&buf).map_err(write_err)?;
            file.sync_data().map_err(write_err)?;
            write_atomic(&layout.head(), &checkpoint_line).map_err(write_err)?;
            opening = Some((records, buf));
        }
        let segments = files;
        let shared = Arc::new(Shared {
            layout,
            path: path.clone(),
            segments: RwLock::new(Segments {
                files: segments,
                committed: tail.len,
            }),
            by_event: index.by_event.share(),
            index: Mutex::new(index),
            healthy: AtomicBool::new(true),
            faults: Faults::default(),
            watch: tokio::sync::broadcast::channel(WATCH_BACKLOG).0,
            mirror: Mutex::new(None),
        });
        if let Some(history) = history {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("audit-history".into())
                .spawn(move || load_history(&shared, history))
                .map_err(open_err)?;
        }
        let queue = Arc::new(Handoff::new());
        let writer_shared = shared.clone();
        let writer_queue = queue.clone();
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(file, tail, &writer_queue, writer_shared, options))
            .map_err(open_err)?;
        metrics::gauge!("firebreak_journal_healthy").set(1.0);
        Ok(Journal {
            reader: JournalReader { shared },
            queue,
            writer: Some(writer),
            mirrored: false,
            opening,
            opened_at,
            _lock: lock,
        })
    }

    /// Also publishes every appended record to `mirror`, in journal order, before the append
    /// is answered; a mirror failure fails the append. A record is published (and followers
    /// get it) even when its caller stopped waiting. Call within a Tokio runtime: the
    /// publishing runs on a task of its own.
    pub fn with_mirror(mut self, mirror: Arc<dyn AuditMirror>) -> Journal {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(mirror_loop(
            mirror,
            rx,
            self.reader.shared.clone(),
            self.opening.take(),
        ));
        *self.reader.shared.mirror.lock().expect("mirror lock") = Some(tx);
        self.mirrored = true;
        self
    }

    /// The seq of the first record this engine's opening of the journal wrote (or writes):
    /// every record before it was there when it opened.
    pub fn opened_at(&self) -> u64 {
        self.opened_at
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
        let mut records = self.send(Request::Append, drafts).await?;
        // A checkpoint the writer added to this append was mirrored with it; it is not the
        // caller's.
        records.retain(|r| !matches!(r.body, RecordBody::Checkpoint { .. }));
        Ok(records)
    }

    /// Waits until every append made before this call is durable and mirrored (also those
    /// whose callers stopped waiting), so whoever reads the mirror next sees all of them.
    pub async fn settled(&self) -> Result<(), AuditError> {
        self.send(Request::Append, Vec::new()).await.map(drop)
    }

    /// Signs a checkpoint now if records were appended since the last one; `last`: the
    /// engine is stopping (always signed; nothing but a new engine's records may follow).
    /// The engine calls this every few seconds and as it stops. Returns the checkpoint, if
    /// one was written (none without a signing key).
    pub async fn checkpoint(&self, last: bool) -> Result<Option<Record>, AuditError> {
        let records = self.send(Request::Checkpoint { last }, Vec::new()).await?;
        Ok(records.into_iter().next())
    }

    async fn send(
        &self,
        request: Request,
        drafts: Vec<RecordDraft>,
    ) -> Result<Vec<Record>, AuditError> {
        let (reply, answer) = oneshot::channel();
        // An append counts towards what a lingering writer waits for; a checkpoint request
        // ends its wait.
        let urgent = request != Request::Append;
        let pending = Pending {
            request,
            at: jiff::Timestamp::now(),
            drafts,
            keep_lines: self.mirrored,
            reply,
        };
        self.queue
            .push(pending, 1, urgent)
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Follows the journal live: every record appended from now on, once durable (and
    /// mirrored), in journal order. A
    /// follower more than [`WATCH_BACKLOG`] records behind loses the oldest (it is told, as
    /// `RecvError::Lagged`); the journal itself never waits for followers.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Record>> {
        self.reader.shared.watch.subscribe()
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
        let probe = Pending {
            request: Request::Probe,
            at: jiff::Timestamp::now(),
            drafts: Vec::new(),
            keep_lines: false,
            reply,
        };
        let sent = self.queue.push(probe, 0, true).is_ok();
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
        self.queue.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        // The mirror task publishes what it holds, then ends.
        self.reader
            .shared
            .mirror
            .lock()
            .expect("mirror lock")
            .take();
    }
}

/// What [`load`] found: the active file, the segments, the index and the chain's shape.
struct Opened {
    /// The active file, for appending.
    file: File,
    /// Sealed segments, then the active one.
    files: Vec<SegmentFile>,
    index: Index,
    /// The active file's scan.
    scan: Scan,
    /// Sealed segments left for the background thread, when the carried index stood in
    /// for them.
    history: Option<History>,
    /// The active segment's first seq and the hash before it.
    chain_start: (u64, String),
}

/// Sealed segments to index in the background, and the runs the carried index already has.
struct History {
    segments: Vec<(u32, PathBuf, Arc<File>)>,
    carried: HashSet<String>,
    /// [`JournalOptions::finished_runs_kept`].
    keep: usize,
}

/// Where the active segment's chain begins: the seq after the last sealed segment's last
/// record, and that record's hash (the genesis for a journal that never sealed one).
fn chain_start(sealed: &[SegmentFile]) -> Result<(u64, String), AuditError> {
    let Some(last) = sealed.last() else {
        return Ok((1, GENESIS_HASH.to_owned()));
    };
    match last_record(&last.path, &last.file)? {
        Some((seq, hash)) => Ok((seq + 1, hash)),
        None => Err(AuditError::Corrupt {
            path: last.path.clone(),
            line: 0,
            reason: "the sealed segment's last record does not parse".into(),
        }),
    }
}

/// Opens the active file and the sealed segments and builds the index: from the carried
/// index when it matches the sealed segments (the rest in the background), else from every
/// segment.
fn load(layout: &Layout, path: &Path, keep: usize) -> Result<Opened, AuditError> {
    let open_err = |source| AuditError::Open {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(open_err)?;
    let mut files = open_sealed(layout, path)?;
    let chain_start = chain_start(&files)?;
    let mut index = Index::keeping(keep);
    let first_seqs: Vec<u64> = files.iter().map(|s| s.first_seq).collect();
    let carried = std::fs::read(layout.carried())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Carried>(&bytes).ok())
        .filter(|c| !files.is_empty() && c.sealed == first_seqs);
    let history = match carried {
        Some(carried) => {
            let mut ids = HashSet::new();
            for entry in carried.runs {
                ids.insert(entry.summary.run_id.clone());
                index.insert(entry);
            }
            Some(History {
                segments: files
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i as u32, s.path.clone(), s.file.clone()))
                    .collect(),
                carried: ids,
                keep,
            })
        }
        None => {
            scan_sealed(&files, &mut index)?;
            None
        }
    };
    let scan = scan(
        path,
        &file,
        files.len() as u32,
        &mut index,
        None,
        Parse::Whole,
    )?;
    files.push(SegmentFile {
        path: path.to_owned(),
        first_seq: chain_start.0,
        file: Arc::new(File::open(path).map_err(open_err)?),
    });
    Ok(Opened {
        file,
        files,
        index,
        scan,
        history,
        chain_start,
    })
}

/// Indexes the sealed segments the carried index stood in for, then puts them before the
/// runs the engine already knows.
fn load_history(shared: &Shared, history: History) {
    let started = std::time::Instant::now();
    let mut older = Index::keeping(history.keep);
    let keep = |run_id: &str| !history.carried.contains(run_id);
    for (segment, path, file) in &history.segments {
        if let Err(e) = scan(
            path,
            file,
            *segment,
            &mut older,
            Some(&keep),
            Parse::ForIndex,
        ) {
            warn!(path = %path.display(), error = %e, "cannot index an audit segment; its runs are not listed");
        }
    }
    let runs = older.runs.len();
    shared
        .index
        .lock()
        .expect("audit index lock poisoned")
        .prepend(older);
    debug!(runs, segments = history.segments.len(), elapsed = ?started.elapsed(), "audit history indexed");
}

/// Recomputes the chain of the active file from its last checkpoint (from its start without
/// one) and holds the head file against it. Returns the first break.
fn check_tail(
    layout: &Layout,
    opened: &Opened,
    key: Option<String>,
    head: Result<Option<Record>, Problem>,
) -> Result<Option<Break>, AuditError> {
    let scan = &opened.scan;
    let path = &layout.active;
    let read_err = |source| AuditError::Read {
        path: path.clone(),
        source,
    };
    let head = match head {
        Ok(head) => head,
        Err(problem) => {
            return Ok(Some(Break {
                line: 0,
                problem,
                good_len: scan.len,
            }));
        }
    };
    let (start, first_line) = scan.last_checkpoint.map_or((0, 1), |(o, l, ..)| (o, l));
    let mut reader = BufReader::new(ReadAt {
        file: opened
            .files
            .last()
            .expect("the active segment")
            .file
            .clone(),
        at: start,
    })
    .take(scan.len - start);
    let mut checker: Option<Checker> = scan.last_checkpoint.is_none().then(|| {
        Checker::new(
            opened.chain_start.0,
            opened.chain_start.1.clone(),
            key.clone(),
        )
    });
    let mut buf = Vec::new();
    let mut offset = start;
    let mut line = first_line;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        let checker = match &mut checker {
            Some(checker) => checker,
            None => {
                // Start at the checkpoint itself: its signature vouches for seq and hash.
                let first: Record =
                    serde_json::from_slice(&buf).map_err(|e| AuditError::Corrupt {
                        path: path.clone(),
                        line,
                        reason: e.to_string(),
                    })?;
                checker.insert(Checker::new(first.seq, first.prev_hash, key.clone()))
            }
        };
        if let Err((_, problem)) = checker.check(&buf) {
            return Ok(Some(Break {
                line,
                problem,
                good_len: offset,
            }));
        }
        offset += n as u64;
        line += 1;
    }
    let last_seq = checker.map_or(opened.chain_start.0 - 1, |c| c.expected_seq - 1);
    let Some(head) = head else {
        return Ok(None);
    };
    let end_line = scan.torn.map_or(line, |(_, torn)| torn);
    if head.seq > last_seq {
        return Ok(Some(Break {
            line: end_line,
            problem: Problem::TailMissing {
                anchor: "the head file".into(),
                head_seq: head.seq,
                last_seq,
            },
            good_len: scan.len,
        }));
    }
    let stored = match scan.checkpoints.get(&head.seq) {
        Some(hash) => Some(hash.clone()),
        None if head.seq < opened.chain_start.0 && head.seq + 1 == opened.chain_start.0 => {
            Some(opened.chain_start.1.clone())
        }
        // A checkpoint further back: `audit verify` checks it.
        None if head.seq < opened.chain_start.0 => None,
        None => Some(String::new()),
    };
    if let Some(stored) = stored
        && stored != head.hash
    {
        return Ok(Some(Break {
            line: end_line,
            problem: Problem::HeadMismatch {
                anchor: "the head file".into(),
                seq: head.seq,
                head_hash: head.hash.clone(),
                hash: stored,
            },
            good_len: scan.len,
        }));
    }
    if let RecordBody::Checkpoint { last: true, .. } = head.body
        && let Some((offset, torn)) = scan.torn
    {
        return Ok(Some(Break {
            line: torn,
            problem: Problem::AfterClose {
                last_checkpoint: head.seq,
            },
            good_len: offset,
        }));
    }
    Ok(None)
}

/// Moves the active file to `set_aside` (kept whole, as evidence) and starts a new active
/// file holding its first `good_len` bytes.
fn relink(path: &Path, set_aside: &Path, good_len: u64) -> io::Result<()> {
    std::fs::rename(path, set_aside)?;
    let mut good = File::open(set_aside)?.take(good_len);
    let mut fresh = OpenOptions::new().write(true).create_new(true).open(path)?;
    io::copy(&mut good, &mut fresh)?;
    fresh.sync_all()?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Who journal-level records (checkpoints, relinks) are by: the engine, no run.
fn engine_meta() -> Arc<RunMeta> {
    static META: OnceLock<Arc<RunMeta>> = OnceLock::new();
    META.get_or_init(|| {
        Arc::new(RunMeta {
            run_id: String::new(),
            runbook: String::new(),
            team: String::new(),
            actor: "firebreak".into(),
            event_id: String::new(),
        })
    })
    .clone()
}

/// Seals a checkpoint over the chain so far into `buf` and moves `tail` past it.
fn seal_checkpoint(signer: &SigningKey, last: bool, tail: &mut Tail, buf: &mut Vec<u8>) -> Record {
    let covers = tail.next_seq - 1;
    let body = RecordBody::Checkpoint {
        covers,
        head: tail.last_hash.clone(),
        key: signer.public_hex().to_owned(),
        signature: signer.sign(covers, &tail.last_hash, last),
        last,
    };
    let record = seal_notice(body, tail, buf);
    tail.since_checkpoint = 0;
    record
}

/// Seals a journal-level record into `buf` and moves `tail` past it.
fn seal_notice(body: RecordBody, tail: &mut Tail, buf: &mut Vec<u8>) -> Record {
    let time = jiff::Timestamp::now().max(tail.last_time);
    tail.last_time = time;
    let (record, len) =
        RecordDraft::new(engine_meta(), body).seal(tail.next_seq, time, &tail.last_hash, buf);
    tail.next_seq += 1;
    tail.len += len as u64;
    tail.last_hash.clone_from(&record.hash);
    tail.since_checkpoint += 1;
    record
}

/// Set once a write or sync failed in a way that cannot be undone; appends fail until
/// [`recover`] cuts the file back to its last durable record.
type Poison = Arc<Mutex<Option<Arc<io::Error>>>>;

/// One append of a written batch: its waiter, sealed records, their places in the file and
/// (if asked for) their lines.
type WrittenAppend = (Reply, Vec<Record>, Vec<LinePlace>, Vec<u8>);

/// A batch written to the file (not yet synced), waiting for the syncer.
struct Written {
    /// The segment it was written to.
    file: Arc<File>,
    batch: Vec<WrittenAppend>,
    /// Where the chain ends after this batch.
    tail: Tail,
    /// The line of a checkpoint in the batch: the head file once the batch is durable.
    head_line: Option<Vec<u8>>,
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
    /// How many appends the last sync served: what the writer lingers for under load.
    last_sync_served: AtomicUsize,
}

/// The writer thread: take every waiting append, seal them into the chain, write them with one
/// `write`, hand them to the syncer. While the syncer's `sync_data` runs, the next batch is
/// already being gathered, sealed and written: a two-stage pipeline. Under load (the last
/// sync served several appends) the writer waits up to [`LINGER`] for as many as it served, so
/// one write and one sync serve them all; a lone append is written at once. (Woken by every
/// append instead, as it was over a channel, the writer took 0.42 context switches per alert
/// under `wrk -c16`: eleven per sync.) Runs until the queue is closed and empty.
///
/// After a failure: a failed write is undone (the file cut back to where the batch began); a
/// failed sync, or an undo that fails, poisons the journal. A poisoned journal is repaired
/// ([`recover`]) before the next batch, at most once per [`PROBE_EVERY`], or on a probe.
fn writer_loop(
    file: File,
    mut tail: Tail,
    queue: &Handoff<Pending>,
    shared: Arc<Shared>,
    options: JournalOptions,
) {
    let _end = ConsumerEnd(queue);
    let mut file = Arc::new(file);
    let pipeline = Arc::new(Pipeline {
        poison: Arc::default(),
        durable: Mutex::new(tail.clone()),
        last_sync_served: AtomicUsize::new(0),
    });
    let (side_tx, side_rx) = std::sync::mpsc::channel::<SideFile>();
    let side_writer = {
        let layout = shared.layout.clone();
        std::thread::Builder::new()
            .name("audit-index".into())
            .spawn(move || side_file_loop(&side_rx, &layout))
            .expect("cannot spawn the audit index thread")
    };
    let sync_tx = Arc::new(Handoff::<ToSyncer>::new());
    let syncer = {
        let (sync_rx, shared, pipeline) = (sync_tx.clone(), shared.clone(), pipeline.clone());
        let side_tx = side_tx.clone();
        std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || sync_loop(&sync_rx, &shared, &pipeline, &side_tx))
            .expect("cannot spawn the audit sync thread")
    };
    let mut taken: Vec<Pending> = Vec::new();
    let mut probes: Vec<Reply> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut last_recovery: Option<std::time::Instant> = None;
    let linger = || {
        let served = pipeline.last_sync_served.load(Ordering::Relaxed);
        (served > 1).then_some((served, LINGER))
    };
    while queue.take(&mut taken, linger()) {
        // At most MAX_BATCH appends per write; the rest go in the next.
        while !taken.is_empty() {
            let rest = taken.split_off(taken.len().min(MAX_BATCH));
            let mut batch = std::mem::replace(&mut taken, rest);
            // Probes carry no records: they ask for a repair and a disk test. Checkpoint requests
            // go last, so the checkpoint signs everything in the batch.
            let (mut work, asked): (Vec<Pending>, Vec<Pending>) =
                batch.drain(..).partition(|p| p.request != Request::Probe);
            work.sort_by_key(|p| matches!(p.request, Request::Checkpoint { .. }));
            probes.extend(asked.into_iter().map(|p| p.reply));
            let probing = !probes.is_empty();
            let poisoned_now = pipeline.poison.lock().expect("poison lock").is_some();
            if poisoned_now
                && (probing || last_recovery.is_none_or(|at| at.elapsed() >= PROBE_EVERY))
            {
                last_recovery = Some(std::time::Instant::now());
                if let Some(durable) = recover(&file, &sync_tx, &shared, &pipeline) {
                    tail = durable;
                }
            }
            if let Some(source) = pipeline.poison.lock().expect("poison lock").clone() {
                for pending in work {
                    let _ = pending.reply.send(Err(poisoned(&shared, &source)));
                }
            } else if !work.is_empty() {
                let out = Out {
                    file: &file,
                    sync_tx: &sync_tx,
                    shared: &shared,
                    pipeline: &pipeline,
                };
                tail = write_batch(&out, tail, work, &mut buf, &options);
                if tail.len >= options.segment_bytes {
                    rotate(&mut file, &mut tail, &sync_tx, &side_tx, &shared, &pipeline);
                }
            }
            if probing {
                let poisoned = pipeline.poison.lock().expect("poison lock").is_some();
                let disk = test_disk(&shared.path);
                if let Err(e) = &disk {
                    debug!(path = %shared.path.display(), error = %e, "audit disk test failed");
                }
                if !poisoned && disk.is_ok() {
                    set_healthy(&shared.healthy, true);
                }
                for reply in probes.drain(..) {
                    let _ = reply.send(Ok(Vec::new()));
                }
            }
        }
    }
    sync_tx.close();
    let _ = syncer.join();
    drop(side_tx);
    let _ = side_writer.join();
}

/// A file kept beside the journal, written by [`side_file_loop`].
enum SideFile {
    /// The carried index of a sealing.
    Carried(Carried),
    /// The head file: the line of the newest durable checkpoint.
    Head(Vec<u8>),
}

/// The side files' thread: writes each carried index and head line handed to it, only the
/// newest of each when several wait (each carried index describes every sealed segment as of
/// its sealing; each head line is a newer checkpoint).
///
/// Serializing and syncing the index took the writer ~15 ms per sealing under load, holding
/// every append behind it; here it holds nothing. A crash before the newest is written leaves
/// an index whose `sealed` list no longer matches the segments, which `load` reads as "index
/// every segment": slower to open, never wrong.
///
/// The head file (create, write, fdatasync, rename) took the syncer 1–3 ms after every
/// checkpoint's sync, before it answered the batch's appends and before it could sync the
/// next: at 1,000 alerts/s a checkpoint comes every ~200 runs, so the slowest starts waited
/// for it. It is written after the records it signs are durable, as before; a crash before it
/// is written leaves the previous head, an anchor a few records older, never a false one.
///
/// Nothing waits for this thread, so it runs at the lowest priority ([`yield_to_the_rest`]).
fn side_file_loop(rx: &std::sync::mpsc::Receiver<SideFile>, layout: &Layout) {
    yield_to_the_rest();
    while let Ok(first) = rx.recv() {
        let (mut newest_carried, mut newest_head) = (None, None);
        for side in std::iter::once(first).chain(rx.try_iter()) {
            match side {
                SideFile::Carried(carried) => newest_carried = Some(carried),
                SideFile::Head(line) => newest_head = Some(line),
            }
        }
        if let Some(line) = newest_head
            && let Err(e) = write_atomic(&layout.head(), &line)
        {
            warn!(path = %layout.head().display(), error = %e, "cannot write the audit head file");
        }
        if let Some(carried) = newest_carried {
            write_carried(carried, &layout.carried());
        }
    }
}

/// Lowers the calling thread to the lowest priority (nice 19; on Linux the nice value is the
/// thread's own). For a thread no caller waits on and that holds no lock another thread
/// takes: the side files' thread serializes and writes about 380 bytes of carried index per
/// run of each sealed segment, 2.3 MB every 0.4 s at 15,000 runs/s, in bursts of about 10 ms.
/// At the default priority each burst took one of two cores from the webhooks and the
/// appends; `docs/BENCHMARKS.md` ("The side files at the lowest priority") has the p99 it
/// cost. Where the call fails the thread keeps its priority, which is only slower.
fn yield_to_the_rest() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        debug!(error = %e, "cannot lower the audit index thread's priority");
    }
}

/// Writes one carried index (see [`side_file_loop`]).
fn write_carried(mut carried: Carried, path: &Path) {
    carried.runs.sort_by_key(|e| e.summary.started);
    let written = serde_json::to_vec(&carried)
        .map_err(io::Error::other)
        .and_then(|bytes| write_atomic(path, &bytes));
    match written {
        Ok(()) => {
            debug!(path = %path.display(), sealed = carried.sealed.len(), "carried audit index written")
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot write the carried audit index; the next start indexes every segment");
        }
    }
}

/// Where the writer writes to.
struct Out<'a> {
    file: &'a Arc<File>,
    sync_tx: &'a Handoff<ToSyncer>,
    shared: &'a Shared,
    pipeline: &'a Pipeline,
}

/// Seals and writes one batch (with a checkpoint when one is due or asked for) and hands it
/// to the syncer; returns the chain's new end (the old one if the write failed and was
/// undone).
fn write_batch(
    out: &Out<'_>,
    tail: Tail,
    work: Vec<Pending>,
    buf: &mut Vec<u8>,
    options: &JournalOptions,
) -> Tail {
    let Out {
        file,
        sync_tx,
        shared,
        pipeline,
    } = *out;
    buf.clear();
    let mut next = tail.clone();
    let asked = work.iter().fold(None, |asked, p| match p.request {
        Request::Checkpoint { last } => Some(last || asked == Some(true)),
        _ => asked,
    });
    let mut batch = Vec::with_capacity(work.len());
    let count = work.len();
    let mut head_line = None;
    for (i, pending) in work.into_iter().enumerate() {
        let mut records = Vec::with_capacity(pending.drafts.len() + 1);
        let mut places = Vec::with_capacity(pending.drafts.len() + 1);
        let start = buf.len();
        let time = pending.at.max(next.last_time);
        next.last_time = time;
        for draft in pending.drafts {
            let at = next.len;
            let (record, len) = draft.seal(next.next_seq, time, &next.last_hash, buf);
            places.push((next.segment, at, len as u32));
            next.len += len as u64;
            next.next_seq += 1;
            next.since_checkpoint += 1;
            next.last_hash.clone_from(&record.hash);
            records.push(record);
        }
        // The checkpoint goes with the batch's last caller (and its mirror).
        if i + 1 == count
            && let Some(signer) = &options.signing_key
        {
            let due = next.since_checkpoint >= options.checkpoint_every
                || next.len >= options.segment_bytes
                || asked == Some(true)
                || (asked == Some(false) && next.since_checkpoint > 0);
            if due {
                let (at, line_start) = (next.len, buf.len());
                let record = seal_checkpoint(signer, asked == Some(true), &mut next, buf);
                places.push((next.segment, at, (buf.len() - line_start) as u32));
                head_line = Some(buf[line_start..].to_vec());
                records.push(record);
            }
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
                file: file.clone(),
                batch,
                tail: next.clone(),
                head_line,
            };
            let appends = written.batch.len();
            if sync_tx
                .push(ToSyncer::Written(written), appends, false)
                .is_err()
            {
                return tail;
            }
            next
        }
        Err(error) => {
            let source = Arc::new(error);
            set_healthy(&shared.healthy, false);
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

/// Seals the active segment once everything written to it is durable: renames it after its
/// first seq, starts a new active file and hands a copy of the carried index to its thread
/// ([`carry_loop`]), which writes it without holding appends up. On failure the active
/// file stays as it is (it grows past the limit; sealing is tried after the next batch).
fn rotate(
    file: &mut Arc<File>,
    tail: &mut Tail,
    sync_tx: &Handoff<ToSyncer>,
    side_tx: &std::sync::mpsc::Sender<SideFile>,
    shared: &Shared,
    pipeline: &Pipeline,
) {
    let (done, wait) = std::sync::mpsc::channel();
    if sync_tx.push(ToSyncer::Barrier(done), 0, true).is_ok() {
        let _ = wait.recv();
    }
    if pipeline.poison.lock().expect("poison lock").is_some() {
        return;
    }
    let sealed = shared.layout.sealed_path(tail.first_seq);
    let path = &shared.path;
    let opened = (|| {
        std::fs::rename(path, &sealed)?;
        let fresh = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path)
            .inspect_err(|_| {
                let _ = std::fs::rename(&sealed, path);
            })?;
        let read = File::open(path)?;
        sync_dir(path)?;
        Ok::<_, io::Error>((fresh, read))
    })();
    let (fresh, read) = match opened {
        Ok(files) => files,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot seal the audit segment; the active file grows on");
            return;
        }
    };
    let old = tail.segment;
    tail.segment += 1;
    tail.first_seq = tail.next_seq;
    tail.len = 0;
    *file = Arc::new(fresh);
    *pipeline.durable.lock().expect("durable tail lock") = tail.clone();
    let sealed_seqs = {
        let mut segments = shared.segments.write().expect("segments lock poisoned");
        let active = segments.files.last_mut().expect("the active segment");
        active.path.clone_from(&sealed);
        segments.files.push(SegmentFile {
            path: path.clone(),
            first_seq: tail.first_seq,
            file: Arc::new(read),
        });
        segments.committed = 0;
        segments.files[..segments.files.len() - 1]
            .iter()
            .map(|s| s.first_seq)
            .collect::<Vec<_>>()
    };
    // Only the copy is taken here; the carried-index thread serializes and writes it.
    let runs = shared
        .index
        .lock()
        .expect("audit index lock poisoned")
        .carried_runs(old);
    debug!(sealed = %sealed.display(), "audit segment sealed");
    let _ = side_tx.send(SideFile::Carried(Carried {
        sealed: sealed_seqs,
        runs,
    }));
}

/// Repairs a poisoned journal: waits until the syncer has answered everything written before,
/// cuts the file back to the last durable record, syncs it and lifts the poison. Returns the
/// chain's end to continue from, or `None` (still poisoned) when the disk refuses.
fn recover(
    file: &File,
    sync_tx: &Handoff<ToSyncer>,
    shared: &Shared,
    pipeline: &Pipeline,
) -> Option<Tail> {
    let (done, wait) = std::sync::mpsc::channel();
    if sync_tx.push(ToSyncer::Barrier(done), 0, true).is_ok() {
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
    rx: &Handoff<ToSyncer>,
    shared: &Shared,
    pipeline: &Pipeline,
    side_tx: &std::sync::mpsc::Sender<SideFile>,
) {
    let _end = ConsumerEnd(rx);
    let mut messages: Vec<ToSyncer> = Vec::new();
    let mut ready: Vec<Written> = Vec::new();
    let mut barriers: Vec<std::sync::mpsc::Sender<()>> = Vec::new();
    // The writer has gathered each batch (see `writer_loop`): whatever is written is synced
    // at once.
    while rx.take(&mut messages, None) {
        for message in messages.drain(..) {
            match message {
                ToSyncer::Written(w) => ready.push(w),
                ToSyncer::Barrier(b) => barriers.push(b),
            }
        }
        if !ready.is_empty() {
            sync_ready(&mut ready, shared, pipeline, side_tx);
        }
        for barrier in barriers.drain(..) {
            let _ = barrier.send(());
        }
    }
}

/// Records whether the journal can write, in `firebreak_journal_healthy` too (1 or 0).
fn set_healthy(healthy: &AtomicBool, now: bool) {
    healthy.store(now, Ordering::Relaxed);
    metrics::gauge!("firebreak_journal_healthy").set(if now { 1.0 } else { 0.0 });
}

/// Syncs the written batches and answers their appends. (All of one segment: the writer
/// seals a segment only after a barrier.)
fn sync_ready(
    ready: &mut Vec<Written>,
    shared: &Shared,
    pipeline: &Pipeline,
    side_tx: &std::sync::mpsc::Sender<SideFile>,
) {
    let poisoned_by = pipeline.poison.lock().expect("poison lock").clone();
    let file = ready[0].file.clone();
    let started = std::time::Instant::now();
    let result = match poisoned_by {
        Some(source) => Err(source),
        None => Faults::take(&shared.faults.syncs)
            .map_or_else(|| file.sync_data(), Err)
            .map_err(Arc::new),
    };
    metrics::histogram!("firebreak_journal_fsync_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            {
                let mut index = shared.index.lock().expect("audit index lock poisoned");
                for written in ready.iter() {
                    for (_, records, places, _) in &written.batch {
                        for (record, place) in records.iter().zip(places) {
                            index.add(record, *place);
                        }
                    }
                }
            }
            let tail = ready
                .last()
                .map(|w| w.tail.clone())
                .expect("ready is not empty");
            shared
                .segments
                .write()
                .expect("segments lock poisoned")
                .committed = tail.len;
            set_healthy(&shared.healthy, true);
            if let Some(line) = ready.iter_mut().rev().find_map(|w| w.head_line.take()) {
                let _ = side_tx.send(SideFile::Head(line));
            }
            let count: usize = ready.iter().map(|w| w.batch.len()).sum();
            pipeline.last_sync_served.store(count, Ordering::Relaxed);
            debug!(appends = count, bytes = tail.len, "audit batch durable");
            *pipeline.durable.lock().expect("durable tail lock") = tail;
            let durable = ready
                .drain(..)
                .flat_map(|w| w.batch)
                .map(|(reply, records, _, lines)| (reply, records, lines))
                .collect();
            deliver(shared, durable);
        }
        Err(source) => {
            set_healthy(&shared.healthy, false);
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

/// Durable appends, in journal order: to the mirror when there is one (it answers them once
/// published), else to their followers and callers now.
fn deliver(shared: &Shared, durable: Vec<DurableAppend>) {
    let mirror = shared.mirror.lock().expect("mirror lock").clone();
    let Some(mirror) = mirror else {
        for (reply, records, _) in durable {
            follow(shared, &records);
            let _ = reply.send(Ok(records));
        }
        return;
    };
    if let Err(mpsc::error::SendError(durable)) = mirror.send(durable) {
        // The runtime that ran the mirror is gone: nothing can publish them.
        for (reply, records, _) in durable {
            let seq = records.first().map_or(0, |r| r.seq);
            let _ = reply.send(Err(AuditError::Mirror {
                seq,
                message: "the audit mirror stopped".into(),
            }));
        }
    }
}

/// Hands `records` to the journal's followers.
fn follow(shared: &Shared, records: &[Record]) {
    if shared.watch.receiver_count() > 0 {
        for record in records {
            let _ = shared.watch.send(Arc::new(record.clone()));
        }
    }
}

/// Appends the mirror sent and now stores, with their callers.
struct Sent {
    answers: Vec<Reply>,
    /// How many of `records` each answer gets, in order.
    counts: Vec<usize>,
    records: Vec<Record>,
}

/// Sends durable appends to the mirror in journal order, one group at a time (whatever arrived
/// while the last send ran goes in one), without waiting for the last group to be stored
/// before sending the next (up to [`MIRROR_IN_FLIGHT`]); as each group is stored, in order,
/// answers its appends and hands their records to followers. `opening` goes out with the first
/// group. Runs until the journal is dropped, whether or not the appends' callers still wait.
async fn mirror_loop(
    mirror: Arc<dyn AuditMirror>,
    mut rx: mpsc::UnboundedReceiver<Vec<DurableAppend>>,
    shared: Arc<Shared>,
    mut opening: Option<(Vec<Record>, Vec<u8>)>,
) {
    use futures::StreamExt;
    let mut storing = futures::stream::FuturesOrdered::new();
    let mut open = true;
    while open || !storing.is_empty() {
        tokio::select! {
            biased;
            Some((stored, sent)) = storing.next(), if !storing.is_empty() => {
                answer(&shared, sent, stored);
            }
            group = rx.recv(), if open && storing.len() < MIRROR_IN_FLIGHT => {
                let Some(mut group) = group else {
                    open = false;
                    continue;
                };
                while let Ok(more) = rx.try_recv() {
                    group.extend(more);
                }
                let mut records = Vec::new();
                let size = opening.as_ref().map_or(0, |(_, first)| first.len())
                    + group.iter().map(|(_, _, own)| own.len()).sum::<usize>();
                let mut lines = Vec::with_capacity(size);
                let opened = opening.as_ref().map_or(0, |(first, first_lines)| {
                    records.extend(first.iter().cloned());
                    lines.extend_from_slice(first_lines);
                    first.len()
                });
                let mut sent = Sent {
                    answers: Vec::with_capacity(group.len()),
                    counts: Vec::with_capacity(group.len()),
                    records: Vec::new(),
                };
                for (reply, mut own, own_lines) in group {
                    sent.counts.push(own.len());
                    sent.answers.push(reply);
                    records.append(&mut own);
                    lines.extend_from_slice(&own_lines);
                }
                let stored: MirrorStored = if records.is_empty() {
                    Box::pin(async { Ok(()) })
                } else {
                    match mirror.publish(&records, bytes::Bytes::from(lines)).await {
                        Ok(stored) => {
                            opening = None;
                            stored
                        }
                        Err(failed) => Box::pin(async move { Err(failed) }),
                    }
                };
                records.drain(..opened);
                sent.records = records;
                storing.push_back(async move { (stored.await, sent) });
            }
        }
    }
}

/// Answers the appends of a group the mirror stored (or failed to: those with a record at or
/// after the failed one get the error), handing the records of those it took to followers.
fn answer(shared: &Shared, sent: Sent, stored: Result<(), (u64, String)>) {
    let failed = stored.err();
    let mut rest = sent.records.into_iter();
    for (reply, count) in sent.answers.into_iter().zip(sent.counts) {
        let own: Vec<Record> = rest.by_ref().take(count).collect();
        let answer = match &failed {
            Some((seq, message)) if own.iter().any(|r| r.seq >= *seq) => Err(AuditError::Mirror {
                seq: *seq,
                message: message.clone(),
            }),
            _ => {
                follow(shared, &own);
                Ok(own)
            }
        };
        let _ = reply.send(answer);
    }
}

fn poisoned(shared: &Shared, source: &Arc<io::Error>) -> AuditError {
    AuditError::Poisoned {
        path: shared.path.clone(),
        source: source.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's start, a record on its way, or its end.
    #[derive(Clone, Copy, PartialEq)]
    enum What {
        Start,
        Progress,
        Finish,
    }

    fn record(run: &str, seq: u64, what: What) -> Record {
        let meta = Arc::new(RunMeta {
            run_id: run.into(),
            runbook: "rb".into(),
            team: "t".into(),
            actor: "a".into(),
            event_id: format!("e-{run}"),
        });
        let body = match what {
            What::Start => crate::record::bare_run_started(),
            What::Progress => RecordBody::Progress {
                step: 1,
                message: "going on".into(),
            },
            What::Finish => RecordBody::RunFinished {
                status: RunStatus::Succeeded,
                error: None,
            },
        };
        let time = jiff::Timestamp::from_second(1_700_000_000 + seq as i64).unwrap();
        RecordDraft::new(meta, body)
            .seal(seq, time, GENESIS_HASH, &mut Vec::new())
            .0
    }

    /// What the carried index held before it was kept up as records come: every run known,
    /// filtered.
    fn carried_by_a_full_pass(index: &Index, sealed: u32) -> Vec<String> {
        index
            .order
            .iter()
            .filter(|id| {
                let e = &index.runs[*id];
                (e.summary.kind == EntryKind::Run && e.summary.status.is_none())
                    || e.lines.iter().any(|(segment, ..)| *segment == sealed)
            })
            .cloned()
            .collect()
    }

    #[test]
    fn a_sealing_carries_the_open_runs_and_those_with_records_in_the_sealed_segment() {
        let mut index = Index::default();
        let mut seq = 0;
        let mut add = |index: &mut Index, run: &str, segment: u32, what: What| {
            seq += 1;
            index.add(&record(run, seq, what), (segment, seq * 100, 100));
        };
        for segment in 0..5u32 {
            for r in 0..40 {
                let run = format!("s{segment}-r{r}");
                add(&mut index, &run, segment, What::Start);
                // Two in three finish in the segment they start in; the rest go on.
                if r % 3 != 0 {
                    add(&mut index, &run, segment, What::Finish);
                }
            }
            // Runs begun earlier: some get a record here, some finish here, some wait on.
            for earlier in 0..segment {
                for r in (0..40).step_by(3) {
                    let run = format!("s{earlier}-r{r}");
                    if index.runs[&run].summary.status.is_some() {
                        continue;
                    }
                    match (r + segment as usize) % 4 {
                        0 => add(&mut index, &run, segment, What::Finish),
                        1 => add(&mut index, &run, segment, What::Progress),
                        _ => {}
                    }
                }
            }
            let expected = carried_by_a_full_pass(&index, segment);
            // In order of start, as the carried index's thread writes them.
            let mut carried = index.carried_runs(segment);
            carried.sort_by_key(|e| e.summary.started);
            let carried: Vec<String> = carried.iter().map(|e| e.summary.run_id.clone()).collect();
            assert_eq!(carried, expected, "sealing segment {segment}");
        }
    }

    /// However long the history, the index holds the open runs and the newest `keep_closed`
    /// others, and every map of it stays that size; forgotten runs' late records are not
    /// indexed, and a run's start and its late records indexed first become one entry.
    #[test]
    fn the_index_stays_bounded_and_late_records_join_their_runs() {
        let mut index = Index::keeping(100);
        let mut seq = 0;
        let mut add = |index: &mut Index, run: &str, what: What| {
            seq += 1;
            index.add(&record(run, seq, what), (seq as u32 / 1000, seq * 100, 100));
        };
        add(&mut index, "open", What::Start);
        // A sweep starts past twice the runs kept and ends before the list grew by a seventh
        // (one id a record, eight looked at).
        let most = |index: &Index| (2 * index.runs.len() + 1024) * 8 / 7 + SWEEP_STEP;
        let mut swept = 0;
        let held = |ids: &IdList| ids.iter().filter(|id| !id.is_empty()).count();
        for r in 0..20_000 {
            let run = format!("r{r}");
            let before = (held(&index.order), held(&index.in_last_segment));
            add(&mut index, &run, What::Start);
            add(&mut index, &run, What::Progress);
            add(&mut index, &run, What::Finish);
            assert!(index.runs.len() <= 101 && index.by_event.lock().len() <= 101);
            assert!(index.order.len() <= most(&index) && index.closed.len() <= 100);
            assert!(index.in_last_segment.len() <= most(&index));
            // Never a pass over the whole list at once: each run's records sweep a few ids.
            for (was, now) in [
                (before.0, held(&index.order)),
                (before.1, held(&index.in_last_segment)),
            ] {
                assert!(
                    was <= now + 3 * SWEEP_STEP,
                    "run {r}: one run's records freed {} ids at once",
                    was - now
                );
                swept += was.saturating_sub(now);
            }
        }
        assert!(swept > 30_000, "the unwanted ids were swept out: {swept}");
        let kept: Vec<&str> = (index.order.iter())
            .filter(|id| index.runs.contains_key(*id))
            .map(String::as_str)
            .collect();
        let newest: Vec<String> = (19_900..20_000).map(|r| format!("r{r}")).collect();
        assert_eq!(kept[0], "open");
        assert_eq!(kept[1..], newest, "the kept runs, in order");
        assert_eq!(index.forgotten, 19_900);
        assert!(index.runs.contains_key("open") && index.open.contains("open"));
        assert!(index.runs.contains_key("r19900") && !index.runs.contains_key("r19899"));
        add(&mut index, "r5", What::Progress);
        assert!(
            !index.runs.contains_key("r5"),
            "a forgotten run's late record"
        );

        // Late records first (a restart reads the newest segment before the history): the
        // run is not open, and joins its start when the history is indexed.
        let mut newer = Index::keeping(100);
        let mut older = Index::keeping(100);
        older.add(&record("x", 1, What::Start), (0, 0, 10));
        older.add(&record("y", 2, What::Start), (0, 10, 10));
        newer.add(&record("x", 3, What::Progress), (1, 0, 10));
        newer.add(&record("x", 4, What::Finish), (1, 10, 10));
        newer.add(&record("y", 5, What::Progress), (1, 20, 10));
        assert!(
            newer.open.is_empty(),
            "a run without its start is never resumed"
        );
        newer.prepend(older);
        let x = &newer.runs["x"];
        assert_eq!(x.lines, vec![(0, 0, 10), (1, 0, 10), (1, 10, 10)]);
        assert_eq!(
            (x.summary.records, x.summary.status),
            (3, Some(RunStatus::Succeeded))
        );
        assert!(!x.partial && !newer.open.contains("x"));
        assert_eq!(newer.runs["y"].summary.records, 2);
        assert!(newer.open.contains("y"), "y started and has not finished");
        assert_eq!(newer.order.ids, vec!["x", "y"]);
    }

    /// History is indexed from only the fields the index needs; it must come out exactly as
    /// from whole records, for every kind of body (checkpoints with and without `last`, a
    /// step's status beside a run's, refusals with and without a step, escaped ids).
    #[test]
    fn indexing_for_the_index_only_matches_indexing_whole_records() {
        use crate::record::{StepError, StepStatus};
        let bodies = |i: u64| -> Vec<RecordBody> {
            vec![
                RecordBody::StepFinished {
                    step: 1,
                    name: "k8s::scale".into(),
                    inputs: None,
                    status: StepStatus::Ok,
                    outputs: serde_json::json!({"status": "fine", "last": 3}),
                    error: None,
                    duration_ms: 5,
                    attempts: 1,
                },
                RecordBody::StepFinished {
                    step: 2,
                    name: "k8s::rollback".into(),
                    inputs: None,
                    status: StepStatus::Error,
                    outputs: serde_json::json!(null),
                    error: Some(StepError {
                        kind: "permanent".into(),
                        message: "no".into(),
                    }),
                    duration_ms: 5,
                    attempts: 2,
                },
                RecordBody::Refusal {
                    step: i.is_multiple_of(2).then_some(3),
                    action: "k8s::scale".into(),
                    reason: "outside the runbook's namespaces".into(),
                },
                RecordBody::Checkpoint {
                    covers: i,
                    head: "ab".into(),
                    key: "cd".into(),
                    signature: "ef".into(),
                    last: i.is_multiple_of(3),
                },
                RecordBody::RunFinished {
                    status: if i.is_multiple_of(2) {
                        RunStatus::Succeeded
                    } else {
                        RunStatus::Denied
                    },
                    error: None,
                },
            ]
        };
        let mut lines = Vec::new();
        let mut seq = 0;
        let mut prev = GENESIS_HASH.to_owned();
        let mut seal = |run: &str, body: RecordBody, lines: &mut Vec<u8>| {
            seq += 1;
            let meta = Arc::new(RunMeta {
                run_id: run.into(),
                runbook: "rb".into(),
                team: "t\"eam".into(),
                actor: "a".into(),
                event_id: format!("e-{run}"),
            });
            let time = jiff::Timestamp::from_second(1_700_000_000 + seq as i64).unwrap();
            let (record, _) = RecordDraft::new(meta, body).seal(seq, time, &prev, lines);
            prev = record.hash;
        };
        for i in 0..30u64 {
            let run = format!("r{i}\"\\x");
            let started = record(&run, 0, What::Start).body;
            seal(&run, started, &mut lines);
            for body in bodies(i).into_iter().take(1 + (i as usize % 5)) {
                seal(&run, body, &mut lines);
            }
            let notice = match i % 3 {
                0 => RecordBody::Skipped {
                    reason: "cooldown".into(),
                    active_run: None,
                },
                1 => RecordBody::Parked {
                    origin: "bus".into(),
                    reason: "not an event".into(),
                    payload: "{}".into(),
                },
                _ => RecordBody::Refusal {
                    step: None,
                    action: "trigger".into(),
                    reason: "not a member".into(),
                },
            };
            seal(&format!("n{i}"), notice, &mut lines);
        }
        let dir = std::env::temp_dir().join(format!("firebreak-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, &lines).unwrap();
        let file = File::open(&path).unwrap();
        let (mut whole, mut for_index) = (Index::keeping(7), Index::keeping(7));
        let a = scan(&path, &file, 0, &mut whole, None, Parse::Whole).unwrap();
        let b = scan(&path, &file, 0, &mut for_index, None, Parse::ForIndex).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(a.bad_last_line.is_none() && b.bad_last_line.is_none());
        assert_eq!(
            (a.next_seq, &a.last_hash, a.len),
            (b.next_seq, &b.last_hash, b.len)
        );
        assert_eq!(a.last_checkpoint, b.last_checkpoint);
        assert_eq!(a.checkpoints, b.checkpoints);
        assert_eq!(a.since_checkpoint, b.since_checkpoint);
        let view = |index: &Index| {
            let mut runs: Vec<(RunSummary, Vec<LinePlace>, bool)> = index
                .runs
                .values()
                .map(|e| (e.summary.clone(), e.lines.clone(), e.partial))
                .collect();
            runs.sort_by(|x, y| x.0.run_id.cmp(&y.0.run_id));
            let mut open: Vec<String> = index.open.iter().cloned().collect();
            open.sort();
            let mut by_event: Vec<(String, Vec<String>)> = index
                .by_event
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            by_event.sort();
            (
                runs,
                index.order.ids.clone(),
                open,
                by_event,
                index.closed.clone(),
                index.forgotten,
            )
        };
        assert_eq!(view(&whole), view(&for_index));
        assert!(whole.forgotten > 0 && !whole.open.is_empty());
    }

    /// Appends that come one by one after a burst, while the writer lingers for company
    /// (the last sync served many), are all written, in the order they were made, whole and
    /// chained.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_made_while_the_writer_lingers_are_all_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let journal = Arc::new(Journal::open(&path).unwrap());
        let draft = |run: String, step: u32| {
            let meta = Arc::new(RunMeta {
                run_id: run,
                runbook: "rb".into(),
                team: "t".into(),
                actor: "a".into(),
                event_id: "e".into(),
            });
            RecordDraft::new(
                meta,
                RecordBody::Progress {
                    step,
                    message: "going on".into(),
                },
            )
        };
        // A burst, queued faster than the writer takes it: its syncs serve several appends.
        futures::future::try_join_all(
            (0..64).map(|i| journal.append(draft(format!("burst-{i}"), 1))),
        )
        .await
        .unwrap();
        // Then one run's steps 50 µs apart, each queued (polled once) before the next is made.
        let (mut waiting, mut asked) = (Vec::new(), Vec::new());
        for step in 0..100 {
            let mut append = Box::pin(journal.append(draft("steady".into(), step)));
            assert!(futures::poll!(&mut append).is_pending());
            asked.push(jiff::Timestamp::now());
            waiting.push(append);
            let sent = std::time::Instant::now();
            while sent.elapsed() < std::time::Duration::from_micros(50) {
                std::hint::spin_loop();
            }
        }
        let mut seqs = Vec::new();
        for append in waiting {
            seqs.push(append.await.unwrap().seq);
        }
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "appends made in turn were sealed out of turn: {seqs:?}"
        );
        let records = journal.records_for_run("steady").unwrap();
        let steps: Vec<u32> = records
            .iter()
            .map(|r| match r.body {
                RecordBody::Progress { step, .. } => step,
                _ => unreachable!("only progress records were appended"),
            })
            .collect();
        assert_eq!(steps, (0..100).collect::<Vec<_>>());
        // Timed when asked for, not after the writer's wait, and never before the record before.
        for (record, asked) in records.iter().zip(&asked) {
            assert!(
                record.time <= *asked,
                "step {:?} timed after it was asked for",
                record.body
            );
        }
        assert!(records.windows(2).all(|w| w[0].time <= w[1].time));
        drop(journal);
        let report = crate::verify::verify(&path).unwrap();
        assert_eq!(report.records, 164, "{report:?}");
    }

    /// The dispatcher asks, for every delivery, which runs its event started; the syncer
    /// holds the index while it indexes a durable batch. An event that started none is
    /// answered without waiting for the index; one that started a run is answered once the
    /// index is free, with the run.
    #[tokio::test]
    async fn an_events_runs_are_looked_up_without_waiting_for_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path().join("audit.jsonl")).unwrap();
        let meta = Arc::new(RunMeta {
            run_id: "r1".into(),
            runbook: "rb".into(),
            team: "t".into(),
            actor: "a".into(),
            event_id: "started-one".into(),
        });
        journal
            .append(RecordDraft::new(meta, crate::record::bare_run_started()))
            .await
            .unwrap();
        let reader = journal.reader();
        let (asked, answers) = std::sync::mpsc::channel();
        let held = journal.reader.shared.index.lock().unwrap();
        let asking = std::thread::spawn(move || {
            for event in ["started-none", "started-one"] {
                let runs: Vec<String> = reader
                    .runs_for_event(event)
                    .into_iter()
                    .map(|r| r.run_id)
                    .collect();
                asked.send((event, runs)).unwrap();
            }
        });
        let first = answers.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(
            first,
            Ok(("started-none", Vec::new())),
            "an event without runs waited for the index"
        );
        // The one with a run reads its summary from the index: not before it is free.
        assert!(
            answers
                .recv_timeout(std::time::Duration::from_millis(100))
                .is_err()
        );
        drop(held);
        assert_eq!(
            answers.recv_timeout(std::time::Duration::from_secs(5)),
            Ok(("started-one", vec!["r1".to_owned()]))
        );
        asking.join().unwrap();
    }
}
