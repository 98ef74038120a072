//! The event envelope every source produces and every stage consumes, shaped after
//! CloudEvents 1.0, plus the decoders that turn source payloads into envelopes.
//!
//! Pure types and parsing; no I/O. Start at [`Event`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One event on the bus. Field names follow CloudEvents 1.0 (`specversion` is implied "1.0").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; also the NATS `Nats-Msg-Id`, so a re-publish is deduplicated.
    pub id: String,
    /// Which producer: `alertmanager`, `k8s`, `manual`, `chat`.
    pub source: String,
    /// What happened: `firing`, `resolved`, `warning`, `trigger`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is about, e.g. the alert name or `deployment/fraud-model`.
    pub subject: String,
    /// When it happened (RFC 3339).
    pub time: jiff::Timestamp,
    /// The Kubernetes namespace, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Stable identity of the incident (Alertmanager's alert fingerprint), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Source-specific payload: for alerts `{labels, annotations, startsAt, endsAt, ...}`.
    pub data: Value,
}

impl Event {
    /// The NATS subject this event is published on: `firebreak.events.<source>.<type>`.
    pub fn subject_name(&self) -> String {
        format!("firebreak.events.{}.{}", self.source, self.kind)
    }
}
