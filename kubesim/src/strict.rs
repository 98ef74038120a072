//! `fieldValidation=Strict` (what `kubectl apply`/`create`/`replace` send): a built-in object
//! whose fields do not decode into its Kubernetes type, or that carries fields the type does
//! not declare, is refused with `400 BadRequest` as the apiserver's strict decoder words it.
//!
//! Start at [`check`]: it round-trips the object through its `k8s-openapi` type and reports
//! every field of the input that did not survive. Custom resources (no schema here) pass.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resources::ResourceType;
use crate::status::ApiError;

fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// The object as its `k8s-openapi` type reads it, or `None` for kinds without a type here.
fn typed(rt: &ResourceType, obj: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{apps, core, networking};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
    Some(match (rt.group, rt.kind) {
        ("apps", "Deployment") => round_trip::<apps::v1::Deployment>(obj),
        ("apps", "ReplicaSet") => round_trip::<apps::v1::ReplicaSet>(obj),
        ("", "Pod") => round_trip::<core::v1::Pod>(obj),
        ("", "Service") => round_trip::<core::v1::Service>(obj),
        ("", "ConfigMap") => round_trip::<core::v1::ConfigMap>(obj),
        ("", "Namespace") => round_trip::<core::v1::Namespace>(obj),
        ("", "Node") => round_trip::<core::v1::Node>(obj),
        ("", "Endpoints") => round_trip::<core::v1::Endpoints>(obj),
        ("", "Event") => round_trip::<core::v1::Event>(obj),
        ("", "ResourceQuota") => round_trip::<core::v1::ResourceQuota>(obj),
        ("networking.k8s.io", "NetworkPolicy") => round_trip::<networking::v1::NetworkPolicy>(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            round_trip::<apiextensions::v1::CustomResourceDefinition>(obj)
        }
        _ => return None,
    })
}

/// Dotted paths (`spec.template.spec.containers[0].foo`) of `input` missing from `output`.
fn unknown(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown(v, ov, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, v) in i.iter().enumerate() {
                if let Some(ov) = o.get(n) {
                    unknown(v, ov, &format!("{path}[{n}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Checks `obj` (served form of `rt`, apiVersion and kind set) strictly.
pub fn check(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let prefix = format!(
        "{} in version {:?} cannot be handled as a {}",
        rt.kind, rt.version, rt.kind
    );
    let mut body = obj.clone();
    if body.is_object() {
        body["apiVersion"] = Value::from(rt.api_version());
        body["kind"] = Value::from(rt.kind);
    }
    let output = match typed(rt, &body) {
        None => return Ok(()),
        Some(Err(e)) => return Err(ApiError::bad_request(format!("{prefix}: {e}"))),
        Some(Ok(v)) => v,
    };
    let mut fields = Vec::new();
    unknown(&body, &output, "", &mut fields);
    if fields.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = fields
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    Err(ApiError::bad_request(format!(
        "{prefix}: strict decoding error: {}",
        list.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;
    use serde_json::json;

    fn deploy() -> &'static ResourceType {
        resources::by_kind("apps/v1", "Deployment").unwrap()
    }

    #[test]
    fn unknown_fields_are_named_with_their_paths() {
        let d = json!({"metadata": {"name": "web", "creationTimestamp": null}, "spec": {"replicaz": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx", "imagePullPolicy": "Always", "colour": "red"}], "securityContext": {}}}}});
        let err = check(deploy(), &d).unwrap_err();
        assert_eq!(
            err.message,
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.replicaz\", unknown field \"spec.template.spec.containers[0].colour\""
        );
        assert_eq!(err.code, 400);
    }

    #[test]
    fn valid_objects_and_custom_resources_pass_and_wrong_types_fail() {
        let ok = json!({"metadata": {"name": "web", "labels": {"a": "b"}}, "spec": {"replicas": 2, "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx", "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80}]}]}}}, "status": {}});
        check(deploy(), &ok).unwrap();
        let crd =
            resources::by_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition").unwrap();
        for bundled in crate::crd::bundled() {
            check(crd, &bundled).unwrap();
            let (served, _) = crate::crd::types_of(&bundled).unwrap();
            check(served[0], &json!({"spec": {"anything": 1}})).unwrap();
        }
        let mut typo = crate::crd::bundled().remove(0);
        typo["spec"]["versions"][0]["servd"] = json!(true);
        assert!(
            check(crd, &typo)
                .unwrap_err()
                .message
                .ends_with("strict decoding error: unknown field \"spec.versions[0].servd\"")
        );
        let wrong = json!({"metadata": {"name": "web"}, "spec": {"replicas": "three"}});
        assert!(
            check(deploy(), &wrong)
                .unwrap_err()
                .message
                .starts_with("Deployment in version \"v1\" cannot be handled as a Deployment: ")
        );
    }
}
