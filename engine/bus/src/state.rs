//! The dispatcher's shared state: concurrency locks, cooldowns, remediation budgets and run
//! state. [`StateStore`] is implemented on JetStream KV ([`crate::NatsStateStore`]) and on a
//! local log file ([`crate::FileStateStore`]); both pass the same tests.

use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::BusError;

/// How long [`StateStore::record_run`] timestamps are kept: budgets are counted over windows
/// shorter than this.
pub const BUDGET_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Locks, cooldowns and budgets shared by every engine replica.
///
/// Keys are free-form strings (a concurrency key like `team-a/fraud-model`, a run id); each
/// implementation encodes them as it needs. Timestamps are wall-clock.
pub trait StateStore: Send + Sync {
    /// Takes the lock `key` for `owner` until `ttl` from now, if it is free, expired, or already
    /// held by `owner` (then it is extended). Returns whether `owner` now holds it. Two callers
    /// racing for a free lock: exactly one gets `true`.
    fn try_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>>;

    /// [`StateStore::try_lock`] for run `run_id`'s concurrency lock, the run being under team
    /// `team`. A store other replicas share keeps the team in the lock (a lock the run holds
    /// already keeps the one it names): a replica taking the run over reads the run's records
    /// on the audit stream under it (see [`Orphan::team`]), whatever team the runbook has
    /// moved to since, and whatever teams that replica knows. A store no other replica reads
    /// may take it as [`StateStore::try_lock`]; a store wrapping another must pass it on.
    fn try_lock_run(
        &self,
        key: &str,
        run_id: &str,
        team: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>>;

    /// Extends the lock `key` held by `owner` to `ttl` from now. `false` if `owner` lost it.
    fn refresh_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>>;

    /// Releases the lock `key` if `owner` holds it. Returns whether it was released.
    fn unlock(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>>;

    /// Who holds the lock `key`, if someone does and it has not expired.
    fn lock_holder(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, BusError>>;

    /// Puts `key` in cooldown until `until`.
    fn set_cooldown(&self, key: &str, until: Timestamp) -> BoxFuture<'_, Result<(), BusError>>;

    /// When the cooldown of `key` ends, if it has not ended yet.
    fn cooldown(&self, key: &str) -> BoxFuture<'_, Result<Option<Timestamp>, BusError>>;

    /// Records that a run for `key` started at `at` (for remediation budgets).
    fn record_run(&self, key: &str, at: Timestamp) -> BoxFuture<'_, Result<(), BusError>>;

    /// How many runs were recorded for `key` at or after `since`.
    fn runs_since(&self, key: &str, since: Timestamp) -> BoxFuture<'_, Result<u32, BusError>>;
}

/// Rejects empty keys, which neither store can hold.
pub(crate) fn check_key(key: &str) -> Result<(), BusError> {
    if key.is_empty() {
        return Err(BusError::EmptyKey);
    }
    Ok(())
}

/// A value a run decided once for its incident (a runbook's `once(name, ...)`), shared by every
/// replica so that a later run for the same incident, wherever it runs, gets the same value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The run that decided it.
    pub run_id: String,
    pub value: serde_json::Value,
}

/// A run whose replica stopped renewing its lease: see [`RunLeases::orphans`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The run's concurrency lock, which carries the lease.
    pub key: String,
    /// The run (the lock's owner).
    pub run_id: String,
    /// The replica that held the lease.
    pub replica: String,
    /// When the lease ran out.
    pub lease_ended: Timestamp,
    /// The run's team when it started, as its lock names it (see [`StateStore::try_lock_run`]);
    /// `None` for a lock written by an engine that did not name it.
    pub team: Option<String>,
}

/// Run leases, on a state store several replicas share (JetStream KV).
///
/// A run's concurrency lock (owned by the run id, see [`StateStore::try_lock`]) also names the
/// replica running it and a lease that replica renews while the run goes on. A replica that
/// dies stops renewing; once its lease has run out another replica takes the lock over (a
/// revision-checked write: one taker wins), rebuilds the run from the audit stream
/// ([`RunLeases::run_lines`]) and resumes it. The lock itself (the incident's "one run at a
/// time") never lapses in between.
pub trait RunLeases: Send + Sync {
    /// This replica's name, as its leases carry it.
    fn replica(&self) -> &str;

    /// How long a lease lasts without renewal.
    fn lease(&self) -> Duration;

    /// Whether this replica's lease on run `owner`'s lock `key` holds for a while yet, as
    /// this replica last wrote it (no request): a run acts only while it does (a replica
    /// cut off from NATS must leave the run to the one that takes it over).
    fn holds(&self, key: &str, owner: &str) -> bool;

    /// Renews this replica's lease on run `owner`'s lock `key`. `false`: the lease is not ours
    /// any more (another replica took the run over, or the run's lock is gone).
    fn renew(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>>;

    /// Ends this replica's lease on the lock at once, keeping the lock (a stop suspended the
    /// run): another replica may take the run over without waiting for the lease to run out.
    fn release(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>>;

    /// Every held lock whose lease ran out: runs their replica left. Reads the locks only
    /// when a replica's heartbeat ended or it gave a lease up, and now and then on one
    /// replica: a lease of a run its replica tracks runs out only after that replica's
    /// heartbeat has (see [`RunLeases::beat`]); other stale locks (an unlock NATS failed,
    /// retried at each heartbeat; an engine without heartbeats) wait for the occasional read.
    fn orphans(&self) -> BoxFuture<'_, Result<Vec<Orphan>, BusError>>;

    /// Renews this replica's heartbeat for a lease from now. Call it after renewing every
    /// lease this replica holds, and only if each renewal was answered: a lease then runs out
    /// only after the heartbeat has, and a lease scan does not miss it.
    fn beat(&self) -> BoxFuture<'_, Result<(), BusError>>;

    /// Ends this replica's heartbeat (it stops): the others read its locks at their next scan.
    fn leave(&self) -> BoxFuture<'_, Result<(), BusError>>;

    /// Moves `orphan`'s lease to this replica if it is still out and still the same replica's,
    /// and extends the lock to `ttl` from now. Of replicas racing, exactly one gets `true`.
    fn take_over(&self, orphan: &Orphan, ttl: Duration) -> BoxFuture<'_, Result<bool, BusError>>;

    /// The journal lines of run `run_id` on the audit stream, in the order they were
    /// published (each message one or more newline-terminated lines), read from the subject of
    /// the first of `teams` that holds any: the teams the run may be under, the likeliest
    /// first (its runbook's team, then the others this engine knows: the runbook may have
    /// changed teams since the run started). With no team given they are searched for under
    /// every team, which costs the stream a match of each subject it holds (see
    /// `docs/SCALING.md`).
    fn run_lines(
        &self,
        run_id: &str,
        teams: &[String],
    ) -> BoxFuture<'_, Result<Vec<bytes::Bytes>, BusError>>;

    /// Whether the audit stream holds anything of run `run_id` under one of `teams` (as
    /// [`run_lines`] looks): whether the run started. Reads no line where the store can tell
    /// from its index.
    ///
    /// [`run_lines`]: RunLeases::run_lines
    fn has_run_records(
        &self,
        run_id: &str,
        teams: &[String],
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let lines = self.run_lines(run_id, teams);
        Box::pin(async move { Ok(!lines.await?.is_empty()) })
    }

    /// The decision stored under `key`, if one is (see [`Decision`]).
    fn decision(&self, key: &str) -> BoxFuture<'_, Result<Option<Decision>, BusError>>;

    /// Stores `decision` under `key` unless one is stored already, and returns the one that is
    /// stored now: of replicas racing, the first writer's.
    fn decide(&self, key: &str, decision: Decision) -> BoxFuture<'_, Result<Decision, BusError>>;
}
