//! The dispatcher: takes events off the bus and starts each matched runbook once per incident.
//!
//! Start at [`Dispatcher::handle`]. For each delivery:
//! 1. a bus message that was not an event is parked: kept whole in the journal, then acked;
//! 2. a resolved alert is handed to every running run of its incident (its fingerprint), which
//!    journals it and sees it through `resolved()` / `wait_resolved()`;
//! 3. each runbook it matches (or the one a manual trigger names) goes through
//!    [`Dispatcher::start`] with key `<runbook>/<concurrency key>` and a run id that every
//!    delivery of the message shares ([`run_id_for`]):
//!    - that run running here: a delivery that came again; skip. Starting here for another
//!      delivery of the message: wait for that start to end and look again (it may fail, and
//!      this delivery is then the one that starts the run);
//!    - a delivery that came again (with replicas): the audit stream holding that run means
//!      it started on another replica (which died or lost its ack, and may have ended it
//!      since); skip;
//!    - take the key's lock. Held: the incident has a run already. A redelivery of that run's
//!      own message is dropped (held under another replica by this very run, it is dropped
//!      once the audit stream shows the run started, else sent back for after a lease: that
//!      replica starts it, or died and the takeover frees the lock); another event is
//!      *joined* to the run (journaled in its trail)
//!      or, when the run is elsewhere and the audit stream shows it started, journaled as
//!      skipped naming it (one not started there yet sends the event back for later: its
//!      replica may have died between the lock and the start);
//!    - holding the lock, look in the journal: a run of this runbook for this very message
//!      (started after the bus accepted it) means a redelivery after a lost ack; skip. Taking
//!      the lock first makes "this message started this runbook" one decision: a second
//!      delivery either finds the lock held by that run or, once it is released, the run in
//!      the journal;
//!    - a key in cooldown: journaled as skipped; a spent remediation budget: a refusal;
//!    - start the run, with its lock key and cooldown in its `run_started` record; the
//!      runtime answers once that record is durable;
//! 4. only then is the delivery acked; a failed start naks it (it comes back).
//!
//! When a run ends its key is put in cooldown, then unlocked. [`Dispatcher::resume_unfinished`]
//! picks up runs a crash or a stop interrupted: each takes its lock again before it goes on
//! (and sets its cooldown when it ends); a run started from a terminal (`firebreak run`) is
//! closed as abandoned instead. Dry runs take a lock of their own (`dry-run:` keys), set no
//! cooldown and spend no budget: a rehearsal never blocks the real remediation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_audit::{Journal, RecordBody, RecordDraft, RunMeta, RunStatus};
use firebreak_bus::nats::{ELECTION_PATIENCE, wait_out_elections_until};
use firebreak_bus::{Bus, BusError, Delivery, RunLeases, StateStore};
use firebreak_event::{Event, KIND_UNPROCESSABLE, SOURCE_FIREBREAK};
use firebreak_matcher::{Match, MatchError};
use firebreak_runtime::{
    CancellationToken, JoinError, JoinedEvent, ProgressSink, RunLink, RunPlan, Runner,
};
use futures::StreamExt;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::runbooks::{Loaded, Runbooks};

/// Extra time a concurrency lock outlives the run's own timeout, so a crashed engine's lock
/// expires on its own.
pub(crate) const LOCK_SLACK: Duration = Duration::from_secs(60);

/// A start that took this long after its lock (waiting for a run slot) extends the lock.
const START_WAIT_EXTENDS_LOCK: Duration = Duration::from_secs(1);

/// How often failed trigger authentications are journaled, as one record for the period.
pub const REFUSAL_SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Most distinct runbook names counted apart between two refusal summaries.
const REFUSAL_NAMES: usize = 64;

/// Why a start must be retried later (the delivery is nak'ed).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state store")]
    State(#[from] firebreak_bus::BusError),
    #[error("runtime")]
    Runtime(#[from] firebreak_runtime::RuntimeError),
    #[error("audit")]
    Audit(#[from] firebreak_audit::AuditError),
    #[error(
        "the lock {key} is held by a run of this engine that is starting or ending; the event is retried"
    )]
    Busy { key: String },
    #[error(
        "the lock {key} is held by run {run_id} on another engine replica, which has not started it (yet); the event is retried"
    )]
    NotStartedElsewhere { key: String, run_id: String },
    #[error("the event could not be joined to run {run_id}: {source}")]
    Join {
        run_id: String,
        #[source]
        source: JoinError,
    },
}

/// What became of a delivery: acked, or sent back to come again (after the attempts' backoff,
/// or no sooner than a given wait).
enum Handled {
    Done,
    Retry,
    RetryAfter(Duration),
}

/// A manifest's approval policy as a run journals it.
pub fn approval_policy(
    manifest: &firebreak_matcher::Manifest,
) -> Option<firebreak_runtime::ApprovalPolicy> {
    manifest
        .approval
        .as_ref()
        .map(|a| firebreak_runtime::ApprovalPolicy {
            approvers: a.approvers.clone(),
            required: a.required,
            expires_ms: a.expires.as_millis() as u64,
            self_approval: a.self_approval,
        })
}

/// A run this engine is running: where to hand it the events of its incident.
#[derive(Clone)]
pub(crate) struct ActiveRun {
    pub(crate) link: RunLink,
    runbook: String,
    team: String,
    /// The message that started it.
    event_id: String,
    /// Its incident, when its event had one (an alert's fingerprint).
    fingerprint: Option<String>,
    /// Its concurrency lock, which carries its lease on a shared store.
    pub(crate) key: Option<String>,
    /// Cancelled once the run's script ended (finished or suspended), before its lock is
    /// released or kept: a lease renewal that then finds the lock gone or given up is looking at
    /// the run's own end, not at another replica taking it.
    pub(crate) ended: CancellationToken,
    /// Cancelled once the run ended and its lock is released (or kept, when it was
    /// suspended) and the run is forgotten here.
    released: CancellationToken,
}

/// A tracked run's metrics: in progress from [`RunEnded::begin`], counted by runbook, team
/// and outcome with its duration when it ends (a run suspended for a shutdown only leaves
/// the in-progress gauge).
struct RunEnded {
    handles: Arc<RunbookMetrics>,
    in_progress: metrics::Gauge,
    started: std::time::Instant,
}

impl RunEnded {
    fn begin(run: &ActiveRun, metrics: &RunMetrics) -> RunEnded {
        RunEnded::of(&run.runbook, &run.team, metrics)
    }

    fn of(runbook: &str, team: &str, metrics: &RunMetrics) -> RunEnded {
        let in_progress = metrics
            .in_progress
            .get_or_init(|| metrics::gauge!("firebreak_runs_in_progress"))
            .clone();
        in_progress.increment(1.0);
        RunEnded {
            handles: metrics.of(runbook, team),
            in_progress,
            started: std::time::Instant::now(),
        }
    }

    fn record(self, outcome: &firebreak_runtime::RunOutcome) {
        self.in_progress.decrement(1.0);
        if outcome.suspended {
            return;
        }
        let handles = &self.handles;
        let (finished, total) = {
            let mut outcomes = handles.outcomes.lock().expect("run metrics lock");
            match outcomes
                .iter()
                .find(|(status, ..)| *status == outcome.status)
            {
                Some((_, finished, total)) => (finished.clone(), total.clone()),
                None => {
                    let status = outcome.status.to_string();
                    let finished = metrics::counter!("firebreak_runs_finished_total", "status" => status.clone());
                    let total = metrics::counter!("firebreak_runs_total", "runbook" => handles.runbook.clone(), "team" => handles.team.clone(), "outcome" => status);
                    outcomes.push((outcome.status, finished.clone(), total.clone()));
                    (finished, total)
                }
            }
        };
        finished.increment(1);
        total.increment(1);
        handles
            .duration
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The handles of the metrics every run moves, each registered once: a `counter!` with
/// labels builds its key, clones its labels and looks it up in the registry at every call
/// (about 6,000 instructions a run for the ones a run moves). Kept by the dispatcher, so a
/// handle is made only once the engine's recorder is installed.
#[derive(Default)]
pub(crate) struct RunMetrics {
    in_progress: std::sync::OnceLock<metrics::Gauge>,
    started: std::sync::OnceLock<metrics::Counter>,
    lag: std::sync::OnceLock<metrics::Histogram>,
    /// `firebreak_events_consumed_total` by source.
    consumed: Mutex<foldhash::HashMap<String, metrics::Counter>>,
    /// By runbook, then team.
    runbooks: Mutex<foldhash::HashMap<String, foldhash::HashMap<String, Arc<RunbookMetrics>>>>,
}

/// One runbook's (and team's) run metrics; its outcomes' counters are made as they happen.
struct RunbookMetrics {
    runbook: String,
    team: String,
    duration: metrics::Histogram,
    outcomes: Mutex<Vec<(RunStatus, metrics::Counter, metrics::Counter)>>,
}

impl RunMetrics {
    fn of(&self, runbook: &str, team: &str) -> Arc<RunbookMetrics> {
        let mut runbooks = self.runbooks.lock().expect("run metrics lock");
        if let Some(handles) = runbooks.get(runbook).and_then(|teams| teams.get(team)) {
            return handles.clone();
        }
        let handles = Arc::new(RunbookMetrics {
            runbook: runbook.to_owned(),
            team: team.to_owned(),
            duration: metrics::histogram!("firebreak_run_duration_seconds", "runbook" => runbook.to_owned()),
            outcomes: Mutex::default(),
        });
        runbooks
            .entry(runbook.to_owned())
            .or_default()
            .insert(team.to_owned(), handles.clone());
        handles
    }

    fn consumed(&self, source: &str) -> metrics::Counter {
        let mut consumed = self.consumed.lock().expect("run metrics lock");
        if let Some(counter) = consumed.get(source) {
            return counter.clone();
        }
        let counter =
            metrics::counter!("firebreak_events_consumed_total", "source" => source.to_owned());
        consumed.insert(source.to_owned(), counter.clone());
        counter
    }
}

/// What became of one matched runbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new run.
    Run(String),
    /// Handed to the run already handling the incident.
    Joined(String),
    /// Nothing to do: a redelivery of a message whose run exists.
    Redelivery,
    /// Journaled as skipped (cooldown, a run elsewhere) or refused (budget).
    Skipped,
}

pub struct Dispatcher {
    pub bus: Arc<dyn Bus>,
    pub state: Arc<dyn StateStore>,
    pub runner: Arc<Runner>,
    pub journal: Arc<Journal>,
    pub runbooks: Arc<Runbooks>,
    /// Receives every run's log and progress lines (the CLI prints them).
    pub progress: Option<ProgressSink>,
    /// Every run task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Runs in progress here, by run id. A run stays until its lock is released.
    pub(crate) active: Arc<Mutex<foldhash::HashMap<String, ActiveRun>>>,
    /// Runs being started here (from before their lock to their tracking), by run id.
    pub(crate) starting: Mutex<foldhash::HashMap<String, Starting>>,
    /// Run leases, when replicas share the state store (see [`crate::takeover`]).
    pub(crate) leases: Option<Arc<dyn RunLeases>>,
    /// Failed trigger authentications since the last summary, by runbook.
    unauthenticated: Mutex<BTreeMap<String, u64>>,
    /// The handles of the metrics every delivery and run moves.
    metrics: RunMetrics,
    /// Deliveries waiting for a run of this engine holding their key to start or to let go.
    waiting_for_holder: std::sync::atomic::AtomicUsize,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bus: Arc<dyn Bus>,
        state: Arc<dyn StateStore>,
        runner: Arc<Runner>,
        journal: Arc<Journal>,
        runbooks: Arc<Runbooks>,
        progress: Option<ProgressSink>,
        shutdown: CancellationToken,
    ) -> Dispatcher {
        Dispatcher {
            bus,
            state,
            runner,
            journal,
            runbooks,
            progress,
            tasks: TaskTracker::new(),
            shutdown,
            active: Arc::default(),
            starting: Mutex::default(),
            leases: None,
            unauthenticated: Mutex::default(),
            metrics: RunMetrics::default(),
            waiting_for_holder: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Runs hold leases in `leases` (replicas sharing a JetStream KV store): they are renewed
    /// while the runs go on, given up when a stop suspends them, and other replicas' runs whose
    /// lease ran out are taken over ([`Dispatcher::keep_leases`]).
    pub fn with_leases(mut self, leases: Arc<dyn RunLeases>) -> Dispatcher {
        self.leases = Some(leases);
        self
    }

    /// Consumes the bus until `shutdown`; each delivery is handled on its own task.
    pub async fn run(self: Arc<Self>) -> Result<(), firebreak_bus::BusError> {
        let mut deliveries = self.bus.consume().await?;
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                next = deliveries.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let me = self.clone();
                    self.tasks.spawn(async move { me.handle(delivery).await });
                }
                Some(Err(e)) => {
                    warn!(error = %e, "bus delivery failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Handles one delivery (see the module docs); acks only once everything it started or
    /// joined is journaled, naks otherwise.
    pub async fn handle(self: Arc<Self>, delivery: Delivery) {
        let event = delivery.event.clone();
        self.metrics.consumed(&event.source).increment(1);
        let lag = jiff::Timestamp::now().duration_since(delivery.published);
        self.metrics
            .lag
            .get_or_init(|| metrics::histogram!("firebreak_bus_lag_seconds"))
            .record(lag.as_secs_f64().max(0.0));
        if delivery.attempt > 1 {
            metrics::counter!("firebreak_bus_redeliveries_total").increment(1);
        }
        let work = async {
            if event.source == SOURCE_FIREBREAK && event.kind == KIND_UNPROCESSABLE {
                if self.park(&event).await {
                    Handled::Done
                } else {
                    Handled::Retry
                }
            } else {
                self.dispatch(&event, delivery.published, delivery.attempt)
                    .await
            }
        };
        // Boxed: passed by value, the work was kept twice in this future (5,032 bytes for each
        // delivery in flight; 376 with the work, 2,304, on the heap once).
        let handled = in_progress_while(&delivery, Box::pin(work)).await;
        // Backs off with the attempts, so a long outage (a full disk) is not hammered.
        let backoff = Duration::from_secs(u64::from(delivery.attempt.clamp(1, 30)));
        let settled = match handled {
            Handled::Done => delivery.ack().await,
            Handled::Retry => delivery.nak(backoff).await,
            Handled::RetryAfter(wait) => delivery.nak(backoff.max(wait)).await,
        };
        if let Err(e) = settled {
            warn!(error = %e, "could not settle a delivery; it will be redelivered");
        }
    }

    /// Joins and starts what the event asks for: `Done` once all of it is journaled, else when
    /// to look again.
    async fn dispatch(
        &self,
        event: &Arc<Event>,
        published: jiff::Timestamp,
        attempt: u32,
    ) -> Handled {
        let mut done = true;
        let mut retry_after = None;
        let mut joined: Vec<String> = Vec::new();
        if event.status() == "resolved"
            && let Some(fingerprint) = event.fingerprint.as_deref()
        {
            for run in self.runs_of_incident(fingerprint) {
                match self.join(&run, event).await {
                    Ok(()) => joined.push(run.link.run_id().to_owned()),
                    Err(e) => {
                        warn!(event_id = %event.id, run_id = %run.link.run_id(), error = %e, "resolved alert not joined to its run");
                        done &= matches!(
                            e,
                            StartError::Join {
                                source: JoinError::Finished,
                                ..
                            }
                        );
                    }
                }
            }
        }
        let loaded = self.runbooks.current();
        for m in loaded.set.matches(event) {
            let result = match m {
                Ok(m) => {
                    self.start(&loaded, event, published, attempt, m, &joined)
                        .await
                }
                Err(e) => self
                    .refuse_unstartable(event, &e)
                    .await
                    .map(|()| Started::Skipped),
            };
            match result {
                Ok(Started::Joined(run)) => joined.push(run),
                Ok(_) => {}
                // Its holder starts the run, or its lock is freed once its lease ran out (its
                // replica died): looking again sooner only adds load, and there is a storm of
                // these when replicas are overloaded (redeliveries of events still waiting for
                // a run slot where they are).
                Err(e @ StartError::NotStartedElsewhere { .. }) => {
                    info!(event_id = %event.id, reason = %e, "event not handled yet; it will be redelivered");
                    done = false;
                    retry_after = self.leases.as_ref().map(|l| l.lease());
                }
                // The engine is stopping: the event comes back, here after the restart or to
                // another replica. Not an error (a stop under load sends back thousands).
                Err(StartError::Runtime(firebreak_runtime::RuntimeError::ShuttingDown)) => {
                    debug!(event_id = %event.id, "not started: the engine is stopping; the event will be redelivered");
                    done = false;
                }
                Err(e) => {
                    error!(event_id = %event.id, error = %e, cause = ?std::error::Error::source(&e), "event not handled; it will be redelivered");
                    done = false;
                }
            }
        }
        match (done, retry_after) {
            (true, _) => Handled::Done,
            (false, None) => Handled::Retry,
            (false, Some(wait)) => Handled::RetryAfter(wait),
        }
    }

    /// The runs here whose incident is `fingerprint`.
    fn runs_of_incident(&self, fingerprint: &str) -> Vec<ActiveRun> {
        self.active
            .lock()
            .expect("active runs lock")
            .values()
            .filter(|r| r.fingerprint.as_deref() == Some(fingerprint))
            .cloned()
            .collect()
    }

    async fn join(&self, run: &ActiveRun, event: &Event) -> Result<(), StartError> {
        let joined = JoinedEvent {
            event_id: event.id.clone(),
            status: event.status().to_owned(),
            summary: format!("{}/{} {}", event.source, event.kind, event.subject),
        };
        run.link
            .join(joined)
            .await
            .map_err(|source| StartError::Join {
                run_id: run.link.run_id().to_owned(),
                source,
            })?;
        info!(run_id = %run.link.run_id(), event_id = %event.id, status = %event.status(), "event joined to its incident's run");
        metrics::counter!("firebreak_events_joined_total").increment(1);
        Ok(())
    }

    /// Starts `m` for `event` once per incident; see the module docs for the order.
    /// `attempt`: which delivery of the event this is. `joined`: runs this event was already
    /// handed to (not joined twice).
    pub async fn start(
        &self,
        loaded: &Loaded,
        event: &Arc<Event>,
        published: jiff::Timestamp,
        attempt: u32,
        m: Match,
        joined: &[String],
    ) -> Result<Started, StartError> {
        let manifest = &m.runbook.manifest;
        let name = manifest.name.clone();
        let dry_run = event.dry_run();
        let key = if dry_run {
            format!("dry-run:{name}/{}", m.concurrency_key)
        } else {
            format!("{name}/{}", m.concurrency_key)
        };
        let actor = actor_of(event);
        let run_id = run_id_for(&event.id, &name, published);
        // Registered before the lock is tried: whoever finds the lock held by this run knows
        // it is starting here, not running on another replica. Running here: the same message
        // delivered twice. Starting here: whether that start succeeds decides whether this
        // delivery has a run (it may fail: NATS went away while it asked for the lock, and
        // came back with this delivery), so wait for it and look again.
        let start_guard = loop {
            let already_here = self
                .active
                .lock()
                .expect("active runs lock")
                .contains_key(&run_id);
            if already_here {
                info!(runbook = %name, run_id = %run_id, event_id = %event.id, "skipped: this delivery's run was started before");
                metrics::counter!("firebreak_runs_skipped_total", "reason" => "redelivered")
                    .increment(1);
                return Ok(Started::Redelivery);
            }
            match StartingGuard::new(&self.starting, &run_id) {
                Ok(guard) => break guard,
                Err(other_start) => {
                    debug!(runbook = %name, run_id = %run_id, event_id = %event.id, "this delivery's run is starting for another delivery; waiting for that start");
                    self.wait_for_holder(&other_start, &key).await?;
                }
            }
        };
        // A delivery that came again may have started its run on another replica, which
        // then lost its ack (it died, or the ack came too late) and may have ended it since:
        // the run's id is the same, and the audit stream has it.
        if attempt > 1
            && self
                .started_elsewhere(loaded, &manifest.team, &run_id)
                .await?
        {
            return Ok(redelivered_elsewhere(&name, &run_id, &event.id, attempt));
        }
        let mut locked = false;
        // The lock's holder may be a run of this engine that is starting or ending: wait for
        // that, then look again; a few times at most, then the delivery comes back later.
        for _ in 0..START_TRIES {
            if self
                .state
                .try_lock_run(
                    &key,
                    &run_id,
                    &manifest.team,
                    run_timeout(manifest) + LOCK_SLACK,
                )
                .await?
            {
                locked = true;
                break;
            }
            let Some(holder) = self.state.lock_holder(&key).await? else {
                // Released meanwhile: try again.
                continue;
            };
            // `starting` before `active`: a run is put in `active` before it leaves
            // `starting`, so a run of this engine that is starting or running is seen by one
            // of the two. (Not this delivery's own start: its run holding the lock is not.)
            let starting = if holder == run_id {
                None
            } else {
                self.starting
                    .lock()
                    .expect("starting runs lock")
                    .get(&holder)
                    .map(|s| s.done.clone())
            };
            let local = self
                .active
                .lock()
                .expect("active runs lock")
                .get(&holder)
                .cloned();
            if let Some(run) = local {
                if run.event_id == event.id {
                    info!(runbook = %name, run_id = %run.link.run_id(), event_id = %event.id, "skipped: this delivery's run was started before");
                    metrics::counter!("firebreak_runs_skipped_total", "reason" => "redelivered")
                        .increment(1);
                    return Ok(Started::Redelivery);
                }
                if joined.contains(&holder) {
                    return Ok(Started::Joined(holder));
                }
                match self.join(&run, event).await {
                    Ok(()) => return Ok(Started::Joined(holder)),
                    Err(StartError::Join {
                        source: JoinError::Finished,
                        ..
                    }) => {
                        self.wait_for_holder(&run.released, &key).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(starting) = starting {
                self.wait_for_holder(&starting, &key).await?;
                continue;
            }
            // Neither starting nor running here. A run of this engine that ended since
            // `lock_holder` answered has let its lock go (it is forgotten only after its
            // release): look again before taking the holder for a run elsewhere.
            // (This delivery's own run id cannot be such a run: its start is this delivery's, and
            // `active` was looked at before it.)
            if holder != run_id
                && self.state.lock_holder(&key).await?.as_deref() != Some(holder.as_str())
            {
                continue;
            }
            // This delivery's own run holds the lock under another replica (the start this
            // delivery registered here is not it): that replica started the run, or took the
            // lock and has not started it yet (a run slot), or died there. Started: it is this
            // delivery's run. Else the delivery comes back after a lease, by when the run
            // started there or the takeover freed the lock.
            if holder == run_id {
                if self
                    .started_elsewhere(loaded, &manifest.team, &run_id)
                    .await?
                {
                    return Ok(redelivered_elsewhere(&name, &run_id, &event.id, attempt));
                }
                return Err(StartError::NotStartedElsewhere {
                    key,
                    run_id: holder,
                });
            }
            // On another replica, the run may be between its lock and its start, and never
            // get further if that replica died there: the takeover then only frees the lock,
            // for this event's redelivery to start the run. Skipped only for a run the audit
            // stream shows started; else the event comes back later.
            if self.leases.is_some()
                && !self
                    .started_elsewhere(loaded, &manifest.team, &holder)
                    .await?
            {
                return Err(StartError::NotStartedElsewhere {
                    key,
                    run_id: holder,
                });
            }
            let reason =
                format!("a run for {key} is active (run {holder}, on another engine replica)");
            self.journal_notice(
                &name,
                &manifest.team,
                &actor,
                &event.id,
                RecordBody::Skipped {
                    reason,
                    active_run: Some(holder),
                },
            )
            .await?;
            metrics::counter!("firebreak_runs_skipped_total", "reason" => "active").increment(1);
            return Ok(Started::Skipped);
        }
        if !locked {
            return Err(StartError::Busy { key });
        }
        // From here on we hold the lock, and its lease is renewed (a start may wait long for a
        // run slot); every way out but a start releases it.
        start_guard.holds(Some(&key));
        let locked_at = std::time::Instant::now();
        // A delivery that came again looked for its run on the audit stream before the lock;
        // the run may have started on another replica, ended and let the lock go since. Its
        // records reached the stream before its lock was released: a look with the lock held
        // sees them.
        let elsewhere = if attempt > 1 {
            self.started_elsewhere(loaded, &manifest.team, &run_id)
                .await
        } else {
            Ok(false)
        };
        let outcome = match elsewhere {
            Ok(true) => Ok(redelivered_elsewhere(&name, &run_id, &event.id, attempt)),
            Ok(false) => {
                self.start_locked(loaded, event, published, &m, &key, &run_id, &actor, dry_run)
                    .await
            }
            Err(e) => Err(e),
        };
        match &outcome {
            // The run's timeout counts from its start: a start that waited (for a run slot)
            // extends the lock to the run's whole time from now. A start that did not costs no
            // extra write. A run that ended meanwhile no longer holds the lock: nothing done.
            Ok(Started::Run(_)) if locked_at.elapsed() >= START_WAIT_EXTENDS_LOCK => {
                let ttl = run_timeout(manifest) + LOCK_SLACK;
                if let Err(e) = self.state.refresh_lock(&key, &run_id, ttl).await {
                    warn!(run_id = %run_id, key = %key, error = %e, "cannot extend the lock of a run that waited to start; it expires its wait early");
                }
            }
            Ok(Started::Run(_)) => {}
            _ => {
                start_guard.holds(None);
                let _ = self.state.unlock(&key, &run_id).await;
            }
        }
        outcome
    }

    /// Whether the audit stream shows run `run_id` of a runbook of `team` started (on another
    /// replica); `false` without replicas.
    async fn started_elsewhere(
        &self,
        loaded: &Loaded,
        team: &str,
        run_id: &str,
    ) -> Result<bool, StartError> {
        match &self.leases {
            Some(leases) => Ok(leases
                .has_run_records(run_id, &loaded.teams_for(Some(team)))
                .await?),
            None => Ok(false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_locked(
        &self,
        loaded: &Loaded,
        event: &Arc<Event>,
        published: jiff::Timestamp,
        m: &Match,
        key: &str,
        run_id: &str,
        actor: &str,
        dry_run: bool,
    ) -> Result<Started, StartError> {
        let manifest = &m.runbook.manifest;
        let name = &manifest.name;
        // A redelivery of a message whose run already started (the engine stopped after
        // journaling the start but before the bus had the ack): that run, resumed from the
        // journal if it did not finish, is this delivery's run. A later publish of the same
        // event (Alertmanager repeating it past the bus' duplicate window) is new work.
        if let Some(run) = self
            .journal
            .runs_for_event(&event.id)
            .into_iter()
            .find(|r| &r.runbook == name && r.started >= published)
        {
            info!(runbook = %name, run_id = %run.run_id, event_id = %event.id, "skipped: this delivery's run was started before");
            metrics::counter!("firebreak_runs_skipped_total", "reason" => "redelivered")
                .increment(1);
            return Ok(Started::Redelivery);
        }
        // A runbook without a cooldown has none to look up (one state-store read less per
        // alert); one that had a cooldown before an edit removed it runs again at once.
        if !dry_run
            && !manifest.cooldown.is_zero()
            && let Some(until) = self.state.cooldown(key).await?
        {
            info!(runbook = %name, key = %key, until = %until, event_id = %event.id, "skipped: key in cooldown");
            self.journal_notice(
                name,
                &manifest.team,
                actor,
                &event.id,
                RecordBody::Skipped {
                    reason: format!("{key} is in cooldown until {until}"),
                    active_run: None,
                },
            )
            .await?;
            metrics::counter!("firebreak_runs_skipped_total", "reason" => "cooldown").increment(1);
            return Ok(Started::Skipped);
        }
        if !dry_run && let Some(budget) = manifest.budget {
            let since = jiff::Timestamp::now()
                - jiff::SignedDuration::try_from(budget.per).unwrap_or(jiff::SignedDuration::MAX);
            let used = self.state.runs_since(key, since).await?;
            if used >= budget.max_runs {
                let reason = format!(
                    "remediation budget spent: {used} runs for {key} within {:?} (max {})",
                    budget.per, budget.max_runs
                );
                warn!(runbook = %name, key = %key, "{reason}");
                self.journal_notice(
                    name,
                    &manifest.team,
                    actor,
                    &event.id,
                    RecordBody::Refusal {
                        step: None,
                        action: "start".into(),
                        reason,
                    },
                )
                .await?;
                metrics::counter!("firebreak_refusals_total", "reason" => "budget").increment(1);
                metrics::counter!("firebreak_runs_skipped_total", "reason" => "budget")
                    .increment(1);
                return Ok(Started::Skipped);
            }
        }
        let ast = loaded
            .asts
            .get(name)
            .cloned()
            .expect("every loaded runbook is compiled");
        let cooldown = if dry_run {
            Duration::ZERO
        } else {
            manifest.cooldown
        };
        let plan = RunPlan {
            run_id: run_id.to_owned(),
            runbook: name.clone(),
            team: manifest.team.clone(),
            namespaces: manifest.namespaces.clone(),
            cluster_actions: loaded.set.cluster_grants(&manifest.team),
            approval: approval_policy(manifest),
            ast,
            event: event.clone(),
            params: m.params.clone(),
            actor: actor.to_owned(),
            dry_run,
            timeout: run_timeout(manifest),
            progress: self.progress.clone(),
            // Not a child of `shutdown`: a graceful stop suspends runs between steps (so the
            // next start resumes them) instead of cancelling them.
            cancel: CancellationToken::new(),
            lock_key: Some(key.to_owned()),
            cooldown,
            interactive: false,
        };
        let handle = self.runner.start(plan).await?;
        self.metrics
            .started
            .get_or_init(|| metrics::counter!("firebreak_runs_started_total"))
            .increment(1);
        // The run has started: a budget that cannot count it is logged, not the start undone
        // (failing here left the run going untracked, its lock released under it).
        if !dry_run
            && manifest.budget.is_some()
            && let Err(e) = self.state.record_run(key, jiff::Timestamp::now()).await
        {
            warn!(run_id = %run_id, key = %key, error = %e, "cannot count the run in its remediation budget; the budget may allow one run more");
        }
        let run = ActiveRun {
            link: handle.link(),
            runbook: name.clone(),
            team: manifest.team.clone(),
            event_id: event.id.clone(),
            fingerprint: event.fingerprint.clone(),
            key: Some(key.to_owned()),
            ended: CancellationToken::new(),
            released: CancellationToken::new(),
        };
        self.track(handle, run, key.to_owned(), cooldown);
        Ok(Started::Run(run_id.to_owned()))
    }

    /// Registers a running run and, when it ends, sets its key's cooldown, unlocks it and
    /// forgets the run.
    fn track(
        &self,
        handle: firebreak_runtime::RunHandle,
        run: ActiveRun,
        key: String,
        cooldown: Duration,
    ) {
        let run_id = handle.run_id().to_owned();
        let ended = RunEnded::begin(&run, &self.metrics);
        let released = run.released.clone();
        let script_ended = run.ended.clone();
        self.active
            .lock()
            .expect("active runs lock")
            .insert(run_id.clone(), run);
        // Its lease is renewed as an active run's from here on (first in `active`, then out
        // of `starting`: never in neither while it holds its lock).
        set_starting_key(&self.starting, &run_id, None);
        let state = self.state.clone();
        let leases = self.leases.clone();
        let active = self.active.clone();
        let stopping = self.shutdown.clone();
        self.tasks.spawn(async move {
            let outcome = handle.join().await;
            script_ended.cancel();
            ended.record(&outcome);
            // Forgotten only once its lock is released: an event for its key meanwhile finds
            // it here ended and waits for `released` instead of taking it for another
            // replica's run.
            let _forget = Forget {
                active,
                run_id: run_id.clone(),
                released,
            };
            if outcome.suspended {
                // Keep the lock: it expires on its own, and the run resumes after the restart
                // (taking it again). With leases, give this replica's up, so another replica
                // takes the run over now (a no-op when the lease went to another already).
                if let Some(leases) = leases
                    && let Err(e) = leases.release(&key, &run_id).await
                {
                    warn!(run_id = %run_id, error = %e, "cannot give a suspended run's lease up; another replica takes it over when it runs out");
                }
                return;
            }
            finish(&*state, &key, &outcome.run_id, cooldown, &stopping).await;
            // The runtime logged the end; this is the key's release after it.
            debug!(run_id = %outcome.run_id, key = %key, "run's key released");
        });
    }
}

impl Dispatcher {
    /// A matched runbook whose params cannot be filled: refused, and the refusal audited.
    async fn refuse_unstartable(&self, event: &Event, e: &MatchError) -> Result<(), StartError> {
        warn!(event_id = %event.id, error = %e, "matched runbook cannot start");
        let runbook = e.runbook().unwrap_or("-").to_string();
        let team = self
            .runbooks
            .current()
            .set
            .get(&runbook)
            .map(|r| r.manifest.team.clone())
            .unwrap_or_default();
        self.journal_notice(
            &runbook,
            &team,
            &actor_of(event),
            &event.id,
            RecordBody::Refusal {
                step: None,
                action: "start".into(),
                reason: e.to_string(),
            },
        )
        .await?;
        metrics::counter!("firebreak_runs_skipped_total", "reason" => "params").increment(1);
        Ok(())
    }

    /// Journals an entry that is not a run (a refusal, a skipped event, a parked message).
    async fn journal_notice(
        &self,
        runbook: &str,
        team: &str,
        actor: &str,
        event_id: &str,
        body: RecordBody,
    ) -> Result<(), firebreak_audit::AuditError> {
        let meta = Arc::new(RunMeta {
            run_id: uuid::Uuid::now_v7().to_string(),
            runbook: runbook.to_string(),
            team: team.to_string(),
            actor: actor.to_string(),
            event_id: event_id.to_string(),
        });
        self.journal
            .append(RecordDraft::new(meta, body))
            .await
            .map(|_| ())
    }

    /// Keeps a bus message that is not an event in the journal; whether it is journaled (then
    /// the message may be acked).
    async fn park(&self, event: &Event) -> bool {
        let text = |key: &str| {
            event
                .data
                .get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let body = RecordBody::Parked {
            origin: text("origin"),
            reason: text("reason"),
            payload: text("payload"),
        };
        match self
            .journal_notice("-", "-", SOURCE_FIREBREAK, &event.id, body)
            .await
        {
            Ok(()) => {
                warn!(origin = %text("origin"), reason = %text("reason"), "parked a bus message that is not an event (kept in the audit journal)");
                metrics::counter!("firebreak_events_parked_total").increment(1);
                true
            }
            Err(e) => {
                error!(error = %e, "cannot park a bad bus message; it stays on the bus");
                false
            }
        }
    }

    /// Journals a refused manual trigger by a known caller (not a member of the owner team).
    pub async fn journal_manual_refusal(
        &self,
        runbook: &str,
        team: &str,
        actor: &str,
        reason: String,
    ) {
        firebreak_runtime::guard::count_refusal(&reason);
        let body = RecordBody::Refusal {
            step: None,
            action: "trigger".into(),
            reason,
        };
        if let Err(e) = self.journal_notice(runbook, team, actor, "-", body).await {
            error!(error = %e, "could not journal a refused trigger");
        }
    }

    /// Counts a trigger that failed authentication. Such requests cost no write each (anyone
    /// can send them): they are journaled as one refusal per [`REFUSAL_SUMMARY_EVERY`] by
    /// [`Dispatcher::summarize_refusals`].
    /// The runbook is whatever name the request gave (it is not looked up for an
    /// unauthenticated caller): past [`REFUSAL_NAMES`] distinct names the rest are counted
    /// together, so made-up names cannot grow the counter without bound.
    pub fn note_unauthenticated(&self, runbook: &str) {
        let mut counts = self.unauthenticated.lock().expect("refusal counter lock");
        let key = if counts.contains_key(runbook) || counts.len() < REFUSAL_NAMES {
            runbook
        } else {
            "(other names)"
        };
        *counts.entry(key.to_owned()).or_default() += 1;
        drop(counts);
        metrics::counter!("firebreak_triggers_unauthenticated_total").increment(1);
    }

    /// Journals the failed authentications counted since the last call, as one refusal.
    pub async fn flush_refusals(&self) {
        let counts =
            std::mem::take(&mut *self.unauthenticated.lock().expect("refusal counter lock"));
        if counts.is_empty() {
            return;
        }
        let total: u64 = counts.values().sum();
        let detail: Vec<String> = counts.iter().map(|(rb, n)| format!("{rb}: {n}")).collect();
        let body = RecordBody::Refusal {
            step: None,
            action: "trigger".into(),
            reason: format!(
                "{total} trigger request(s) without a valid token ({})",
                detail.join(", ")
            ),
        };
        if let Err(e) = self
            .journal_notice("-", "-", "unauthenticated", "-", body)
            .await
        {
            error!(error = %e, "could not journal refused triggers");
        }
    }

    /// Journals counted authentication failures every [`REFUSAL_SUMMARY_EVERY`] until
    /// `shutdown` (and once more then).
    pub async fn summarize_refusals(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFUSAL_SUMMARY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.flush_refusals().await,
            }
        }
        self.flush_refusals().await;
    }

    /// Resumes every run the journal shows as started but not finished (a crash or a stop
    /// interrupted it): each takes its concurrency lock again first, so a repeat of its
    /// incident starts no second run, and sets its cooldown when it ends. Finished steps are
    /// replayed from the journal, not repeated. A run started from a terminal is closed as
    /// abandoned, never resumed behind its operator's back.
    ///
    /// With run leases (replicas sharing NATS), a run another replica took over meanwhile is
    /// left to it, one that ended there is closed here too, and one that went on there
    /// resumes from the audit stream's records, which hold what it did there.
    pub async fn resume_unfinished(&self) -> usize {
        // Many at once: each journals its `run_resumed`, and concurrent appends share one
        // fsync (10,000 runs resumed one by one took 10,000 fsyncs).
        futures::stream::iter(self.journal.unfinished_runs())
            .map(|run| self.resume_one(run))
            .buffer_unordered(RESUME_AT_ONCE)
            .filter(|resumed| std::future::ready(*resumed))
            .count()
            .await
    }

    /// Resumes (or closes) one unfinished run; whether it runs again here.
    async fn resume_one(&self, run: firebreak_audit::RunSummary) -> bool {
        {
            // Starting here from before the plan is read and the lock taken until the run is
            // tracked (or given up): a delivery of its message meanwhile (the consumer starts
            // beside the resumes) waits for this, instead of finding the lock its own (it names
            // this run and replica), taking the run for one started before, and releasing the
            // lock under it. A takeover of this very run here (its stream said it went on
            // elsewhere, and that replica died) may hold the run first: then it runs it.
            let start_guard = loop {
                match StartingGuard::new(&self.starting, &run.run_id) {
                    Ok(guard) => break guard,
                    Err(other) => {
                        let waited = self.counted_wait(async {
                            tokio::select! {
                                () = other.cancelled() => true,
                                () = self.shutdown.cancelled() => false,
                            }
                        });
                        if !waited.await {
                            return false;
                        }
                    }
                }
            };
            if self.is_active(&run.run_id) {
                info!(run_id = %run.run_id, "taken over here while it waited to be resumed; not resumed again");
                return false;
            }
            let mut plan = match self.runner.prepare_resume(&run.run_id) {
                Ok(plan) => plan,
                Err(e) => {
                    error!(run_id = %run.run_id, error = %e, "cannot read run to resume");
                    return false;
                }
            };
            if plan.interactive() {
                let reason = "abandoned: started by `firebreak run`, which stopped before the run \
                              finished; not resumed behind its operator's back";
                match self.runner.abandon(&plan, reason).await {
                    Ok(()) => {
                        warn!(run_id = %run.run_id, runbook = %run.runbook, "closed an abandoned interactive run")
                    }
                    Err(e) => {
                        error!(run_id = %run.run_id, error = %e, "cannot close an abandoned run")
                    }
                }
                return false;
            }
            if !self.runbooks.current().asts.contains_key(plan.runbook()) {
                warn!(run_id = %run.run_id, runbook = %run.runbook, "cannot resume: runbook no longer loaded");
                return false;
            }
            let key = plan.lock_key().map(str::to_owned);
            // Another run of the incident holds its lock now (this run's ran out while it was
            // stopped): with replicas, a run acts only while it holds its lock (see
            // `Runner::with_fence`), so it is closed, not resumed to wait for ever.
            let mut lock_of = None;
            if let Some(key) = &key {
                match self
                    .state
                    .try_lock_run(
                        key,
                        &run.run_id,
                        &plan.meta().team,
                        plan.timeout() + LOCK_SLACK,
                    )
                    .await
                {
                    Ok(true) => start_guard.holds(Some(key)),
                    Ok(false) => {
                        let holder = self.state.lock_holder(key).await.ok().flatten();
                        if self.leases.is_some() && holder.as_deref() == Some(run.run_id.as_str()) {
                            info!(run_id = %run.run_id, key = %key, "another replica took this run over; leaving it to it");
                            return false;
                        }
                        if self.leases.is_some() {
                            lock_of = Some(holder.unwrap_or_else(|| "another run".into()));
                        } else {
                            warn!(run_id = %run.run_id, key = %key, holder = ?holder, "resuming a run whose key another run holds");
                        }
                    }
                    Err(e) => {
                        error!(run_id = %run.run_id, key = %key, error = %e, "cannot take a resumed run's lock; it resumes at the next start");
                        return false;
                    }
                }
            }
            if let Some(leases) = self.leases.clone() {
                match self.settle_with_stream(&*leases, plan).await {
                    Some(settled) => plan = settled,
                    None => {
                        if let Some(key) = &key
                            && lock_of.is_none()
                        {
                            let _ = self.state.unlock(key, &run.run_id).await;
                        }
                        return false;
                    }
                }
            }
            if let Some(holder) = lock_of {
                let reason = format!(
                    "not resumed: run {holder} holds its incident's lock now (this run's lock ran out while it was stopped)"
                );
                warn!(run_id = %run.run_id, key = ?key, "{reason}");
                if let Err(e) = self.runner.abandon(&plan, &reason).await {
                    error!(run_id = %run.run_id, error = %e, "cannot close a run whose lock another run holds");
                }
                return false;
            }
            match self.resume_plan(plan, key.clone()).await {
                Ok(()) => true,
                Err(e) => {
                    if let Some(key) = &key {
                        let _ = self.state.unlock(key, &run.run_id).await;
                    }
                    error!(run_id = %run.run_id, error = %e, "cannot resume run");
                    false
                }
            }
        }
    }

    /// A local run to resume, set against what the audit stream holds of it: `None` when it
    /// must not resume here (it ended on another replica: closed here too; or the stream
    /// cannot be read: it resumes at the next start), else the plan to resume, from the
    /// stream's records when another replica went on with it after this one.
    async fn settle_with_stream(
        &self,
        leases: &dyn RunLeases,
        plan: firebreak_runtime::ResumePlan,
    ) -> Option<firebreak_runtime::ResumePlan> {
        let run_id = plan.run_id().to_owned();
        let team = plan.meta().team.clone();
        let teams = self.runbooks.current().teams_for(Some(&team));
        match self.read_stream(leases, &run_id, &teams).await {
            Ok(crate::takeover::Stream::Nothing) => Some(plan),
            Ok(crate::takeover::Stream::Finished { status, by }) => {
                let replica = last_replica(&by).unwrap_or_else(|| "another replica".into());
                let reason = format!(
                    "ended {status} on {replica}, which took the run over (its records are on the audit stream)"
                );
                info!(run_id = %run_id, "{reason}");
                if let Err(e) = self.runner.close(&plan, status, &reason).await {
                    error!(run_id = %run_id, error = %e, "cannot close a run that ended elsewhere");
                }
                None
            }
            Ok(crate::takeover::Stream::Unfinished {
                plan: from_stream,
                last,
                records,
                taken_by,
            }) => {
                let ours = self
                    .journal
                    .records_for_run(&run_id)
                    .ok()
                    .and_then(|r| r.last().map(|r| r.hash.clone()));
                if ours.as_deref() == Some(last.hash.as_str()) {
                    return Some(plan);
                }
                // Another replica went on with the run after this one stopped: link to its
                // records and resume from them.
                let from = taken_by.unwrap_or_else(|| "another replica".into());
                let linked = self
                    .journal_takeover(&plan, leases, &from, &last, records)
                    .await;
                match linked {
                    Ok(_) => Some(*from_stream),
                    Err(e) => {
                        error!(run_id = %run_id, error = %e, "cannot journal the takeover");
                        None
                    }
                }
            }
            Err(e) => {
                error!(run_id = %run_id, error = %e, "cannot read the run back from the audit stream; it resumes at the next start");
                None
            }
        }
    }

    /// Resumes `plan` (its lock, `key`, already held) and tracks it.
    pub(crate) async fn resume_plan(
        &self,
        plan: firebreak_runtime::ResumePlan,
        key: Option<String>,
    ) -> Result<(), firebreak_runtime::RuntimeError> {
        let Some(ast) = self.runbooks.current().asts.get(plan.runbook()).cloned() else {
            return Err(firebreak_runtime::RuntimeError::UnknownRun {
                run_id: plan.run_id().to_owned(),
            });
        };
        let meta = plan.meta().clone();
        let fingerprint = serde_json::from_value::<Event>(plan.event().clone())
            .ok()
            .and_then(|e| e.fingerprint);
        let cooldown = plan.cooldown();
        let handle = self.runner.resume(plan, ast).await?;
        info!(run_id = %meta.run_id, runbook = %meta.runbook, "run resumed");
        let active = ActiveRun {
            link: handle.link(),
            runbook: meta.runbook.clone(),
            team: meta.team.clone(),
            event_id: meta.event_id.clone(),
            fingerprint,
            key: key.clone(),
            ended: CancellationToken::new(),
            released: CancellationToken::new(),
        };
        match key {
            Some(key) => self.track(handle, active, key, cooldown),
            None => self.track_unkeyed(handle, active),
        }
        Ok(())
    }

    /// [`Dispatcher::track`] for a run journaled before runs recorded their lock key.
    fn track_unkeyed(&self, handle: firebreak_runtime::RunHandle, run: ActiveRun) {
        let run_id = handle.run_id().to_owned();
        let ended = RunEnded::begin(&run, &self.metrics);
        let released = run.released.clone();
        let script_ended = run.ended.clone();
        self.active
            .lock()
            .expect("active runs lock")
            .insert(run_id.clone(), run);
        let active = self.active.clone();
        self.tasks.spawn(async move {
            let outcome = handle.join().await;
            script_ended.cancel();
            ended.record(&outcome);
            drop(Forget {
                active,
                run_id,
                released,
            });
        });
    }

    /// One person's decision on run `run_id`'s approval request (see
    /// [`firebreak_runtime::approval`]). A run that is not running here is not waiting here.
    pub async fn decide(
        &self,
        run_id: &str,
        decision: firebreak_runtime::Decision,
    ) -> Result<firebreak_runtime::Standing, firebreak_runtime::DecisionError> {
        let link = self
            .active
            .lock()
            .expect("active runs lock")
            .get(run_id)
            .map(|r| r.link.clone());
        match link {
            Some(link) => link.decide(decision).await,
            None => Err(firebreak_runtime::DecisionError::NotWaiting(
                run_id.to_owned(),
            )),
        }
    }

    /// The approval requests runs here wait on, oldest first.
    pub fn pending_approvals(&self) -> Vec<firebreak_runtime::Pending> {
        let links: Vec<RunLink> = self
            .active
            .lock()
            .expect("active runs lock")
            .values()
            .map(|r| r.link.clone())
            .collect();
        let mut pending: Vec<_> = links.iter().filter_map(RunLink::pending).collect();
        pending.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        pending
    }

    /// How many runs are being started here (their locks taken or being tried, waiting for a
    /// run slot or journaling their start).
    pub fn starting_runs(&self) -> usize {
        self.starting.lock().expect("starting runs lock").len()
    }

    /// How many deliveries (and resumes) wait for a run of this engine that holds their key (or
    /// their run id) to start or to let its lock go (for tests that play those interleavings).
    pub fn deliveries_waiting_for_a_holder(&self) -> usize {
        self.waiting_for_holder
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `token` (a run's start, or its release) is done; `Busy` after
    /// [`HOLDER_WAIT`], and at once once the engine stops: a run suspended by the stop keeps
    /// its lock, so a start waiting for it held the stop up for three waits (30 s).
    async fn wait_for_holder(
        &self,
        token: &CancellationToken,
        key: &str,
    ) -> Result<(), StartError> {
        self.counted_wait(async {
            tokio::select! {
                waited = tokio::time::timeout(HOLDER_WAIT, token.cancelled()) => {
                    waited.map_err(|_| StartError::Busy {
                        key: key.to_owned(),
                    })
                }
                () = self.shutdown.cancelled() => {
                    Err(StartError::Runtime(firebreak_runtime::RuntimeError::ShuttingDown))
                }
            }
        })
        .await
    }

    /// `wait`, counted in [`Dispatcher::deliveries_waiting_for_a_holder`] while it lasts.
    async fn counted_wait<T>(&self, wait: impl std::future::Future<Output = T>) -> T {
        use std::sync::atomic::Ordering::SeqCst;
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        self.waiting_for_holder.fetch_add(1, SeqCst);
        let _waiting = Waiting(&self.waiting_for_holder);
        wait.await
    }

    /// Runs in progress in this engine, with their runbooks (for status pages and tests).
    pub fn active_runs(&self) -> Vec<(String, String)> {
        let mut runs: Vec<(String, String)> = self
            .active
            .lock()
            .expect("active runs lock")
            .iter()
            .map(|(id, r)| (id.clone(), r.runbook.clone()))
            .collect();
        runs.sort();
        runs
    }
}

/// The id of the run `runbook` starts for event `event_id` published at `published`: a UUIDv7
/// of that time whose other bits come from a hash of the three. Every delivery of one publish
/// gives the same id, so a delivery that comes again after its run started (on a replica that
/// then died, or whose ack came too late) finds that run, here or on the audit stream, instead
/// of starting a second one. A later publish of the same event (repeated past the bus'
/// duplicate window) is new work, with an id of its own.
pub fn run_id_for(event_id: &str, runbook: &str, published: jiff::Timestamp) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(event_id.as_bytes());
    hash.update([0]);
    hash.update(runbook.as_bytes());
    hash.update([0]);
    hash.update(published.as_nanosecond().to_be_bytes());
    let digest = hash.finalize();
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(published.as_millisecond()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &bits)
        .into_uuid()
        .to_string()
}

/// The replica that last took a run over, from its records.
pub(crate) fn last_replica(records: &[firebreak_audit::Record]) -> Option<String> {
    records.iter().rev().find_map(|r| match &r.body {
        RecordBody::RunTakenOver { by_replica, .. } => Some(by_replica.clone()),
        _ => None,
    })
}

/// How often [`Dispatcher::start`] looks at a lock held by a run of this engine that is
/// starting or ending before the delivery is nak'ed.
const START_TRIES: usize = 3;

/// Unfinished runs resumed at once after a start.
const RESUME_AT_ONCE: usize = 256;

/// How long a start waits for such a run to get going or to release its lock.
const HOLDER_WAIT: Duration = Duration::from_secs(10);

/// Runs `work`, telling the bus every third of its ack wait that `delivery` is still being
/// worked on: a run may wait for a slot (`max_concurrent_runs`) longer than the ack wait, and
/// each redelivery then waited beside the first delivery, one more task per event and ack wait
/// for as long as a backlog lasted.
async fn in_progress_while<T>(delivery: &Delivery, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    let every = delivery.ack_wait() / 3;
    loop {
        tokio::select! {
            biased;
            done = &mut work => return done,
            () = tokio::time::sleep(every) => {
                if let Err(e) = delivery.in_progress().await {
                    warn!(event_id = %delivery.event.id, error = %e, "could not tell the bus a delivery is still being handled; it may be delivered again");
                }
            }
        }
    }
}

/// A delivery skipped because its run started on another replica (the audit stream has it).
fn redelivered_elsewhere(runbook: &str, run_id: &str, event_id: &str, attempt: u32) -> Started {
    info!(runbook = %runbook, run_id = %run_id, event_id = %event_id, attempt, "skipped: this delivery's run was started before, on another engine replica");
    metrics::counter!("firebreak_runs_skipped_total", "reason" => "redelivered").increment(1);
    Started::Redelivery
}

/// A run being started.
#[derive(Default)]
pub(crate) struct Starting {
    /// Cancelled when its start is over, either way.
    done: CancellationToken,
    /// The lock it holds, from when it took it until its start failed (it is then released)
    /// or the run is tracked in `active`.
    pub(crate) key: Option<String>,
}

/// A run id in [`Dispatcher`]'s `starting` map while its start lasts (a delivery's, a resume's
/// or a takeover's): one at a time per run id here.
pub(crate) struct StartingGuard<'a> {
    starting: &'a Mutex<foldhash::HashMap<String, Starting>>,
    run_id: String,
}

impl<'a> StartingGuard<'a> {
    /// Registers run `run_id` as starting; if it already is, `Err` with what tells when that
    /// start is over.
    pub(crate) fn new(
        starting: &'a Mutex<foldhash::HashMap<String, Starting>>,
        run_id: &str,
    ) -> Result<Self, CancellationToken> {
        match starting
            .lock()
            .expect("starting runs lock")
            .entry(run_id.to_owned())
        {
            std::collections::hash_map::Entry::Occupied(other) => {
                return Err(other.get().done.clone());
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Starting::default());
            }
        }
        Ok(StartingGuard {
            starting,
            run_id: run_id.to_owned(),
        })
    }

    /// The start holds lock `key` (its lease is renewed) or, with `None`, is letting it go.
    pub(crate) fn holds(&self, key: Option<&str>) {
        set_starting_key(self.starting, &self.run_id, key);
    }
}

/// Records that starting run `run_id` holds lock `key` (renewed as its lease), or no lock.
fn set_starting_key(
    starting: &Mutex<foldhash::HashMap<String, Starting>>,
    run_id: &str,
    key: Option<&str>,
) {
    if let Some(start) = starting.lock().expect("starting runs lock").get_mut(run_id) {
        start.key = key.map(str::to_owned);
    }
}

impl Drop for StartingGuard<'_> {
    fn drop(&mut self) {
        if let Some(starting) = self
            .starting
            .lock()
            .expect("starting runs lock")
            .remove(&self.run_id)
        {
            starting.done.cancel();
        }
    }
}

/// Forgets an ended run when dropped (after its lock's fate is settled) and tells whoever
/// waits on it.
struct Forget {
    active: Arc<Mutex<foldhash::HashMap<String, ActiveRun>>>,
    run_id: String,
    released: CancellationToken,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.active
            .lock()
            .expect("active runs lock")
            .remove(&self.run_id);
        self.released.cancel();
    }
}

/// After a run: cooldown first, then unlock, so no second run slips in between. Both wait out a
/// store that cannot answer for now (a NATS cluster electing a bucket's leader after a node
/// failed, 4 to 9 s), together up to [`ELECTION_PATIENCE`] or until the engine stops: a
/// cooldown lost that way let the alert's next firing run again at once, and a lock left
/// behind held the key until it expired (the run's timeout and more).
async fn finish(
    state: &dyn StateStore,
    key: &str,
    run_id: &str,
    cooldown: Duration,
    stopping: &CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + ELECTION_PATIENCE;
    let patiently = |what: &'static str| {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let waiting = move |e: &BusError| {
            debug!(key = %key, error = %e, "{what}: the state store cannot answer; waiting for it");
        };
        (left, waiting)
    };
    if !cooldown.is_zero() {
        let until = jiff::Timestamp::now()
            + jiff::SignedDuration::try_from(cooldown).unwrap_or(jiff::SignedDuration::MAX);
        let (left, waiting) = patiently("setting the cooldown");
        let set = wait_out_elections_until(left, stopping.cancelled(), waiting, || {
            state.set_cooldown(key, until)
        });
        if let Err(e) = set.await {
            warn!(key = %key, error = %e, "could not set cooldown");
        }
    }
    let (left, waiting) = patiently("releasing the lock");
    let unlocked = wait_out_elections_until(left, stopping.cancelled(), waiting, || {
        state.unlock(key, run_id)
    });
    if let Err(e) = unlocked.await {
        warn!(key = %key, error = %e, "could not release concurrency lock; it expires on its own");
    }
}

/// How long a run of `manifest` may last: its `timeout`, and on top the approval's expiry
/// (waiting for people is not the run's work). Its lock lasts that long and [`LOCK_SLACK`].
fn run_timeout(manifest: &firebreak_matcher::Manifest) -> Duration {
    manifest.timeout
        + manifest
            .approval
            .as_ref()
            .map_or(Duration::ZERO, |a| a.expires)
}

/// Who a run is started by: the trigger's actor, else the event's source.
fn actor_of(event: &Event) -> String {
    event
        .manual_request()
        .map(|(_, _, actor)| actor.to_string())
        .unwrap_or_else(|| event.source.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: RunStatus, suspended: bool) -> firebreak_runtime::RunOutcome {
        firebreak_runtime::RunOutcome {
            run_id: "r".into(),
            status,
            error: None,
            steps: 1,
            suspended,
        }
    }

    /// A run's end waits for a state store that cannot answer (NATS unreachable here; a
    /// cluster electing a bucket's leader) for the cooldown and the unlock together at most
    /// [`ELECTION_PATIENCE`], and not at all once the engine stops.
    #[tokio::test(start_paused = true)]
    async fn a_runs_end_waits_for_the_store_at_most_the_election_patience_in_all() {
        let no_retries = CancellationToken::new();
        no_retries.cancel();
        let store = firebreak_bus::deferred::DeferredNats::connect(
            "nats://127.0.0.1:1",
            firebreak_bus::NatsOptions::default(),
            no_retries,
        )
        .await
        .expect("a store that answers once NATS does");
        let end = |stopping: CancellationToken| {
            let store = store.clone();
            async move {
                let started = tokio::time::Instant::now();
                finish(&*store, "rb/k", "r", Duration::from_secs(60), &stopping).await;
                started.elapsed()
            }
        };
        let waited = end(CancellationToken::new()).await;
        assert!(
            waited >= ELECTION_PATIENCE - Duration::from_secs(1) && waited <= ELECTION_PATIENCE,
            "{waited:?}"
        );
        let stopped = CancellationToken::new();
        stopped.cancel();
        assert_eq!(end(stopped).await, Duration::ZERO);
    }

    /// Runs are counted by runbook, team and outcome through handles made once per runbook
    /// and team (and outcome), as the labelled macros counted them at every run.
    #[test]
    fn run_metrics_are_counted_by_runbook_team_and_outcome_with_handles_made_once() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let metrics = RunMetrics::default();
            assert!(Arc::ptr_eq(&metrics.of("a", "x"), &metrics.of("a", "x")));
            assert!(!Arc::ptr_eq(&metrics.of("a", "x"), &metrics.of("a", "y")));
            for status in [
                RunStatus::Succeeded,
                RunStatus::Succeeded,
                RunStatus::Failed,
            ] {
                RunEnded::of("a", "x", &metrics).record(&outcome(status, false));
            }
            RunEnded::of("b", "x", &metrics).record(&outcome(RunStatus::Succeeded, false));
            RunEnded::of("b", "x", &metrics).record(&outcome(RunStatus::Succeeded, true));
            let _running = RunEnded::of("b", "x", &metrics);
            assert_eq!(metrics.of("a", "x").outcomes.lock().unwrap().len(), 2);
            metrics.consumed("alertmanager").increment(2);
            metrics.consumed("alertmanager").increment(1);
        });
        let text = handle.render();
        for line in [
            r#"firebreak_runs_total{runbook="a",team="x",outcome="succeeded"} 2"#,
            r#"firebreak_runs_total{runbook="a",team="x",outcome="failed"} 1"#,
            r#"firebreak_runs_total{runbook="b",team="x",outcome="succeeded"} 1"#,
            r#"firebreak_runs_finished_total{status="succeeded"} 3"#,
            r#"firebreak_runs_finished_total{status="failed"} 1"#,
            r#"firebreak_run_duration_seconds_count{runbook="a"} 3"#,
            "firebreak_runs_in_progress 1",
            r#"firebreak_events_consumed_total{source="alertmanager"} 3"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
