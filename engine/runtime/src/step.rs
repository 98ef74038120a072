//! The run that owns the current thread, and the journaling every step goes through.
//!
//! Start at [`RunContext`] and [`run_leaf`]. A script runs on one blocking thread for its
//! whole life; [`enter`] puts its [`RunContext`] in a thread-local so the engine-wide
//! callbacks (`on_progress`, the step functions, connector modules) find their run without a
//! per-run engine. Every step gets the next step number; Rust, not the script, journals
//! `StepStarted` (durably, before anything happens) and `StepFinished` around it.
//!
//! Resume: a context built from an earlier attempt's journal holds the outputs of the steps
//! that finished then ([`Replay`]); a step with the same number and name returns the journaled
//! output instead of running again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use firebreak_audit::{Journal, RecordBody, RecordDraft, RunMeta, StepError, StepStatus};
use firebreak_connector::ProgressSink;
use rhai::{Dynamic, EvalAltResult, Position};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

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
}

impl Stop {
    fn token(self) -> &'static str {
        match self {
            Stop::Cancelled => "cancelled",
            Stop::TimedOut => "timed_out",
            Stop::Suspended => "suspended",
        }
    }

    /// The uncatchable error that unwinds the script.
    pub(crate) fn error(self) -> ScriptError {
        EvalAltResult::ErrorTerminated(self.token().into(), Position::NONE).into()
    }
}

/// A step that finished in an earlier attempt of this run.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub name: String,
    pub outputs: Value,
}

/// Everything the step functions need to know about the run on this thread.
pub(crate) struct RunContext {
    pub meta: Arc<RunMeta>,
    pub namespaces: Vec<String>,
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
    /// Finished steps of an earlier attempt, by step number.
    pub replay: HashMap<u32, Replay>,
    next_step: AtomicU32,
    stop: AtomicU8,
}

impl RunContext {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        meta: Arc<RunMeta>,
        namespaces: Vec<String>,
        dry_run: bool,
        journal: Arc<Journal>,
        handle: Handle,
        cancel: CancellationToken,
        suspend: CancellationToken,
        deadline: Option<Instant>,
        progress: Option<ProgressSink>,
        settings: &crate::runner::RunnerConfig,
        replay: HashMap<u32, Replay>,
    ) -> Self {
        RunContext {
            meta,
            namespaces,
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
            replay,
            next_step: AtomicU32::new(1),
            stop: AtomicU8::new(0),
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
        }
    }

    pub(crate) fn draft(&self, body: RecordBody) -> RecordDraft {
        RecordDraft::new(self.meta.clone(), body)
    }

    /// Appends records durably from the script's (blocking) thread; a failure fails the step.
    pub(crate) fn journal(&self, bodies: Vec<RecordBody>) -> Result<(), ScriptError> {
        let drafts = bodies.into_iter().map(|b| self.draft(b)).collect();
        self.handle
            .block_on(self.journal.append_all(drafts))
            .map(drop)
            .map_err(|e| {
                script_error(format!(
                    "audit journal write failed, step aborted: {}",
                    error_chain(&e)
                ))
            })
    }

    /// Sends a line to the caller's progress sink, if any.
    pub(crate) fn forward(&self, line: &str) {
        if let Some(sink) = &self.progress {
            sink(line);
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

/// `on_progress`: every 256 operations, stop the script if its run is cancelled or late.
pub(crate) fn on_progress(operations: u64) -> Option<Dynamic> {
    if !operations.is_multiple_of(256) {
        return None;
    }
    let cx = CURRENT.with(|c| c.borrow().clone())?;
    cx.check_stop().map(|stop| stop.token().into())
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

/// Whether `StepStarted` must be durable before the step's body runs (anything touching the
/// outside world), or may be journaled together with `StepFinished` (local, instant steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    WriteAhead,
    AfterTheFact,
}

/// The next step number, or a replayed result when an earlier attempt finished this step.
pub(crate) enum Begin {
    Live(u32),
    Replayed(u32, Value),
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
    match cx.replay.get(&step) {
        None => Ok(Begin::Live(step)),
        Some(replay) if replay.name == name => Ok(Begin::Replayed(step, replay.outputs.clone())),
        Some(replay) => Err(script_error(format!(
            "resume diverged at step {step}: the journal has `{}` there, the script now calls `{name}`",
            replay.name
        ))),
    }
}

/// Journals a replayed step and hands its journaled output back to the script.
pub(crate) fn finish_replayed(
    cx: &RunContext,
    step: u32,
    name: &str,
    outputs: Value,
) -> Result<Dynamic, ScriptError> {
    let dynamic = to_dynamic(&outputs)?;
    cx.journal(vec![RecordBody::StepFinished {
        step,
        name: name.to_owned(),
        status: StepStatus::Replayed,
        outputs,
        error: None,
        duration_ms: 0,
        attempts: 0,
    }])?;
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
    let step = match begin(&cx, name)? {
        Begin::Replayed(step, outputs) => return finish_replayed(&cx, step, name, outputs),
        Begin::Live(step) => step,
    };
    let started_record = RecordBody::StepStarted {
        step,
        name: name.to_owned(),
        inputs,
    };
    let mut pending = Vec::with_capacity(3);
    match durability {
        Durability::WriteAhead => cx.journal(vec![started_record])?,
        Durability::AfterTheFact => pending.push(started_record),
    }
    let started = Instant::now();
    let result = body(&cx, step);
    let duration_ms = started.elapsed().as_millis() as u64;
    pending.extend(result.extra);
    let (outputs, error) = match &result.outcome {
        Ok(v) => (v.clone(), None),
        Err(e) => (Value::Null, Some(e.clone())),
    };
    pending.push(RecordBody::StepFinished {
        step,
        name: name.to_owned(),
        status: result.status,
        outputs,
        error,
        duration_ms,
        attempts: result.attempts,
    });
    cx.journal(pending)?;
    if let Some(stop) = result.stop {
        return Err(stop.error());
    }
    match result.outcome {
        Ok(v) => to_dynamic(&v),
        Err(e) => Err(script_error(format!(
            "step {step} `{name}` failed ({}): {}",
            e.kind, e.message
        ))),
    }
}

pub(crate) fn to_dynamic(value: &Value) -> Result<Dynamic, ScriptError> {
    rhai::serde::to_dynamic(value)
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
