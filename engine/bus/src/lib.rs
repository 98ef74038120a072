//! The firebreak bus: where ingest puts events and the dispatcher takes them from.
//!
//! One trait, [`Bus`], with two implementations that pass the same test suite:
//! - [`NatsBus`] (module [`nats`]): NATS JetStream. Events go to the `FIREBREAK_EVENTS` stream on
//!   `firebreak.events.<source>.<type>` with `Nats-Msg-Id` = event id; one durable pull consumer
//!   is shared by every engine replica, so replicas split the work. Locks, cooldowns, budgets,
//!   run leases and `once` decisions live in JetStream KV buckets ([`NatsStateStore`]).
//! - [`EmbeddedBus`] (module [`embedded`]): in-process, backed by an append-only log file with
//!   group commit, for the one-machine default. Its [`FileStateStore`] keeps state the same way.
//!
//! Start reading at [`Bus`] and [`Delivery`], then [`StateStore`]. The contract both
//! implementations keep: `publish` returns `Ok` only once every event is durable; a delivery
//! that is not acked is delivered again (after the ack wait, and after a restart); an event may
//! be delivered twice, but an accepted event is never lost.

use std::sync::Arc;
use std::time::Duration;

use firebreak_event::Event;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub mod deferred;
pub mod embedded;
mod error;
mod log;
pub mod nats;
mod own_events;
pub mod port;
mod security;
mod state;
#[cfg(feature = "test-util")]
pub mod testutil;

pub use deferred::DeferredNats;
pub use embedded::{EmbeddedBus, EmbeddedOptions, FileStateStore};
pub use error::{BusError, BusErrorKind};
pub use nats::{NatsBus, NatsOptions, NatsStateStore};
pub use security::{NatsAuth, NatsSecurity, NatsTls};
/// Resolves once the audit stream stored what [`Bus::publish_audit`] sent.
pub type AuditStored = BoxFuture<'static, Result<(), BusError>>;

pub use state::{BUDGET_RETENTION, Decision, Orphan, RunLeases, StateStore};

/// Where events are published and consumed. Dyn-compatible: the binary holds an `Arc<dyn Bus>`.
pub trait Bus: Send + Sync {
    /// Stores every event durably, then returns `Ok`. An event whose id was already published
    /// (within the duplicate window, or still unacked) is accepted again without a second copy.
    /// On `Err` some events may have been stored; publishing the same batch again is safe.
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), BusError>>;

    /// A stream of deliveries. Each consumer (from this or another process sharing the same
    /// store or NATS consumer) gets a share of the events; no event goes to two consumers at once.
    /// Transient failures (NATS reconnecting) are retried inside the stream; it ends when the bus
    /// is closed.
    fn consume(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, BusError>>, BusError>>;

    /// Appends messages to the audit stream (`FIREBREAK_AUDIT`, subject
    /// `firebreak.audit.<team>.<run_id>`), in order. Resolves once all are sent (so what is
    /// published after it lands after them) to a future that resolves once the server stored
    /// every one; the caller may send more meanwhile. A message's `id` is its `Nats-Msg-Id`,
    /// so publishing a batch again after a failure is deduplicated by the server within its
    /// duplicate window. The embedded bus has no audit stream (the journal file is the record)
    /// and does nothing.
    fn publish_audit(
        &self,
        records: Vec<AuditMessage>,
    ) -> BoxFuture<'_, Result<AuditStored, BusError>>;

    /// Whether the bus can accept events right now (for `/readyz`).
    fn ready(&self) -> bool;

    /// Graceful stop: consumer streams end and pending acks are flushed. The embedded bus also
    /// fsyncs queued writes, refuses further calls ([`BusError::Closed`]) and releases its
    /// directory. Call it last on shutdown, after the consumers are done.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// One message for the audit stream: journal lines of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMessage {
    pub subject: String,
    /// Unique per message (the hash of its last record): the `Nats-Msg-Id`.
    pub id: String,
    /// Shared, so a retried batch is re-sent without copying it.
    pub payload: bytes::Bytes,
}

/// One event handed to a consumer. Call [`Delivery::ack`] once the work it starts is safely
/// recorded; [`Delivery::nak`] to have it delivered again later. A delivery dropped without
/// either is delivered again after the ack wait.
pub struct Delivery {
    /// The event (shared: consumers hand it on without copying it).
    pub event: Arc<Event>,
    /// 1 on the first delivery, 2 on the first redelivery, and so on.
    pub attempt: u32,
    /// When the bus accepted the event. Work started after this instant for this event was
    /// started by an earlier delivery of this very message (a redelivery after a lost ack).
    pub published: jiff::Timestamp,
    ack_wait: std::time::Duration,
    handle: Box<dyn AckHandle>,
}

impl Delivery {
    pub(crate) fn new(
        event: Arc<Event>,
        attempt: u32,
        published: jiff::Timestamp,
        ack_wait: std::time::Duration,
        handle: Box<dyn AckHandle>,
    ) -> Self {
        Delivery {
            event,
            attempt,
            published,
            ack_wait,
            handle,
        }
    }

    /// How long the bus waits for a settle (or [`Delivery::in_progress`]) before it delivers
    /// the event again.
    pub fn ack_wait(&self) -> std::time::Duration {
        self.ack_wait
    }

    /// Marks the event done: it will not be delivered again (except after a crash that lost the
    /// ack; consumers must tolerate a second delivery, e.g. through a run-id lock).
    pub async fn ack(self) -> Result<(), BusError> {
        self.handle.ack().await
    }

    /// Gives the event back, to be delivered again after `delay`.
    pub async fn nak(self, delay: Duration) -> Result<(), BusError> {
        self.handle.nak(delay).await
    }

    /// Tells the bus work on this event is still going, restarting the ack wait.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.handle.in_progress().await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event.id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// What each implementation does when a delivery is settled.
pub(crate) trait AckHandle: Send + Sync {
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>>;
    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>>;
    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>>;
}

/// Unix time in milliseconds, as stored in logs and KV values.
pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Wire form of a lock held in a store: who holds it and until when (unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockValue {
    pub owner: String,
    pub expires_ms: i64,
    /// The replica running the lock's run, on a shared store (see [`RunLeases`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Until when that replica's lease runs (unix ms); it renews it while the run goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<i64>,
    /// The replica's incarnation that wrote the lease (see `nats::Beat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// The team of the lock's run when it started: the audit stream holds its records under
    /// that team, whatever team its runbook has since (see [`StateStore::try_lock_run`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}
