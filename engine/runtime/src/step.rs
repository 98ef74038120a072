//! The run that owns the current thread, and the journaling every step goes through.
//!
//! Start at [`RunContext`] and [`run_leaf`]. A script runs on one blocking thread for its
//! whole life; [`enter`] puts its [`RunContext`] in a thread-local so the engine-wide
//! callbacks (`on_progress`, the step functions, connector modules) find their run without a
//! per-run engine. Every step gets the next step number; Rust, not the script, journals
//! `StepStarted` and `StepFinished` around it.
//!
//! Durability follows the outside world, not the script. A record that precedes an effect
//! outside the engine (a connector call, a wait) is durable before the effect starts, and a
//! connector step's end is durable before the script goes on, so a restart never repeats a
//! finished action. Records of local steps (`log`, `now`, `fail`, `evidence`, the bounds of
//! `step(name, || ...)`) and the run's own `RunStarted` wait in the run's pending list and join
//! the next durable write ([`RunContext::flush`]): a step that touches the outside, the run's
//! end, a suspension, or [`START_FLUSH_AFTER`] into the run. A crash can lose only pending
//! records; re-running those steps on resume changes nothing outside, and a run whose
//! `RunStarted` was lost was never acked on the bus, so its event is delivered again.
//!
//! Resume: a context built from an earlier attempt's journal holds the outputs of the steps
//! that finished then ([`Replay`]); a step with the same number and name returns the journaled
//! output instead of running again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use firebreak_audit::{
    AuditError, Journal, RecordBody, RecordDraft, RunMeta, StepError, StepStatus,
};
use firebreak_connector::ProgressSink;
use rhai::{Dynamic, EvalAltResult, Position};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::policy::RetryPolicy;

/// A Rhai error as native functions return it.
pub(crate) type ScriptError = Box<EvalAltResult>;

/// Why a run is being stopped from outside the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Cancelled = 1,
    TimedOut = 2,
    /// The engine is shutting down: the run stops at a step boundary *without* finishing, so
    /// the next start resumes it.
    Suspended = 3,
    /// The run spent one of its budgets (see [`crate::Budget`]); the reason is in
    /// `cancel_reason`. The run fails.
    OverBudget = 4,
    /// An approver said no (see [`crate::approval`]); who and why is in `cancel_reason`.
    Denied = 5,
    /// Nobody approved in time.
    Expired = 6,
    /// A long `sleep` gave its thread back: the script unwinds and the run waits without
    /// one, then replays to the sleep (see `Runner` `park`). Not an end.
    Parked = 7,
}

impl Stop {
    pub(crate) fn token(self) -> &'static str {
        match self {
            Stop::Cancelled => "cancelled",
            Stop::TimedOut => "timed_out",
            Stop::Suspended => "suspended",
            Stop::OverBudget => "over_budget",
            Stop::Denied => "denied",
            Stop::Expired => "expired",
            Stop::Parked => "parked",
        }
    }

    /// The uncatchable error that unwinds the script.
    pub(crate) fn error(self) -> ScriptError {
        EvalAltResult::ErrorTerminated(self.token().into(), Position::NONE).into()
    }
}

/// A run still without a durable write journals its pending `RunStarted` after this long, so
/// a script busy with local steps does not keep its event unacked on the bus.
pub const START_FLUSH_AFTER: Duration = Duration::from_millis(50);

/// Most operations a script may take on the async worker before it moves to a blocking thread
/// (see [`RunContext::inline`]).
pub const INLINE_MAX_OPERATIONS: u64 = 10_000;

/// The uncatchable error that ends an inline attempt: the script needs a thread of its own.
const NEEDS_THREAD: &str = "needs_thread";

/// Told once whether the run's `RunStarted` became durable.
pub(crate) type StartSignal = oneshot::Sender<Result<(), AuditError>>;

/// A step that finished in an earlier attempt of this run.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub name: String,
    pub outputs: Value,
}

/// An earlier attempt's steps, as the running attempt replays them.
#[derive(Debug, Default)]
pub(crate) struct Replaying {
    /// Steps that finished, by number: they return their journaled output.
    pub finished: HashMap<u32, Replay>,
    /// Intents journaled whose steps never finished, by number.
    pub intents: HashMap<u32, (String, Value)>,
    /// When steps that never finished began, by number (a wait goes on for what it had left).
    pub started_at: HashMap<u32, jiff::Timestamp>,
    /// Replaying after a park: replayed steps and the parked step's start are in the trail
    /// already and are not journaled again.
    pub quiet: bool,
}

/// A `sleep` that gave its thread back (see [`RunContext::park`]).
#[derive(Debug, Clone)]
pub(crate) struct ParkedStep {
    pub step: u32,
    pub name: String,
    /// When the wait ends.
    pub until: Instant,
    /// When the step began (for its duration).
    pub began: Instant,
}

/// What an earlier attempt of this run left in the journal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Earlier {
    /// Steps that finished, by number: they return their journaled output.
    pub finished: HashMap<u32, Replay>,
    /// Mutating steps that journaled an intent but no end, by number: `(name, intent)`. They
    /// apply that intent again (which finds it done if the write happened) instead of planning.
    pub intents: HashMap<u32, (String, Value)>,
    /// An event that joined the run said its incident resolved.
    pub resolved: bool,
    /// When each step that started but never finished began (a wait interrupted by a stop
    /// goes on for the time it had left).
    pub started_at: HashMap<u32, jiff::Timestamp>,
    /// The approval request and decisions journaled so far.
    pub gate: crate::approval::Gate,
}

/// A run waiting in a step (`sleep`, `wait_resolved`) while it lives: counted in the
/// `firebreak_runs_waiting` gauge.
pub(crate) struct Waiting;

impl Waiting {
    pub(crate) fn begin() -> Waiting {
        metrics::gauge!("firebreak_runs_waiting").increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("firebreak_runs_waiting").decrement(1.0);
    }
}

/// An event handed to a running run (see [`RunContext::join`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedEvent {
    pub event_id: String,
    /// `resolved`, `firing`, ...
    pub status: String,
    /// For people: `alertmanager/resolved ModelLatencyHigh`.
    pub summary: String,
}

/// Why an event could not be joined to a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The run ended before the event could be journaled in it.
    #[error("the run has already finished")]
    Finished,
    /// The journal refused the record.
    #[error("cannot journal the joined event: {0}")]
    Journal(String),
}

/// A joined event waiting for the run's next durable write.
type QueuedJoin = (
    RecordBody,
    JoinedEvent,
    oneshot::Sender<Result<(), JoinError>>,
);

/// Everything the step functions need to know about the run on this thread.
pub(crate) struct RunContext {
    pub meta: Arc<RunMeta>,
    pub namespaces: Vec<String>,
    /// Cluster-scoped mutations the team is granted; `None`: no teams file.
    pub cluster_actions: Option<Vec<String>>,
    /// The engine's guard rails on mutations (freeze windows, blast radius).
    pub guard: Option<crate::Guard>,
    /// The lease on the run's lock, with replicas sharing NATS (see [`crate::guard::Fence`]).
    pub(crate) lease: Option<crate::guard::Lease>,
    /// Where `once` decisions are shared with other replicas, if they are.
    pub memory: Option<std::sync::Arc<dyn crate::IncidentMemory>>,
    /// The run's trace span (see [`crate::trace`]).
    pub(crate) span: tracing::Span,
    /// Spans of the composite steps open now, innermost last: a new step's parent.
    open_spans: std::sync::Mutex<Vec<tracing::Span>>,
    /// Who must approve before the first mutation; `None`: nobody.
    pub approval: Option<firebreak_audit::ApprovalPolicy>,
    /// The approval request and its decisions (see [`crate::approval`]).
    pub(crate) gate: std::sync::Mutex<crate::approval::Gate>,
    /// Woken when a decision is taken.
    pub(crate) gate_changed: tokio::sync::Notify,
    /// Decisions are taken one at a time.
    pub(crate) deciding: tokio::sync::Mutex<()>,
    pub dry_run: bool,
    pub journal: Arc<Journal>,
    pub handle: Handle,
    pub cancel: CancellationToken,
    /// Cancelled when the engine shuts down; checked before each new step.
    pub suspend: CancellationToken,
    pub deadline: Option<Instant>,
    pub progress: Option<ProgressSink>,
    /// Longest single `sleep(ms)`.
    pub max_sleep: Duration,
    pub retry: RetryPolicy,
    pub action_timeout: Duration,
    /// What earlier attempts of the run left: replayed, not run again.
    replaying: std::sync::Mutex<Replaying>,
    /// Sleeps at least this long give their thread back while they wait (`None`: never).
    pub(crate) park_after: Option<Duration>,
    /// The sleep the script parked in, until the runner wakes it.
    parked: std::sync::Mutex<Option<ParkedStep>>,
    next_step: AtomicU32,
    stop: AtomicU8,
    /// Records waiting for the next durable write, in order. Held across that write, so a
    /// run's records reach the journal in the order they were made.
    pending: tokio::sync::Mutex<Vec<RecordBody>>,
    /// Answered by the first durable write (which carries `RunStarted`).
    start: std::sync::Mutex<Option<StartSignal>>,
    /// `RunStarted` could not be journaled: nothing more of this run may be.
    start_failed: AtomicBool,
    /// The script runs on an async worker (the fast path for short scripts of local steps):
    /// any step that would block, or more than [`INLINE_MAX_OPERATIONS`], ends the attempt
    /// with [`NEEDS_THREAD`]; the run then starts over on a blocking thread as if the attempt
    /// had never happened (its records are dropped and its log lines were held back).
    inline: AtomicBool,
    /// Log lines of the inline attempt, emitted only if it completes.
    held: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// The script is past its inline attempt (it moved to a blocking thread, or it ended): a
    /// joined event may flush at once. Before, a queued join waits for the attempt's end.
    past_inline: AtomicBool,
    /// `RunFinished` is journaled: nothing more may be.
    finished: AtomicBool,
    /// Joined events waiting for the next durable write.
    joins: std::sync::Mutex<Vec<QueuedJoin>>,
    /// Whether a joined event said the incident resolved.
    resolved: AtomicBool,
    /// Woken when an event joins.
    joined: tokio::sync::Notify,
    /// Who or what cancelled the run, for its end record.
    pub(crate) cancel_reason: std::sync::Mutex<Option<String>>,
    pub(crate) budget: crate::Budget,
    /// Records and bytes journaled so far.
    journaled: std::sync::Mutex<(u64, u64)>,
}

impl RunContext {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        meta: Arc<RunMeta>,
        scope: crate::runner::RunScope,
        dry_run: bool,
        journal: Arc<Journal>,
        handle: Handle,
        cancel: CancellationToken,
        suspend: CancellationToken,
        deadline: Option<Instant>,
        progress: Option<ProgressSink>,
        settings: &crate::runner::RunnerConfig,
        settings_guard: Option<crate::Guard>,
        lease: Option<crate::guard::Lease>,
        memory: Option<std::sync::Arc<dyn crate::IncidentMemory>>,
        span: tracing::Span,
        earlier: Earlier,
    ) -> Self {
        RunContext {
            meta,
            namespaces: scope.namespaces,
            cluster_actions: scope.cluster_actions,
            approval: scope.approval,
            guard: settings_guard,
            lease,
            memory,
            span,
            open_spans: std::sync::Mutex::new(Vec::new()),
            gate: std::sync::Mutex::new(earlier.gate),
            gate_changed: tokio::sync::Notify::new(),
            deciding: tokio::sync::Mutex::new(()),
            dry_run,
            journal,
            handle,
            cancel,
            suspend,
            deadline,
            progress,
            max_sleep: settings.limits.max_sleep,
            retry: settings.retry,
            action_timeout: settings.action_timeout,
            replaying: std::sync::Mutex::new(Replaying {
                finished: earlier.finished,
                intents: earlier.intents,
                started_at: earlier.started_at,
                quiet: false,
            }),
            park_after: settings.park_after,
            parked: std::sync::Mutex::new(None),
            next_step: AtomicU32::new(1),
            stop: AtomicU8::new(0),
            pending: tokio::sync::Mutex::new(Vec::new()),
            start: std::sync::Mutex::new(None),
            start_failed: AtomicBool::new(false),
            inline: AtomicBool::new(false),
            held: std::sync::Mutex::new(Vec::new()),
            past_inline: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            joins: std::sync::Mutex::new(Vec::new()),
            resolved: AtomicBool::new(earlier.resolved),
            joined: tokio::sync::Notify::new(),
            cancel_reason: std::sync::Mutex::new(None),
            budget: settings.budget,
            journaled: std::sync::Mutex::new((0, 0)),
        }
    }

    /// Ends the run as over budget: the reason goes into its end record.
    pub(crate) fn over_budget(&self, reason: String) -> ScriptError {
        warn!(run_id = %self.meta.run_id, reason = %reason, "run over budget; ending it");
        self.cancel_reason
            .lock()
            .expect("cancel reason lock")
            .get_or_insert(reason);
        self.set_stop(Stop::OverBudget);
        Stop::OverBudget.error()
    }

    /// Charges `bodies` to the run's journal budget (records, bytes, evidence bytes per
    /// record); the run's end record is never refused.
    fn charge(&self, bodies: &[RecordBody]) -> Result<(), String> {
        let budget = &self.budget;
        let mut added = (0u64, 0u64);
        for body in bodies {
            if let RecordBody::RunFinished { .. } = body {
                continue;
            }
            let bytes = json_len(body);
            if let RecordBody::Evidence { name, .. } = body
                && bytes > budget.max_evidence_bytes
            {
                return Err(format!(
                    "run budget: evidence '{name}' is {bytes} bytes, more than the {} allowed per record (limits.max_evidence_bytes)",
                    budget.max_evidence_bytes
                ));
            }
            added.0 += 1;
            added.1 += bytes;
        }
        let mut used = self.journaled.lock().expect("journaled lock");
        let (records, bytes) = (used.0 + added.0, used.1 + added.1);
        if records > budget.max_records {
            return Err(format!(
                "run budget: {records} audit records, more than the {} a run may write (limits.max_run_records)",
                budget.max_records
            ));
        }
        if bytes > budget.max_journal_bytes {
            return Err(format!(
                "run budget: {bytes} bytes of audit records, more than the {} a run may write (limits.max_run_journal_bytes)",
                budget.max_journal_bytes
            ));
        }
        *used = (records, bytes);
        Ok(())
    }

    /// How long step `step` already ran in an earlier attempt that was stopped inside it (a
    /// resumed wait waits only for what was left); zero for a step that is new.
    pub(crate) fn already_waited(&self, step: u32) -> Duration {
        self.replaying
            .lock()
            .expect("replay lock")
            .started_at
            .get(&step)
            .and_then(|at| Duration::try_from(jiff::Timestamp::now().duration_since(*at)).ok())
            .unwrap_or_default()
    }

    /// The number the next step will get.
    pub(crate) fn peek_step(&self) -> u32 {
        self.next_step.load(Ordering::Relaxed)
    }

    /// Whether step `step` finished in an earlier attempt (it replays its output).
    pub(crate) fn replays(&self, step: u32) -> bool {
        self.replaying
            .lock()
            .expect("replay lock")
            .finished
            .contains_key(&step)
    }

    /// Whether step `step`'s `StepStarted` is journaled: not when the script replays to a
    /// step it parked in (that start is in the trail already).
    pub(crate) fn journals_start(&self, step: u32) -> bool {
        let replaying = self.replaying.lock().expect("replay lock");
        !(replaying.quiet && replaying.started_at.contains_key(&step))
    }

    /// How the wait of step `step` with `wait` left is journaled, and whether it parks: a
    /// wait that parks (if `may_park` and it is long enough), or one replayed, may run on the
    /// async worker, its start journaled by the park's write before the wait.
    pub(crate) fn plan_wait(
        &self,
        step: u32,
        wait: Option<Duration>,
        may_park: bool,
    ) -> (bool, Durability) {
        let parks = may_park && wait.is_some_and(|w| self.park_after.is_some_and(|a| w >= a));
        let durability = if parks || self.replays(step) {
            Durability::Deferred
        } else {
            Durability::WriteAhead
        };
        (parks, durability)
    }

    /// Parks the script in step `step` (a wait with `wait` left): the script unwinds, its
    /// thread is free, and the runner wakes the run when the wait is over.
    pub(crate) fn park(&self, step: u32, name: &str, wait: Duration) -> LeafResult {
        let now = Instant::now();
        *self.parked.lock().expect("parked lock") = Some(ParkedStep {
            step,
            name: name.to_owned(),
            until: now + wait,
            began: now.checked_sub(self.already_waited(step)).unwrap_or(now),
        });
        self.set_stop(Stop::Parked);
        if self.stopped() != Some(Stop::Parked) {
            // Stopped for real meanwhile: that stop wins.
            self.parked.lock().expect("parked lock").take();
            return LeafResult::stopped(self.stopped().unwrap_or(Stop::Cancelled));
        }
        LeafResult::stopped(Stop::Parked)
    }

    /// The step the script parked in, if it did; the run is no longer stopped by it.
    pub(crate) fn unpark(&self) -> Option<ParkedStep> {
        let parked = self.parked.lock().expect("parked lock").take()?;
        let _ =
            self.stop
                .compare_exchange(Stop::Parked as u8, 0, Ordering::Relaxed, Ordering::Relaxed);
        Some(parked)
    }

    /// Makes the next attempt replay what the journal holds of the run, quietly, from step 1.
    pub(crate) fn rewind(&self, earlier: Earlier) {
        *self.replaying.lock().expect("replay lock") = Replaying {
            finished: earlier.finished,
            intents: earlier.intents,
            started_at: earlier.started_at,
            quiet: true,
        };
        self.next_step.store(1, Ordering::Relaxed);
    }

    /// A span for step `step` under the innermost open composite step, or the run.
    pub(crate) fn step_span(&self, step: u32, name: &str) -> tracing::Span {
        let open = self.open_spans.lock().expect("spans lock");
        crate::trace::step_span(open.last().unwrap_or(&self.span), step, name)
    }

    /// Makes `span` the parent of the steps begun until [`RunContext::close_span`].
    pub(crate) fn open_span(&self, span: tracing::Span) {
        self.open_spans.lock().expect("spans lock").push(span);
    }

    pub(crate) fn close_span(&self) {
        self.open_spans.lock().expect("spans lock").pop();
    }

    /// `RunFinished` is journaled.
    pub(crate) fn finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// The inline attempt is over (the script ended, or it goes on a blocking thread): from
    /// now on a join flushes at once, and the joins queued during the attempt are written
    /// now. A run that ended journals them with its end, which comes next.
    pub(crate) async fn leave_inline(&self, ended: bool) {
        // Set, then look (a join queues, then looks): one of the two sees the other.
        self.past_inline.store(true, Ordering::SeqCst);
        let queued = !self.joins.lock().expect("joins lock").is_empty();
        if queued && !ended {
            let _ = self.flush(Vec::new()).await;
        }
    }

    /// Whether a joined event said the run's incident resolved.
    pub(crate) fn resolved(&self) -> bool {
        self.resolved.load(Ordering::SeqCst)
    }

    /// Waits up to `limit` for a joined event saying the incident resolved; whether one did.
    pub(crate) async fn wait_resolved(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.joined.notified();
            tokio::pin!(notified);
            // Registered before looking, so a join between the look and the wait is not missed.
            notified.as_mut().enable();
            if self.resolved() {
                return true;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => return self.resolved(),
            }
        }
    }

    /// Hands an event about the run's incident to the run: an `event_joined` record, durable
    /// in the run's trail (in order with its other records) before this returns `Ok`. While the
    /// script still runs inline on the async worker, the record waits for the run's next
    /// durable write (its end, or its hand-over to a thread), which comes within moments.
    pub(crate) async fn join(&self, event: JoinedEvent) -> Result<(), JoinError> {
        let (done, answer) = oneshot::channel();
        let record = RecordBody::EventJoined {
            event_id: event.event_id.clone(),
            status: event.status.clone(),
            summary: event.summary.clone(),
        };
        self.joins
            .lock()
            .expect("joins lock")
            .push((record, event, done));
        // Queue first, then look: a run that left its inline attempt after the look flushes
        // what was queued (see `leave_inline`).
        if self.past_inline.load(Ordering::SeqCst) {
            let _ = self.flush(Vec::new()).await;
        }
        answer.await.unwrap_or(Err(JoinError::Finished))
    }

    /// Whether the script runs inline on an async worker.
    pub(crate) fn inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
    }

    /// Begins an inline attempt; returns how many pending records precede it.
    pub(crate) fn begin_inline(&self) -> usize {
        self.inline.store(true, Ordering::Relaxed);
        self.pending
            .try_lock()
            .expect("nothing flushes before the script runs")
            .len()
    }

    /// The inline attempt completed: its held lines go out, the run is done with the worker.
    pub(crate) fn complete_inline(&self) {
        self.inline.store(false, Ordering::Relaxed);
        let held = std::mem::take(&mut *self.held.lock().expect("held lines lock"));
        for emit in held {
            emit();
        }
    }

    /// The inline attempt needs a thread: forget it (records after `kept`, step numbers, held
    /// lines) so the run starts over on a blocking thread.
    pub(crate) fn abandon_inline(&self, kept: usize) {
        self.inline.store(false, Ordering::Relaxed);
        self.held.lock().expect("held lines lock").clear();
        self.pending
            .try_lock()
            .expect("an inline attempt never flushes")
            .truncate(kept);
        self.next_step.store(1, Ordering::Relaxed);
        *self.journaled.lock().expect("journaled lock") = (0, 0);
    }

    /// Emits a line now, or holds it until the inline attempt completes.
    pub(crate) fn emit(&self, line: impl FnOnce() + Send + 'static) {
        if self.inline() {
            self.held
                .lock()
                .expect("held lines lock")
                .push(Box::new(line));
        } else {
            line();
        }
    }

    /// Makes `started` the run's first pending record; `signal` learns whether it became
    /// durable. Called once, before the script runs.
    pub(crate) fn pend_start(&self, started: RecordBody, signal: StartSignal) {
        self.pending
            .try_lock()
            .expect("nothing else holds a new run's pending list")
            .push(started);
        *self.start.lock().expect("start signal lock") = Some(signal);
    }

    /// Whether `RunStarted` failed to be journaled (then nothing else of the run is).
    pub(crate) fn start_failed(&self) -> bool {
        self.start_failed.load(Ordering::Relaxed)
    }

    /// Writes every pending record, the events that joined meanwhile, then `more`, with one
    /// durable append. The first write answers the start signal; if it fails, the run is
    /// stopped and journals nothing more. Once `more` carried `RunFinished`, nothing is written.
    pub(crate) async fn flush(&self, more: Vec<RecordBody>) -> Result<(), String> {
        let mut pending = self.pending.lock().await;
        let joins = std::mem::take(&mut *self.joins.lock().expect("joins lock"));
        if self.start_failed() || self.finished.load(Ordering::SeqCst) {
            let refusal = if self.start_failed() {
                JoinError::Journal("the run's start could not be journaled".to_owned())
            } else {
                JoinError::Finished
            };
            for (_, _, done) in joins {
                let _ = done.send(Err(refusal.clone()));
            }
            return Err("the run's start could not be journaled".to_owned());
        }
        let ends = more
            .iter()
            .any(|b| matches!(b, RecordBody::RunFinished { .. }));
        let mut answers = Vec::with_capacity(joins.len());
        for (record, event, done) in joins {
            pending.push(record);
            answers.push((event, done));
        }
        if let Err(reason) = self.charge(&more) {
            // Nothing past the budget is written; the run ends and says why.
            for (_, done) in answers {
                let _ = done.send(Err(JoinError::Journal(reason.clone())));
            }
            let _ = self.over_budget(reason.clone());
            return Err(reason);
        }
        pending.extend(more);
        if pending.is_empty() {
            return Ok(());
        }
        let drafts = pending.drain(..).map(|b| self.draft(b)).collect();
        let result = self.journal.append_all(drafts).await.map(drop);
        let message = result.as_ref().map_err(|e| error_chain(e)).err();
        if ends && result.is_ok() {
            self.finished.store(true, Ordering::SeqCst);
        }
        let signal = self.start.lock().expect("start signal lock").take();
        if let Some(signal) = signal {
            if result.is_err() {
                self.start_failed.store(true, Ordering::Relaxed);
                self.set_stop(Stop::Cancelled);
            }
            let _ = signal.send(result);
        }
        let joined = !answers.is_empty();
        for (event, done) in answers {
            match &message {
                None => {
                    if event.status == "resolved" {
                        self.resolved.store(true, Ordering::SeqCst);
                    }
                    let _ = done.send(Ok(()));
                }
                Some(m) => {
                    let _ = done.send(Err(JoinError::Journal(m.clone())));
                }
            }
        }
        if joined {
            self.joined.notify_waiters();
        }
        match message {
            Some(message) => Err(message),
            None => Ok(()),
        }
    }

    /// Adds records to the pending list; the next durable write carries them. Past the run's
    /// budget they are dropped and the run stops.
    pub(crate) fn defer(&self, bodies: Vec<RecordBody>) {
        if let Err(reason) = self.charge(&bodies) {
            let _ = self.over_budget(reason);
            return;
        }
        if self.inline() {
            // On an async worker, where nothing flushes while the script runs.
            self.pending
                .try_lock()
                .expect("an inline attempt never flushes")
                .extend(bodies);
        } else {
            // The share is taken back after the lock is released.
            crate::compute::off_cpu(|| self.pending.blocking_lock().extend(bodies));
        }
    }

    /// Steps numbered so far.
    pub(crate) fn steps(&self) -> u32 {
        self.next_step.load(Ordering::Relaxed) - 1
    }

    /// Why the run was stopped from outside, if it was.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        match self.stop.load(Ordering::Relaxed) {
            1 => Some(Stop::Cancelled),
            2 => Some(Stop::TimedOut),
            3 => Some(Stop::Suspended),
            4 => Some(Stop::OverBudget),
            5 => Some(Stop::Denied),
            6 => Some(Stop::Expired),
            7 => Some(Stop::Parked),
            _ => None,
        }
    }

    /// Records and returns a reason to stop, if cancellation or the deadline has come.
    pub(crate) fn check_stop(&self) -> Option<Stop> {
        if let Some(stop) = self.stopped() {
            return Some(stop);
        }
        let stop = if self.cancel.is_cancelled() {
            Stop::Cancelled
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Stop::TimedOut
        } else {
            return None;
        };
        self.set_stop(stop);
        Some(stop)
    }

    pub(crate) fn set_stop(&self, stop: Stop) {
        let _ = self
            .stop
            .compare_exchange(0, stop as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Time left before the deadline (`max` when the run has none).
    pub(crate) fn remaining(&self, max: Duration) -> Duration {
        match self.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(max),
            None => max,
        }
    }

    /// Waits for `future` unless the run is cancelled or its deadline passes first.
    pub(crate) async fn until_stopped<F: std::future::Future>(
        &self,
        future: F,
    ) -> Result<F::Output, Stop> {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = future => Ok(out),
            () = self.cancel.cancelled() => { self.set_stop(Stop::Cancelled); Err(Stop::Cancelled) }
            () = deadline => { self.set_stop(Stop::TimedOut); Err(Stop::TimedOut) }
            // A stop suspends at once, even inside a wait or a connector call: the step is
            // left unfinished in the journal and runs again on resume (a wait for the time it
            // had left; a mutation applies its journaled intent, which finds it done if its
            // write happened).
            () = self.suspend.cancelled() => { self.set_stop(Stop::Suspended); Err(Stop::Suspended) }
        }
    }

    /// Waits for `future` on the script's (blocking) thread, its share of the CPU given to
    /// other scripts meanwhile (see [`crate::compute`]).
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        crate::compute::off_cpu(|| self.handle.block_on(future))
    }

    pub(crate) fn draft(&self, body: RecordBody) -> RecordDraft {
        RecordDraft::new(self.meta.clone(), body)
    }

    /// Appends the pending records and `bodies` durably from the script's (blocking) thread;
    /// a failure fails the step.
    pub(crate) fn journal(&self, bodies: Vec<RecordBody>) -> Result<(), ScriptError> {
        self.block_on(self.flush(bodies)).map_err(|message| {
            script_error(format!(
                "audit journal write failed, step aborted: {message}"
            ))
        })
    }

    /// Sends a line to the caller's progress sink, if any.
    pub(crate) fn forward(&self, line: &str) {
        if let Some(sink) = &self.progress {
            sink(line);
        }
    }

    /// Sends a line to the progress sink, held back during an inline attempt.
    pub(crate) fn forward_held(&self, line: String) {
        if let Some(sink) = self.progress.clone() {
            self.emit(move || sink(&line));
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<RunContext>>> = const { RefCell::new(None) };
}

/// While alive, `cx` is the run of the current thread.
pub(crate) struct Entered(());

pub(crate) fn enter(cx: Arc<RunContext>) -> Entered {
    CURRENT.with(|c| *c.borrow_mut() = Some(cx));
    Entered(())
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// The current thread's run; an error when a step function is called outside one.
pub(crate) fn current() -> Result<Arc<RunContext>, ScriptError> {
    CURRENT
        .with(|c| c.borrow().clone())
        .ok_or_else(|| script_error("steps can only run inside a firebreak run".to_owned()))
}

pub(crate) fn current_run_id() -> Option<String> {
    CURRENT.with(|c| c.borrow().as_ref().map(|cx| cx.meta.run_id.clone()))
}

/// `on_progress`: every 256 operations, stop the script if its run is cancelled or late, and
/// end an inline attempt that ran too long.
pub(crate) fn on_progress(operations: u64) -> Option<Dynamic> {
    if !operations.is_multiple_of(256) {
        return None;
    }
    let cx = CURRENT.with(|c| c.borrow().clone())?;
    if cx.inline() && operations > INLINE_MAX_OPERATIONS {
        return Some(NEEDS_THREAD.into());
    }
    crate::compute::tick();
    cx.check_stop().map(|stop| stop.token().into())
}

/// Bytes of `value` as JSON, counted without building them.
fn json_len(value: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The error that ends an inline attempt.
pub(crate) fn needs_thread() -> ScriptError {
    EvalAltResult::ErrorTerminated(NEEDS_THREAD.into(), Position::NONE).into()
}

/// Whether `error` ended an inline attempt (rather than the run).
pub(crate) fn is_needs_thread(error: &EvalAltResult) -> bool {
    matches!(error, EvalAltResult::ErrorTerminated(token, _) if token.to_string() == NEEDS_THREAD)
}

/// Runs `line` now, or when the current run's inline attempt completes (so a restarted attempt
/// does not print twice). Outside a run: now.
pub(crate) fn emit(line: impl FnOnce() + Send + 'static) {
    match CURRENT.with(|c| c.borrow().clone()) {
        Some(cx) => cx.emit(line),
        None => line(),
    }
}

pub(crate) fn script_error(message: String) -> ScriptError {
    EvalAltResult::ErrorRuntime(message.into(), Position::NONE).into()
}

/// `error: cause: cause` for messages that cross into the script.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// How a leaf step ended.
pub(crate) struct LeafResult {
    pub outcome: Result<Value, StepError>,
    pub status: StepStatus,
    pub attempts: u32,
    /// Records to journal with `StepFinished` (before it), e.g. `Evidence`.
    pub extra: Vec<RecordBody>,
    /// Set when the step ended because the run was stopped.
    pub stop: Option<Stop>,
}

impl LeafResult {
    pub(crate) fn ok(value: Value) -> Self {
        LeafResult {
            outcome: Ok(value),
            status: StepStatus::Ok,
            attempts: 1,
            extra: Vec::new(),
            stop: None,
        }
    }

    pub(crate) fn failed(kind: &str, message: String) -> Self {
        LeafResult {
            outcome: Err(StepError {
                kind: kind.to_owned(),
                message,
            }),
            status: StepStatus::Error,
            attempts: 1,
            extra: Vec::new(),
            stop: None,
        }
    }

    pub(crate) fn stopped(stop: Stop) -> Self {
        let mut result = LeafResult::failed(
            stop.token(),
            format!("run {}", stop.token().replace('_', " ")),
        );
        result.stop = Some(stop);
        result
    }
}

/// How a leaf step is journaled (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Touches the outside world: `StepStarted` is durable before the body runs and
    /// `StepFinished` before the script goes on.
    WriteAhead,
    /// Local and instant: both records join the run's next durable write.
    Deferred,
}

/// The next step number, or a replayed result when an earlier attempt finished this step, or
/// the intent an earlier attempt journaled for it without finishing it.
pub(crate) enum Begin {
    Live(u32),
    Replayed(u32, Value),
    Resumed(u32, Value),
}

/// Numbers the next step and, on resume, looks it up in the earlier attempt.
pub(crate) fn begin(cx: &RunContext, name: &str) -> Result<Begin, ScriptError> {
    if let Some(stop) = cx.check_stop() {
        return Err(stop.error());
    }
    // A shutdown lets the step in flight finish and stops the run before the next one.
    if cx.suspend.is_cancelled() {
        cx.set_stop(Stop::Suspended);
        return Err(Stop::Suspended.error());
    }
    let step = cx.next_step.fetch_add(1, Ordering::Relaxed);
    let diverged = |journaled: &str| {
        script_error(format!(
            "resume diverged at step {step}: the journal has `{journaled}` there, the script now calls `{name}`"
        ))
    };
    let replaying = cx.replaying.lock().expect("replay lock");
    if let Some((journaled, intent)) = replaying.intents.get(&step) {
        return if journaled == name {
            Ok(Begin::Resumed(step, intent.clone()))
        } else {
            Err(diverged(journaled))
        };
    }
    match replaying.finished.get(&step) {
        None => Ok(Begin::Live(step)),
        Some(replay) if replay.name == name => Ok(Begin::Replayed(step, replay.outputs.clone())),
        Some(replay) => Err(diverged(&replay.name)),
    }
}

/// Journals a replayed step and hands its journaled output back to the script.
pub(crate) fn finish_replayed(
    cx: &RunContext,
    step: u32,
    name: &str,
    outputs: Value,
) -> Result<Dynamic, ScriptError> {
    let dynamic = to_dynamic(&outputs);
    if cx.replaying.lock().expect("replay lock").quiet {
        // Replaying after a park: the step is in the trail once already.
        return Ok(dynamic);
    }
    cx.defer(vec![RecordBody::StepFinished {
        step,
        name: name.to_owned(),
        inputs: None,
        status: StepStatus::Replayed,
        outputs,
        error: None,
        duration_ms: 0,
        attempts: 0,
    }]);
    Ok(dynamic)
}

/// Runs a leaf step (a built-in or a connector action): numbers it, replays it on resume,
/// journals it around `body`, and turns its outcome into a script value or error.
pub(crate) fn run_leaf(
    name: &str,
    inputs: Value,
    durability: Durability,
    body: impl FnOnce(&RunContext, u32) -> LeafResult,
) -> Result<Dynamic, ScriptError> {
    let cx = current()?;
    if durability == Durability::WriteAhead && cx.inline() {
        // It would block the async worker: start the run over on a thread of its own.
        return Err(needs_thread());
    }
    let step = match begin(&cx, name)? {
        Begin::Replayed(step, outputs) => return finish_replayed(&cx, step, name, outputs),
        // Only mutations journal intents; another step by that number runs again.
        Begin::Live(step) | Begin::Resumed(step, _) => step,
    };
    let mut pending = Vec::with_capacity(3);
    // The inputs, until a record takes them; none when this step's start is in the trail
    // already. A deferred step's start would join the same durable write as its end: it is
    // journaled only if something comes between them (records the step made, or no end: a
    // suspension, a parking). Otherwise the inputs go into the one `StepFinished`.
    let mut inputs = cx.journals_start(step).then_some(inputs);
    if durability == Durability::WriteAhead
        && let Some(inputs) = inputs.take()
    {
        cx.journal(vec![started_record(step, name, inputs)])?;
    }
    let span = cx.step_span(step, name);
    let started = Instant::now();
    let result = span.in_scope(|| body(&cx, step));
    let duration_ms = record_duration(name, started);
    trace_outcome(&span, &result);
    // A step stopped by a suspension has no end: it runs again when the run resumes. A
    // parked one ends when the run, woken, replays to it.
    let ends = !matches!(result.stop, Some(Stop::Suspended | Stop::Parked));
    if durability == Durability::Deferred
        && (!ends || !result.extra.is_empty())
        && let Some(inputs) = inputs.take()
    {
        pending.push(started_record(step, name, inputs));
    }
    pending.extend(result.extra);
    let (outputs, error) = match &result.outcome {
        Ok(v) => (v.clone(), None),
        Err(e) => (Value::Null, Some(e.clone())),
    };
    if ends {
        pending.push(RecordBody::StepFinished {
            step,
            name: name.to_owned(),
            // Still here only for a deferred step journaled as this one record.
            inputs,
            status: result.status,
            outputs,
            error,
            duration_ms,
            attempts: result.attempts,
        });
    }
    match durability {
        Durability::WriteAhead => cx.journal(pending)?,
        Durability::Deferred => cx.defer(pending),
    }
    if cx.stopped() == Some(Stop::OverBudget) {
        return Err(Stop::OverBudget.error());
    }
    if let Some(stop) = result.stop {
        return Err(stop.error());
    }
    match result.outcome {
        Ok(v) => Ok(to_dynamic(&v)),
        Err(e) => Err(script_error(format!(
            "step {step} `{name}` failed ({}): {}",
            e.kind, e.message
        ))),
    }
}

/// A leaf step's `StepStarted`.
fn started_record(step: u32, name: &str, inputs: Value) -> RecordBody {
    RecordBody::StepStarted {
        step,
        name: name.to_owned(),
        inputs,
        intent: None,
    }
}

/// Records a step's outcome on its span.
fn trace_outcome(span: &tracing::Span, result: &LeafResult) {
    let kind = result.outcome.as_ref().err().map(|e| e.kind.as_str());
    let status = serde_json::to_value(result.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    crate::trace::record_outcome(span, &status, kind);
}

/// A step's duration in ms; a connector action's also in `firebreak_step_duration_seconds`.
fn record_duration(name: &str, started: Instant) -> u64 {
    let elapsed = started.elapsed();
    if let Some((connector, action)) = name.split_once("::") {
        metrics::histogram!(
            "firebreak_step_duration_seconds",
            "connector" => connector.to_owned(),
            "action" => action.to_owned()
        )
        .record(elapsed.as_secs_f64());
    }
    elapsed.as_millis() as u64
}

/// How a mutation's first half ended: the intent, or the step's failure.
pub(crate) type Planned = Result<Value, LeafResult>;

/// Runs a mutating step in two halves (see `firebreak_connector`): `plan` resolves the
/// intent (reads only); the intent is journaled in the write-ahead `StepStarted`; in a dry run
/// the step ends there with `dry_answer(intent)`; otherwise `apply` brings the world to the
/// intent. On resume, a step whose intent is journaled but whose end is not skips `plan` and
/// applies that intent again; a step that finished returns its journaled output.
pub(crate) fn run_mutation(
    name: &str,
    namespace: Option<String>,
    inputs: Value,
    plan: impl FnOnce(&RunContext, u32) -> Planned,
    dry_answer: impl Fn(&Value) -> Value,
    apply: impl FnOnce(&RunContext, u32, &Value) -> LeafResult,
) -> Result<Dynamic, ScriptError> {
    let cx = current()?;
    if cx.inline() {
        return Err(needs_thread());
    }
    let begun = begin(&cx, name)?;
    let (Begin::Live(step) | Begin::Resumed(step, _)) = &begun else {
        let Begin::Replayed(step, outputs) = begun else {
            unreachable!("the other two are matched above")
        };
        return finish_replayed(&cx, step, name, outputs);
    };
    // Planning, the approval wait, the guard and the write, all inside the step's span.
    let span = cx.step_span(*step, name);
    let _entered = span.enter();
    let (step, intent) = match begun {
        Begin::Replayed(..) => unreachable!("returned above"),
        // The write-ahead record with this intent is in the journal already.
        Begin::Resumed(step, intent) => (step, intent),
        Begin::Live(step) => {
            let started = Instant::now();
            match plan(&cx, step) {
                Ok(intent) => {
                    // What no approval could allow is refused before anyone is asked.
                    let needs_approval = cx.needs_approval();
                    let refusal = match needs_approval {
                        true => cx.guard_refusal(name, namespace.as_deref(), &intent, true),
                        false => None,
                    };
                    if refusal.is_none() && needs_approval {
                        let plan = serde_json::json!({
                            "action": name,
                            "inputs": inputs.clone(),
                            "intent": intent,
                            "would": dry_answer(&intent),
                        });
                        cx.await_approval(Some(step), name, None, plan)?;
                    }
                    let refusal = refusal
                        .or_else(|| cx.guard_refusal(name, namespace.as_deref(), &intent, false));
                    if let Some(reason) = refusal {
                        warn!(run_id = %cx.meta.run_id, action = %name, reason = %reason, "action refused by a guard rail");
                        crate::guard::count_refusal(&reason);
                        let mut refused = LeafResult::failed("denied", reason.clone());
                        refused.extra.push(RecordBody::Refusal {
                            step: Some(step),
                            action: name.to_owned(),
                            reason,
                        });
                        let started_record = RecordBody::StepStarted {
                            step,
                            name: name.to_owned(),
                            inputs,
                            intent: None,
                        };
                        return finish_leaf(
                            &cx,
                            step,
                            name,
                            started,
                            refused,
                            vec![started_record],
                        );
                    }
                    cx.journal(vec![RecordBody::StepStarted {
                        step,
                        name: name.to_owned(),
                        inputs,
                        intent: Some(intent.clone()),
                    }])?;
                    (step, intent)
                }
                Err(failed) => {
                    let started_record = RecordBody::StepStarted {
                        step,
                        name: name.to_owned(),
                        inputs,
                        intent: None,
                    };
                    return finish_leaf(&cx, step, name, started, failed, vec![started_record]);
                }
            }
        }
    };
    let started = Instant::now();
    let result = if cx.dry_run {
        let mut result = LeafResult::ok(dry_answer(&intent));
        result.status = StepStatus::Skipped;
        result
    } else if !cx.lease_holds() {
        // Journaling the intent may have waited out the lease (NATS away from this replica):
        // another replica may have the run now. Suspended, the write is left to whoever
        // resumes it, which applies this very intent.
        warn!(run_id = %cx.meta.run_id, action = %name, "the run's lease is not known to hold (NATS unreachable for most of it): suspending the run before its write");
        cx.set_stop(Stop::Suspended);
        LeafResult::stopped(Stop::Suspended)
    } else {
        apply(&cx, step, &intent)
    };
    finish_leaf(&cx, step, name, started, result, Vec::new())
}

/// Journals a write-ahead step's end (after `before`, records not yet journaled) and turns
/// its outcome into a script value or error.
fn finish_leaf(
    cx: &RunContext,
    step: u32,
    name: &str,
    started: Instant,
    result: LeafResult,
    mut before: Vec<RecordBody>,
) -> Result<Dynamic, ScriptError> {
    let duration_ms = record_duration(name, started);
    trace_outcome(&tracing::Span::current(), &result);
    before.extend(result.extra);
    let (outputs, error) = match &result.outcome {
        Ok(v) => (v.clone(), None),
        Err(e) => (Value::Null, Some(e.clone())),
    };
    // A step stopped by a suspension has no end: it runs again when the run resumes.
    if result.stop != Some(Stop::Suspended) {
        before.push(RecordBody::StepFinished {
            step,
            name: name.to_owned(),
            inputs: None,
            status: result.status,
            outputs,
            error,
            duration_ms,
            attempts: result.attempts,
        });
    }
    cx.journal(before)?;
    if let Some(stop) = result.stop {
        return Err(stop.error());
    }
    match result.outcome {
        Ok(v) => Ok(to_dynamic(&v)),
        Err(e) => Err(script_error(format!(
            "step {step} `{name}` failed ({}): {}",
            e.kind, e.message
        ))),
    }
}

/// JSON as a script value, the same as `rhai::serde::to_dynamic` makes of it (`null` is `()`,
/// an integer beyond `i64` a float), built directly: every run's `ctx` holds its event, which
/// takes about 4 % of the engine's CPU per alert, a tenth less this way than through serde.
pub(crate) fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect()),
        Value::Object(map) => Dynamic::from_map(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), to_dynamic(v)))
                .collect(),
        ),
    }
}

/// A script value as JSON; values JSON cannot hold (function pointers, ...) become strings.
pub(crate) fn to_json(value: &Dynamic) -> Value {
    // Variables captured by closures are shared; read through to their current value.
    let flat;
    let value = if value.is_shared() {
        flat = value.flatten_clone();
        &flat
    } else {
        value
    };
    rhai::serde::from_dynamic::<Value>(value).unwrap_or_else(|_| Value::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The direct conversion makes the same script values as rhai's serde path: same types
    /// (an integer stays an `INT`, beyond `i64` it is a float, `null` is `()`), same contents.
    #[test]
    fn to_dynamic_makes_what_rhais_serde_path_makes() {
        let values = [
            json!(null),
            json!(true),
            json!(0),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!("fraud-model v2 é ✓"),
            json!([]),
            json!({}),
            json!([1, "two", null, [3.5, false], {"k": "v"}]),
            json!({
                "labels": {"alertname": "ModelLatencyHigh", "namespace": "team-a"},
                "annotations": {},
                "nested": {"a": [{"b": {"c": [1, 2, u64::MAX]}}], "x": null},
                "": "empty key",
            }),
        ];
        for value in values {
            let ours = to_dynamic(&value);
            let theirs: Dynamic = rhai::serde::to_dynamic(&value).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "{value}");
            assert_eq!(ours.type_name(), theirs.type_name(), "{value}");
            let back: Value = rhai::serde::from_dynamic(&ours).unwrap();
            let expected: Value = rhai::serde::from_dynamic(&theirs).unwrap();
            assert_eq!(back, expected, "{value}");
        }
    }
}
