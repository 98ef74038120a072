//! [`SharedMemory`]: the runtime's [`IncidentMemory`] on the state replicas share.

use std::future::Future;
use std::sync::Arc;

use firebreak_bus::nats::{ELECTION_PATIENCE, wait_out_elections};
use firebreak_bus::{BusError, Decision, RunLeases};
use firebreak_runtime::IncidentMemory;
use firebreak_runtime::memory::BoxFuture;
use serde_json::Value;

/// `once` decisions kept where every replica reads them (JetStream KV, through
/// [`RunLeases::decide`]).
///
/// A decision is read from and written to the runs bucket's leader. When the node leading it
/// fails, the bucket has no leader until the cluster elects one (nats-server's raft waits 4 to
/// 9 s): a `once` waits that out, up to [`ELECTION_PATIENCE`], rather than failing its step in
/// the middle of an incident. A stop or the run's timeout still ends the wait at once (the
/// runtime drops the call). Writing again after a write whose answer was lost is safe: the
/// decision is created only if absent, and the one found is returned.
pub struct SharedMemory(pub Arc<dyn RunLeases>);

impl SharedMemory {
    async fn patiently<T, Fut>(
        &self,
        what: &'static str,
        key: &str,
        attempt: impl FnMut() -> Fut,
    ) -> Result<T, String>
    where
        Fut: Future<Output = Result<T, BusError>>,
    {
        let mut told = false;
        let waiting = |e: &BusError| {
            if !std::mem::replace(&mut told, true) {
                tracing::warn!(key, error = %e, "{what}: the runs bucket cannot answer; waiting for it (a cluster electing its leader)");
            }
        };
        wait_out_elections(ELECTION_PATIENCE, waiting, attempt)
            .await
            .map_err(|e| e.to_string())
    }
}

impl IncidentMemory for SharedMemory {
    fn recall(&self, key: &str) -> BoxFuture<'_, Result<Option<(String, Value)>, String>> {
        let key = key.to_owned();
        Box::pin(async move {
            let found = self
                .patiently("once: reading the decision", &key, || self.0.decision(&key))
                .await?;
            Ok(found.map(|d| (d.run_id, d.value)))
        })
    }

    fn remember(
        &self,
        key: &str,
        run_id: &str,
        value: Value,
    ) -> BoxFuture<'_, Result<(String, Value), String>> {
        let key = key.to_owned();
        let decision = Decision {
            run_id: run_id.to_owned(),
            value,
        };
        Box::pin(async move {
            let kept = self
                .patiently("once: keeping the decision", &key, || {
                    self.0.decide(&key, decision.clone())
                })
                .await?;
            Ok((kept.run_id, kept.value))
        })
    }
}
