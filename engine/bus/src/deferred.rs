//! A NATS bus that connects in the background: `serve` starts while NATS is unreachable, says
//! it is not ready (`/readyz` 503, alerts and triggers 503 `bus_unavailable` so senders retry)
//! and takes work once it connects. Start at [`DeferredNats::connect`].
//!
//! Until connected, every call answers [`BusError::NotConnected`], except
//! [`Bus::consume`], which waits for the connection; so does every state store call while
//! the client is not connected later (NATS gone, the client reconnecting). A refused login or
//! a failed TLS handshake is not retried: the engine's start fails with it, as before.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use firebreak_event::Event;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use jiff::Timestamp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    AuditMessage, Bus, BusError, Decision, Delivery, NatsBus, NatsOptions, NatsStateStore, Orphan,
    RunLeases, StateStore,
};

/// How long between connection attempts.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The bus and its state store once NATS answered.
pub struct DeferredNats {
    url: String,
    /// This replica's name and lease length (from the options), known before NATS answers.
    replica: String,
    lease: Duration,
    inner: OnceLock<(NatsBus, NatsStateStore)>,
    connected: Notify,
}

impl DeferredNats {
    /// Connects to `url`: at once if NATS answers (`Ok` connected), else in the background until
    /// it does or `shutdown`. A refused login or TLS failure is an error now.
    pub async fn connect(
        url: &str,
        opts: NatsOptions,
        shutdown: CancellationToken,
    ) -> Result<Arc<DeferredNats>, BusError> {
        let deferred = Arc::new(DeferredNats {
            url: url.to_owned(),
            replica: opts.replica.clone().unwrap_or_default(),
            lease: opts.run_lease,
            inner: OnceLock::new(),
            connected: Notify::new(),
        });
        match open(url, opts.clone()).await {
            Ok(both) => {
                deferred.set(both);
                return Ok(deferred);
            }
            Err(e @ (BusError::Unauthorized { .. } | BusError::Tls { .. })) => return Err(e),
            Err(e) => {
                warn!(url, error = %e, "nats is unreachable: serving 503 until it connects");
            }
        }
        let retrying = deferred.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY_EVERY) => {}
                }
                match open(&retrying.url, opts.clone()).await {
                    Ok(both) => {
                        info!(url = %retrying.url, "nats reachable: taking work");
                        retrying.set(both);
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "nats still unreachable"),
                }
            }
        });
        Ok(deferred)
    }

    fn set(&self, both: (NatsBus, NatsStateStore)) {
        let _ = self.inner.set(both);
        self.connected.notify_waiters();
    }

    /// Whether NATS answered.
    pub fn is_connected(&self) -> bool {
        self.inner.get().is_some()
    }

    /// Waits until NATS answered.
    pub async fn connected(&self) {
        loop {
            let notified = self.connected.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_connected() {
                return;
            }
            notified.await;
        }
    }

    /// Housekeeping of the lock and cooldown buckets (see [`NatsStateStore::sweep`]); nothing
    /// before NATS answered.
    pub async fn sweep(&self, now: Timestamp) -> Result<u64, BusError> {
        match self.inner.get() {
            Some((_, state)) => state.sweep(now).await,
            None => Ok(0),
        }
    }

    /// The newest message the audit stream holds on `subject` (see
    /// [`NatsBus::last_audit_message`]).
    pub async fn last_audit_message(
        &self,
        subject: &str,
    ) -> Result<Option<bytes::Bytes>, BusError> {
        self.bus()?.last_audit_message(subject).await
    }

    fn bus(&self) -> Result<&NatsBus, BusError> {
        self.inner
            .get()
            .map(|(b, _)| b)
            .ok_or_else(|| self.not_connected())
    }

    /// The state store, while the client is connected: a request made while it is not would
    /// wait in the client's queue for its timeout (5 s), and a stop with NATS down waited on
    /// its runs' lock releases, one timeout after another, past its grace period. Callers
    /// retry a failed call, as after a timeout.
    fn state(&self) -> Result<&NatsStateStore, BusError> {
        match self.inner.get() {
            Some((bus, state)) if bus.ready() => Ok(state),
            _ => Err(self.not_connected()),
        }
    }

    fn not_connected(&self) -> BusError {
        BusError::NotConnected {
            url: self.url.clone(),
        }
    }
}

async fn open(url: &str, opts: NatsOptions) -> Result<(NatsBus, NatsStateStore), BusError> {
    let bus = NatsBus::connect(url, opts).await?;
    let state = bus.state_store().await?;
    Ok((bus, state))
}

/// A call on the connected part, or `NotConnected` now.
macro_rules! forward {
    ($self:ident . $part:ident () . $call:ident ( $($arg:expr),* )) => {
        match $self.$part() {
            Ok(inner) => inner.$call($($arg),*),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    };
}

impl Bus for DeferredNats {
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), BusError>> {
        forward!(self.bus().publish(events))
    }

    fn consume(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, BusError>>, BusError>> {
        Box::pin(async move {
            self.connected().await;
            self.bus()?.consume().await
        })
    }

    fn publish_audit(
        &self,
        records: Vec<AuditMessage>,
    ) -> BoxFuture<'_, Result<crate::AuditStored, BusError>> {
        forward!(self.bus().publish_audit(records))
    }

    fn ready(&self) -> bool {
        self.bus().is_ok_and(Bus::ready)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        match self.bus() {
            Ok(bus) => bus.close(),
            Err(_) => Box::pin(async {}),
        }
    }
}

impl StateStore for DeferredNats {
    fn try_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        forward!(self.state().try_lock(key, owner, ttl))
    }

    fn try_lock_run(
        &self,
        key: &str,
        run_id: &str,
        team: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        forward!(self.state().try_lock_run(key, run_id, team, ttl))
    }

    fn refresh_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        forward!(self.state().refresh_lock(key, owner, ttl))
    }

    fn unlock(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        forward!(self.state().unlock(key, owner))
    }

    fn lock_holder(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, BusError>> {
        forward!(self.state().lock_holder(key))
    }

    fn set_cooldown(&self, key: &str, until: Timestamp) -> BoxFuture<'_, Result<(), BusError>> {
        forward!(self.state().set_cooldown(key, until))
    }

    fn cooldown(&self, key: &str) -> BoxFuture<'_, Result<Option<Timestamp>, BusError>> {
        forward!(self.state().cooldown(key))
    }

    fn record_run(&self, key: &str, at: Timestamp) -> BoxFuture<'_, Result<(), BusError>> {
        forward!(self.state().record_run(key, at))
    }

    fn runs_since(&self, key: &str, since: Timestamp) -> BoxFuture<'_, Result<u32, BusError>> {
        forward!(self.state().runs_since(key, since))
    }
}

impl RunLeases for DeferredNats {
    fn replica(&self) -> &str {
        &self.replica
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn holds(&self, key: &str, owner: &str) -> bool {
        // What was written stays known while the connection is down.
        self.inner
            .get()
            .is_some_and(|(_, state)| state.holds(key, owner))
    }

    fn renew(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        forward!(self.state().renew(key, owner))
    }

    fn release(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        forward!(self.state().release(key, owner))
    }

    fn orphans(&self) -> BoxFuture<'_, Result<Vec<Orphan>, BusError>> {
        forward!(self.state().orphans())
    }

    fn beat(&self) -> BoxFuture<'_, Result<(), BusError>> {
        forward!(self.state().beat())
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), BusError>> {
        forward!(self.state().leave())
    }

    fn take_over(&self, orphan: &Orphan, ttl: Duration) -> BoxFuture<'_, Result<bool, BusError>> {
        forward!(self.state().take_over(orphan, ttl))
    }

    fn decision(&self, key: &str) -> BoxFuture<'_, Result<Option<Decision>, BusError>> {
        forward!(self.state().decision(key))
    }

    fn decide(&self, key: &str, decision: Decision) -> BoxFuture<'_, Result<Decision, BusError>> {
        forward!(self.state().decide(key, decision))
    }

    fn run_lines(
        &self,
        run_id: &str,
        teams: &[String],
    ) -> BoxFuture<'_, Result<Vec<bytes::Bytes>, BusError>> {
        forward!(self.state().run_lines(run_id, teams))
    }

    fn has_run_records(
        &self,
        run_id: &str,
        teams: &[String],
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        forward!(self.state().has_run_records(run_id, teams))
    }
}
