//! Manual triggers: a person (CLI, HTTP API, chat) asks for a runbook to run.
//!
//! Start at [`trigger`], which builds the event; [`TriggerRequest`] is the JSON body of
//! `POST /v1/trigger`. Parameters are not typed here: the matcher types and validates them
//! against the runbook's manifest.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{Event, SOURCE_MANUAL};

/// The body of `POST /v1/trigger`. Unknown fields are refused, so a typo does not silently
/// drop a parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// The runbook to run, by manifest `name`.
    pub runbook: String,
    /// Hand-given parameters (checked against the manifest by the matcher). Default: none.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Who asks. Optional because an authenticated caller's identity comes from its token;
    /// the ingest decides which wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Run it as a dry run: mutating actions answer what they would do and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Builds the event for a manual trigger: `source = "manual"`, `type = "trigger"`,
/// `subject` = the runbook name, a fresh UUIDv7 id, the current time,
/// `namespace` = `params.namespace` when it is a string, and
/// `data = {runbook, params, actor, dry_run}`. The dry run travels with the event to
/// whichever engine replica runs it.
pub fn trigger(runbook: &str, params: Map<String, Value>, actor: &str, dry_run: bool) -> Event {
    let namespace = params
        .get("namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Event {
        id: uuid::Uuid::now_v7().to_string(),
        source: SOURCE_MANUAL.to_owned(),
        kind: "trigger".to_owned(),
        subject: runbook.to_owned(),
        time: jiff::Timestamp::now(),
        namespace,
        fingerprint: None,
        traceparent: None,
        data: json!({ "runbook": runbook, "params": params, "actor": actor, "dry_run": dry_run }),
        written: Default::default(),
    }
}

impl Event {
    /// For a manual trigger: the requested runbook, hand-given params and actor.
    /// `None` for events of other sources or a malformed manual event.
    pub fn manual_request(&self) -> Option<(&str, &Map<String, Value>, &str)> {
        if self.source != SOURCE_MANUAL {
            return None;
        }
        let runbook = self.data.get("runbook")?.as_str()?;
        let params = self.data.get("params")?.as_object()?;
        let actor = self.data.get("actor")?.as_str()?;
        Some((runbook, params, actor))
    }

    /// For a manual trigger: whether it asks for a dry run. `false` for other events.
    pub fn dry_run(&self) -> bool {
        self.source == SOURCE_MANUAL
            && self
                .data
                .get("dry_run")
                .and_then(Value::as_bool)
                .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_builds_a_manual_event_with_a_fresh_id() {
        let mut params = Map::new();
        params.insert("namespace".into(), "team-a".into());
        params.insert("replicas".into(), 3.into());
        let a = trigger("scale-up", params.clone(), "ann", false);
        let b = trigger("scale-up", params.clone(), "ann", true);
        assert!(
            !a.dry_run() && b.dry_run(),
            "the dry run travels with the event"
        );
        assert_ne!(a.id, b.id);
        assert_eq!(uuid::Uuid::parse_str(&a.id).unwrap().get_version_num(), 7);
        assert_eq!(a.subject_name(), "firebreak.events.manual.trigger");
        assert_eq!(a.subject, "scale-up");
        assert_eq!(a.namespace.as_deref(), Some("team-a"));
        assert_eq!(a.data["params"]["replicas"], 3);
        assert_eq!(a.manual_request(), Some(("scale-up", &params, "ann")));
        assert_eq!(a.label("runbook"), Some("scale-up"));
    }

    #[test]
    fn trigger_request_parses_and_defaults() {
        let req: TriggerRequest = serde_json::from_str(r#"{"runbook": "rb"}"#).unwrap();
        assert_eq!(req.runbook, "rb");
        assert!(req.params.is_empty());
        assert_eq!(req.actor, None);
        let req: TriggerRequest =
            serde_json::from_str(r#"{"runbook": "rb", "params": {"a": 1}, "actor": "bo"}"#)
                .unwrap();
        assert_eq!(req.params["a"], 1);
        assert_eq!(req.actor.as_deref(), Some("bo"));
    }

    #[test]
    fn trigger_request_refuses_unknown_fields_and_missing_runbook() {
        let err = serde_json::from_str::<TriggerRequest>(r#"{"runbook": "rb", "parms": {}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `parms`"), "{err}");
        let err = serde_json::from_str::<TriggerRequest>(r#"{"params": {}}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `runbook`"), "{err}");
        let err = serde_json::from_str::<TriggerRequest>(r#"{"runbook": "rb", "params": [1]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
