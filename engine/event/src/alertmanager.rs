//! Decoder for the Alertmanager webhook payload, version 4 (Alertmanager 0.x up to today).
//!
//! Start at [`decode`]: one [`Event`] per alert of the notified group. Every alert keeps its
//! own status, so a group that mixes firing and resolved alerts becomes a mix of `firing` and
//! `resolved` events. Unknown fields are ignored, as Alertmanager adds fields across versions.
//!
//! Errors and the HTTP status each maps to ([`DecodeError::http_status`]):
//! - [`DecodeError::Malformed`] → 400: the body is not JSON (with line and column);
//! - [`DecodeError::UnsupportedVersion`] → 422: a JSON webhook whose `version` is not `"4"`;
//! - [`DecodeError::Invalid`] → 400: JSON that is not a v4 webhook (no `version`, no
//!   `alerts`, an alert without `labels`, `status` or `startsAt`, a bad timestamp, a value of
//!   the wrong type). 400 rather than 422 because the sender did not speak this API at all,
//!   while 422 is kept for "a webhook we recognise, in a version we do not speak".

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Event, SOURCE_ALERTMANAGER};

/// The only webhook payload version this decoder speaks.
pub const SUPPORTED_VERSION: &str = "4";

/// Alertmanager's "no end time" value, sent as `endsAt` of firing alerts.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Why a webhook body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not well-formed JSON.
    #[error("malformed json at line {line}, column {column}: {message}")]
    Malformed {
        /// 1-based line of the first syntax error.
        line: usize,
        /// 1-based column of the first syntax error (0 for an empty body).
        column: usize,
        /// What the JSON parser expected.
        message: String,
    },
    /// The payload declares a `version` other than `"4"`.
    #[error("unsupported webhook version {0}, expected \"4\"")]
    UnsupportedVersion(String),
    /// Well-formed JSON that is not a valid v4 webhook; the message names the field.
    #[error("invalid alertmanager webhook: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// The HTTP status an ingest endpoint answers with: 400, or 422 for a wrong version.
    pub fn http_status(&self) -> u16 {
        match self {
            DecodeError::Malformed { .. } | DecodeError::Invalid(_) => 400,
            DecodeError::UnsupportedVersion(_) => 422,
        }
    }
}

/// The webhook body. Every field is optional here so that a missing one is reported with
/// our own message (and the alert index) instead of serde's.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Webhook {
    version: Option<Value>,
    #[serde(default)]
    receiver: String,
    alerts: Option<Vec<Alert>>,
    #[serde(default)]
    group_labels: Strings,
    #[serde(default)]
    common_labels: Strings,
    #[serde(rename = "externalURL", default)]
    external_url: String,
    #[serde(default)]
    group_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    status: Option<String>,
    labels: Option<Strings>,
    #[serde(default)]
    annotations: Strings,
    starts_at: Option<String>,
    ends_at: Option<String>,
    #[serde(rename = "generatorURL", default)]
    generator_url: String,
    fingerprint: Option<String>,
}

/// Decodes one webhook body into one event per alert, in the payload's order.
///
/// Per event: `source = "alertmanager"`, `type` = the alert's own status, `subject` =
/// `alertname` (the fingerprint when an alert has no `alertname`), `namespace` = the
/// `namespace` label, `fingerprint` = Alertmanager's (computed the way Alertmanager does
/// when absent), `time` = `startsAt` for firing and `endsAt` for resolved alerts (`startsAt`
/// if a resolved alert carries the zero time), `data = {labels, annotations, startsAt,
/// endsAt, generatorURL, status, receiver, groupKey, externalURL, groupLabels,
/// commonLabels}` with the timestamps as Alertmanager sent them. The `id` is derived from
/// (fingerprint, status, startsAt), so a repeated notification yields the same id.
pub fn decode(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    // Checked as UTF-8 in one pass, the body is parsed as text: serde_json then takes each of
    // its strings as it is instead of checking each again (a webhook has dozens). A body that
    // is not UTF-8 takes the bytes' way, whose error says where the bad byte is.
    let parsed = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    };
    let mut hook: Webhook = match parsed {
        Ok(hook) => hook,
        Err(e) => return Err(classify(body, e)),
    };
    check_version(hook.version.as_ref())?;
    let alerts = hook
        .alerts
        .take()
        .ok_or_else(|| DecodeError::Invalid("missing field `alerts`".into()))?;
    if alerts.is_empty() {
        return Err(DecodeError::Invalid("`alerts` is empty".into()));
    }
    let mut group = Group::of(hook);
    let last = alerts.len() - 1;
    alerts
        .into_iter()
        .enumerate()
        .map(|(i, alert)| {
            let group = if i == last {
                std::mem::take(&mut group)
            } else {
                group.clone()
            };
            to_event(group, alert).map_err(|m| DecodeError::Invalid(format!("alerts[{i}]: {m}")))
        })
        .collect()
}

/// Splits a serde_json failure into "not JSON" and "JSON of the wrong shape"; for the
/// latter the version is checked first, so an old or future payload gets its 422.
fn classify(body: &[u8], e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            let (line, column) = (e.line(), e.column());
            let full = e.to_string();
            let suffix = format!(" at line {line} column {column}");
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
            DecodeError::Malformed {
                line,
                column,
                message,
            }
        }
        Category::Data => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => match check_version(map.get("version")) {
                Err(version_error) => version_error,
                Ok(()) => DecodeError::Invalid(e.to_string()),
            },
            Ok(_) => DecodeError::Invalid("expected a JSON object".into()),
            Err(_) => DecodeError::Invalid(e.to_string()),
        },
    }
}

fn check_version(version: Option<&Value>) -> Result<(), DecodeError> {
    match version {
        None => Err(DecodeError::Invalid("missing field `version`".into())),
        Some(Value::String(v)) if v == SUPPORTED_VERSION => Ok(()),
        Some(other) => Err(DecodeError::UnsupportedVersion(other.to_string())),
    }
}

/// What every event of one webhook carries about the notified group, as JSON values.
#[derive(Clone, Default)]
struct Group {
    receiver: Value,
    group_key: Value,
    external_url: Value,
    group_labels: Value,
    common_labels: Value,
}

impl Group {
    fn of(hook: Webhook) -> Group {
        Group {
            receiver: Value::String(hook.receiver),
            group_key: Value::String(hook.group_key),
            external_url: Value::String(hook.external_url),
            group_labels: Value::Object(hook.group_labels.0),
            common_labels: Value::Object(hook.common_labels.0),
        }
    }
}

/// A JSON object of strings (labels, annotations), read straight into the object the event's
/// `data` holds: no map of its own first, converted after. A value that is not a string is
/// refused with serde's own message, as a `BTreeMap<String, String>` refuses it.
#[derive(Default)]
struct Strings(serde_json::Map<String, Value>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Strings;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Strings, A::Error> {
                let mut strings = serde_json::Map::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    strings.insert(key, Value::String(value));
                }
                Ok(Strings(strings))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl Strings {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }
}

/// One alert's event. Its strings move into the event's `data`; only the few the event also
/// names on its own (subject, namespace, fingerprint) are copied.
fn to_event(group: Group, alert: Alert) -> Result<Event, String> {
    let status = alert.status.ok_or("missing field `status`")?;
    if status != "firing" && status != "resolved" {
        return Err(format!(
            "status must be \"firing\" or \"resolved\", got {status:?}"
        ));
    }
    let labels = alert.labels.ok_or("missing field `labels`")?;
    let starts_at = alert.starts_at.ok_or("missing field `startsAt`")?;
    let started = parse_time("startsAt", &starts_at)?;
    let ended = match alert.ends_at.as_deref() {
        Some(ends_at) => Some(parse_time("endsAt", ends_at)?),
        None => None,
    };
    let fingerprint = match alert.fingerprint {
        Some(fp) => fp,
        // Alertmanager always sends one; computed, in the names' byte order, only when not.
        None => {
            let mut pairs: Vec<(&str, &str)> = labels
                .0
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
                .collect();
            pairs.sort_unstable_by_key(|(name, _)| name.as_bytes());
            fingerprint_of(pairs.into_iter())
        }
    };
    let time = match (status.as_str(), ended) {
        ("resolved", Some(end)) if end != zero_time() => end,
        _ => started,
    };
    let subject = labels
        .get("alertname")
        .map_or_else(|| fingerprint.clone(), str::to_owned);
    let namespace = labels.get("namespace").map(str::to_owned);
    let id = event_id(&fingerprint, &status, &starts_at);
    let data = [
        ("labels", Value::Object(labels.0)),
        ("annotations", Value::Object(alert.annotations.0)),
        ("startsAt", Value::String(starts_at)),
        ("endsAt", alert.ends_at.map_or(Value::Null, Value::String)),
        ("generatorURL", Value::String(alert.generator_url)),
        ("status", Value::String(status.clone())),
        ("receiver", group.receiver),
        ("groupKey", group.group_key),
        ("externalURL", group.external_url),
        ("groupLabels", group.group_labels),
        ("commonLabels", group.common_labels),
    ];
    Ok(Event {
        id,
        source: SOURCE_ALERTMANAGER.to_owned(),
        kind: status,
        subject,
        time,
        namespace,
        fingerprint: Some(fingerprint),
        traceparent: None,
        data: Value::Object(data.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        written: Default::default(),
    })
}

fn parse_time(field: &str, value: &str) -> Result<jiff::Timestamp, String> {
    value
        .parse::<jiff::Timestamp>()
        .map_err(|e| format!("`{field}` is not an RFC 3339 timestamp ({value:?}): {e}"))
}

fn zero_time() -> jiff::Timestamp {
    ZERO_TIME
        .parse()
        .expect("the zero time is a valid timestamp")
}

/// The event id of an alert notification: the first 128 bits of
/// `sha256(fingerprint \0 status \0 startsAt)`, in hex. Equal for Alertmanager's repeats of
/// the same alert in the same state, so the bus deduplicates them.
pub fn event_id(fingerprint: &str, status: &str, starts_at: &str) -> String {
    let mut hash = Sha256::new();
    for part in [fingerprint, status, starts_at] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    // Written digit by digit: this runs for every alert, and a `format!` per byte was 2 % of
    // the instructions an alert costs.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = hash.finalize();
    let mut id = String::with_capacity(32);
    for b in &digest[..16] {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    id
}

/// Alertmanager's alert fingerprint of a label set: Prometheus' `LabelSet.Fingerprint()`,
/// FNV-1a 64 over the sorted `name 0xff value 0xff` pairs, printed as 16 hex digits.
pub fn label_set_fingerprint(labels: &BTreeMap<String, String>) -> String {
    fingerprint_of(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// [`label_set_fingerprint`] of name-value pairs given in byte order of the names (a
/// `BTreeMap` iterates in that order).
fn fingerprint_of<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut sum = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            sum ^= u64::from(*b);
            sum = sum.wrapping_mul(PRIME);
        }
    };
    // The names' byte order is Go's sort.Strings order.
    for (name, value) in labels {
        add(name.as_bytes());
        add(&[0xff]);
        add(value.as_bytes());
        add(&[0xff]);
    }
    format!("{sum:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/alertmanager/"
    );

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{FIXTURES}{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {path}: {e}"))
    }

    fn fixture_value(name: &str) -> Value {
        serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
    }

    /// Every fixture decodes, and each event mirrors its alert field by field.
    #[test]
    fn every_fixture_decodes_to_one_event_per_alert() {
        let mut seen = 0;
        for entry in std::fs::read_dir(FIXTURES).expect("fixtures folder") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            seen += 1;
            let name = path.file_name().unwrap().to_str().unwrap();
            let raw = fixture_value(name);
            let events = decode(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let alerts = raw["alerts"].as_array().unwrap();
            assert_eq!(events.len(), alerts.len(), "{name}");
            for (event, alert) in events.iter().zip(alerts) {
                assert_eq!(event.source, "alertmanager");
                assert_eq!(event.kind, alert["status"].as_str().unwrap(), "{name}");
                assert_eq!(event.subject, alert["labels"]["alertname"], "{name}");
                assert_eq!(
                    event.namespace.as_deref(),
                    alert["labels"]["namespace"].as_str()
                );
                assert_eq!(
                    event.fingerprint.as_deref(),
                    alert["fingerprint"].as_str(),
                    "{name}"
                );
                for key in [
                    "labels",
                    "annotations",
                    "startsAt",
                    "endsAt",
                    "generatorURL",
                    "status",
                ] {
                    assert_eq!(event.data[key], alert[key], "{name}: {key}");
                }
                for key in [
                    "receiver",
                    "groupKey",
                    "externalURL",
                    "groupLabels",
                    "commonLabels",
                ] {
                    assert_eq!(event.data[key], raw[key], "{name}: {key}");
                }
                assert_eq!(
                    event.data.as_object().unwrap().len(),
                    11,
                    "{name}: no other keys"
                );
                let expected_time = if event.kind == "firing" {
                    &alert["startsAt"]
                } else {
                    &alert["endsAt"]
                };
                let expected_time: jiff::Timestamp =
                    expected_time.as_str().unwrap().parse().unwrap();
                assert_eq!(event.time, expected_time, "{name}");
                // Alertmanager computes the fingerprint from the labels; so do we when absent.
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(alert["labels"].clone()).unwrap();
                assert_eq!(
                    label_set_fingerprint(&labels),
                    alert["fingerprint"].as_str().unwrap()
                );
            }
        }
        assert_eq!(seen, 5, "expected the five Alertmanager 0.25 fixtures");
    }

    #[test]
    fn firing_keeps_the_zero_end_time_as_sent() {
        let events = decode(&fixture("webhook-firing.json")).unwrap();
        assert_eq!(events[0].data["endsAt"], ZERO_TIME);
        assert_eq!(events[0].data["startsAt"], "2026-11-26T22:01:43.277Z");
        assert_eq!(
            events[0].subject_name(),
            "firebreak.events.alertmanager.firing"
        );
    }

    #[test]
    fn grouped_alerts_get_distinct_ids_and_repeats_the_same_id() {
        let events = decode(&fixture("webhook-grouped-firing.json")).unwrap();
        assert_eq!(events.len(), 2);
        assert_ne!(events[0].id, events[1].id);
        let again = decode(&fixture("webhook-grouped-firing.json")).unwrap();
        assert_eq!(events[0].id, again[0].id);
        assert_eq!(events[0].id.len(), 32);
    }

    /// The id is the first half of `sha256(fingerprint \0 status \0 startsAt \0)` in
    /// lowercase hex: ids already on a bus or in a journal stay the same across versions.
    #[test]
    fn an_event_id_is_the_first_128_bits_of_its_sha256_in_hex() {
        // python3 -c "import hashlib; print(hashlib.sha256(
        //   b'4a1b2c3d4e5f6071\x00firing\x002026-11-26T22:01:43.277Z\x00').hexdigest()[:32])"
        assert_eq!(
            event_id("4a1b2c3d4e5f6071", "firing", "2026-11-26T22:01:43.277Z"),
            "69701c136286ddf416d1d4e5d3342ed7"
        );
    }

    #[test]
    fn resolved_has_an_id_distinct_from_firing() {
        let firing = decode(&fixture("webhook-firing.json")).unwrap();
        let resolved = decode(&fixture("webhook-resolved.json")).unwrap();
        assert_eq!(firing[0].fingerprint, resolved[0].fingerprint);
        assert_ne!(firing[0].id, resolved[0].id);
        assert_eq!(resolved[0].kind, "resolved");
        assert_eq!(resolved[0].status(), "resolved");
    }

    /// A group whose alerts differ in status yields one event per alert with its own status.
    #[test]
    fn mixed_status_group_is_decoded_per_alert() {
        let mut raw = fixture_value("webhook-grouped-firing.json");
        raw["alerts"][1]["status"] = "resolved".into();
        raw["alerts"][1]["endsAt"] = "2026-11-26T22:04:00.5+01:00".into();
        let events = decode(raw.to_string().as_bytes()).unwrap();
        assert_eq!(events[0].kind, "firing");
        assert_eq!(events[1].kind, "resolved");
        assert_eq!(
            events[1].time,
            "2026-11-26T21:04:00.5Z".parse::<jiff::Timestamp>().unwrap()
        );
        assert_eq!(events[1].data["endsAt"], "2026-11-26T22:04:00.5+01:00");
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let mut raw = fixture_value("webhook-firing.json");
        raw["futureField"] = json!({"x": 1});
        raw["alerts"][0]["silencedBy"] = json!(["abc"]);
        assert_eq!(decode(raw.to_string().as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn missing_fingerprint_is_computed_like_alertmanager() {
        let mut raw = fixture_value("webhook-firing.json");
        raw["alerts"][0]
            .as_object_mut()
            .unwrap()
            .remove("fingerprint");
        let events = decode(raw.to_string().as_bytes()).unwrap();
        assert_eq!(events[0].fingerprint.as_deref(), Some("14ec0898ad0f9755"));
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let err = decode(b"{\"version\": \"4\",\n  \"alerts\": [,]}").unwrap_err();
        match &err {
            DecodeError::Malformed { line, column, .. } => assert_eq!((*line, *column), (2, 14)),
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(err.http_status(), 400);
        assert!(
            err.to_string()
                .starts_with("malformed json at line 2, column 14: ")
        );
        let truncated = fixture("webhook-firing.json");
        let err = decode(&truncated[..truncated.len() / 2]).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
        assert!(matches!(
            decode(b"").unwrap_err(),
            DecodeError::Malformed { .. }
        ));
    }

    #[test]
    fn a_body_that_is_not_utf8_is_malformed_where_the_bad_byte_is() {
        let mut body =
            b"{\"version\": \"4\",\n  \"receiver\": \"am\xff\", \"alerts\": []}".to_vec();
        let err = decode(&body).unwrap_err();
        match &err {
            DecodeError::Malformed { line, column, .. } => assert_eq!((*line, *column), (2, 18)),
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(err.http_status(), 400);
        // The same body in UTF-8 gets as far as its empty `alerts`.
        body[34] = b'x';
        assert_eq!(
            decode(&body).unwrap_err(),
            DecodeError::Invalid("`alerts` is empty".into())
        );
    }

    #[test]
    fn wrong_version_is_unsupported_even_when_the_shape_differs() {
        let mut raw = fixture_value("webhook-firing.json");
        raw["version"] = "3".into();
        let err = decode(raw.to_string().as_bytes()).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion("\"3\"".into()));
        assert_eq!(err.http_status(), 422);
        // A wrong version and a wrong shape: the version is the answer.
        let err = decode(br#"{"version": "5", "alerts": 7}"#).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion("\"5\"".into()));
        let err = decode(br#"{"version": 4, "alerts": []}"#).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion("4".into()));
    }

    fn invalid(raw: &Value) -> String {
        match decode(raw.to_string().as_bytes()) {
            Err(e @ DecodeError::Invalid(_)) => {
                assert_eq!(e.http_status(), 400);
                e.to_string()
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn structurally_wrong_payloads_are_invalid_and_name_the_field() {
        let base = fixture_value("webhook-grouped-firing.json");
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "missing field `version`",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("version");
                }),
            ),
            (
                "missing field `alerts`",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("alerts");
                }),
            ),
            ("`alerts` is empty", Box::new(|v| v["alerts"] = json!([]))),
            (
                "alerts[1]: missing field `labels`",
                Box::new(|v| {
                    v["alerts"][1].as_object_mut().unwrap().remove("labels");
                }),
            ),
            (
                "alerts[0]: missing field `status`",
                Box::new(|v| {
                    v["alerts"][0].as_object_mut().unwrap().remove("status");
                }),
            ),
            (
                "alerts[1]: status must be",
                Box::new(|v| v["alerts"][1]["status"] = "pending".into()),
            ),
            (
                "alerts[0]: missing field `startsAt`",
                Box::new(|v| {
                    v["alerts"][0].as_object_mut().unwrap().remove("startsAt");
                }),
            ),
            (
                "alerts[1]: `startsAt` is not an RFC 3339",
                Box::new(|v| v["alerts"][1]["startsAt"] = "yesterday".into()),
            ),
            (
                "alerts[0]: `endsAt` is not an RFC 3339",
                Box::new(|v| v["alerts"][0]["endsAt"] = "2026-13-01T00:00:00Z".into()),
            ),
            (
                "invalid type: integer `3`, expected a string",
                Box::new(|v| v["alerts"][0]["labels"]["x"] = 3.into()),
            ),
            (
                "invalid type: sequence, expected a map",
                Box::new(|v| v["alerts"][0]["labels"] = json!(["x"])),
            ),
            (
                "invalid type: null, expected a map",
                Box::new(|v| v["alerts"][1]["annotations"] = Value::Null),
            ),
            (
                "invalid type: boolean `true`, expected a string",
                Box::new(|v| v["commonLabels"]["x"] = true.into()),
            ),
            (
                "invalid type: string",
                Box::new(|v| v["alerts"] = "none".into()),
            ),
        ];
        for (expected, mutate) in cases {
            let mut raw = base.clone();
            mutate(&mut raw);
            let message = invalid(&raw);
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
        assert!(invalid(&json!([1, 2])).contains("expected a JSON object"));
    }
}
