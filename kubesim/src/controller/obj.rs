//! Small typed accessors over the untyped objects the store hands the controllers, plus the
//! metadata helpers every controller shares (owner references, label selectors, timestamps,
//! semantic equality). Nothing here writes to the cluster.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

/// The value at `path`, if every step exists.
pub(crate) fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(key))
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

pub(crate) fn i64_at(v: &Value, path: &[&str]) -> Option<i64> {
    at(v, path).and_then(Value::as_i64)
}

/// An int32-ish field, 0 when absent (Go's zero value).
pub(crate) fn int_at(v: &Value, path: &[&str]) -> i32 {
    i64_at(v, path).map_or(0, |n| n.clamp(i32::MIN.into(), i32::MAX.into()) as i32)
}

pub(crate) fn bool_at(v: &Value, path: &[&str]) -> bool {
    at(v, path).and_then(Value::as_bool).unwrap_or(false)
}

/// The object at `path`, created (as `{}`) along the way when missing or not an object.
pub(crate) fn obj_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let map = cur.as_object_mut().expect("just made an object");
        cur = map
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    cur.as_object_mut().expect("just made an object")
}

pub(crate) fn name(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

pub(crate) fn namespace(v: &Value) -> Option<&str> {
    str_at(v, &["metadata", "namespace"])
}

pub(crate) fn uid(v: &Value) -> &str {
    str_at(v, &["metadata", "uid"]).unwrap_or("")
}

pub(crate) fn generation(v: &Value) -> i64 {
    i64_at(v, &["metadata", "generation"]).unwrap_or(0)
}

pub(crate) fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    at(v, &["metadata", "annotations", key]).and_then(Value::as_str)
}

pub(crate) fn set_annotation(v: &mut Value, key: &str, value: &str) {
    obj_mut(v, &["metadata", "annotations"]).insert(key.to_owned(), json!(value));
}

/// `namespace/name`, the work-queue key used in logs.
pub(crate) fn key(v: &Value) -> String {
    match namespace(v) {
        Some(ns) => format!("{ns}/{}", name(v)),
        None => name(v).to_owned(),
    }
}

pub(crate) fn is_being_deleted(v: &Value) -> bool {
    at(v, &["metadata", "deletionTimestamp"]).is_some_and(|t| !t.is_null())
}

/// A label map (`metadata.labels` or `spec.template.metadata.labels`) as an object.
pub(crate) fn labels_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    at(v, path).and_then(Value::as_object)
}

/// The ownerReference with `controller: true`, if any (`metav1.GetControllerOf`).
pub(crate) fn controller_ref(v: &Value) -> Option<&Value> {
    at(v, &["metadata", "ownerReferences"])?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// The uid of the controlling owner, if any.
pub(crate) fn controller_uid(v: &Value) -> Option<&str> {
    controller_ref(v)
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
}

/// A controller ownerReference to `owner` (`metav1.NewControllerRef`).
pub(crate) fn controller_ref_to(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Whether a `LabelSelector` (matchLabels + matchExpressions) selects `labels`. An empty selector
/// selects everything, as `metav1.LabelSelectorAsSelector` does.
pub(crate) fn selector_matches(selector: &Value, labels: Option<&Map<String, Value>>) -> bool {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(match_labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, want) in match_labels {
            if label(k) != want.as_str() {
                return false;
            }
        }
    }
    let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) else {
        return true;
    };
    exprs.iter().all(|expr| {
        let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = expr
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| vs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let have = label(key);
        match expr.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => have.is_some_and(|h| values.contains(&h)),
            "NotIn" => have.is_none_or(|h| !values.contains(&h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    })
}

/// Whether a selector is empty (selects everything).
pub(crate) fn selector_is_empty(selector: &Value) -> bool {
    let empty = |k: &str| match selector.get(k) {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    empty("matchLabels") && empty("matchExpressions")
}

/// RFC 3339 with seconds precision, as `metav1.Time` serialises.
pub(crate) fn fmt_time(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// Milliseconds since the epoch as a `metav1.Time` string.
pub(crate) fn fmt_ms(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| String::new(), fmt_time)
}

pub(crate) fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// A timestamp field in milliseconds since the epoch.
pub(crate) fn time_ms_at(v: &Value, path: &[&str]) -> Option<i64> {
    str_at(v, path)
        .and_then(parse_time)
        .map(Timestamp::as_millisecond)
}

/// `(creationTimestamp, name)`, the order of `controller.ReplicaSetsByCreationTimestamp`.
pub(crate) fn creation_key(v: &Value) -> (i64, String) {
    (
        time_ms_at(v, &["metadata", "creationTimestamp"]).unwrap_or(0),
        name(v).to_owned(),
    )
}

/// Removes what Go's `omitempty` and semantic equality treat as absent: nulls, empty objects,
/// empty arrays and empty strings; with `zeros`, also `0` and `false` (for status structs whose
/// ints and bools are all `omitempty`).
pub(crate) fn prune(v: &Value, zeros: bool) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Bool(false) if zeros => None,
        Value::Number(n) if zeros && n.as_f64() == Some(0.0) => None,
        Value::Object(m) => {
            let pruned: Map<String, Value> = m
                .iter()
                .filter_map(|(k, v)| prune(v, zeros).map(|v| (k.clone(), v)))
                .collect();
            (!pruned.is_empty()).then_some(Value::Object(pruned))
        }
        Value::Array(a) => {
            let pruned: Vec<Value> = a
                .iter()
                .map(|v| prune(v, zeros).unwrap_or(Value::Null))
                .collect();
            (!pruned.is_empty()).then_some(Value::Array(pruned))
        }
        other => Some(other.clone()),
    }
}

/// `apiequality.Semantic.DeepEqual`-like: null, empty and absent are the same.
pub(crate) fn semantic_eq(a: &Value, b: &Value) -> bool {
    prune(a, false) == prune(b, false)
}

/// Equality for status structs, where zero values are omitted too.
pub(crate) fn status_eq(a: &Value, b: &Value) -> bool {
    prune(a, true) == prune(b, true)
}

/// FNV-1a 32-bit, as `hash/fnv.New32a`.
pub(crate) fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// FNV-1a 64-bit, for names and synthetic ids.
pub(crate) fn fnv64a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The alphabet of `rand.SafeEncodeString` and generated names (no vowels, no confusables).
pub(crate) const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `rand.SafeEncodeString`: every byte mapped into [`SAFE_ALPHABET`].
pub(crate) fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// `n` characters of [`SAFE_ALPHABET`] derived from `seed` (the shape of a generateName suffix).
pub(crate) fn safe_suffix(seed: u64, n: usize) -> String {
    let mut x = seed;
    (0..n)
        .map(|_| {
            // splitmix64 step: good spread from consecutive seeds.
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            SAFE_ALPHABET[(z % SAFE_ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Writes `v` as JSON with object keys sorted, whatever map order serde_json was built with.
pub(crate) fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A condition of `type` in a `conditions` array.
pub(crate) fn condition<'a>(conditions: Option<&'a Value>, type_: &str) -> Option<&'a Value> {
    conditions?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_like_labels_selector() {
        let labels = json!({"app": "web", "tier": "front"});
        let l = labels.as_object();
        assert!(selector_matches(&json!({"matchLabels": {"app": "web"}}), l));
        assert!(!selector_matches(
            &json!({"matchLabels": {"app": "api"}}),
            l
        ));
        let exprs = json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "app", "operator": "Exists"},
            {"key": "zone", "operator": "NotIn", "values": ["a"]}
        ]});
        assert!(selector_matches(&exprs, l));
        let not_in =
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]});
        assert!(!selector_matches(&not_in, l));
        assert!(selector_is_empty(&json!({})));
        assert!(!selector_is_empty(&json!({"matchLabels": {"a": "b"}})));
    }

    #[test]
    fn semantic_equality_ignores_null_and_empty() {
        let a = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
                       "spec": {"containers": [{"name": "app", "image": "x", "resources": {}}]}});
        let b = json!({"metadata": {"labels": {"app": "web"}},
                       "spec": {"containers": [{"name": "app", "image": "x"}]}});
        assert!(semantic_eq(&a, &b));
        let c = json!({"metadata": {"labels": {"app": "web"}},
                       "spec": {"containers": [{"name": "app", "image": "y"}]}});
        assert!(!semantic_eq(&a, &c));
        assert!(status_eq(&json!({"replicas": 0, "x": false}), &json!({})));
        assert!(!semantic_eq(&json!({"paused": false}), &json!({})));
    }

    #[test]
    fn fnv_and_safe_encoding_match_go() {
        // hash/fnv New32a of "" and "a" (Go test vectors).
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        let s = safe_suffix(42, 5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        assert_ne!(safe_suffix(42, 5), safe_suffix(43, 5));
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let mut out = String::new();
        canonical_json(&json!({"b": 1, "a": {"d": [1, "x"], "c": null}}), &mut out);
        assert_eq!(out, r#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn times_are_seconds_precision() {
        let t: Timestamp = "2026-11-27T03:40:00.750Z".parse().unwrap();
        assert_eq!(fmt_time(t), "2026-11-27T03:40:00Z");
        assert_eq!(fmt_ms(t.as_millisecond()), "2026-11-27T03:40:00Z");
    }
}
