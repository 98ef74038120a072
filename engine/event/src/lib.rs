//! The event envelope every source produces and every stage consumes, shaped after
//! CloudEvents 1.0, plus the decoders that turn source payloads into envelopes.
//!
//! Pure types and parsing; no I/O. Start at [`Event`], then [`alertmanager::decode`] and
//! [`manual::trigger`].

pub mod alertmanager;
pub mod json;
pub mod manual;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One event on the bus. Field names follow CloudEvents 1.0 (`specversion` is implied "1.0").
///
/// The fields are declared in the byte order of their JSON names, and serde writes them in
/// that order: the event's JSON (`serde_json::to_vec`) is its canonical form (sorted keys at
/// every depth, as the audit journal hashes it), so a run's `run_started` record takes it as
/// written instead of building, sorting and writing a tree of it again. A test holds this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Source-specific payload: for alerts `{labels, annotations, startsAt, endsAt, ...}`.
    pub data: Value,
    /// Stable identity of the incident (Alertmanager's alert fingerprint), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Unique per event; also the NATS `Nats-Msg-Id`, so a re-publish is deduplicated.
    pub id: String,
    /// The Kubernetes namespace, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Which producer: `alertmanager`, `k8s`, `manual`, `chat`.
    pub source: String,
    /// What it is about, e.g. the alert name or `deployment/fraud-model`.
    pub subject: String,
    /// When it happened (RFC 3339).
    pub time: jiff::Timestamp,
    /// The W3C `traceparent` the event arrived with, if any: its run's trace links to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// What happened: `firing`, `resolved`, `warning`, `trigger`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's JSON as the bus that carries it wrote it ([`Event::keep_json`]), so the
    /// audit journal need not write it again. Not part of the event: neither serialized,
    /// compared nor cloned (a clone may be changed).
    #[serde(skip)]
    pub written: WrittenJson,
}

/// The most [`SCRATCH`] keeps between events.
const SCRATCH_KEPT: usize = 64 << 10;

thread_local! {
    /// Where [`Event::keep_json`] writes.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// See [`Event::written`].
#[derive(Default)]
pub struct WrittenJson(OnceLock<Bytes>);

impl WrittenJson {
    /// The JSON kept, if any.
    pub fn get(&self) -> Option<&Bytes> {
        self.0.get()
    }
}

impl Clone for WrittenJson {
    fn clone(&self) -> Self {
        WrittenJson::default()
    }
}

impl PartialEq for WrittenJson {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for WrittenJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "kept"
        } else {
            "none"
        })
    }
}

/// `source` of events decoded from Alertmanager webhooks.
pub const SOURCE_ALERTMANAGER: &str = "alertmanager";
/// `source` of Kubernetes events.
pub const SOURCE_K8S: &str = "k8s";
/// `source` of manual triggers (CLI, HTTP, chat).
pub const SOURCE_MANUAL: &str = "manual";
/// `source` of events firebreak makes about itself (a bus message that was not an event).
pub const SOURCE_FIREBREAK: &str = "firebreak";
/// `type` of an event standing for a bus message that could not be decoded.
pub const KIND_UNPROCESSABLE: &str = "unprocessable";

/// Largest part of an undecodable message's payload kept in its event.
const MAX_PARKED_PAYLOAD: usize = 64 * 1024;

/// The event that stands for a bus message that could not be decoded: `source = "firebreak"`,
/// `type = "unprocessable"`, `data = {origin, reason, payload}` (the payload as lossy UTF-8,
/// cut at 64 KiB). Consumers park it (keep it in the audit journal) and ack the message.
pub fn unprocessable(origin: &str, reason: &str, payload: &[u8]) -> Event {
    let cut = payload.len().min(MAX_PARKED_PAYLOAD);
    let mut text = String::from_utf8_lossy(&payload[..cut]).into_owned();
    if cut < payload.len() {
        text.push_str(&format!("… ({} bytes in all)", payload.len()));
    }
    Event {
        id: uuid::Uuid::now_v7().to_string(),
        source: SOURCE_FIREBREAK.to_owned(),
        kind: KIND_UNPROCESSABLE.to_owned(),
        subject: origin.to_owned(),
        time: jiff::Timestamp::now(),
        namespace: None,
        fingerprint: None,
        traceparent: None,
        data: serde_json::json!({ "origin": origin, "reason": reason, "payload": text }),
        written: Default::default(),
    }
}

impl Event {
    /// The NATS subject this event is published on: `firebreak.events.<source>.<type>`.
    pub fn subject_name(&self) -> String {
        format!("firebreak.events.{}.{}", self.source, self.kind)
    }

    /// One label, borrowed, without building the whole label map (the matcher's hot path).
    ///
    /// Same rules as [`Event::labels`]: alerts and Kubernetes events read `data.labels`
    /// (string values only); a manual trigger has exactly one label, `runbook`.
    pub fn label(&self, name: &str) -> Option<&str> {
        if self.source == SOURCE_MANUAL {
            return match name {
                "runbook" => self.data.get("runbook").and_then(Value::as_str),
                _ => None,
            };
        }
        self.data.get("labels")?.get(name)?.as_str()
    }

    /// The event's labels.
    ///
    /// - alerts: `data.labels`;
    /// - Kubernetes events and other sources: `data.labels` if present, else empty;
    /// - manual triggers: `{runbook: <data.runbook>}`.
    ///
    /// Non-string values are skipped (Alertmanager labels are always strings).
    pub fn labels(&self) -> BTreeMap<String, String> {
        if self.source == SOURCE_MANUAL {
            return self
                .label("runbook")
                .map(|r| BTreeMap::from([("runbook".to_owned(), r.to_owned())]))
                .unwrap_or_default();
        }
        string_map(self.data.get("labels"))
    }

    /// One annotation, borrowed (`data.annotations.<name>`).
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.data.get("annotations")?.get(name)?.as_str()
    }

    /// The event's annotations (`data.annotations`, string values only; empty when absent).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        string_map(self.data.get("annotations"))
    }

    /// The event as JSON, the same as `serde_json::to_value(&event)` (a test holds it to
    /// that), built directly: each run's `run_started` record and `ctx` start from it, and
    /// the serde path re-serialized the whole payload value by value.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("id".into(), self.id.clone().into());
        map.insert("source".into(), self.source.clone().into());
        map.insert("type".into(), self.kind.clone().into());
        map.insert("subject".into(), self.subject.clone().into());
        map.insert("time".into(), self.time.to_string().into());
        for (key, value) in [
            ("namespace", &self.namespace),
            ("fingerprint", &self.fingerprint),
            ("traceparent", &self.traceparent),
        ] {
            if let Some(value) = value {
                map.insert(key.into(), value.clone().into());
            }
        }
        map.insert("data".into(), self.data.clone());
        Value::Object(map)
    }

    /// The event's JSON (as `serde_json::to_vec` writes it), written at the first call and kept in
    /// [`Event::written`]. For an event that no longer changes: a bus calls it as it takes
    /// the event.
    pub fn keep_json(&self) -> Bytes {
        if let Some(json) = self.written.get() {
            return json.clone();
        }
        // Written where there is room already, then kept in an allocation of its own size:
        // the event may wait in a bus's backlog for a while.
        let json = SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            self.write_json(scratch);
            let json = Bytes::copy_from_slice(scratch);
            // An outsized event does not leave its buffer behind in the thread.
            if scratch.capacity() > SCRATCH_KEPT {
                *scratch = Vec::new();
            }
            json
        });
        self.written.0.get_or_init(|| json).clone()
    }

    /// Writes the event's JSON as `serde_json::to_writer` would (a test holds it to that):
    /// the fields in the order [`Event`] declares them, each string through [`json::write_str`].
    fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Every field, so that a new one cannot be missed.
        let Event {
            data,
            fingerprint,
            id,
            namespace,
            source,
            subject,
            time,
            traceparent,
            kind,
            written: _,
        } = self;
        // `,"key":` and the string.
        let text = |out: &mut Vec<u8>, key: &str, value: &str| {
            out.extend_from_slice(key.as_bytes());
            json::write_str(out, value);
        };
        out.extend_from_slice(b"{\"data\":");
        json::write_value(out, data);
        if let Some(fingerprint) = fingerprint {
            text(out, ",\"fingerprint\":", fingerprint);
        }
        text(out, ",\"id\":", id);
        if let Some(namespace) = namespace {
            text(out, ",\"namespace\":", namespace);
        }
        text(out, ",\"source\":", source);
        text(out, ",\"subject\":", subject);
        // RFC 3339 in digits and punctuation: nothing to escape.
        write!(out, ",\"time\":\"{time}\"").expect("writing to a Vec cannot fail");
        if let Some(traceparent) = traceparent {
            text(out, ",\"traceparent\":", traceparent);
        }
        text(out, ",\"type\":", kind);
        out.push(b'}');
    }

    /// The status used by trigger `status` filters: `data.status` when it is a string
    /// (alerts: `firing` or `resolved`), otherwise the event's `type`.
    pub fn status(&self) -> &str {
        self.data
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or(&self.kind)
    }
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    let Some(Value::Object(map)) = value else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A bare event, a full one and an odd one (no data, quotes and a line break).
    fn three_events() -> [Event; 3] {
        let bare = event(
            "alertmanager",
            json!({"labels": {"b": "2", "a": "1", "A": "0"}, "n": [1, 2.5, {"z": null, "y": -1}]}),
        );
        let full = Event {
            namespace: Some("team-a".into()),
            fingerprint: Some("14ec0898ad0f9755".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            time: "2026-11-26T22:01:43.277123456Z".parse().unwrap(),
            ..bare.clone()
        };
        let odd = Event {
            data: Value::Null,
            subject: "quote \" é \n".into(),
            ..bare.clone()
        };
        [bare, full, odd]
    }

    #[test]
    fn to_json_is_what_serde_makes_of_the_event() {
        for e in three_events() {
            assert_eq!(e.to_json(), serde_json::to_value(&e).unwrap());
        }
    }

    /// The audit journal takes an event's JSON as its canonical form (see [`Event`]): keys
    /// sorted at every depth, which is how serde_json writes a `Value`'s maps.
    #[test]
    fn the_events_json_is_its_canonical_form() {
        for e in three_events() {
            let written = serde_json::to_string(&e).unwrap();
            let sorted = serde_json::to_value(&e).unwrap().to_string();
            assert_eq!(written, sorted);
            assert_eq!(e.keep_json(), written.as_bytes());
        }
    }

    fn event(source: &str, data: Value) -> Event {
        Event {
            id: "1".into(),
            source: source.into(),
            kind: "warning".into(),
            subject: "s".into(),
            time: jiff::Timestamp::UNIX_EPOCH,
            namespace: None,
            fingerprint: None,
            traceparent: None,
            data,
            written: Default::default(),
        }
    }

    #[test]
    fn labels_read_data_labels_and_skip_non_strings() {
        let e = event(
            SOURCE_K8S,
            json!({"labels": {"app": "fraud", "n": 3}, "annotations": {"a": "b"}}),
        );
        assert_eq!(e.labels(), BTreeMap::from([("app".into(), "fraud".into())]));
        assert_eq!(e.label("app"), Some("fraud"));
        assert_eq!(e.label("n"), None);
        assert_eq!(e.annotation("a"), Some("b"));
        assert_eq!(e.annotations().len(), 1);
    }

    #[test]
    fn event_without_labels_has_none() {
        let e = event(SOURCE_K8S, json!({"reason": "BackOff"}));
        assert!(e.labels().is_empty());
        assert!(e.annotations().is_empty());
        assert_eq!(e.status(), "warning");
    }

    #[test]
    fn manual_trigger_has_only_the_runbook_label() {
        let e = event(
            SOURCE_MANUAL,
            json!({"runbook": "rb", "params": {"labels": 1}, "actor": "ann"}),
        );
        assert_eq!(
            e.labels(),
            BTreeMap::from([("runbook".into(), "rb".into())])
        );
        assert_eq!(e.label("actor"), None);
    }

    #[test]
    fn subject_name_uses_source_and_type() {
        let e = event(SOURCE_K8S, json!({}));
        assert_eq!(e.subject_name(), "firebreak.events.k8s.warning");
    }
}
