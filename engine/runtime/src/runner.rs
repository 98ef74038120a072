//! Starting, resuming and finishing runs. Start at [`Runner::start`].
//!
//! One [`Runner`] per process: one shared engine (built once), the journal, a semaphore that
//! bounds how many scripts run at once, and the tokio handle connectors run on. A run is: the
//! script on a blocking thread, `run_started` durable with the run's first durable write (only
//! then does `start` return, so the caller may ack the bus message), then `run_finished`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firebreak_audit::{
    ApprovalPolicy, AuditError, CanonicalJson, Journal, Record, RecordBody, RecordDraft, RunMeta,
    RunStatus, StepStatus,
};
use firebreak_connector::{ProgressSink, Registry};
use firebreak_event::Event;
use rhai::{AST, Dynamic, Engine, EvalAltResult, Scope};
use serde_json::{Map, Value};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::approval::{Decision, DecisionError, Pending, Standing};
use crate::compute::Compute;
use crate::policy::RetryPolicy;
use crate::reference::{self, CtxKey, LimitDoc};
use crate::sandbox::{Limits, build_engine};
use crate::script::{CtxReads, Script};
use crate::step::{
    self, Earlier, JoinError, JoinedEvent, Replay, RunContext, START_FLUSH_AFTER, Stop, to_dynamic,
};

/// How the runner runs scripts.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub limits: Limits,
    /// Scripts running at once; further `start`s wait for a slot.
    pub max_concurrent_runs: usize,
    /// Scripts computing at once (see [`crate::compute`]); a script waiting in a step does
    /// not count. Default: as many as the cores.
    pub max_computing_scripts: usize,
    /// Longest single attempt of a connector call; an action that waits by design
    /// ([`firebreak_connector::ActionSpec::waits`]) gets its wait plus a margin
    /// (`connectors::WAIT_MARGIN`) instead when that is longer. The run's deadline bounds
    /// every call.
    pub action_timeout: Duration,
    pub retry: RetryPolicy,
    pub budget: Budget,
    /// A `sleep` at least this long parks its run instead of holding a blocking thread: the
    /// script unwinds, the run waits on a timer, then replays its finished steps from the
    /// journal (quietly) up to the sleep and goes on. `None`: every sleep holds its thread.
    pub park_after: Option<Duration>,
}

/// What one run may use; spending any of it ends the run (failed, with the reason journaled)
/// and leaves every other run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes the script's variables hold (strings, arrays, maps, blobs, measured whenever a
    /// variable is defined). With the per-value limits in [`Limits`] this bounds a run's
    /// memory at about this plus one value.
    pub max_script_bytes: u64,
    /// Audit records the run may write (its end record is always written).
    pub max_records: u64,
    /// Bytes of audit records the run may write.
    pub max_journal_bytes: u64,
    /// Bytes of one evidence record.
    pub max_evidence_bytes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_script_bytes: 16 << 20,
            max_records: 10_000,
            max_journal_bytes: 16 << 20,
            max_evidence_bytes: 1 << 20,
        }
    }
}

impl Budget {
    /// Each budget, its value and its setting in firebreak.yaml, for the reference.
    pub fn docs(&self) -> Vec<LimitDoc> {
        vec![
            LimitDoc {
                name: "script memory",
                value: reference::bytes(self.max_script_bytes),
                setting: Some("limits.max_script_bytes"),
                doc: "bytes the script's variables hold, measured whenever one is defined",
            },
            LimitDoc {
                name: "audit records",
                value: reference::count(self.max_records),
                setting: Some("limits.max_run_records"),
                doc: "records one run may write (its end record is always written)",
            },
            LimitDoc {
                name: "audit bytes",
                value: reference::bytes(self.max_journal_bytes),
                setting: Some("limits.max_run_journal_bytes"),
                doc: "bytes of records one run may write",
            },
            LimitDoc {
                name: "evidence record",
                value: reference::bytes(self.max_evidence_bytes),
                setting: Some("limits.max_evidence_bytes"),
                doc: "bytes of one evidence record: an `evidence(...)` value, or an observing \
                      action's answer",
            },
        ]
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            limits: Limits::default(),
            // Measured on 2 cores: 64-128 blocking script threads give the most runs/s; more
            // threads only add context switches.
            max_concurrent_runs: 128,
            max_computing_scripts: crate::compute::default_shares(),
            action_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            budget: Budget::default(),
            park_after: Some(PARK_AFTER),
        }
    }
}

/// The default [`RunnerConfig::park_after`]: a thread costs more than a replay past this.
pub const PARK_AFTER: Duration = Duration::from_secs(2);

/// Where a run may act: its runbook's namespaces and its team's cluster-scoped grants.
pub(crate) struct RunScope {
    pub namespaces: Vec<String>,
    pub cluster_actions: Option<Vec<String>>,
    pub approval: Option<ApprovalPolicy>,
}

/// Everything one run needs, as plain values (the binary maps its runbook types onto it).
pub struct RunPlan {
    pub run_id: String,
    pub runbook: String,
    pub team: String,
    /// Namespaces the runbook may act on; mutating actions elsewhere are refused.
    pub namespaces: Vec<String>,
    /// Cluster-scoped mutating actions (`k8s::cordon`, ...) the runbook's team is granted
    /// by the teams file; `None` without a teams file (single tenant: no restriction).
    pub cluster_actions: Option<Vec<String>>,
    /// Who must approve before the run's first mutating action (see [`crate::approval`]);
    /// `None`: nobody. Its expiry should be part of `timeout`.
    pub approval: Option<ApprovalPolicy>,
    /// The compiled script (see [`crate::compile`]).
    pub ast: Arc<Script>,
    pub event: Arc<Event>,
    pub params: Map<String, Value>,
    /// Who started the run (`alertmanager`, a user).
    pub actor: String,
    /// Mutating actions describe what they would do and change nothing.
    pub dry_run: bool,
    /// The whole run's time budget; past it the run ends `timed_out`.
    pub timeout: Duration,
    /// Receives `log` lines and connectors' progress lines (the CLI prints them).
    pub progress: Option<ProgressSink>,
    pub cancel: CancellationToken,
    /// The concurrency lock the run holds, journaled so a resumed run can take it again.
    pub lock_key: Option<String>,
    /// The cooldown put on `lock_key` when the run ends (zero: none).
    pub cooldown: Duration,
    /// Started from a person's terminal: never resumed by someone else (see
    /// [`Runner::abandon`]).
    pub interactive: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub run_id: String,
    pub status: RunStatus,
    pub error: Option<String>,
    /// Steps taken (replayed ones included).
    pub steps: u32,
    /// The engine shut down between two steps: nothing was journaled as the run's end, and
    /// the next start resumes it.
    pub suspended: bool,
}

/// A started run.
pub struct RunHandle {
    run_id: String,
    cancel: CancellationToken,
    task: JoinHandle<RunOutcome>,
    link: RunLink,
}

/// A cheap, cloneable way to reach a running run: hand it events about its incident.
#[derive(Clone)]
pub struct RunLink {
    cx: Arc<RunContext>,
}

impl RunLink {
    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.cx.meta.run_id
    }

    /// Hands an event about the run's incident to the run (the alert resolved, or fired
    /// again). `Ok` once an `event_joined` record is durable in the run's trail; the script
    /// sees it through `resolved()` and `wait_resolved(timeout)`. `Err(Finished)` when the run
    /// ended first.
    pub async fn join(&self, event: JoinedEvent) -> Result<(), JoinError> {
        self.cx.join(event).await
    }

    /// One person's decision on the run's approval request (see [`crate::approval`]).
    pub async fn decide(&self, decision: Decision) -> Result<Standing, DecisionError> {
        self.cx.decide(decision).await
    }

    /// The approval request the run waits on, if it does.
    pub fn pending(&self) -> Option<Pending> {
        self.cx.pending()
    }

    /// Stops the run here at once, even inside a wait, without journaling an end (as a
    /// shutdown does): another replica that took the run over goes on with it.
    pub fn suspend(&self) {
        self.cx.suspend.cancel();
    }

    /// Asks the run to stop; it ends `cancelled` with `reason` at its next operation or wait.
    pub fn cancel_because(&self, reason: &str) {
        *self.cx.cancel_reason.lock().expect("cancel reason lock") = Some(reason.to_owned());
        self.cx.cancel.cancel();
    }
}

impl RunHandle {
    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// A link to hand the running run events (see [`RunLink::join`]).
    pub fn link(&self) -> RunLink {
        self.link.clone()
    }

    /// Asks the run to stop; it ends `cancelled` at its next operation or wait.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Like [`RunHandle::cancel`], with the reason its end record gives
    /// (`cancelled by ann (Ctrl-C)`).
    pub fn cancel_because(&self, reason: &str) {
        self.link.cancel_because(reason);
    }

    /// Waits for the run to end (its `run_finished` record is durable by then).
    pub async fn join(self) -> RunOutcome {
        let run_id = self.run_id;
        self.task.await.unwrap_or_else(|e| RunOutcome {
            run_id,
            status: RunStatus::Failed,
            error: Some(format!("run thread panicked: {e}")),
            steps: 0,
            suspended: false,
        })
    }
}

/// Why a run could not be started or resumed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot journal the start of run {run_id}")]
    Journal {
        run_id: String,
        #[source]
        source: AuditError,
    },
    #[error("cannot read run {run_id} from the journal")]
    ReadJournal {
        run_id: String,
        #[source]
        source: AuditError,
    },
    #[error("run {run_id} is not in the journal")]
    UnknownRun { run_id: String },
    #[error("run {run_id} has already finished")]
    AlreadyFinished { run_id: String },
    #[error("run {run_id} does not begin with a run_started record")]
    NoStart { run_id: String },
    #[error("run {run_id} was started by `firebreak run` and is not resumed by anyone else")]
    Interactive { run_id: String },
    #[error("run {run_id} ended before its start was journaled")]
    Lost { run_id: String },
    #[error(
        "run {run_id} lost its lock's lease before it started or resumed (this replica was cut off from NATS for longer than a lease); not run here"
    )]
    LeaseLost { run_id: String },
    #[error("the runner is shutting down")]
    ShuttingDown,
}

/// Runs scripts: one shared engine, a bound on concurrent runs, the journal.
pub struct Runner {
    engine: Arc<Engine>,
    journal: Arc<Journal>,
    slots: Arc<Semaphore>,
    /// Shares of the CPU for scripts on blocking threads.
    compute: Arc<Compute>,
    handle: Handle,
    config: RunnerConfig,
    /// Cancelled by [`Runner::suspend`].
    suspend: CancellationToken,
    guard: Option<crate::Guard>,
    /// Asked before each mutation of a run holding a lock (see [`crate::guard::Fence`]).
    fence: Option<crate::Fence>,
    /// Where `once` decisions are shared with other replicas (see [`crate::memory`]).
    memory: Option<Arc<dyn crate::IncidentMemory>>,
}

impl Runner {
    /// Builds the engine once, with every connector of `registry`. Must be called inside a
    /// tokio runtime (multi-thread in production); connectors run on it.
    pub fn new(registry: &Registry, journal: Arc<Journal>, config: RunnerConfig) -> Runner {
        Runner {
            engine: Arc::new(build_engine(&config.limits, registry)),
            journal,
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            compute: Arc::new(Compute::new(config.max_computing_scripts)),
            handle: Handle::current(),
            config,
            suspend: CancellationToken::new(),
            guard: None,
            fence: None,
            memory: None,
        }
    }

    /// Asks `guard` before every mutation of every run (see [`crate::guard`]).
    pub fn with_guard(mut self, guard: crate::Guard) -> Runner {
        self.guard = Some(guard);
        self
    }

    /// Asks `fence` right before each mutation of a run that holds a lock whether this
    /// replica's lease on that lock still holds; a run whose lease is not known to hold
    /// suspends before the write (see [`crate::guard::Fence`]).
    pub fn with_fence(mut self, fence: crate::Fence) -> Runner {
        self.fence = Some(fence);
        self
    }

    /// The lease a run holding lock `key` keeps, when this runner fences runs.
    fn lease(&self, key: Option<&str>) -> Option<crate::guard::Lease> {
        Some(crate::guard::Lease {
            fence: self.fence.clone()?,
            key: key?.to_owned(),
        })
    }

    /// Shares `once` decisions through `memory` instead of finding them in the local journal
    /// only (see [`crate::memory`]).
    pub fn with_memory(mut self, memory: Arc<dyn crate::IncidentMemory>) -> Runner {
        self.memory = Some(memory);
        self
    }

    /// For a graceful shutdown: every run stops before its next step without journaling an
    /// end (the step in flight finishes), so the next start resumes it from the journal.
    pub fn suspend(&self) {
        self.suspend.cancel();
    }

    /// The shared engine (e.g. to list registered functions).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The journal runs are written to.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Waits for a slot, starts the script on a blocking thread and returns once its
    /// `run_started` record is durable. That record joins the run's first durable write (see
    /// [`crate::step`]): before its first action, at its end, or [`START_FLUSH_AFTER`] in,
    /// whichever comes first, so a run of local steps costs one journal write, not three.
    /// If `run_started` cannot be journaled the run is stopped and nothing of it is.
    ///
    /// [`START_FLUSH_AFTER`]: crate::step::START_FLUSH_AFTER
    pub async fn start(&self, plan: RunPlan) -> Result<RunHandle, RuntimeError> {
        let permit = self.slot().await?;
        // A start that waited for its slot may have lost its lease meanwhile (this replica cut
        // off from NATS for longer than a lease: another replica took the lock over, found
        // nothing started, and let it go). Started now, the run would act without its lock
        // and stop at its first renewal, with no lock left for anyone to resume it by.
        if let Some(lease) = self.lease(plan.lock_key.as_deref())
            && !(lease.fence)(&lease.key, &plan.run_id)
        {
            return Err(RuntimeError::LeaseLost {
                run_id: plan.run_id,
            });
        }
        let meta = Arc::new(RunMeta {
            run_id: plan.run_id,
            runbook: plan.runbook,
            team: plan.team,
            actor: plan.actor,
            event_id: plan.event.id.clone(),
        });
        // Logged here, before the script runs, so the run's lines read in the order it ran;
        // a start that fails to be journaled is logged as such after it.
        info!(run_id = %meta.run_id, runbook = %meta.runbook, key = plan.lock_key.as_deref(), event_id = %meta.event_id, dry_run = plan.dry_run, "run started");
        let (span, trace_id) = crate::trace::run_span(&meta, plan.event.traceparent.as_deref());
        let params = Value::Object(plan.params);
        let ctx = script_ctx(
            &meta,
            &|| plan.event.to_json(),
            Some(&plan.event.data),
            &params,
            plan.dry_run,
            plan.ast.reads(),
        );
        let lease = self.lease(plan.lock_key.as_deref());
        let started = RecordBody::RunStarted {
            event: journaled_event(&plan.event),
            params,
            dry_run: plan.dry_run,
            namespaces: plan.namespaces.clone(),
            cluster_actions: plan.cluster_actions.clone(),
            timeout_ms: Some(plan.timeout.as_millis() as u64),
            lock_key: plan.lock_key,
            cooldown_ms: (!plan.cooldown.is_zero()).then_some(plan.cooldown.as_millis() as u64),
            interactive: plan.interactive,
            approval: plan.approval.clone(),
            trace_id,
        };
        let cx = self.context(
            meta,
            RunScope {
                namespaces: plan.namespaces,
                cluster_actions: plan.cluster_actions,
                approval: plan.approval,
            },
            plan.dry_run,
            plan.timeout,
            plan.cancel,
            plan.progress,
            span,
            Earlier::default(),
            lease,
        );
        let (signal, journaled) = oneshot::channel();
        cx.pend_start(started, signal);
        let run_id = cx.meta.run_id.clone();
        let handle = self.launch(cx, plan.ast, ctx, permit);
        match journaled.await {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(source)) => Err(RuntimeError::Journal { run_id, source }),
            Err(_) => Err(RuntimeError::Lost { run_id }),
        }
    }

    /// Reads an unfinished run (a `run_started` and no `run_finished`) back from the journal,
    /// for [`Runner::resume`] or [`Runner::abandon`]. The caller learns what the run held (its
    /// lock and cooldown) before it goes on.
    pub fn prepare_resume(&self, run_id: &str) -> Result<ResumePlan, RuntimeError> {
        let records =
            self.journal
                .records_for_run(run_id)
                .map_err(|source| RuntimeError::ReadJournal {
                    run_id: run_id.to_owned(),
                    source,
                })?;
        Self::plan_from_records(run_id, &records)
    }

    /// [`Runner::prepare_resume`] from a run's records read elsewhere: the audit stream, when
    /// this replica takes over a run another one left (records of other runs are ignored).
    pub fn plan_from_records(run_id: &str, records: &[Record]) -> Result<ResumePlan, RuntimeError> {
        let records: Vec<&Record> = records.iter().filter(|r| r.run_id == run_id).collect();
        let Some(first) = records.first() else {
            return Err(RuntimeError::UnknownRun {
                run_id: run_id.to_owned(),
            });
        };
        let RecordBody::RunStarted {
            event,
            params,
            dry_run,
            namespaces,
            cluster_actions,
            timeout_ms,
            lock_key,
            cooldown_ms,
            interactive,
            approval,
            ..
        } = &first.body
        else {
            return Err(RuntimeError::NoStart {
                run_id: run_id.to_owned(),
            });
        };
        if records
            .iter()
            .any(|r| matches!(r.body, RecordBody::RunFinished { .. }))
        {
            return Err(RuntimeError::AlreadyFinished {
                run_id: run_id.to_owned(),
            });
        }
        let earlier = earlier_from(&records);
        Ok(ResumePlan {
            meta: Arc::new(RunMeta {
                run_id: first.run_id.clone(),
                runbook: first.runbook.clone(),
                team: first.team.clone(),
                actor: first.actor.clone(),
                event_id: first.event_id.clone(),
            }),
            event: event.value(),
            params: params.clone(),
            dry_run: *dry_run,
            scope: RunScope {
                namespaces: namespaces.clone(),
                cluster_actions: cluster_actions.clone(),
                approval: approval.clone(),
            },
            timeout: Duration::from_millis(timeout_ms.unwrap_or(3_600_000)),
            lock_key: lock_key.clone(),
            cooldown: Duration::from_millis(cooldown_ms.unwrap_or(0)),
            interactive: *interactive,
            earlier,
        })
    }

    /// Re-runs an unfinished run after a restart: the context comes from `run_started`, the
    /// script runs again from the top, every step that finished before (same number, same
    /// name) returns its journaled output without running again, and a mutation whose intent
    /// was journaled but whose end was not applies that intent (finding it done if its write
    /// happened). The timeout starts afresh. Params journaled as `[redacted]` stay redacted.
    /// An interactive run is refused: see [`Runner::abandon`].
    pub async fn resume(
        &self,
        plan: ResumePlan,
        ast: Arc<Script>,
    ) -> Result<RunHandle, RuntimeError> {
        let run_id = plan.meta.run_id.clone();
        if plan.interactive {
            return Err(RuntimeError::Interactive { run_id });
        }
        let permit = self.slot().await?;
        // As at a start: a resume that waited for its slot may have lost its lease meanwhile.
        if let Some(lease) = self.lease(plan.lock_key.as_deref())
            && !(lease.fence)(&lease.key, &run_id)
        {
            return Err(RuntimeError::LeaseLost { run_id });
        }
        let replayable = plan.earlier.finished.len();
        self.journal
            .append(RecordDraft::new(
                plan.meta.clone(),
                RecordBody::RunResumed {
                    replayable_steps: replayable as u32,
                },
            ))
            .await
            .map_err(|source| RuntimeError::Journal {
                run_id: run_id.clone(),
                source,
            })?;
        info!(run_id = %run_id, runbook = %plan.meta.runbook, replayable_steps = replayable, pending_intents = plan.earlier.intents.len(), "run resumed");
        let ctx = script_ctx(
            &plan.meta,
            &|| plan.event.clone(),
            plan.event.get("data"),
            &plan.params,
            plan.dry_run,
            ast.reads(),
        );
        let traceparent = plan.event.get("traceparent").and_then(Value::as_str);
        let (span, _) = crate::trace::run_span(&plan.meta, traceparent);
        let lease = self.lease(plan.lock_key.as_deref());
        let cx = self.context(
            plan.meta,
            plan.scope,
            plan.dry_run,
            plan.timeout,
            CancellationToken::new(),
            None,
            span,
            plan.earlier,
            lease,
        );
        Ok(self.launch(cx, ast, ctx, permit))
    }

    /// Journals the end of an unfinished run that ended elsewhere (another replica took it
    /// over and finished it): `status` as it ended there, with `reason`.
    pub async fn close(
        &self,
        plan: &ResumePlan,
        status: RunStatus,
        reason: &str,
    ) -> Result<(), RuntimeError> {
        self.journal
            .append(RecordDraft::new(
                plan.meta.clone(),
                RecordBody::RunFinished {
                    status,
                    error: Some(reason.to_owned()),
                },
            ))
            .await
            .map(drop)
            .map_err(|source| RuntimeError::Journal {
                run_id: plan.meta.run_id.clone(),
                source,
            })
    }

    /// Closes an unfinished run that must not be resumed (one started from a terminal that
    /// went away): journals its end as cancelled with `reason`.
    pub async fn abandon(&self, plan: &ResumePlan, reason: &str) -> Result<(), RuntimeError> {
        self.close(plan, RunStatus::Cancelled, reason).await
    }

    /// Stops taking new runs and waits until every running one has finished.
    pub async fn drain(&self) {
        let all = u32::try_from(self.config.max_concurrent_runs).unwrap_or(u32::MAX);
        if let Ok(permits) = self.slots.acquire_many(all).await {
            permits.forget();
        }
        self.slots.close();
    }

    /// A run slot, unless the runner is suspended (the engine stops) first: a start that waits
    /// for a slot then gives up, journaling nothing (its delivery comes back). It took the slot
    /// each suspended run freed, journaled its start and suspended in turn, so a replica
    /// stopping with thousands of deliveries waiting spent its grace period on them.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, RuntimeError> {
        if self.suspend.is_cancelled() {
            return Err(RuntimeError::ShuttingDown);
        }
        tokio::select! {
            biased;
            () = self.suspend.cancelled() => Err(RuntimeError::ShuttingDown),
            permit = self.slots.clone().acquire_owned() => {
                permit.map_err(|_| RuntimeError::ShuttingDown)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn context(
        &self,
        meta: Arc<RunMeta>,
        scope: RunScope,
        dry_run: bool,
        timeout: Duration,
        cancel: CancellationToken,
        progress: Option<ProgressSink>,
        span: tracing::Span,
        earlier: Earlier,
        lease: Option<crate::guard::Lease>,
    ) -> Arc<RunContext> {
        Arc::new(RunContext::new(
            meta,
            scope,
            dry_run,
            self.journal.clone(),
            self.handle.clone(),
            cancel,
            // Its own, so one run can be suspended (its lease went to another replica), and
            // a child of the runner's, so a shutdown suspends them all.
            self.suspend.child_token(),
            Instant::now().checked_add(timeout),
            progress,
            &self.config,
            self.guard.clone(),
            lease,
            self.memory.clone(),
            span,
            earlier,
        ))
    }

    fn launch(
        &self,
        cx: Arc<RunContext>,
        ast: Arc<Script>,
        ctx: Dynamic,
        permit: OwnedSemaphorePermit,
    ) -> RunHandle {
        let engine = self.engine.clone();
        let run_id = cx.meta.run_id.clone();
        let cancel = cx.cancel.clone();
        let link = RunLink { cx: cx.clone() };
        // The script holds a blocking thread; its end is journaled from a task, so the thread
        // is free as soon as the script is done.
        let slots = self.slots.clone();
        let compute = self.compute.clone();
        let task = tokio::spawn(async move {
            let mut permit = Some(permit);
            // Fast path: short scripts of local steps finish right here, on the worker.
            // `first`: the attempt on a thread may still owe the run's first durable write.
            // `parked`: the last attempt parked in a long wait (see `park`).
            let (ctx, mut first, mut parked) = match execute_inline(&engine, &ast, &cx, ctx) {
                Inline::Ended(status, error) => {
                    cx.leave_inline(true).await;
                    return end(&cx, status, error, permit.take()).await;
                }
                Inline::NeedsThread(Ok(ctx)) => (ctx, true, false),
                Inline::NeedsThread(Err(error)) => {
                    cx.leave_inline(false).await;
                    let (status, error) = classify(Err(error), &cx);
                    return end(&cx, status, error, permit.take()).await;
                }
                // Parked without ever needing a thread: woken, it goes on on one.
                Inline::Parked(ctx) => (ctx, false, true),
            };
            cx.leave_inline(false).await;
            loop {
                if std::mem::take(&mut parked) {
                    // Woken, the script runs again, replaying up to its wait.
                    if let Err(stop) = park_without_slot(&cx, &mut permit, &slots).await {
                        let (status, error) = classify(Err(stop.error()), &cx);
                        return end(&cx, status, error, permit.take()).await;
                    }
                }
                let (script_cx, engine, ast, ctx, compute) = (
                    cx.clone(),
                    engine.clone(),
                    ast.clone(),
                    ctx.clone(),
                    compute.clone(),
                );
                let script = tokio::task::spawn_blocking(move || {
                    execute(&engine, &ast, &script_cx, ctx, &compute)
                });
                tokio::pin!(script);
                let result = if std::mem::take(&mut first) {
                    tokio::select! {
                        result = &mut script => result,
                        () = tokio::time::sleep(START_FLUSH_AFTER) => {
                            // Still running: journal the start now (a failure stops the run).
                            let _ = cx.flush(Vec::new()).await;
                            script.await
                        }
                    }
                } else {
                    script.await
                };
                let (status, error) = match result {
                    Ok(ended) => ended,
                    Err(e) => (RunStatus::Failed, Some(format!("run thread panicked: {e}"))),
                };
                if cx.stopped() == Some(Stop::Parked) {
                    parked = true;
                    continue;
                }
                return end(&cx, status, error, permit.take()).await;
            }
        });
        RunHandle {
            run_id,
            cancel,
            task,
            link,
        }
    }
}

/// An unfinished run read back from the journal (see [`Runner::prepare_resume`]).
pub struct ResumePlan {
    meta: Arc<RunMeta>,
    event: Value,
    params: Value,
    dry_run: bool,
    scope: RunScope,
    timeout: Duration,
    lock_key: Option<String>,
    cooldown: Duration,
    interactive: bool,
    earlier: Earlier,
}

impl ResumePlan {
    pub fn run_id(&self) -> &str {
        &self.meta.run_id
    }

    /// The event that started the run, as journaled.
    pub fn event(&self) -> &Value {
        &self.event
    }

    /// Who and what the run is (for records about it).
    pub fn meta(&self) -> &Arc<RunMeta> {
        &self.meta
    }

    pub fn runbook(&self) -> &str {
        &self.meta.runbook
    }

    /// The concurrency lock the run held.
    pub fn lock_key(&self) -> Option<&str> {
        self.lock_key.as_deref()
    }

    /// The cooldown to put on the lock's key when the run ends.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// The run's whole time budget (the lock is held that long plus some slack).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Started from `firebreak run`: never resumed by anyone else.
    pub fn interactive(&self) -> bool {
        self.interactive
    }
}

/// What a run's records say an attempt resuming it must replay (finished steps), apply
/// again (journaled intents), and wait for what is left (waits begun).
fn earlier_from(records: &[&Record]) -> Earlier {
    let mut earlier = Earlier {
        gate: crate::approval::Gate::replay(records.iter().copied()),
        ..Earlier::default()
    };
    for record in records {
        match &record.body {
            RecordBody::StepFinished {
                step,
                name,
                status: StepStatus::Ok | StepStatus::Replayed | StepStatus::Skipped,
                outputs,
                ..
            } => {
                earlier.finished.insert(
                    *step,
                    Replay {
                        name: name.clone(),
                        outputs: outputs.clone(),
                    },
                );
            }
            RecordBody::StepStarted {
                step, name, intent, ..
            } => {
                // The wait began at the step's first start: a resumed or woken step journals
                // its start again, and waits only what is left of the first.
                earlier.started_at.entry(*step).or_insert(record.time);
                if let Some(intent) = intent {
                    earlier
                        .intents
                        .insert(*step, (name.clone(), intent.clone()));
                }
            }
            RecordBody::EventJoined { status, .. } if status == "resolved" => {
                earlier.resolved = true;
            }
            _ => {}
        }
    }
    // An intent (or a wait) whose step ended, in any way, is not pending any more.
    for record in records {
        if let RecordBody::StepFinished { step, .. } = &record.body {
            earlier.intents.remove(step);
            earlier.started_at.remove(step);
        }
    }
    earlier
}

/// How an inline attempt ended.
enum Inline {
    /// The run is over (its records are pending, for [`end`] to journal).
    Ended(RunStatus, Option<String>),
    /// It needs a blocking thread; here is its `ctx` back, and the run is as if never begun.
    NeedsThread(Result<Dynamic, Box<EvalAltResult>>),
    /// It parked in a long sleep (see [`park`]); here is its `ctx` for the attempt after.
    Parked(Dynamic),
}

/// Tries the script on this async worker (see `RunContext::inline`): scripts of local steps
/// that stay within `INLINE_MAX_OPERATIONS` end here without a thread hand-off.
fn execute_inline(engine: &Engine, ast: &AST, cx: &Arc<RunContext>, ctx: Dynamic) -> Inline {
    let kept = cx.begin_inline();
    let _entered = step::enter(cx.clone());
    let mut scope = Scope::new();
    scope.push_constant("ctx", ctx);
    let result = engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast);
    match result {
        Err(error) if step::is_needs_thread(&error) => {
            cx.abandon_inline(kept);
            // A constant: the script could read it, not change it.
            let ctx = scope
                .remove::<Dynamic>("ctx")
                .expect("ctx stays in the scope");
            Inline::NeedsThread(Ok(ctx))
        }
        Err(_) if cx.stopped() == Some(Stop::Parked) => {
            // What it did up to its sleep happened: its held lines go out.
            cx.complete_inline();
            let ctx = scope
                .remove::<Dynamic>("ctx")
                .expect("ctx stays in the scope");
            Inline::Parked(ctx)
        }
        result => {
            cx.complete_inline();
            let (status, error) = classify(result, cx);
            Inline::Ended(status, error)
        }
    }
}

/// [`park`], giving the run's slot back while it waits (a parked run has no script in
/// memory) and taking one again before its next attempt. A runner that stopped taking runs
/// meanwhile suspends it (it resumes at the next start).
async fn park_without_slot(
    cx: &RunContext,
    permit: &mut Option<OwnedSemaphorePermit>,
    slots: &Arc<Semaphore>,
) -> Result<(), Stop> {
    permit.take();
    park(cx).await?;
    match slots.clone().acquire_owned().await {
        Ok(slot) => {
            *permit = Some(slot);
            Ok(())
        }
        Err(_) => {
            cx.set_stop(Stop::Suspended);
            Err(Stop::Suspended)
        }
    }
}

/// Waits, without a thread, for the sleep the script parked in (see [`RunnerConfig::park_after`]),
/// then rewinds the run to replay its journal up to that sleep. A stop meanwhile ends the wait:
/// the sleep is journaled as stopped (a suspension leaves it open, to resume), and the stop is
/// returned.
async fn park(cx: &RunContext) -> Result<(), Stop> {
    let Some(parked) = cx.unpark() else {
        return Err(Stop::Cancelled);
    };
    // What the script did up to its sleep is durable before the thread-less wait.
    if let Err(message) = cx.flush(Vec::new()).await {
        // Nothing goes on that the journal does not hold.
        warn!(run_id = %cx.meta.run_id, error = %message, "a parked run's records could not be journaled; stopping it");
        cx.set_stop(Stop::Cancelled);
        return Err(cx.stopped().unwrap_or(Stop::Cancelled));
    }
    let waited = {
        let _waiting = step::Waiting::begin();
        let left = parked
            .until
            .saturating_duration_since(std::time::Instant::now());
        if parked.name == "wait_resolved" {
            // A joined event saying the incident resolved ends it early.
            cx.until_stopped(cx.wait_resolved(left)).await.map(drop)
        } else {
            cx.until_stopped(tokio::time::sleep(left)).await
        }
    };
    if let Err(stop) = waited {
        if stop != Stop::Suspended {
            let stopped = step::LeafResult::stopped(stop);
            let _ = cx
                .flush(vec![RecordBody::StepFinished {
                    step: parked.step,
                    name: parked.name,
                    inputs: None,
                    status: stopped.status,
                    outputs: Value::Null,
                    error: stopped.outcome.err(),
                    duration_ms: parked.began.elapsed().as_millis() as u64,
                    attempts: stopped.attempts,
                }])
                .await;
        }
        return Err(stop);
    }
    let records = cx
        .journal
        .records_for_run(&cx.meta.run_id)
        .map_err(|e| {
            error!(run_id = %cx.meta.run_id, error = %e, "cannot read a parked run back from the journal; cancelling it");
            cx.set_stop(Stop::Cancelled);
            Stop::Cancelled
        })?;
    let records: Vec<&Record> = records.iter().collect();
    cx.rewind(earlier_from(&records));
    Ok(())
}

/// Runs the script on this (blocking) thread, computing under `compute`'s bound; returns how
/// it ended.
fn execute(
    engine: &Engine,
    ast: &AST,
    cx: &Arc<RunContext>,
    ctx: Dynamic,
    compute: &Arc<Compute>,
) -> (RunStatus, Option<String>) {
    let _share = crate::compute::hold(compute);
    let _entered = step::enter(cx.clone());
    let mut scope = Scope::new();
    scope.push_constant("ctx", ctx);
    let result = engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast);
    classify(result, cx)
}

/// After the script: journals the run's end (or, when suspended, what it did so far), then
/// frees its slot.
async fn end(
    cx: &RunContext,
    status: RunStatus,
    error: Option<String>,
    permit: Option<OwnedSemaphorePermit>,
) -> RunOutcome {
    let outcome = if cx.stopped() == Some(Stop::Suspended) {
        // What the run did so far is journaled; its end is not, so it resumes. Settled: a
        // record of a step dropped mid-append reaches the mirror too, before the run's lease
        // goes to a replica that reads the mirror.
        let flushed = match cx.flush(Vec::new()).await {
            Ok(()) => cx.journal.settled().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        info!(run_id = %cx.meta.run_id, steps = cx.steps(), journaled = flushed.is_ok(), "run suspended (a shutdown, or its lease went to another replica); it resumes elsewhere or at the next start");
        RunOutcome {
            run_id: cx.meta.run_id.clone(),
            status: RunStatus::Cancelled,
            error: Some("suspended for shutdown".to_owned()),
            steps: cx.steps(),
            suspended: true,
        }
    } else {
        finish(cx, status, error).await
    };
    drop(permit);
    outcome
}

/// Journals `run_finished`; a failure to do so is logged and reported in the outcome (the
/// run then stays unfinished in the journal and is resumed after a restart).
async fn finish(cx: &RunContext, status: RunStatus, mut error: Option<String>) -> RunOutcome {
    let finished = cx
        .flush(vec![RecordBody::RunFinished {
            status,
            error: error.clone(),
        }])
        .await;
    if let Err(e) = finished {
        if !cx.start_failed() {
            error!(run_id = %cx.meta.run_id, error = %e, "cannot journal the end of the run; it stays unfinished and resumes after a restart");
        }
        let note = format!("run_finished not journaled: {e}");
        error = Some(match error {
            Some(first) => format!("{first}; {note}"),
            None => note,
        });
    }
    crate::trace::record_outcome(
        &cx.span,
        &status.to_string(),
        (status != RunStatus::Succeeded).then_some(match status {
            RunStatus::TimedOut => "timeout",
            _ => "run",
        }),
    );
    info!(run_id = %cx.meta.run_id, runbook = %cx.meta.runbook, status = %status, steps = cx.steps(), error = error.as_deref(), "run finished");
    RunOutcome {
        run_id: cx.meta.run_id.clone(),
        status,
        error,
        steps: cx.steps(),
        suspended: false,
    }
}

/// Script result → run status: a stop from outside wins over the error it caused.
fn classify(
    result: Result<Dynamic, Box<EvalAltResult>>,
    cx: &RunContext,
) -> (RunStatus, Option<String>) {
    let error = match result {
        // A record the script made past its budget was dropped: the run did not do all it said.
        Ok(_) if cx.stopped() == Some(Stop::OverBudget) => Stop::OverBudget.error(),
        Ok(_) => return (RunStatus::Succeeded, None),
        Err(error) => error,
    };
    let stop = match &*error {
        EvalAltResult::ErrorTerminated(token, _) => match token.to_string().as_str() {
            "timed_out" => Some(Stop::TimedOut),
            "suspended" => Some(Stop::Suspended),
            "over_budget" => Some(Stop::OverBudget),
            "denied" => Some(Stop::Denied),
            "expired" => Some(Stop::Expired),
            "parked" => Some(Stop::Parked),
            _ => Some(Stop::Cancelled),
        },
        _ => cx.check_stop(),
    };
    match stop {
        Some(Stop::Cancelled) => {
            let reason = cx
                .cancel_reason
                .lock()
                .expect("cancel reason lock")
                .clone()
                .unwrap_or_else(|| "run cancelled".to_owned());
            (RunStatus::Cancelled, Some(reason))
        }
        Some(Stop::Suspended) => (
            RunStatus::Cancelled,
            Some("suspended for shutdown".to_owned()),
        ),
        // The runner wakes a parked run; a script never ends parked.
        Some(Stop::Parked) => (
            RunStatus::Failed,
            Some("the run parked where it cannot be woken".to_owned()),
        ),
        Some(Stop::TimedOut) => (
            RunStatus::TimedOut,
            Some("run exceeded its timeout".to_owned()),
        ),
        Some(stop @ (Stop::Denied | Stop::Expired)) => (
            if stop == Stop::Denied {
                RunStatus::Denied
            } else {
                RunStatus::Expired
            },
            cx.cancel_reason.lock().expect("cancel reason lock").clone(),
        ),
        Some(Stop::OverBudget) => (
            RunStatus::Failed,
            cx.cancel_reason
                .lock()
                .expect("cancel reason lock")
                .clone()
                .or_else(|| Some("run over budget".to_owned())),
        ),
        None => (RunStatus::Failed, Some(error.to_string())),
    }
}

/// The keys [`script_ctx`] fills, for the reference; a test holds them to it.
pub(crate) const CTX_KEYS: &[CtxKey] = &[
    CtxKey {
        name: "event",
        ty: "map",
        doc: "the event that started the run, whole: `id`, `source` (`alertmanager`, `k8s`, \
              `manual`), `type` (`firing`, `resolved`, `warning`, `trigger`, ...), `subject` \
              (the alert name, the object), `time`, `namespace` and `fingerprint` where known, \
              `data` (an alert's `labels`, `annotations`, `startsAt`, `generatorURL`, ...; a \
              manual trigger's `runbook`, `params`, `actor`)",
    },
    CtxKey {
        name: "labels",
        ty: "map",
        doc: "`event.data.labels` (an alert's labels); `#{}` when the event has none",
    },
    CtxKey {
        name: "annotations",
        ty: "map",
        doc: "`event.data.annotations`; `#{}` when the event has none",
    },
    CtxKey {
        name: "params",
        ty: "map",
        doc: "the manifest's `params`, resolved from the event (a label, an annotation, a \
              manual trigger's params) or their defaults; a duration param is its text \
              (`\"2m\"`: `ms(ctx.params.wait)` makes it milliseconds)",
    },
    CtxKey {
        name: "run_id",
        ty: "string",
        doc: "this run's id, as every record of its audit trail carries it",
    },
    CtxKey {
        name: "runbook",
        ty: "string",
        doc: "the runbook's name",
    },
    CtxKey {
        name: "team",
        ty: "string",
        doc: "the runbook's owner team",
    },
    CtxKey {
        name: "actor",
        ty: "string",
        doc: "who started the run: the authenticated caller of a manual trigger, else the \
              event's source (`alertmanager`, `k8s`)",
    },
    CtxKey {
        name: "dry_run",
        ty: "bool",
        doc: "whether this is a dry run: mutating actions answer their plan and change nothing",
    },
];

/// The event as its `run_started` record journals it: the event's own JSON (its canonical
/// form, see [`Event`]) as the bus wrote it, or written now if the bus did not keep it,
/// unless something in it needs redacting.
fn journaled_event(event: &Event) -> CanonicalJson {
    // Every field, so that a new one cannot be missed; `time` is digits and punctuation,
    // no secret's shape.
    let Event {
        data,
        fingerprint,
        id,
        namespace,
        source,
        subject,
        time: _,
        traceparent,
        kind,
        written,
    } = event;
    let written = written.get().map(|json| &json[..]);
    CanonicalJson::of_sorted(event, written, |scan| {
        for text in [id, source, subject, kind] {
            scan.text(text);
        }
        for text in [fingerprint, namespace, traceparent].into_iter().flatten() {
            scan.text(text);
        }
        scan.value(data);
    })
}

/// The `ctx` map a script sees: of the keys built from the event and the parameters, those
/// the script can read ([`CtxReads`]); the others always. `event` gives the event as JSON,
/// built only for a script that reads `ctx.event`; `data` is the event's `data` (labels and
/// annotations come from it).
fn script_ctx(
    meta: &RunMeta,
    event: &dyn Fn() -> Value,
    data: Option<&Value>,
    params: &Value,
    dry_run: bool,
    reads: &CtxReads,
) -> Dynamic {
    let empty = || Dynamic::from_map(rhai::Map::new());
    let mut map = rhai::Map::new();
    if reads.wants("event") {
        let event = to_dynamic(&event());
        // `labels` and `annotations` are copies of the event's own: a clone shares their
        // strings instead of converting them from JSON a second time.
        for key in ["labels", "annotations"] {
            let of_event = event
                .read_lock::<rhai::Map>()
                .and_then(|e| e.get("data")?.read_lock::<rhai::Map>()?.get(key).cloned());
            map.insert(key.into(), of_event.unwrap_or_else(empty));
        }
        map.insert("event".into(), event);
    } else {
        for key in ["labels", "annotations"] {
            if reads.wants(key) {
                let of_event = data.and_then(|data| data.get(key));
                map.insert(key.into(), of_event.map_or_else(empty, to_dynamic));
            }
        }
    }
    if reads.wants("params") {
        map.insert("params".into(), to_dynamic(params));
    }
    map.insert("run_id".into(), meta.run_id.clone().into());
    map.insert("runbook".into(), meta.runbook.clone().into());
    map.insert("team".into(), meta.team.clone().into());
    map.insert("actor".into(), meta.actor.clone().into());
    map.insert("dry_run".into(), dry_run.into());
    map.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RunMeta {
        RunMeta {
            run_id: "r".into(),
            runbook: "b".into(),
            team: "t".into(),
            actor: "a".into(),
            event_id: "e".into(),
        }
    }

    /// [`script_ctx`] of an event given as JSON, as a resumed run's.
    fn ctx_of_json(
        meta: &RunMeta,
        event: &Value,
        params: &Value,
        dry_run: bool,
        reads: &CtxReads,
    ) -> Dynamic {
        script_ctx(
            meta,
            &|| event.clone(),
            event.get("data"),
            params,
            dry_run,
            reads,
        )
    }

    #[test]
    fn the_ctx_table_names_every_key_a_script_gets() {
        let meta = meta();
        let ctx = ctx_of_json(
            &meta,
            &serde_json::json!({"data": {}}),
            &Value::Null,
            false,
            &CtxReads::Whole,
        )
        .cast::<rhai::Map>();
        let mut given: Vec<&str> = ctx.keys().map(|k| k.as_str()).collect();
        let mut documented: Vec<&str> = CTX_KEYS.iter().map(|k| k.name).collect();
        given.sort_unstable();
        documented.sort_unstable();
        assert_eq!(given, documented);
    }

    /// A run's `run_started` journals its event as the redacted canonical form of the
    /// event as JSON, whether rendered as written (nothing to redact) or redacted as a tree.
    /// (Debug builds also check each one as it is made, see `CanonicalJson::of_sorted`.)
    #[test]
    fn the_journaled_event_is_the_redacted_canonical_form_of_the_event() {
        let clean = Event {
            data: serde_json::json!({
                "labels": {"alertname": "ModelLatencyHigh", "namespace": "team-a", "Zone": "b"},
                "annotations": {"summary": "p99 \"412 ms\"\n"},
                "env": [{"name": "MODEL", "value": "v2"}],
                "n": [1, 2.5, null],
            }),
            fingerprint: Some("14ec0898ad0f9755".into()),
            id: "am-1".into(),
            namespace: Some("team-a".into()),
            source: "alertmanager".into(),
            subject: "ModelLatencyHigh".into(),
            time: "2026-11-26T22:01:43.277Z".parse().unwrap(),
            traceparent: None,
            kind: "firing".into(),
            written: Default::default(),
        };
        let token = "abcdefghijklmnop";
        let with = |f: &dyn Fn(&mut Event)| {
            let mut e = clean.clone();
            f(&mut e);
            e
        };
        let secret = [
            with(&|e| e.data["labels"]["api_token"] = token.into()),
            with(&|e| e.data["annotations"]["summary"] = format!("Bearer {token}").into()),
            with(&|e| e.data["env"][0]["name"] = "DB_PASSWORD".into()),
            with(&|e| e.subject = format!("see https://ann:{token}@example.invalid/")),
            with(&|e| e.id = format!("Token {token}")),
            with(&|e| e.kind = format!("Basic {token}")),
            with(&|e| e.source = format!("Bearer {token}")),
            with(&|e| e.namespace = Some(format!("Bearer {token}"))),
            with(&|e| e.fingerprint = Some(format!("Bearer {token}"))),
            with(&|e| e.traceparent = Some(format!("Bearer {token}"))),
        ];
        let journaled = journaled_event(&clean);
        assert_eq!(journaled, CanonicalJson::from_value(clean.to_json()));
        assert_eq!(journaled.value(), clean.to_json());
        for event in &secret {
            let journaled = journaled_event(event);
            assert_eq!(journaled, CanonicalJson::from_value(event.to_json()));
            assert!(journaled.as_str().contains("[redacted]"), "{journaled:?}");
            assert!(!journaled.as_str().contains(token), "{journaled:?}");
        }
    }

    #[test]
    fn labels_and_annotations_are_the_events_own_or_empty_maps() {
        let meta = meta();
        let ctx_of = |event: Value| {
            let ctx = ctx_of_json(&meta, &event, &Value::Null, false, &CtxReads::Whole)
                .cast::<rhai::Map>();
            let json = |key: &str| crate::step::to_json(&ctx[key]);
            (json("labels"), json("annotations"), json("event"))
        };
        let event = serde_json::json!({
            "id": "e",
            "data": {"labels": {"alertname": "ModelLatencyHigh", "namespace": "team-a"},
                     "annotations": {"summary": "p99 above 250 ms"}},
        });
        let (labels, annotations, whole) = ctx_of(event.clone());
        assert_eq!(labels, event["data"]["labels"]);
        assert_eq!(annotations, event["data"]["annotations"]);
        assert_eq!(whole, event);
        // A manual trigger's event has no labels; a malformed one has no data at all.
        for event in [
            serde_json::json!({"data": {"note": "by hand"}}),
            serde_json::json!({"data": "text"}),
            serde_json::json!({}),
        ] {
            let (labels, annotations, whole) = ctx_of(event.clone());
            assert_eq!(
                (labels, annotations),
                (serde_json::json!({}), serde_json::json!({}))
            );
            assert_eq!(whole, event);
        }
    }

    /// A script that names only some keys gets those exactly as a whole `ctx` holds them,
    /// and the cheap keys always.
    #[test]
    fn a_ctx_of_named_keys_holds_what_the_whole_one_does() {
        let meta = meta();
        let params = serde_json::json!({"deployment": "fraud-model", "max": 3});
        let events = [
            serde_json::json!({
                "id": "e",
                "data": {"labels": {"alertname": "ModelLatencyHigh", "namespace": "team-a"},
                         "annotations": {"summary": "p99 above 250 ms"}, "status": "firing"},
            }),
            serde_json::json!({"data": {"labels": "not a map", "annotations": [1]}}),
            serde_json::json!({"data": "text"}),
            serde_json::json!({}),
        ];
        let costly = ["event", "labels", "annotations", "params"];
        for event in &events {
            let whole =
                ctx_of_json(&meta, event, &params, true, &CtxReads::Whole).cast::<rhai::Map>();
            for subset in 0..(1 << costly.len()) {
                let named: Vec<String> = (0..costly.len())
                    .filter(|i| subset & (1 << i) != 0)
                    .map(|i| costly[i].to_owned())
                    .collect();
                let part = ctx_of_json(&meta, event, &params, true, &CtxReads::Keys(named.clone()))
                    .cast::<rhai::Map>();
                for (key, value) in &whole {
                    let cheap = !costly.contains(&key.as_str());
                    match part.get(key) {
                        Some(got) => assert_eq!(
                            (got.type_name(), crate::step::to_json(got)),
                            (value.type_name(), crate::step::to_json(value)),
                            "{key} of {event} with {named:?}"
                        ),
                        None => assert!(
                            !cheap && !named.contains(&key.to_string()),
                            "{key} missing with {named:?}"
                        ),
                    }
                }
            }
        }
    }
}
