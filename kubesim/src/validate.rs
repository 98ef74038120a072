//! Validation of clearly invalid objects, answered with `422 Invalid` and field causes.
//!
//! Start at [`validate`]: it returns every problem found, with the apiserver's field paths and
//! wording (names, Deployment/ReplicaSet selectors and replicas, pod containers, service ports).

use serde_json::{Value, json};

use crate::resources::ResourceType;
use crate::selectors::LabelSelector;
use crate::status::Cause;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub(crate) const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a DNS-1035 label (lowercase, starts with a letter, at most 63 characters).
pub(crate) fn is_dns1035(s: &str) -> bool {
    s.len() <= 63 && is_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Whether `s` is a DNS-1123 subdomain (the rule for most object names).
pub fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// The name problems of `name` for resource `rt` (empty when it is fine).
pub fn name_causes(rt: &ResourceType, name: &str) -> Vec<Cause> {
    let field = "metadata.name";
    let v = json!(name);
    let mut out = Vec::new();
    match rt.kind {
        "Namespace" => {
            if name.len() > 63 {
                out.push(Cause::invalid(
                    field,
                    &v,
                    "must be no more than 63 characters",
                ));
            }
            if !is_label(name) {
                out.push(Cause::invalid(field, &v, LABEL_MSG));
            }
        }
        "Service" => {
            if name.len() > 63 {
                out.push(Cause::invalid(
                    field,
                    &v,
                    "must be no more than 63 characters",
                ));
            }
            if !is_label(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.push(Cause::invalid(field, &v, DNS1035_MSG));
            }
        }
        _ => {
            if name.len() > 253 {
                out.push(Cause::invalid(
                    field,
                    &v,
                    "must be no more than 253 characters",
                ));
            }
            if !is_subdomain(name) {
                out.push(Cause::invalid(field, &v, SUBDOMAIN_MSG));
            }
        }
    }
    out
}

/// Every validation problem of `obj` (already defaulted). `old` is the stored object on update.
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    match rt.kind {
        "Deployment" | "ReplicaSet" => workload(obj, old, &mut out),
        "Pod" => {
            if let Some(spec) = obj.get("spec") {
                pod_spec(spec, "spec", &mut out);
            }
        }
        "Service" => service(obj, &mut out),
        _ if crate::crd::is_crd(rt) => out.extend(crate::crd::validate(obj, old)),
        _ => {}
    }
    out
}

fn workload(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        out.push(Cause::invalid(
            "spec.replicas",
            &json!(r),
            "must be greater than or equal to 0",
        ));
    }
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    match spec.get("selector").filter(|s| !s.is_null()) {
        None => {
            out.push(Cause::required("spec.selector", ""));
            out.push(Cause::invalid(
                "spec.template.metadata.labels",
                &template_labels,
                "`selector` does not match template `labels`",
            ));
        }
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
                && sel
                    .get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(|m| m.is_empty());
            if empty {
                out.push(Cause::invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                ));
            }
            match LabelSelector::from_object(sel) {
                Ok(parsed) if !empty && !parsed.matches(Some(&template_labels)) => {
                    out.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        &template_labels,
                        "`selector` does not match template `labels`",
                    ));
                }
                Ok(_) => {}
                Err(e) => out.push(Cause::invalid("spec.selector", sel, &e.to_string())),
            }
            if let Some(old_sel) = old.and_then(|o| o.pointer("/spec/selector"))
                && old_sel != sel
            {
                out.push(Cause::invalid("spec.selector", sel, "field is immutable"));
            }
        }
    }
    match spec.pointer("/template/spec") {
        Some(pod) => pod_spec(pod, "spec.template.spec", out),
        None => out.push(Cause::required("spec.template.spec.containers", "")),
    }
}

fn pod_spec(spec: &Value, path: &str, out: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => out.push(Cause::required(&format!("{path}.containers"), "")),
        Some(list) if list.is_empty() => {
            out.push(Cause::required(&format!("{path}.containers"), ""))
        }
        Some(list) => {
            for (i, c) in list.iter().enumerate() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() {
                    out.push(Cause::required(&format!("{path}.containers[{i}].name"), ""));
                } else if !is_label(name) {
                    out.push(Cause::invalid(
                        &format!("{path}.containers[{i}].name"),
                        &json!(name),
                        LABEL_MSG,
                    ));
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .is_empty()
                {
                    out.push(Cause::required(
                        &format!("{path}.containers[{i}].image"),
                        "",
                    ));
                }
            }
        }
    }
}

fn service(obj: &Value, out: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get("ports").and_then(Value::as_array);
    if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
        out.push(Cause::required("spec.ports", ""));
    }
    for (i, p) in ports.into_iter().flatten().enumerate() {
        match p.get("port").and_then(Value::as_i64) {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => out.push(Cause::invalid(
                &format!("spec.ports[{i}].port"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            )),
            None => out.push(Cause::required(&format!("spec.ports[{i}].port"), "")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn deploy() -> &'static ResourceType {
        resources::by_kind("apps/v1", "Deployment").unwrap()
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(name_causes(deploy(), "web-1.v2").is_empty());
        assert_eq!(name_causes(deploy(), "Web_1").len(), 1);
        let svc = resources::by_kind("v1", "Service").unwrap();
        assert_eq!(name_causes(svc, "1web").len(), 1);
        let ns = resources::by_kind("v1", "Namespace").unwrap();
        assert_eq!(name_causes(ns, "a.b").len(), 1);
    }

    #[test]
    fn deployment_problems_are_each_reported() {
        let d = json!({"spec": {"replicas": -1, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}});
        let fields: Vec<String> = validate(deploy(), &d, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.replicas",
                "spec.selector",
                "spec.template.metadata.labels"
            ]
        );
        let mismatch = json!({"spec": {"selector": {"matchLabels": {"app": "api"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app"}]}}}});
        let fields: Vec<String> = validate(deploy(), &mismatch, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.template.metadata.labels",
                "spec.template.spec.containers[0].image"
            ]
        );
        let ok = json!({"spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}});
        assert!(validate(deploy(), &ok, None).is_empty());
        let changed = json!({"spec": {"selector": {"matchLabels": {"app": "x"}}}});
        assert!(
            validate(deploy(), &ok, Some(&changed))
                .iter()
                .any(|c| c.message.contains("immutable"))
        );
    }

    #[test]
    fn services_need_ports() {
        let svc = resources::by_kind("v1", "Service").unwrap();
        assert_eq!(
            validate(svc, &json!({"spec": {}}), None)[0].field,
            "spec.ports"
        );
        assert_eq!(
            validate(svc, &json!({"spec": {"ports": [{"port": 70000}]}}), None)[0].field,
            "spec.ports[0].port"
        );
    }
}
