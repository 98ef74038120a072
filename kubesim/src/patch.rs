//! The four PATCH flavours: JSON merge (RFC 7386), JSON patch (RFC 6902), strategic merge
//! (the subset kubectl sends) and server-side apply (as an upsert with list-map merging).
//!
//! Start at [`PatchType::from_content_type`] and [`apply_patch`]. Strategic merge knows the
//! merge keys of the built-in lists kubectl touches (containers/volumes/env by `name`, ports by
//! `containerPort`/`port`, volumeMounts by `mountPath`, conditions by `type`, ...), and the
//! directives `$patch`, `$setElementOrder/…`, `$retainKeys`, `$deleteFromPrimitiveList/…`.

use serde_json::{Map, Value};

use crate::status::ApiError;

/// A PATCH body's type, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    /// Maps a `Content-Type` to a patch type; `None` for anything else.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Parses a patch body as JSON (or YAML for apply).
pub fn parse_body(ty: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let value = parse_value(ty, body)?;
    if ty == PatchType::Apply
        && (!value.is_object() || value.get("metadata").is_some_and(|m| !m.is_object()))
    {
        return Err(ApiError::bad_request(
            "an apply patch must be an object with object metadata",
        ));
    }
    Ok(value)
}

fn parse_value(ty: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(json_err) if ty == PatchType::Apply => {
            let text =
                std::str::from_utf8(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            serde_saphyr::from_str::<Value>(text).map_err(|e| {
                ApiError::bad_request(format!("error decoding YAML: {e} (as JSON: {json_err})"))
            })
        }
        Err(e) => Err(ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies `patch` of type `ty` to `doc` and returns the result.
pub fn apply_patch(ty: PatchType, doc: &Value, patch: &Value) -> Result<Value, ApiError> {
    match ty {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal into Go value of type map[string]interface {}",
                ));
            }
            let mut out = doc.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            let mut out = doc.clone();
            json_patch::patch(&mut out, &ops)
                .map_err(|e| ApiError::unprocessable(&e.to_string()))?;
            Ok(out)
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal array into Go value of type map[string]interface {}",
                ));
            }
            Ok(strategic_merge(doc, patch))
        }
        PatchType::Apply => Ok(apply_merge(doc, patch)),
    }
}

/// The merge key of a list field, by its name and (for `ports`) its elements.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "ports" => {
            if sample.and_then(|s| s.get("containerPort")).is_some() {
                "containerPort"
            } else {
                "port"
            }
        }
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "taints" => "key",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "addresses" => "type",
        _ => return None,
    })
}

/// Lists of primitives merged as sets.
fn is_primitive_set(field: &str) -> bool {
    field == "finalizers"
}

/// A strategic merge patch applied to `orig`.
pub fn strategic_merge(orig: &Value, patch: &Value) -> Value {
    match (orig, patch) {
        (Value::Object(o), Value::Object(p)) => Value::Object(merge_maps(o, p)),
        (_, Value::Object(p)) => Value::Object(merge_maps(&Map::new(), p)),
        (_, p) => strip_directives(p),
    }
}

fn merge_maps(orig: &Map<String, Value>, patch: &Map<String, Value>) -> Map<String, Value> {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut out = patch.clone();
        out.remove("$patch");
        return strip_map(&out);
    }
    let mut out = orig.clone();
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) = (out.get_mut(list), value.as_array())
            {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        match value {
            Value::Null => {
                out.remove(key);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.remove(key);
                    continue;
                }
                let merged = match out.get(key) {
                    Some(Value::Object(om)) => merge_maps(om, pm),
                    _ => merge_maps(&Map::new(), pm),
                };
                out.insert(key.clone(), Value::Object(merged));
            }
            Value::Array(pl) => {
                let order = patch
                    .get(&format!("$setElementOrder/{key}"))
                    .and_then(Value::as_array);
                let merged = merge_lists(key, out.get(key).and_then(Value::as_array), pl, order);
                out.insert(key.clone(), Value::Array(merged));
            }
            other => {
                out.insert(key.clone(), other.clone());
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        out.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k.as_str())));
    }
    out
}

fn merge_lists(
    field: &str,
    orig: Option<&Vec<Value>>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
) -> Vec<Value> {
    let orig = orig.cloned().unwrap_or_default();
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(strip_directives)
            .collect();
    }
    if is_primitive_set(field) {
        let mut out = orig;
        for p in patch {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        return out;
    }
    let Some(key) = merge_key(field, patch.first().or(orig.first())) else {
        return patch.iter().map(strip_directives).collect();
    };
    let mut out = orig;
    for p in patch {
        let id = p.get(key);
        let pos = out.iter().position(|o| o.get(key) == id && id.is_some());
        let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => out[i] = strategic_merge(&out[i], p),
            (None, false) => out.push(strip_directives(p)),
        }
    }
    if let Some(order) = order {
        let rank = |v: &Value| {
            order
                .iter()
                .position(|o| o.get(key) == v.get(key))
                .unwrap_or(usize::MAX)
        };
        out.sort_by_key(rank);
    }
    out
}

fn strip_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_directives(v)))
        .collect()
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_map(m)),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Server-side apply as kubesim does it: the applied configuration is merged into the live
/// object with list-map semantics (lists with merge keys merge by key; others replace). Field
/// ownership (managedFields) and removal of fields a manager stopped applying are not tracked.
pub fn apply_merge(live: &Value, applied: &Value) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, av) in a {
                let merged = match (l.get(k), av) {
                    (Some(lv @ Value::Object(_)), Value::Object(_)) => apply_merge(lv, av),
                    (Some(Value::Array(ll)), Value::Array(al)) => match merge_key(k, al.first()) {
                        Some(key) => {
                            let mut list = Vec::new();
                            for item in al {
                                let existing = ll.iter().find(|x| {
                                    x.get(key) == item.get(key) && item.get(key).is_some()
                                });
                                list.push(
                                    existing.map_or_else(|| item.clone(), |e| apply_merge(e, item)),
                                );
                            }
                            Value::Array(list)
                        }
                        None => av.clone(),
                    },
                    _ => av.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, a) => a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"spec": {"paused": true, "template": {"spec": {"containers": [
            {"name": "app", "image": "nginx:1.0", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "side", "image": "busybox"}
        ]}}}, "metadata": {"finalizers": ["a"]}})
    }

    #[test]
    fn kubectl_set_image_patch_merges_containers_by_name() {
        let p = json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"app"},{"name":"side"}],"containers":[{"image":"nginx:2.0","name":"app"}]}}}});
        let out = strategic_merge(&deploy(), &p);
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "nginx:2.0");
        assert_eq!(c[0]["env"][0]["value"], "1", "untouched fields stay");
        assert_eq!(c[1]["name"], "side");
    }

    #[test]
    fn null_deletes_and_directives_work() {
        let out = strategic_merge(&deploy(), &json!({"spec": {"paused": null}}));
        assert!(out["spec"].get("paused").is_none());
        let del = json!({"spec":{"template":{"spec":{"containers":[{"name":"side","$patch":"delete"}]}}}});
        let out = strategic_merge(&deploy(), &del);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let rep = json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"x"}]}}}});
        let out = strategic_merge(&deploy(), &rep);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name":"only","image":"x"}])
        );
        let fin = strategic_merge(&deploy(), &json!({"metadata": {"finalizers": ["b", "a"]}}));
        assert_eq!(fin["metadata"]["finalizers"], json!(["a", "b"]));
        let dl = strategic_merge(
            &deploy(),
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(dl["metadata"]["finalizers"], json!([]));
        let retain = strategic_merge(
            &json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}),
            &json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}),
        );
        assert_eq!(retain, json!({"strategy": {"type": "Recreate"}}));
    }

    #[test]
    fn ports_merge_by_container_port_and_env_by_name() {
        let p = json!({"spec":{"template":{"spec":{"containers":[{"name":"app","ports":[{"containerPort":8080}],"env":[{"name":"B","value":"2"}]}]}}}});
        let out = strategic_merge(&deploy(), &p);
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["ports"].as_array().unwrap().len(), 2);
        assert_eq!(c["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn merge_and_json_patches_follow_their_rfcs() {
        let out = apply_patch(
            PatchType::Merge,
            &deploy(),
            &json!({"spec": {"template": {"spec": {"containers": []}}}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([]),
            "merge patch replaces arrays"
        );
        let ops = json!([{"op": "replace", "path": "/spec/paused", "value": false}]);
        assert_eq!(
            apply_patch(PatchType::Json, &deploy(), &ops).unwrap()["spec"]["paused"],
            false
        );
        let bad = json!([{"op": "test", "path": "/spec/paused", "value": false}]);
        assert_eq!(
            apply_patch(PatchType::Json, &deploy(), &bad)
                .unwrap_err()
                .code,
            422
        );
        let missing = json!([{"op": "remove", "path": "/spec/nope"}]);
        assert_eq!(
            apply_patch(PatchType::Json, &deploy(), &missing)
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            apply_patch(PatchType::Json, &deploy(), &json!({"op": 1}))
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn apply_merges_list_maps_and_keeps_unapplied_fields() {
        let applied = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:3"}]}}}});
        let out = apply_merge(&deploy(), &applied);
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 1);
        assert_eq!(c[0]["image"], "nginx:3");
        assert_eq!(c[0]["env"][0]["name"], "A");
        assert_eq!(out["spec"]["paused"], true);
    }

    #[test]
    fn content_types_map_to_patch_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        assert!(
            parse_body(PatchType::Apply, b"spec:\n  replicas: 2\n").unwrap()["spec"]["replicas"]
                == 2
        );
        assert_eq!(parse_body(PatchType::Merge, b"{").unwrap_err().code, 400);
        assert_eq!(parse_body(PatchType::Apply, b"5").unwrap_err().code, 400);
        assert_eq!(
            parse_body(PatchType::Apply, b"metadata: x")
                .unwrap_err()
                .code,
            400
        );
    }
}
