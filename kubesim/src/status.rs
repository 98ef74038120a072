//! Kubernetes `Status` errors, shaped exactly as the real apiserver sends them.
//!
//! Start at [`ApiError`]: every handler returns it on failure, and its `IntoResponse` writes the
//! `{"kind":"Status",...}` body kubectl and kube-rs parse (`reason`, `code`, `details`).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use crate::resources::ResourceType;

/// One field problem of an `Invalid` answer (`details.causes[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// The field path, e.g. `spec.selector`.
    pub field: String,
    /// The message without the field, e.g. `Required value`.
    pub message: String,
}

impl Cause {
    /// `field: Required value[: detail]`.
    pub fn required(field: &str, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            reason: "FieldValueRequired",
            field: field.to_string(),
            message,
        }
    }

    /// `field: Invalid value: <value>: detail`, with the value printed as Go's `%#v` would.
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: format!("Invalid value: {}: {detail}", go_repr(value)),
        }
    }

    /// `field: Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(field: &str, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.to_string(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                go_repr(value),
                list.join(", ")
            ),
        }
    }

    /// `field: Duplicate value: <value>`.
    pub fn duplicate(field: &str, value: &Value) -> Self {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.to_string(),
            message: format!("Duplicate value: {}", go_repr(value)),
        }
    }

    /// `field: Forbidden: detail`.
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            field: field.to_string(),
            message: format!("Forbidden: {detail}"),
        }
    }

    fn to_json(&self) -> Value {
        json!({"reason": self.reason, "message": self.message, "field": self.field})
    }
}

/// How the apiserver's field errors print a value (`%#v`-like): strings quoted, maps as
/// `map[string]string{...}`.
fn go_repr(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Object(map) if map.values().all(Value::is_string) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
                .collect();
            format!("map[string]string{{{}}}", inner.join(", "))
        }
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// A failed API request, rendered as a `Status` object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code, repeated in `Status.code`.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the real apiserver sends them.
    pub details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `deployments.apps "web" not found`.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", rt.qualified()),
        )
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    /// A path that names no resource: `the server could not find the requested resource`.
    pub fn no_route() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// `deployments.apps "web" already exists`.
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", rt.qualified()),
        )
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    /// The optimistic-concurrency failure of an update with a stale resourceVersion.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    /// `Deployment.apps "web" is invalid: [a, b]` with one cause per field problem.
    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        let kind = if rt.group.is_empty() {
            rt.kind.to_string()
        } else {
            format!("{}.{}", rt.kind, rt.group)
        };
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let summary = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let causes: Vec<Value> = causes.iter().map(Cause::to_json).collect();
        ApiError::new(
            422,
            "Invalid",
            format!("{kind} {name:?} is invalid: {summary}"),
        )
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.kind, "causes": causes}))
    }

    /// A 422 without a field, as the apiserver answers a JSON patch that does not apply.
    pub fn unprocessable(server_message: &str) -> Self {
        ApiError::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        )
        .with_details(
            json!({"causes": [{"reason": "UnexpectedServerResponse", "message": server_message}]}),
        )
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// 403 Forbidden for a resource action.
    pub fn forbidden(rt: &ResourceType, name: &str, why: &str) -> Self {
        ApiError::new(
            403,
            "Forbidden",
            format!("{} {name:?} is forbidden: {why}", rt.qualified()),
        )
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_supported(rt: &ResourceType, verb: &str) -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on resources of kind {:?}",
                rt.qualified()
            ),
        )
        .with_details(json!({"group": rt.group, "kind": rt.plural}))
    }

    /// 415 for bodies the server cannot decode (protobuf, strategic merge on custom resources).
    pub fn unsupported_media(accepted: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            ),
        )
    }

    /// 410 Expired, as sent in-stream for a too-old watch resourceVersion.
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// 500 for a bug in kubesim; never expected.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// The success `Status` the apiserver returns for an immediate delete.
pub fn delete_success(rt: &ResourceType, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn invalid_message_lists_causes_like_the_apiserver() {
        let rt = resources::by_plural("apps", "v1", "deployments").unwrap();
        let one = ApiError::invalid(rt, "web", vec![Cause::required("spec.selector", "")]);
        assert_eq!(
            one.message,
            "Deployment.apps \"web\" is invalid: spec.selector: Required value"
        );
        let two = ApiError::invalid(
            rt,
            "web",
            vec![
                Cause::required("spec.selector", ""),
                Cause::invalid(
                    "spec.replicas",
                    &json!(-1),
                    "must be greater than or equal to 0",
                ),
            ],
        );
        assert_eq!(
            two.message,
            "Deployment.apps \"web\" is invalid: [spec.selector: Required value, spec.replicas: \
             Invalid value: -1: must be greater than or equal to 0]"
        );
        let status = two.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["details"]["causes"][1]["field"], "spec.replicas");
    }

    #[test]
    fn go_repr_prints_maps_like_go() {
        assert_eq!(
            go_repr(&json!({"app": "web"})),
            "map[string]string{\"app\":\"web\"}"
        );
        assert_eq!(go_repr(&json!("x")), "\"x\"");
    }

    #[test]
    fn not_found_names_the_qualified_resource() {
        let pods = resources::by_plural("", "v1", "pods").unwrap();
        assert_eq!(
            ApiError::not_found(pods, "p").message,
            "pods \"p\" not found"
        );
        let rs = resources::by_plural("apps", "v1", "replicasets").unwrap();
        assert_eq!(
            ApiError::not_found(rs, "r").message,
            "replicasets.apps \"r\" not found"
        );
    }
}
