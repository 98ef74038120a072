//! Run takeover between replicas sharing a JetStream KV store (see [`RunLeases`]).
//!
//! Every run's concurrency lock names the replica running it and a lease that replica renews
//! every third of its length ([`Dispatcher::keep_leases`]). A replica that dies stops
//! renewing; every other replica looks for leases that ran out as often, and one of them (a
//! revision-checked write decides which) takes the run over:
//! 1. it reads the run's journal lines back from the audit stream (the journal publishes each
//!    record there before the step that wrote it goes on, so the stream holds everything the
//!    dead replica did) and checks each line's hash;
//! 2. it journals `run_taken_over`, linking to the last of those records by its hash;
//! 3. it resumes the run as a restart would ([`firebreak_runtime::Runner::resume`]): finished
//!    steps replay their journaled outputs, a mutation whose intent was journaled finishes that
//!    very intent, waits go on with the time they had left, and the run keeps its lock.
//!
//! A replica that finds its lease gone (it was cut off long enough for another to take over)
//! suspends the run at once without journaling an end. A replica told to stop suspends its
//! runs and gives their leases up, so another replica takes them over without waiting.

use std::sync::Arc;

use firebreak_audit::{Record, RecordBody, RecordDraft};
use firebreak_bus::{Orphan, RunLeases};
use firebreak_runtime::{ResumePlan, Runner};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::dispatcher::{ActiveRun, Dispatcher, LOCK_SLACK, StartingGuard};

/// Takeovers in flight at once: each waits mostly on NATS (two reads of the run's trail, a
/// lock write, a journal write).
const TAKE_OVER_AT_ONCE: usize = 8;

/// Lease renewals in flight at once: thousands of runs renew within a fraction of the lease,
/// without a burst that would hold NATS up for everything else.
const RENEW_AT_ONCE: usize = 32;

/// Runs `work` every `period` (the first time one period from now; a round that overruns
/// delays the next instead of bunching them up) until `shutdown`.
async fn periodically<F: std::future::Future<Output = ()>>(
    period: std::time::Duration,
    shutdown: &CancellationToken,
    mut work: impl FnMut() -> F,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        work().await;
    }
}

/// What the audit stream says about a run.
pub(crate) enum Stream {
    /// The stream holds nothing of it (the mirror was off, or its records aged out).
    Nothing,
    /// It ended (on another replica, after a takeover).
    Finished {
        status: firebreak_audit::RunStatus,
        by: Vec<Record>,
    },
    /// Unfinished: the plan to resume it, the last record the stream holds, how many it
    /// holds, and the replica that last took the run over (if one did).
    Unfinished {
        plan: Box<ResumePlan>,
        last: Box<Record>,
        records: u32,
        taken_by: Option<String>,
    },
}

impl Dispatcher {
    /// Renews the leases of the runs running here and takes over runs whose lease ran out,
    /// every third of the lease, until `shutdown`. The two go on side by side: taking runs over
    /// waits on the audit stream (a few milliseconds a run, more when NATS is busy), and a
    /// replica taking over thousands of a dead replica's runs must not let its own runs' leases
    /// run out meanwhile (other replicas would take over runs that are alive here).
    pub async fn keep_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(leases) = self.leases.clone() else {
            return;
        };
        let every = leases.lease() / 3;
        tokio::join!(
            periodically(every, &shutdown, || self.renew_leases(&*leases)),
            periodically(every, &shutdown, || self
                .take_over_orphans(&*leases, &shutdown)),
        );
    }

    /// Ends this replica's heartbeat (it stops, its runs suspended and their leases given
    /// up): the other replicas read its locks at their next scan.
    pub async fn leave(&self) {
        if let Some(leases) = &self.leases
            && let Err(e) = leases.leave().await
        {
            warn!(error = %e, "cannot end this replica's heartbeat; the others take its runs over when it runs out");
        }
    }

    /// Takes over every run whose lease ran out that another replica left,
    /// [`TAKE_OVER_AT_ONCE`] at a time. Each replica goes through them in an order of its own,
    /// so replicas sharing the work of a dead one mostly read different runs back instead of
    /// racing for the same ones (one wins each race; the others' reads were for nothing).
    async fn take_over_orphans(&self, leases: &dyn RunLeases, shutdown: &CancellationToken) {
        use futures::StreamExt as _;
        let mut orphans = match leases.orphans().await {
            Ok(orphans) => orphans,
            Err(e) => {
                warn!(error = %e, "cannot list run leases; trying again");
                return;
            }
        };
        // This replica's own runs (a restart on the same data dir) are resumed from its
        // journal at start, not taken over from itself.
        orphans.retain(|o| o.replica != leases.replica() && !self.is_active(&o.run_id));
        orphans.sort_by_cached_key(|o| {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::hash::DefaultHasher::new();
            (leases.replica(), &o.run_id).hash(&mut hasher);
            hasher.finish()
        });
        futures::stream::iter(orphans)
            .take_until(shutdown.cancelled())
            .for_each_concurrent(TAKE_OVER_AT_ONCE, |orphan| self.take_over(leases, orphan))
            .await;
    }

    /// One renewal of every lease held here, [`RENEW_AT_ONCE`] at a time, then this
    /// replica's heartbeat if every renewal was answered (see [`RunLeases::beat`]). A run whose
    /// lease another replica took stops here.
    async fn renew_leases(&self, leases: &dyn RunLeases) {
        use futures::StreamExt as _;
        let answered = futures::stream::iter(self.leased_runs())
            .map(|(run_id, key, link)| self.renew_lease(leases, run_id, key, link))
            .buffer_unordered(RENEW_AT_ONCE)
            .fold(true, |all, answered| async move { all && answered })
            .await;
        if answered && let Err(e) = leases.beat().await {
            warn!(error = %e, "cannot renew this replica's heartbeat");
        }
    }

    /// Renews the lease of run `run_id` on lock `key`; whether NATS answered.
    async fn renew_lease(
        &self,
        leases: &dyn RunLeases,
        run_id: String,
        key: String,
        link: Option<firebreak_runtime::RunLink>,
    ) -> bool {
        match leases.renew(&key, &run_id).await {
            Ok(true) => metrics::counter!("firebreak_run_lease_renewals_total").increment(1),
            // The run ended since the list was taken and released its lock (or gave its lease
            // up): its own doing.
            Ok(false) if self.has_ended(&run_id) => {}
            Ok(false) => {
                warn!(run_id = %run_id, key = %key, "run lease lost: another replica took the run over; stopping it here");
                metrics::counter!("firebreak_run_leases_lost_total").increment(1);
                // A run still starting is stopped at its next renewal, once it runs.
                if let Some(link) = link {
                    link.suspend();
                }
            }
            // Transient: the lease runs on; if NATS stays away past it, another replica takes
            // over and the next renewal here finds it gone.
            Err(e) => {
                warn!(run_id = %run_id, error = %e, "cannot renew the run's lease");
                return false;
            }
        }
        true
    }

    /// Takes `orphan` over if this replica wins it and can run it.
    async fn take_over(&self, leases: &dyn RunLeases, orphan: Orphan) {
        let run_id = orphan.run_id.clone();
        // Its records are on its team's subject: the team its lock names (its team when it
        // started), else (a lock written without it) the team of the runbook its lock names
        // or, the runbook having changed teams since, another.
        let teams = {
            let runbooks = self.runbooks.current();
            let team = orphan.team.as_deref().or_else(|| {
                orphan
                    .key
                    .split_once('/')
                    .and_then(|(runbook, _)| runbooks.set.get(runbook))
                    .map(|r| r.manifest.team.as_str())
            });
            runbooks.teams_for(team)
        };
        // Read first (nothing is taken yet), so a run this replica cannot resume is left to one
        // that can.
        let stream = match self.read_stream(leases, &run_id, &teams).await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(run_id = %run_id, error = %e, "cannot read a left run back from the audit stream");
                return;
            }
        };
        let ttl = match &stream {
            Stream::Unfinished { plan, .. } => plan.timeout() + LOCK_SLACK,
            _ => LOCK_SLACK,
        };
        if let Stream::Unfinished { plan, .. } = &stream
            && !self.runbooks.current().asts.contains_key(plan.runbook())
        {
            warn!(run_id = %run_id, runbook = %plan.runbook(), "a left run's runbook is not loaded here; leaving it to another replica");
            return;
        }
        // Starting here from before the lock is written until the run is tracked (or the lock
        // released): a delivery of the run's message here meanwhile waits for this, instead of
        // taking the lock as its own (it names this run and this replica) and starting the
        // run, only to have the takeover, finding nothing started, release the lock under it.
        let Ok(start_guard) = StartingGuard::new(&self.starting, &run_id) else {
            // A delivery here is starting this very run: the run is its.
            return;
        };
        match leases.take_over(&orphan, ttl).await {
            Ok(true) => start_guard.holds(Some(&orphan.key)),
            Ok(false) => return,
            Err(e) => {
                warn!(run_id = %run_id, error = %e, "cannot take a left run over");
                return;
            }
        }
        info!(run_id = %run_id, from = %orphan.replica, key = %orphan.key, lease_ended = %orphan.lease_ended, "run lease ran out: taking the run over");
        metrics::counter!("firebreak_runs_taken_over_total").increment(1);
        // Read again now that it is ours: a replica that was only slow may have written more.
        let teams = match &stream {
            Stream::Unfinished { plan, .. } => {
                self.runbooks.current().teams_for(Some(&plan.meta().team))
            }
            _ => teams,
        };
        let stream = match self.read_stream(leases, &run_id, &teams).await {
            Ok(stream) => stream,
            Err(e) => {
                error!(run_id = %run_id, error = %e, "cannot read a taken-over run back; giving the lease up");
                let _ = leases.release(&orphan.key, &run_id).await;
                return;
            }
        };
        match stream {
            Stream::Unfinished {
                plan,
                last,
                records,
                ..
            } => {
                self.resume_taken_over(leases, &orphan, *plan, &last, records)
                    .await;
            }
            // Started nowhere (its replica died between the lock and the start) or ended
            // without unlocking: the incident's key is free again.
            Stream::Nothing | Stream::Finished { .. } => {
                info!(run_id = %run_id, key = %orphan.key, "a left lock's run never started or already ended; releasing the lock");
                let _ = self.state.unlock(&orphan.key, &run_id).await;
            }
        }
    }

    async fn resume_taken_over(
        &self,
        leases: &dyn RunLeases,
        orphan: &Orphan,
        plan: ResumePlan,
        last: &Record,
        records: u32,
    ) {
        let run_id = orphan.run_id.clone();
        let linked = self
            .journal_takeover(&plan, leases, &orphan.replica, last, records)
            .await;
        if let Err(e) = linked {
            error!(run_id = %run_id, error = %e, "cannot journal the takeover; giving the lease up");
            let _ = leases.release(&orphan.key, &run_id).await;
            return;
        }
        if let Err(e) = self.resume_plan(plan, Some(orphan.key.clone())).await {
            error!(run_id = %run_id, error = %e, "cannot resume a taken-over run; giving the lease up");
            let _ = leases.release(&orphan.key, &run_id).await;
        }
    }

    /// Journals that this replica takes `plan`'s run over from `from`, linking to `last`, the
    /// last of the `records` the audit stream holds of it.
    pub(crate) async fn journal_takeover(
        &self,
        plan: &ResumePlan,
        leases: &dyn RunLeases,
        from: &str,
        last: &Record,
        records: u32,
    ) -> Result<Record, firebreak_audit::AuditError> {
        self.journal
            .append(RecordDraft::new(
                plan.meta().clone(),
                RecordBody::RunTakenOver {
                    by_replica: leases.replica().to_owned(),
                    from_replica: from.to_owned(),
                    last_hash: last.hash.clone(),
                    last_seq: last.seq,
                    records,
                },
            ))
            .await
    }

    /// What the audit stream holds of run `run_id` under one of `teams` (see
    /// [`Loaded::teams_for`](crate::Loaded::teams_for)), each line's hash checked.
    pub(crate) async fn read_stream(
        &self,
        leases: &dyn RunLeases,
        run_id: &str,
        teams: &[String],
    ) -> Result<Stream, String> {
        let messages = leases
            .run_lines(run_id, teams)
            .await
            .map_err(|e| e.to_string())?;
        let mut records = Vec::new();
        // A record the stream holds twice (a batch the mirror sent again, or the catch-up of
        // records an earlier engine's mirror gave up on) counts once.
        let mut seen = std::collections::HashSet::new();
        for message in &messages {
            for line in message.split_inclusive(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                if line.is_empty() {
                    continue;
                }
                let record = firebreak_audit::read_line(line)
                    .map_err(|p| format!("a record of run {run_id} on the audit stream: {p}"))?;
                if record.run_id == run_id && seen.insert(record.hash.clone()) {
                    records.push(record);
                }
            }
        }
        let Some(last) = records.last().cloned().map(Box::new) else {
            return Ok(Stream::Nothing);
        };
        if let Some(status) = records.iter().find_map(|r| match &r.body {
            RecordBody::RunFinished { status, .. } => Some(*status),
            _ => None,
        }) {
            return Ok(Stream::Finished {
                status,
                by: records,
            });
        }
        let plan = Runner::plan_from_records(run_id, &records).map_err(|e| e.to_string())?;
        Ok(Stream::Unfinished {
            plan: Box::new(plan),
            last,
            records: records.len() as u32,
            taken_by: crate::dispatcher::last_replica(&records),
        })
    }

    pub(crate) fn is_active(&self, run_id: &str) -> bool {
        self.active
            .lock()
            .expect("active runs lock")
            .contains_key(run_id)
    }

    /// `(run id, lock key, link)` of every run here that holds a lock and has not ended,
    /// started or still starting (waiting for a run slot, journaling its start: no link yet).
    fn leased_runs(&self) -> Vec<(String, String, Option<firebreak_runtime::RunLink>)> {
        let active = self.active.lock().expect("active runs lock");
        let mut runs: Vec<_> = active
            .iter()
            .filter(|(_, run)| !run.ended.is_cancelled())
            .filter_map(|(id, run): (&String, &ActiveRun)| {
                run.key
                    .as_ref()
                    .map(|key| (id.clone(), key.clone(), Some(run.link.clone())))
            })
            .collect();
        let starting = self.starting.lock().expect("starting runs lock");
        runs.extend(starting.iter().filter_map(|(id, start)| {
            let key = start.key.as_ref()?;
            (!active.contains_key(id)).then(|| (id.clone(), key.clone(), None))
        }));
        runs
    }

    /// Whether run `run_id` ended here (or is forgotten already, or its start failed).
    fn has_ended(&self, run_id: &str) -> bool {
        if let Some(run) = self.active.lock().expect("active runs lock").get(run_id) {
            return run.ended.is_cancelled();
        }
        // Tracked runs leave `starting` only once they are in `active` (see `track`).
        self.starting
            .lock()
            .expect("starting runs lock")
            .get(run_id)
            .is_none_or(|start| start.key.is_none())
    }
}
