//! The embedded bus: the one-machine default, with no NATS.
//!
//! Events are appended to `<dir>/events.log` (JSON lines, group commit, see `src/log.rs`) and
//! `publish` answers once they are fsync'd. Consumers take events from an in-memory queue that
//! the writer thread fills only with durable events. An ack appends an ack record lazily: it
//! joins the next group commit without waiting for it or waking the writer (an ack lost in a
//! crash means one more delivery). On open the log is replayed: every published event without
//! an ack is queued again,
//! so unacked work survives a crash or restart. A delivery not acked within the ack wait, or
//! nak'd, goes back to the queue.
//!
//! Start at [`EmbeddedBus::open`]; the queue is `Queue`. [`FileStateStore`] (in `state`) is
//! the matching state store.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use firebreak_event::Event;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::info;

use crate::log::{Encode, GroupLog, Snapshot, read_records};
use crate::{AckHandle, Bus, BusError, Delivery, now_ms};

mod state;

pub use state::FileStateStore;

/// Settings of the embedded bus. `Default` gives production values.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How long a delivery may stay unacked before it is delivered again. Default 60 s.
    pub ack_wait: Duration,
    /// How long a published id is remembered for dedupe, besides while it is unacked. Default 2 min.
    pub duplicate_window: Duration,
    /// Log size that triggers a compaction. Default 64 MiB.
    pub compact_at_bytes: u64,
    /// Most deliveries handed out and not yet settled; the rest wait, in order, for one to
    /// settle (JetStream's `max_ack_pending`). Default 20,000, as the engine's JetStream
    /// consumer.
    pub max_in_flight: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            ack_wait: Duration::from_secs(60),
            duplicate_window: Duration::from_secs(120),
            compact_at_bytes: 64 << 20,
            max_in_flight: 20_000,
        }
    }
}

/// One line of `events.log`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    /// An event was accepted at `at_ms` (unix ms).
    Publish { at_ms: i64, event: Box<Event> },
    /// The event with this id is done.
    Ack { id: String },
}

/// Appends a `Record::Publish` line (newline-terminated) around an event's JSON: as the bus
/// wrote it once ([`Event::keep_json`], which the audit journal takes too), or written now.
fn push_publish_line(out: &mut Vec<u8>, at_ms: i64, event_json: &[u8]) {
    out.extend_from_slice(br#"{"op":"publish","at_ms":"#);
    out.extend_from_slice(at_ms.to_string().as_bytes());
    out.extend_from_slice(br#","event":"#);
    out.extend_from_slice(event_json);
    out.extend_from_slice(b"}\n");
}

/// The in-process bus. Cheap to share behind an `Arc`; see the module docs.
pub struct EmbeddedBus {
    shared: Arc<Shared>,
    dir: PathBuf,
    lock: Mutex<Option<File>>,
}

/// What the bus, the writer thread and deliveries share.
struct Shared {
    queue: Arc<Mutex<Queue>>,
    /// Woken whenever an event becomes ready (or the bus closes).
    notify: Notify,
    ack_wait: Duration,
    duplicate_window: Duration,
    log: GroupLog,
}

/// Where each event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// In `ready`, waiting for a consumer.
    Ready,
    /// Handed to a consumer; back to ready at `due` unless acked.
    InFlight,
    /// Nak'd; back to ready at `due`.
    Delayed,
}

struct Entry {
    event: Arc<Event>,
    /// Order of acceptance, kept through compactions.
    seq: u64,
    at_ms: i64,
    /// Deliveries so far.
    attempts: u32,
    stage: Stage,
    /// Identifies the current delivery; a settle with an older token is ignored.
    token: u64,
    /// When an in-flight or delayed entry returns to ready.
    due: Option<Instant>,
}

/// Unacked events and their delivery state, plus recently published ids for dedupe.
#[derive(Default)]
struct Queue {
    entries: foldhash::HashMap<String, Entry>,
    ready: VecDeque<(String, u64)>,
    /// When in-flight or delayed entries come due. Entries acked before then leave stale
    /// timers behind; the heap is rebuilt when those outnumber the live ones.
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Ids published within the duplicate window, as 128-bit keyed hashes (a third of the
    /// memory of the strings at 10,000 events/s; a collision is a 2^-128 event).
    seen: foldhash::HashMap<u128, i64>,
    seen_order: VecDeque<(i64, u128)>,
    hashers: (RandomState, RandomState),
    next_seq: u64,
    next_token: u64,
    /// Entries in flight; none is handed out while `max_in_flight` are.
    in_flight: usize,
    max_in_flight: Option<usize>,
    closed: bool,
}

impl Queue {
    fn insert(&mut self, event: Event, at_ms: i64) {
        let event = Arc::new(event);
        let id = event.id.clone();
        if self.entries.contains_key(&id) {
            return;
        }
        let token = self.token();
        self.next_seq += 1;
        self.entries.insert(
            id.clone(),
            Entry {
                event,
                seq: self.next_seq,
                at_ms,
                attempts: 0,
                stage: Stage::Ready,
                token,
                due: None,
            },
        );
        self.ready.push_back((id, token));
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn remember(&mut self, id: &str, at_ms: i64) {
        let key = self.seen_key(id);
        self.seen.insert(key, at_ms);
        self.seen_order.push_back((at_ms, key));
    }

    fn seen_key(&self, id: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(id)) << 64) | u128::from(self.hashers.1.hash_one(id))
    }

    /// Whether `id` is a duplicate: published within the window, or still unacked.
    fn is_duplicate(&self, id: &str) -> bool {
        self.entries.contains_key(id) || self.seen.contains_key(&self.seen_key(id))
    }

    fn forget_seen_before(&mut self, cutoff_ms: i64) {
        while let Some((at, _)) = self.seen_order.front() {
            if *at >= cutoff_ms {
                break;
            }
            let (at, key) = self.seen_order.pop_front().expect("front exists");
            if self.seen.get(&key) == Some(&at) {
                self.seen.remove(&key);
            }
        }
    }

    /// One fewer delivery in flight; whether that is the first below the bound (the consumer
    /// may wait for it).
    fn settled(&mut self) -> bool {
        let was_full = self.max_in_flight == Some(self.in_flight);
        self.in_flight -= 1;
        was_full
    }

    /// Moves every in-flight or delayed entry whose time has come back to ready.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Reverse((due, id)) = self.timers.pop().expect("peeked");
            let token = self.next_token + 1;
            if let Some(entry) = self.entries.get_mut(&id)
                && entry.stage != Stage::Ready
                && entry.due == Some(due)
            {
                let settled = entry.stage == Stage::InFlight;
                entry.stage = Stage::Ready;
                entry.due = None;
                entry.token = token;
                self.next_token = token;
                self.ready.push_back((id, token));
                if settled {
                    // Its ack wait ran out. The consumer is the caller: nobody to wake.
                    self.settled();
                }
            }
        }
    }

    fn push_timer(&mut self, due: Instant, id: String) {
        self.timers.push(Reverse((due, id)));
        if self.timers.len() > 2 * self.entries.len() + 1024 {
            let live: Vec<_> = self
                .entries
                .iter()
                .filter_map(|(id, e)| match (e.stage, e.due) {
                    (Stage::InFlight | Stage::Delayed, Some(due)) => {
                        Some(Reverse((due, id.clone())))
                    }
                    _ => None,
                })
                .collect();
            self.timers = BinaryHeap::from(live);
        }
    }

    /// Takes the next ready entry, marks it in flight until `now + ack_wait`.
    fn take_ready(
        &mut self,
        now: Instant,
        ack_wait: Duration,
    ) -> Option<(Arc<Event>, u32, i64, String, u64)> {
        if self.max_in_flight.is_some_and(|max| self.in_flight >= max) {
            return None;
        }
        while let Some((id, token)) = self.ready.pop_front() {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue; // acked meanwhile
            };
            if entry.token != token || entry.stage != Stage::Ready {
                continue; // a stale queue slot
            }
            let due = now + ack_wait;
            entry.stage = Stage::InFlight;
            self.in_flight += 1;
            entry.attempts += 1;
            entry.due = Some(due);
            let event = entry.event.clone();
            let (attempts, at_ms) = (entry.attempts, entry.at_ms);
            self.push_timer(due, id.clone());
            return Some((event, attempts, at_ms, id, token));
        }
        None
    }

    /// The live state, to be encoded as log records, oldest first (for compaction). Takes
    /// only the events' `Arc`s under the lock; the encoding runs without it.
    fn snapshot(&self) -> Encode {
        let mut entries: Vec<(u64, i64, Arc<Event>)> = self
            .entries
            .values()
            .map(|e| (e.seq, e.at_ms, e.event.clone()))
            .collect();
        Box::new(move || {
            entries.sort_unstable_by_key(|(seq, ..)| *seq);
            let mut out = Vec::new();
            for (_, at_ms, event) in &entries {
                // Events read back from the log were not kept as written; this writes them
                // without keeping them (they were encoded once already, so it cannot fail).
                let written;
                let json = match event.written.get() {
                    Some(json) => &json[..],
                    None => {
                        written = serde_json::to_vec(&**event).unwrap_or_default();
                        &written[..]
                    }
                };
                if !json.is_empty() {
                    push_publish_line(&mut out, *at_ms, json);
                }
            }
            out
        })
    }
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes `<dir>/<name>` as an exclusive lock for this process.
pub(crate) fn lock_dir(dir: &Path, name: &str) -> Result<File, BusError> {
    let path = dir.join(name);
    let file = File::create(&path).map_err(|source| BusError::Io {
        path: path.clone(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(BusError::Locked {
            path: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(BusError::Io { path, source }),
    }
}

impl EmbeddedBus {
    /// Opens (creating if needed) the bus stored in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<EmbeddedBus, BusError> {
        EmbeddedBus::open_with(dir, EmbeddedOptions::default())
    }

    /// Opens the bus stored in `dir`: replays `events.log`, queues every unacked event, compacts
    /// the log and starts the writer thread. Fails with [`BusError::Locked`] if another bus has
    /// `dir` open.
    pub fn open_with(
        dir: impl AsRef<Path>,
        opts: EmbeddedOptions,
    ) -> Result<EmbeddedBus, BusError> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(|source| BusError::Io {
            path: dir.clone(),
            source,
        })?;
        let lock = lock_dir(&dir, "events.lock")?;
        let path = dir.join("events.log");
        let mut queue = Queue {
            max_in_flight: Some(opts.max_in_flight.max(1)),
            ..Queue::default()
        };
        let cutoff = now_ms() - opts.duplicate_window.as_millis() as i64;
        for record in read_records::<Record>(&path)? {
            match record {
                Record::Publish { at_ms, event } => {
                    if at_ms >= cutoff {
                        queue.remember(&event.id, at_ms);
                    }
                    queue.insert(*event, at_ms);
                }
                Record::Ack { id } => {
                    queue.entries.remove(&id);
                }
            }
        }
        let pending = queue.entries.len();
        let initial = queue.snapshot()();
        // The writer thread compacts from a snapshot of the queue; it holds the queue weakly so
        // that dropping the bus ends the thread.
        let queue = Arc::new(Mutex::new(queue));
        let for_snapshot = Arc::downgrade(&queue);
        let snapshot: Snapshot = Box::new(move || {
            let queue = for_snapshot.upgrade()?;
            let encode = queue.lock().unwrap_or_else(|p| p.into_inner()).snapshot();
            Some(encode)
        });
        let log = GroupLog::open(&path, initial, snapshot, opts.compact_at_bytes)?;
        let shared = Arc::new(Shared {
            queue,
            notify: Notify::new(),
            ack_wait: opts.ack_wait,
            duplicate_window: opts.duplicate_window,
            log,
        });
        info!(dir = %dir.display(), pending, "embedded bus open");
        Ok(EmbeddedBus {
            shared,
            dir,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// The directory this bus stores its log in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the bus: consumer streams end, further calls fail with [`BusError::Closed`], queued
    /// writes are flushed, and the directory lock is released so the bus can be reopened.
    pub async fn close(&self) {
        self.shared.queue().closed = true;
        self.shared.notify.notify_waiters();
        self.shared.log.close().await;
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// How many events are accepted but not yet acked.
    pub fn pending(&self) -> usize {
        self.shared.queue().entries.len()
    }
}

impl Bus for EmbeddedBus {
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            crate::error::check_ids(&events)?;
            // The ids are checked first, so a bad event rejects the whole batch before anything
            // is remembered.
            let at_ms = now_ms();
            let mut lines = Vec::with_capacity(events.len());
            for event in &events {
                let json = event.keep_json();
                let mut line = Vec::with_capacity(json.len() + 48);
                push_publish_line(&mut line, at_ms, &json);
                lines.push(line);
            }
            let done = {
                let mut queue = self.shared.queue();
                if queue.closed {
                    return Err(BusError::Closed);
                }
                let window_ms = self.shared.duplicate_window.as_millis() as i64;
                queue.forget_seen_before(at_ms - window_ms);
                let mut bytes = Vec::new();
                let mut fresh = Vec::new();
                for (event, line) in events.into_iter().zip(lines) {
                    if queue.is_duplicate(&event.id) {
                        continue; // a duplicate; the barrier below waits for its first copy
                    }
                    queue.remember(&event.id, at_ms);
                    bytes.extend_from_slice(&line);
                    fresh.push(event);
                }
                let shared = Arc::clone(&self.shared);
                let after: crate::log::After = Box::new(move || {
                    let mut queue = shared.queue();
                    let any = !fresh.is_empty();
                    for event in fresh {
                        queue.insert(event, at_ms);
                    }
                    drop(queue);
                    if any {
                        shared.notify.notify_waiters();
                    }
                });
                // Sent under the queue lock, so the log's order is the dedupe order: an append
                // with only duplicates still waits behind the commit of their first copies.
                self.shared.log.append(bytes, Some(after))?
            };
            done.await.map_err(|_| BusError::Closed)?
        })
    }

    fn consume(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, BusError>>, BusError>> {
        Box::pin(async move {
            if self.shared.queue().closed {
                return Err(BusError::Closed);
            }
            let consumer = Consumer {
                shared: Arc::clone(&self.shared),
            };
            let stream = futures::stream::unfold(consumer, |consumer| async move {
                let delivery = consumer.next().await?;
                Some((Ok(delivery), consumer))
            });
            Ok(Box::pin(stream) as BoxStream<'static, _>)
        })
    }

    fn publish_audit(
        &self,
        _records: Vec<crate::AuditMessage>,
    ) -> BoxFuture<'_, Result<crate::AuditStored, BusError>> {
        // The audit journal file is the durable record in embedded mode.
        Box::pin(async { Ok(Box::pin(async { Ok(()) }) as crate::AuditStored) })
    }

    fn ready(&self) -> bool {
        !self.shared.queue().closed
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(EmbeddedBus::close(self))
    }
}

/// One consumer stream's state.
struct Consumer {
    shared: Arc<Shared>,
}

impl Consumer {
    /// Waits for the next ready event; `None` once the bus is closed.
    async fn next(&self) -> Option<Delivery> {
        loop {
            // Register for wake-ups before looking, so a publish between the look and the wait
            // is not missed.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut queue = self.shared.queue();
                if queue.closed {
                    return None;
                }
                let now = Instant::now();
                queue.fire_timers(now);
                if let Some((event, attempt, at_ms, id, token)) =
                    queue.take_ready(now, self.shared.ack_wait)
                {
                    let handle = EmbeddedAck {
                        shared: Arc::clone(&self.shared),
                        id,
                        token,
                    };
                    let published = jiff::Timestamp::from_millisecond(at_ms)
                        .unwrap_or_else(|_| jiff::Timestamp::now());
                    let ack_wait = self.shared.ack_wait;
                    return Some(Delivery::new(
                        event,
                        attempt,
                        published,
                        ack_wait,
                        Box::new(handle),
                    ));
                }
                queue.timers.peek().map(|Reverse((due, _))| *due)
            };
            match wake_at {
                Some(due) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// Settles one embedded delivery.
struct EmbeddedAck {
    shared: Arc<Shared>,
    id: String,
    token: u64,
}

impl EmbeddedAck {
    /// Sends the entry back to the queue at `due`, if this delivery is still the current one.
    fn reschedule(&self, due: Instant, stage: Stage) -> Result<bool, BusError> {
        let mut queue = self.shared.queue();
        if queue.closed {
            return Err(BusError::Closed);
        }
        let Some(entry) = queue.entries.get_mut(&self.id) else {
            return Ok(false);
        };
        if entry.token != self.token || entry.stage != Stage::InFlight {
            return Ok(false);
        }
        entry.stage = stage;
        entry.due = Some(due);
        queue.push_timer(due, self.id.clone());
        if stage != Stage::InFlight && queue.settled() {
            self.shared.notify.notify_waiters();
        }
        Ok(true)
    }
}

impl AckHandle for EmbeddedAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>> {
        // Lazy: the ack record joins the next group commit and the call returns at once, so a
        // consumer that acks one event at a time is not paced by fsync and wakes no writer. An
        // ack lost in a crash only means the event is delivered again; a failed write poisons
        // the log, which fails every later publish.
        Box::pin(async move {
            {
                let mut queue = self.shared.queue();
                if queue.closed {
                    return Err(BusError::Closed);
                }
                let Some(entry) = queue.entries.remove(&self.id) else {
                    return Ok(()); // acked already through another delivery
                };
                if entry.stage == Stage::InFlight && queue.settled() {
                    self.shared.notify.notify_waiters();
                }
                let record = Record::Ack {
                    id: self.id.clone(),
                };
                let mut line = serde_json::to_vec(&record).map_err(|source| BusError::Codec {
                    what: format!("ack of {}", self.id),
                    source,
                })?;
                line.push(b'\n');
                self.shared.log.append_lazy(&line)?;
            }
            Ok(())
        })
    }

    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            if self.reschedule(Instant::now() + delay, Stage::Delayed)? {
                // A consumer waiting on an earlier timer must learn about this one.
                self.shared.notify.notify_waiters();
            }
            Ok(())
        })
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.reschedule(Instant::now() + self.shared.ack_wait, Stage::InFlight)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
        Event {
            id: id.to_owned(),
            source: "test".into(),
            kind: "t".into(),
            subject: "s".into(),
            time: jiff::Timestamp::UNIX_EPOCH,
            namespace: None,
            fingerprint: None,
            traceparent: None,
            data: serde_json::Value::Null,
            written: Default::default(),
        }
    }

    #[test]
    fn a_publish_line_around_an_events_json_reads_back_as_a_publish_record() {
        let e = event("e1");
        for at_ms in [7, -1] {
            let mut line = Vec::new();
            push_publish_line(&mut line, at_ms, &e.keep_json());
            let owned = serde_json::to_vec(&Record::Publish {
                at_ms,
                event: Box::new(e.clone()),
            })
            .unwrap();
            assert_eq!(line, [&owned[..], b"\n"].concat());
            match serde_json::from_slice::<Record>(&line).unwrap() {
                Record::Publish { at_ms: read, event } => {
                    assert_eq!((read, *event), (at_ms, e.clone()))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn acked_deliveries_do_not_pile_up_timers() {
        let mut queue = Queue::default();
        let now = Instant::now();
        for i in 0..5000 {
            queue.insert(event(&format!("e{i}")), 0);
            let (_, _, _, id, _) = queue.take_ready(now, Duration::from_secs(60)).unwrap();
            queue.entries.remove(&id); // acked
        }
        assert!(
            queue.timers.len() <= 1025,
            "{} stale timers kept",
            queue.timers.len()
        );
        // A live in-flight entry keeps its timer through a rebuild and comes back when due.
        queue.insert(event("live"), 0);
        queue.take_ready(now, Duration::from_secs(1)).unwrap();
        for i in 0..3000 {
            queue.insert(event(&format!("f{i}")), 0);
            let (_, _, _, id, _) = queue.take_ready(now, Duration::from_secs(60)).unwrap();
            queue.entries.remove(&id);
        }
        queue.fire_timers(now + Duration::from_secs(2));
        let (event, attempts, _, _, _) = queue.take_ready(now, Duration::from_secs(60)).unwrap();
        assert_eq!((event.id.as_str(), attempts), ("live", 2));
    }

    #[test]
    fn duplicates_are_known_while_unacked_and_within_the_window() {
        let mut queue = Queue::default();
        queue.remember("a", 1_000);
        assert!(queue.is_duplicate("a"));
        assert!(!queue.is_duplicate("b"));
        queue.forget_seen_before(2_000);
        assert!(!queue.is_duplicate("a"), "out of the window");
        queue.insert(event("a"), 0);
        assert!(queue.is_duplicate("a"), "still unacked");
    }
}
