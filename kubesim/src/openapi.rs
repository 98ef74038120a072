//! The minimal OpenAPI documents kubectl needs for `create -f` / `apply -f` (KUBESIM-NOTES
//! §4.3): per resource, `post`, `put` and `patch` operations carrying
//! `x-kubernetes-group-version-kind` and the `dryRun`, `fieldManager`, `fieldValidation` and
//! `force` parameters, so kubectl knows the server validates fields. No schemas: kubectl then
//! falls back to its built-in types.
//!
//! kubectl 1.29+ reads the v3 documents. kubectl 1.27 and 1.28 ask `/openapi/v2` first, as
//! protobuf (gnostic's `openapi.v2.Document`), to find the `fieldValidation` parameter on a
//! kind's PATCH operation; without the document `kubectl apply` fails. [`v2_protobuf`] is the
//! same operations in that form (and [`v2_json`] in JSON for other clients).
//!
//! The documents cover every served resource of the store's [`Registry`], so a CRD's kinds
//! appear in them once it is established.

use serde_json::{Map, Value, json};

use crate::protobuf::Writer;
use crate::resources::{Registry, ResourceType};

fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// FNV-1a 64 of the document, as the stable `?hash=` of its URL.
fn hash(doc: &Value) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in doc.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3`: the index of group-version documents.
pub fn index(types: &Registry, git_version: &str) -> Value {
    let mut paths = Map::new();
    for (g, v) in types.group_versions() {
        let doc = group_version(types, g, v, git_version).unwrap_or_default();
        let key = gv_key(g, v);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&doc))}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/g/v>`, or `None` for an unknown group-version.
pub fn group_version(
    types: &Registry,
    group: &str,
    version: &str,
    git_version: &str,
) -> Option<Value> {
    let mut paths = Map::new();
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
    ]);
    for r in types
        .all()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = if r.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", r.gv_path(), r.plural)
        } else {
            format!("{}/{}", r.gv_path(), r.plural)
        };
        let op = |id: &str| json!({"operationId": id, "x-kubernetes-action": id, "x-kubernetes-group-version-kind": gvk, "parameters": params});
        paths.insert(base.clone(), json!({"post": op("post")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"patch": op("patch"), "put": op("put")}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": git_version},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// The operations of the v2 document: (path, method, GVK) for every resource.
fn v2_operations(types: &Registry) -> Vec<(String, &'static str, &'static ResourceType)> {
    let mut ops = Vec::new();
    for r in types.all() {
        let base = if r.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", r.gv_path(), r.plural)
        } else {
            format!("{}/{}", r.gv_path(), r.plural)
        };
        ops.push((base.clone(), "post", r));
        ops.push((format!("{base}/{{name}}"), "put", r));
        ops.push((format!("{base}/{{name}}"), "patch", r));
    }
    ops
}

const V2_PARAMS: [(&str, &str); 4] = [
    ("dryRun", "string"),
    ("fieldManager", "string"),
    ("fieldValidation", "string"),
    ("force", "boolean"),
];

/// `/openapi/v2` as JSON (`Accept: application/json`).
pub fn v2_json(types: &Registry, git_version: &str) -> Value {
    let mut paths = Map::new();
    for (path, method, r) in v2_operations(types) {
        let params: Vec<Value> = V2_PARAMS
            .iter()
            .map(|(name, ty)| json!({"name": name, "in": "query", "type": ty, "uniqueItems": true}))
            .collect();
        let op = json!({
            "operationId": format!("{method}{}", r.kind),
            "parameters": params,
            "x-kubernetes-action": method,
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        });
        let item = paths.entry(path).or_insert_with(|| json!({}));
        item[method] = op;
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": git_version},
        "paths": paths,
        "definitions": {},
    })
}

/// `/openapi/v2` as gnostic's protobuf `openapi.v2.Document`, which kubectl 1.27 and 1.28
/// ask for (`Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
pub fn v2_protobuf(types: &Registry, git_version: &str) -> Vec<u8> {
    // Field numbers from gnostic's OpenAPIv2.proto.
    let named_any = |name: &str, yaml: &str| {
        Writer::default()
            .string(1, name) // NamedAny.name
            .message(2, Writer::default().string(2, yaml)) // .value: Any.yaml
    };
    let mut items: Vec<(String, Writer)> = Vec::new();
    for (path, method, r) in v2_operations(types) {
        let mut op = Writer::default().string(5, &format!("{method}{}", r.kind)); // operation_id
        for (name, ty) in V2_PARAMS {
            let query = Writer::default()
                .string(2, "query") // QueryParameterSubSchema.in
                .string(4, name) // .name
                .string(6, ty) // .type
                .varint_field(20, 1); // .unique_items
            let non_body = Writer::default().message(3, query); // NonBodyParameter.query_...
            let parameter = Writer::default().message(2, non_body); // Parameter.non_body_parameter
            op = op.message(8, Writer::default().message(1, parameter)); // parameters: ParametersItem.parameter
        }
        let gvk = format!(
            "group: \"{}\"\nkind: {}\nversion: {}\n",
            r.group, r.kind, r.version
        );
        op = op
            .message(13, named_any("x-kubernetes-action", method))
            .message(13, named_any("x-kubernetes-group-version-kind", &gvk));
        // PathItem: put = 3, post = 4, patch = 8.
        let number = match method {
            "put" => 3,
            "post" => 4,
            _ => 8,
        };
        match items.iter_mut().find(|(p, _)| *p == path) {
            Some((_, item)) => *item = std::mem::take(item).message(number, op),
            None => items.push((path, Writer::default().message(number, op))),
        }
    }
    let mut paths = Writer::default();
    for (path, item) in items {
        // Paths.path: NamedPathItem {name, value}.
        paths = paths.message(2, Writer::default().string(1, &path).message(2, item));
    }
    Writer::default()
        .string(1, "2.0") // Document.swagger
        .message(
            2,
            Writer::default()
                .string(1, "Kubernetes")
                .string(2, git_version),
        ) // .info
        .message(8, paths) // .paths
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_points_at_each_group_version() {
        let types = Registry::default();
        let idx = index(&types, "v1.32.4");
        let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc = group_version(&types, "apps", "v1", "v1.32.4").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(group_version(&types, "nope", "v1", "v1.32.4").is_none());
    }
}
