//! Conversions between a resource's served form and its storage form.
//!
//! `events.k8s.io/v1` Events share storage with `core/v1` Events (the apiserver stores one
//! object and converts on the way out). A custom resource is stored once, in its CRD's storage
//! version, and served in every served version with nothing converted but `apiVersion` (a CRD
//! with `conversion.strategy: None`). Start at [`to_storage`] and [`from_storage`].

use serde_json::{Map, Value};

use crate::resources::ResourceType;

/// Field renames between core/v1 Event (left) and events.k8s.io/v1 Event (right).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(obj: &Value, from_left: bool) -> Value {
    let Some(map) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in map {
        let renamed = EVENT_FIELDS.iter().find_map(|(l, r)| {
            if from_left && k == l {
                Some(*r)
            } else if !from_left && k == r {
                Some(*l)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    Value::Object(out)
}

/// The object as stored, from the form served by `rt`.
pub fn to_storage(rt: &ResourceType, obj: Value) -> Value {
    if rt.group == "events.k8s.io" {
        let mut out = rename(&obj, false);
        out["apiVersion"] = Value::from("v1");
        return out;
    }
    if !rt.builtin && rt.storage_version != rt.version && obj.is_object() {
        let mut out = obj;
        out["apiVersion"] = Value::from(format!("{}/{}", rt.group, rt.storage_version));
        return out;
    }
    obj
}

/// Whether a selector sees the same in `rt`'s stored form as in its served form: every kind
/// but events.k8s.io's (whose fields are renamed) is served as stored but for `apiVersion`,
/// which no label or field selector reads.
pub fn selects_as_stored(rt: &ResourceType) -> bool {
    rt.group != "events.k8s.io"
}

/// Whether `obj`, as stored, is already the form `rt` serves (nothing to convert).
pub fn served_as_stored(rt: &ResourceType, obj: &Value) -> bool {
    selects_as_stored(rt)
        && (!obj.is_object()
            || obj.get("apiVersion").and_then(Value::as_str) == Some(rt.api_version().as_str()))
}

/// The object as served by `rt`, from its stored form.
pub fn from_storage(rt: &ResourceType, obj: &Value) -> Value {
    if rt.group == "events.k8s.io" {
        let mut out = rename(obj, true);
        out["apiVersion"] = Value::from(rt.api_version());
        return out;
    }
    let mut out = obj.clone();
    if !served_as_stored(rt, &out) {
        out["apiVersion"] = Value::from(rt.api_version());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;
    use serde_json::json;

    #[test]
    fn events_round_trip_between_groups() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "involvedObject": {"name": "web"}, "message": "hi", "reason": "X"});
        let ev = resources::by_plural("events.k8s.io", "v1", "events").unwrap();
        let served = from_storage(ev, &core);
        assert_eq!(served["regarding"]["name"], "web");
        assert_eq!(served["note"], "hi");
        assert_eq!(served["apiVersion"], "events.k8s.io/v1");
        assert_eq!(to_storage(ev, served), core);
    }

    #[test]
    fn custom_resources_are_stored_in_the_storage_version_and_served_in_each() {
        let crd = crate::crd::bundled()
            .into_iter()
            .find(|c| c["spec"]["group"] == "networking.istio.io")
            .unwrap();
        let (served, _) = crate::crd::types_of(&crd).unwrap();
        let v1beta1 = served.iter().find(|t| t.version == "v1beta1").unwrap();
        let written =
            json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService"});
        let stored = to_storage(v1beta1, written);
        assert_eq!(stored["apiVersion"], "networking.istio.io/v1alpha3");
        let v1 = served.iter().find(|t| t.version == "v1").unwrap();
        assert_eq!(
            from_storage(v1, &stored)["apiVersion"],
            "networking.istio.io/v1"
        );
    }
}
