//! Field ownership for server-side apply: `metadata.managedFields` in the apiserver's
//! `FieldsV1` shape, conflicts between managers, and removal of fields a manager stops applying.
//!
//! Start at [`apply`] (a server-side apply by one manager) and [`record_update`] (any other
//! write that names a `fieldManager`). Field paths are JSON paths; lists with a merge key
//! (containers by `name`, ports by `containerPort`, ...) are addressed per element, like the
//! apiserver's `k:{...}` keys, and other lists are owned whole.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Field(String),
    /// A list element by its merge key and value.
    Key(String, String),
}

type Path = Vec<Step>;

/// The merge key of a list, as strategic merge and SSA list-maps use it.
fn list_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => "name",
        "ports" if items.first().and_then(|i| i.get("containerPort")).is_some() => "containerPort",
        "ports" => "port",
        "volumeMounts" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "taints" => "key",
        _ => return None,
    };
    items.iter().all(|i| i.get(key).is_some()).then_some(key)
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Leaf paths of an object, skipping server-owned metadata and status.
fn leaves(obj: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Some(map) = obj.as_object() {
        for (k, v) in map {
            match k.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    for field in ["labels", "annotations"] {
                        if let Some(m) = v.get(field).and_then(Value::as_object) {
                            for key in m.keys() {
                                out.insert(vec![
                                    Step::Field("metadata".into()),
                                    Step::Field(field.into()),
                                    Step::Field(key.clone()),
                                ]);
                            }
                        }
                    }
                }
                _ => walk(&mut vec![Step::Field(k.clone())], v, &mut out),
            }
        }
    }
    out
}

fn walk(path: &mut Path, v: &Value, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(Step::Field(k.clone()));
                walk(path, child, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            let field = match path.last() {
                Some(Step::Field(f)) => f.clone(),
                _ => String::new(),
            };
            match list_key(&field, items) {
                Some(key) if !items.is_empty() => {
                    for item in items {
                        path.push(Step::Key(key.to_string(), key_text(&item[key])));
                        walk(path, item, out);
                        path.pop();
                    }
                }
                _ => {
                    out.insert(path.clone());
                }
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path`, if present.
fn at<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        cur = match step {
            Step::Field(f) => cur.get(f)?,
            Step::Key(k, v) => cur
                .as_array()?
                .iter()
                .find(|i| i.get(k).is_some_and(|x| key_text(x) == *v))?,
        };
    }
    Some(cur)
}

/// Removes the value at `path` (and list elements / maps left empty by it are kept, as the
/// apiserver keeps other managers' siblings).
fn remove(obj: &mut Value, path: &[Step]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for step in parent_path {
        let next = match step {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(k, v) => cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| i.get(k).is_some_and(|x| key_text(x) == *v))
            }),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k, v) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| i.get(k).is_none_or(|x| key_text(x) != *v));
            }
        }
    }
}

fn path_text(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Step::Key(k, v) => out.push_str(&format!("[{k}={v:?}]")),
        }
    }
    out
}

/// `FieldsV1` for a set of paths: `{"f:spec":{"f:replicas":{}}}`, `k:{"name":"app"}` for keys.
fn fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut cur = &mut root;
        for step in path {
            let key = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k, v) => {
                    let val = v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n));
                    format!("k:{}", json!({ k: val }))
                }
            };
            let entry = cur.entry(key).or_insert_with(|| json!({}));
            cur = entry.as_object_mut().expect("fields are objects");
        }
    }
    Value::Object(root)
}

/// Reads a `FieldsV1` tree back into paths.
fn parse_fields_v1(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(map) = v.as_object() else { return };
    if map.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (k, child) in map {
        let step = if let Some(f) = k.strip_prefix("f:") {
            Step::Field(f.to_string())
        } else if let Some(key) = k.strip_prefix("k:") {
            let Ok(Value::Object(m)) = serde_json::from_str::<Value>(key) else {
                continue;
            };
            let Some((kk, kv)) = m.into_iter().next() else {
                continue;
            };
            Step::Key(kk, key_text(&kv))
        } else {
            continue;
        };
        prefix.push(step);
        let is_leaf = child.as_object().is_none_or(|m| m.is_empty());
        if is_leaf {
            out.insert(prefix.clone());
        } else {
            parse_fields_v1(child, prefix, out);
        }
        prefix.pop();
    }
}

/// One manager's entry in `metadata.managedFields`.
struct Entry {
    manager: String,
    operation: String,
    /// When the entry last changed (kept as is when a write leaves it alone).
    time: Option<String>,
    paths: BTreeSet<Path>,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| {
                    let mut paths = BTreeSet::new();
                    parse_fields_v1(
                        e.get("fieldsV1").unwrap_or(&Value::Null),
                        &mut Vec::new(),
                        &mut paths,
                    );
                    Entry {
                        manager: e["manager"].as_str().unwrap_or_default().to_string(),
                        operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                        time: e["time"].as_str().map(str::to_string),
                        paths,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, list: Vec<Entry>, api_version: &str, now: &str) {
    let out: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.paths.is_empty())
        .map(|e| {
            json!({"manager": e.manager, "operation": e.operation, "apiVersion": api_version,
                   "time": e.time.unwrap_or_else(|| now.to_string()),
                   "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&e.paths)})
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if out.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(out));
        }
    }
}

/// The `409 Conflict` of an apply, worded as the apiserver words it.
pub fn conflict_error(conflicts: &[Conflict], api_version: &str) -> crate::status::ApiError {
    let mut by_manager: Vec<(&str, Vec<&str>)> = Vec::new();
    for c in conflicts {
        match by_manager.iter_mut().find(|(m, _)| *m == c.manager) {
            Some((_, fields)) => fields.push(&c.field),
            None => by_manager.push((&c.manager, vec![&c.field])),
        }
    }
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {:?} using {api_version}: {}",
            conflicts[0].manager, conflicts[0].field
        )
    } else {
        let parts: Vec<String> = by_manager
            .iter()
            .map(|(m, fields)| {
                let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
                format!(
                    "conflicts with {m:?} using {api_version}:\n{}",
                    list.join("\n")
                )
            })
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            parts.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {:?} using {api_version}", c.manager), "field": c.field}))
        .collect();
    crate::status::ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({"causes": causes})),
    }
}

/// A conflicting field: the manager that owns it and the field.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// Server-side apply of `config` by `manager` onto `live`: returns the new object (with
/// managedFields updated), or the conflicts when another manager owns a field `config` sets to
/// a different value and `force` is false.
pub fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let applied = leaves(config);
    let mut list = entries(live);
    let mut conflicts = Vec::new();
    for e in list.iter().filter(|e| e.manager != manager) {
        for p in e.paths.intersection(&applied) {
            if at(live, p) != at(config, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: path_text(p),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Fields this manager applied before, no longer applies, and nobody else owns: removed.
    let previous: BTreeSet<Path> = list
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply")
        .flat_map(|e| e.paths.iter().cloned())
        .collect();
    let others: BTreeSet<Path> = list
        .iter()
        .filter(|e| e.manager != manager)
        .flat_map(|e| e.paths.iter().cloned())
        .collect();
    let mut out = crate::patch::apply_merge(live, config);
    for p in previous.difference(&applied) {
        if !others.contains(p) {
            remove(&mut out, p);
        }
    }
    // Fields applied with the value they already had are shared; forcing takes the conflicting
    // ones away from their other owners.
    for e in list.iter_mut().filter(|e| e.manager != manager) {
        let before = e.paths.len();
        e.paths
            .retain(|p| !(applied.contains(p) && at(live, p) != at(config, p)));
        if e.paths.len() != before {
            e.time = None;
        }
    }
    // An apply that changes nothing keeps its entry's time, so the write is a no-op.
    let time = list
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.paths == applied)
        .filter(|_| out == *live)
        .and_then(|e| e.time.clone());
    list.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    list.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        time,
        paths: applied,
    });
    write_entries(&mut out, list, api_version, now);
    Ok(out)
}

/// Records a non-apply write by `manager`: the fields it changed (or, on create, every field)
/// become its own and leave other managers.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
) {
    let before = old.map(leaves).unwrap_or_default();
    let after = leaves(new);
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|p| !before.contains(*p) || old.is_some_and(|o| at(o, p) != at(new, p)))
        .cloned()
        .collect();
    let mut list = old.map(entries).unwrap_or_default();
    for e in list.iter_mut() {
        let before = e.paths.len();
        e.paths.retain(|p| after.contains(p));
        if e.manager != manager {
            e.paths.retain(|p| !changed.contains(p));
        }
        if e.paths.len() != before {
            e.time = None;
        }
    }
    if !changed.is_empty() {
        match list
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update")
        {
            Some(e) => {
                e.paths.extend(changed);
                e.time = None;
            }
            None => list.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                time: None,
                paths: changed,
            }),
        }
    }
    write_entries(new, list, api_version, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_round_trips_with_list_keys() {
        let paths = leaves(&deploy(3, "nginx"));
        let text = fields_v1(&paths);
        assert!(text["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["f:image"].is_object());
        let mut back = BTreeSet::new();
        parse_fields_v1(&text, &mut Vec::new(), &mut back);
        assert_eq!(back, paths);
    }

    #[test]
    fn another_managers_field_conflicts_unless_forced() {
        let mut live = deploy(3, "nginx:1");
        record_update(None, &mut live, "kubectl-client-side-apply", "apps/v1", "t");
        let err = apply(
            &live,
            &deploy(5, "nginx:1"),
            "firebreak",
            false,
            "apps/v1",
            "t",
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "kubectl-client-side-apply".into(),
                field: ".spec.replicas".into()
            }]
        );
        // The same values do not conflict; forcing takes the field over.
        assert!(
            apply(
                &live,
                &deploy(3, "nginx:1"),
                "firebreak",
                false,
                "apps/v1",
                "t"
            )
            .is_ok()
        );
        let only_replicas = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let forced = apply(&live, &only_replicas, "firebreak", true, "apps/v1", "t").unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        assert_eq!(
            forced["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1"
        );
        let owners: Vec<(String, usize)> = entries(&forced)
            .into_iter()
            .map(|e| (e.manager, e.paths.len()))
            .collect();
        assert_eq!(
            owners,
            [
                ("kubectl-client-side-apply".to_string(), 3),
                ("firebreak".to_string(), 1)
            ]
        );
    }

    #[test]
    fn fields_dropped_from_the_applied_config_are_removed() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
        let live = apply(
            &json!({"metadata": {"name": "c"}}),
            &first,
            "m",
            false,
            "v1",
            "t",
        )
        .unwrap();
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1"}});
        let out = apply(&live, &second, "m", false, "v1", "t").unwrap();
        assert_eq!(out["data"], json!({"x": "1"}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
    }

    #[test]
    fn conflict_errors_read_like_the_apiserver() {
        let one = conflict_error(
            &[Conflict {
                manager: "m".into(),
                field: ".spec.replicas".into(),
            }],
            "apps/v1",
        );
        assert_eq!((one.code, one.reason), (409, "Conflict"));
        assert_eq!(
            one.message,
            "Apply failed with 1 conflict: conflict with \"m\" using apps/v1: .spec.replicas"
        );
        let two = conflict_error(
            &[
                Conflict {
                    manager: "m".into(),
                    field: ".a".into(),
                },
                Conflict {
                    manager: "m".into(),
                    field: ".b".into(),
                },
            ],
            "v1",
        );
        assert_eq!(
            two.message,
            "Apply failed with 2 conflicts: conflicts with \"m\" using v1:\n- .a\n- .b"
        );
        assert_eq!(two.details.unwrap()["causes"][1]["field"], ".b");
    }
}
