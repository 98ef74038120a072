//! The Alertmanager fixtures against the example runbooks, k8s events, manual triggers.

use firebreak_event::{Event, manual};
use firebreak_matcher::{MatchError, RunbookSet};
use serde_json::{Map, Value, json};

use crate::{data_set, fixture, folder};

fn names(set: &RunbookSet, event: &Event) -> Vec<String> {
    set.matches(event)
        .into_iter()
        .map(|m| m.expect("params fill").runbook.manifest.name.clone())
        .collect()
}

#[test]
fn firing_fixture_matches_with_typed_params_and_key() {
    let set = data_set();
    let events = fixture("webhook-firing.json");
    let matches = set.matches(&events[0]);
    assert_eq!(matches.len(), 1);
    let m = matches[0].as_ref().unwrap();
    assert_eq!(m.runbook.manifest.name, "model-error-rate");
    assert_eq!(m.concurrency_key, "team-a/fraud-model");
    assert_eq!(
        Value::Object(m.params.clone()),
        json!({
            "namespace": "team-a",
            "deployment": "fraud-model",
            "version": "v2",
            "summary": "5xx ratio of fraud-model v2 is 22.14%",
            "incident": "14ec0898ad0f9755",
            "max_wait": "2m",
            "dry_run": false,
        })
    );
    assert!(m.runbook.script.contains("rolling back"));
    assert!(m.runbook.script_path.ends_with("model-error-rate.rhai"));
}

#[test]
fn grouped_firing_matches_each_alert_with_its_own_params() {
    let set = data_set();
    let events = fixture("webhook-grouped-firing.json");
    let versions: Vec<Value> = events
        .iter()
        .map(|e| {
            let m = set.matches(e);
            assert_eq!(m.len(), 1);
            m[0].as_ref().unwrap().params["version"].clone()
        })
        .collect();
    assert_eq!(versions, [json!("v1"), json!("v2")]);
}

#[test]
fn resolved_fixtures_match_only_the_resolved_trigger() {
    let set = data_set();
    for name in ["webhook-resolved.json", "webhook-grouped-resolved.json"] {
        let events = fixture(name);
        assert_eq!(names(&set, &events[0]), ["model-recovered"], "{name}");
        let m = set.matches(&events[0]).remove(0).unwrap();
        assert_eq!(m.params["versions"], json!(["v2"]));
        // No concurrency template: the key is the incident, the alert's fingerprint.
        let fingerprint = events[0].fingerprint.as_deref().unwrap();
        assert_eq!(m.concurrency_key, format!("incident:{fingerprint}"));
    }
}

#[test]
fn api_posted_alert_matches_nothing() {
    let set = data_set();
    let events = fixture("webhook-api-posted-firing.json");
    assert!(set.matches(&events[0]).is_empty());
}

#[test]
fn a_failing_matcher_excludes_the_runbook() {
    let set = data_set();
    let mut event = fixture("webhook-firing.json").remove(0);
    event.data["labels"]["severity"] = "warning".into();
    assert!(set.matches(&event).is_empty());
    event.data["labels"]["severity"] = "page".into();
    event.data["labels"]["namespace"] = "kube-system".into();
    assert!(set.matches(&event).is_empty());
    // Outside the runbook's namespaces: no match, even though every matcher holds.
    let mut elsewhere = fixture("webhook-firing.json").remove(0);
    elsewhere.namespace = Some("team-b".into());
    elsewhere.data["labels"]["namespace"] = "team-b".into();
    assert!(set.matches(&elsewhere).is_empty());
    // Missing severity label counts as "": the anchored regex critical|page rejects it.
    event.data["labels"]
        .as_object_mut()
        .unwrap()
        .remove("severity");
    event.data["labels"]["namespace"] = "team-a".into();
    assert!(set.matches(&event).is_empty());
}

#[test]
fn a_required_label_that_is_absent_is_reported_not_dropped() {
    let set = data_set();
    let mut event = fixture("webhook-firing.json").remove(0);
    event.data["labels"]
        .as_object_mut()
        .unwrap()
        .remove("deployment");
    let matches = set.matches(&event);
    assert_eq!(matches.len(), 1);
    let err = matches[0].as_ref().unwrap_err();
    assert_eq!(
        err,
        &MatchError::MissingParam {
            runbook: "model-error-rate".into(),
            param: "deployment".into(),
            from: "label `deployment` is absent".into(),
        }
    );
    assert_eq!(err.runbook(), Some("model-error-rate"));
    assert_eq!(
        err.to_string(),
        "runbook model-error-rate: required param `deployment` has no value (label `deployment` is absent)"
    );
}

#[test]
fn a_label_of_the_wrong_type_is_reported() {
    let dir = folder(&[
        (
            "scale.yaml",
            "name: scale\nteam: t\ndescription: d\nnamespaces: [team-a]\ntriggers:\n  - source: alertmanager\n    match: [alertname=Busy]\nparams:\n  replicas: { from: label, type: int, required: true }\n",
        ),
        ("scale.rhai", "1"),
    ]);
    let set = RunbookSet::load_dir(dir.path()).unwrap();
    let mut event = fixture("webhook-firing.json").remove(0);
    event.data["labels"]["alertname"] = "Busy".into();
    event.data["labels"]["replicas"] = "lots".into();
    let err = set.matches(&event).remove(0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "runbook scale: param `replicas`: expected an integer, got the string \"lots\""
    );
    event.data["labels"]["replicas"] = "4".into();
    assert_eq!(set.matches(&event).remove(0).unwrap().params["replicas"], 4);
}

#[test]
fn several_triggers_of_one_runbook_start_it_once_and_any_status_sees_both() {
    let dir = folder(&[
        (
            "both.yaml",
            "name: both\nteam: t\ndescription: d\nnamespaces: [team-a]\ntriggers:\n  - source: alertmanager\n    status: any\n    match: ['alertname=\"ModelErrorRateHigh\"']\n  - source: alertmanager\n    status: any\n    match: ['team=ml-platform']\n",
        ),
        ("both.rhai", "1"),
        (
            "other.yaml",
            "name: other\nteam: t\ndescription: d\nnamespaces: [team-a]\ntriggers:\n  - source: alertmanager\n    match: ['severity=critical']\n",
        ),
        ("other.rhai", "1"),
    ]);
    let set = RunbookSet::load_dir(dir.path()).unwrap();
    let firing = fixture("webhook-firing.json").remove(0);
    assert_eq!(names(&set, &firing), ["both", "other"]);
    let resolved = fixture("webhook-resolved.json").remove(0);
    assert_eq!(names(&set, &resolved), ["both"]);
}

#[test]
fn k8s_events_match_on_data_fields_and_labels() {
    let dir = folder(&[
        (
            "crashloop.yaml",
            "name: crashloop\nteam: t\ndescription: d\nnamespaces: [ml-serving]\ntriggers:\n  - source: k8s\n    status: any\n    match: ['reason=~\"CrashLoopBackOff|BackOff|OOMKilled\"', 'app=fraud']\nparams:\n  namespace: { from: label, type: string, required: true }\n  pod: { from: label, type: string, default: \"\" }\nconcurrency: \"{{params.namespace}}/{{params.pod}}\"\n",
        ),
        ("crashloop.rhai", "1"),
    ]);
    let set = RunbookSet::load_dir(dir.path()).unwrap();
    let mut event = Event {
        id: "k1".into(),
        source: "k8s".into(),
        kind: "warning".into(),
        subject: "pod/fraud-1".into(),
        time: jiff::Timestamp::UNIX_EPOCH,
        namespace: Some("ml-serving".into()),
        fingerprint: None,
        traceparent: None,
        data: json!({"reason": "BackOff", "pod": "fraud-1", "labels": {"app": "fraud"}}),
        written: Default::default(),
    };
    let m = set.matches(&event).remove(0).unwrap();
    assert_eq!(m.concurrency_key, "ml-serving/fraud-1");
    event.data["reason"] = "BackOffX".into();
    assert!(set.matches(&event).is_empty());
    // Alert events never reach k8s triggers.
    let alert = fixture("webhook-firing.json").remove(0);
    assert!(set.matches(&alert).is_empty());
}

fn given(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn manual_trigger_types_hand_given_params() {
    let set = data_set();
    let m = set
        .resolve_manual(
            "model-error-rate",
            &given(json!({"namespace": "team-a", "deployment": "fraud", "max_wait": "30s", "dry_run": "true"})),
        )
        .unwrap();
    assert_eq!(m.params["dry_run"], true);
    assert_eq!(m.params["max_wait"], "30s");
    assert_eq!(m.concurrency_key, "team-a/fraud");
    assert!(!m.params.contains_key("version"));
    // The same through a manual event and matches().
    let event = manual::trigger(
        "model-error-rate",
        given(json!({"namespace": "team-a", "deployment": "fraud"})),
        "ann",
        false,
    );
    let matches = set.matches(&event);
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].as_ref().unwrap().params["max_wait"], "2m");
}

#[test]
fn manual_trigger_errors() {
    let set = data_set();
    let ok = json!({"namespace": "team-a", "deployment": "fraud"});
    let err = set.resolve_manual("nope", &given(ok.clone())).unwrap_err();
    assert_eq!(
        err,
        MatchError::UnknownRunbook {
            runbook: "nope".into()
        }
    );
    let mut extra = ok.clone();
    extra["replicas"] = 3.into();
    let err = set
        .resolve_manual("model-error-rate", &given(extra))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "runbook model-error-rate: unknown param `replicas`"
    );
    let err = set
        .resolve_manual("model-error-rate", &given(json!({"namespace": "team-a"})))
        .unwrap_err();
    assert!(matches!(err, MatchError::MissingParam { ref param, .. } if param == "deployment"));
    let mut wrong = ok.clone();
    wrong["max_wait"] = "forever".into();
    let err = set
        .resolve_manual("model-error-rate", &given(wrong))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("runbook model-error-rate: param `max_wait`: invalid duration"),
        "{err}"
    );
    let mut event = manual::trigger("model-error-rate", given(ok), "ann", false);
    event.data.as_object_mut().unwrap().remove("params");
    let err = set.matches(&event).remove(0).unwrap_err();
    assert!(matches!(err, MatchError::MalformedManualEvent { .. }));
}

/// Without a `concurrency` template, a manual trigger is keyed on its params (two targets
/// run side by side), and a runbook without params on its name.
#[test]
fn the_default_key_of_a_manual_trigger_is_its_target() {
    let set = data_set();
    let mut given = serde_json::Map::new();
    given.insert("namespace".into(), json!("team-a"));
    given.insert("versions".into(), json!(["v3"]));
    let m = set.resolve_manual("model-recovered", &given).unwrap();
    assert_eq!(
        m.concurrency_key,
        "params:namespace=team-a,versions=[\"v3\"]"
    );
    let warnings = set.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("model-recovered") && w.contains("no `concurrency` key")),
        "{warnings:?}"
    );
}

/// A hand-given namespace outside the runbook's `namespaces` is refused before anything
/// starts (403), by hand and through a manual event on the bus alike.
#[test]
fn a_manual_trigger_for_another_namespace_is_refused() {
    let set = data_set();
    let outside = given(json!({"namespace": "team-b", "deployment": "fraud"}));
    let err = set
        .resolve_manual("model-error-rate", &outside)
        .unwrap_err();
    assert_eq!(err.http_status(), 403, "{err}");
    assert!(
        matches!(&err, MatchError::NamespaceNotAllowed { namespace, .. } if namespace == "team-b"),
        "{err:?}"
    );
    assert!(err.to_string().contains("outside"), "{err}");
    let event = manual::trigger("model-error-rate", outside, "ann", false);
    let err = set.matches(&event).remove(0).unwrap_err();
    assert!(
        matches!(err, MatchError::NamespaceNotAllowed { .. }),
        "{err:?}"
    );
}
