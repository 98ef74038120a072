//! [`SharedMemory`]: the runtime's [`IncidentMemory`] on the state replicas share.

use std::sync::Arc;

use firebreak_bus::{Decision, RunLeases};
use firebreak_runtime::IncidentMemory;
use firebreak_runtime::memory::BoxFuture;
use serde_json::Value;

/// `once` decisions kept where every replica reads them (JetStream KV, through
/// [`RunLeases::decide`]).
pub struct SharedMemory(pub Arc<dyn RunLeases>);

impl IncidentMemory for SharedMemory {
    fn recall(&self, key: &str) -> BoxFuture<'_, Result<Option<(String, Value)>, String>> {
        let key = key.to_owned();
        Box::pin(async move {
            self.0
                .decision(&key)
                .await
                .map(|found| found.map(|d| (d.run_id, d.value)))
                .map_err(|e| e.to_string())
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
            self.0
                .decide(&key, decision)
                .await
                .map(|d| (d.run_id, d.value))
                .map_err(|e| e.to_string())
        })
    }
}
