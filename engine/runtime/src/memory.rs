//! What the runs for one incident share across engine replicas: the values `once(name, ...)`
//! decided. Without it (one engine), `once` finds an earlier run's decision in the local
//! journal; with several replicas the earlier run may have run on another one, so the engine
//! gives the runner an [`IncidentMemory`] on the state they share (JetStream KV).

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

/// A boxed future borrowing the memory.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Storage for `once` decisions, shared by every replica. Keys name the runbook, the incident
/// (the event's id) and the decision's name.
pub trait IncidentMemory: Send + Sync {
    /// The decision stored under `key`, if one is: the run that made it and its value.
    fn recall(&self, key: &str) -> BoxFuture<'_, Result<Option<(String, Value)>, String>>;

    /// Stores run `run_id`'s `value` under `key` unless a decision is stored already; returns
    /// the one stored now (the first).
    fn remember(
        &self,
        key: &str,
        run_id: &str,
        value: Value,
    ) -> BoxFuture<'_, Result<(String, Value), String>>;
}
