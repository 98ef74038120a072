//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): what the apiextensions server does
//! with a CRD object, so that custom resources are served from CRDs as on a real cluster.
//!
//! Start at [`types_of`]: a CRD object → the [`ResourceType`]s of its served versions (and of
//! its storage version). The store registers them in its
//! [`Registry`](crate::resources::Registry) whenever a CRD is written, and on delete removes
//! them together with every object of the kind (`store.rs`). [`default`], [`validate`] and
//! [`set_status`] are the admission steps: kubesim sets `acceptedNames` and the
//! `NamesAccepted` and `Established` conditions at once, where a real server's controllers set
//! them a moment later. [`bundled`] are the CRDs a simulator installs at start (Gateway API
//! HTTPRoute, Istio VirtualService), from `kubesim/crds/`.
//!
//! Every part of kubesim holds `&'static ResourceType`, so a CRD's types are leaked; [`intern`]
//! leaks each distinct definition once and hands out the same entry again (re-creating a CRD,
//! or another simulator in the process installing the same CRDs), so memory grows with the
//! number of distinct definitions, not with the number of writes.

use std::sync::{Mutex, PoisonError};

use serde_json::{Value, json};

use crate::resources::{PrinterColumn, ResourceType, ScalePaths};
use crate::status::Cause;
use crate::validate::{DNS1035_MSG, is_dns1035, is_subdomain};

/// The CRDs every simulator installs unless told not to (`SimConfig::bundled_crds`).
const BUNDLED: [(&str, &str); 2] = [
    (
        "crds/gateway.networking.k8s.io_httproutes.yaml",
        include_str!("../crds/gateway.networking.k8s.io_httproutes.yaml"),
    ),
    (
        "crds/networking.istio.io_virtualservices.yaml",
        include_str!("../crds/networking.istio.io_virtualservices.yaml"),
    ),
];

/// The bundled CRD objects (Gateway API HTTPRoute, Istio VirtualService).
pub fn bundled() -> Vec<Value> {
    BUNDLED
        .iter()
        .flat_map(|(origin, text)| {
            crate::sim::parse_manifests(text, origin).expect("the bundled CRDs are valid YAML")
        })
        .collect()
}

/// Whether `rt` is the CustomResourceDefinition resource itself.
pub fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition"
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn versions(crd: &Value) -> Vec<Value> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `SetDefaults_CustomResourceDefinition`: `singular` (the lowercased kind), `listKind`
/// (`<Kind>List`) and `conversion.strategy: None`.
pub fn default(crd: &mut Value) {
    let kind = text(crd, "/spec/names/kind").to_owned();
    let Some(names) = crd
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if names.get("singular").is_none_or(|s| s.as_str() == Some("")) && !kind.is_empty() {
        names.insert("singular".into(), json!(kind.to_lowercase()));
    }
    if names.get("listKind").is_none_or(|s| s.as_str() == Some("")) && !kind.is_empty() {
        names.insert("listKind".into(), json!(format!("{kind}List")));
    }
    if let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry("conversion")
            .or_insert_with(|| json!({"strategy": "None"}));
    }
}

const COLUMN_TYPES: [&str; 5] = ["integer", "number", "string", "boolean", "date"];

/// The apiserver's checks of a CRD (`ValidateCustomResourceDefinition`, the common ones):
/// names, group, scope, exactly one storage version, schemas, printer columns; on update of an
/// established CRD, `spec.scope` and `spec.names.kind` are immutable.
pub fn validate(crd: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    let group = text(crd, "/spec/group");
    let plural = text(crd, "/spec/names/plural");
    if group.is_empty() {
        out.push(Cause::required("spec.group", ""));
    } else if !is_subdomain(group) || !group.contains('.') {
        out.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    let name = text(crd, "/metadata/name");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        out.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    for field in ["plural", "singular", "kind", "listKind"] {
        let value = text(crd, &format!("/spec/names/{field}"));
        let path = format!("spec.names.{field}");
        let lowered = value.to_lowercase();
        let checked = if matches!(field, "kind" | "listKind") {
            lowered.as_str()
        } else {
            value
        };
        if value.is_empty() {
            if matches!(field, "plural" | "kind") {
                out.push(Cause::required(&path, ""));
            }
        } else if !is_dns1035(checked) {
            out.push(Cause::invalid(&path, &json!(value), DNS1035_MSG));
        }
    }
    for field in ["shortNames", "categories"] {
        for (i, v) in strings(crd, &format!("/spec/names/{field}"))
            .iter()
            .enumerate()
        {
            if !is_dns1035(v) {
                out.push(Cause::invalid(
                    &format!("spec.names.{field}[{i}]"),
                    &json!(v),
                    DNS1035_MSG,
                ));
            }
        }
    }
    match text(crd, "/spec/scope") {
        "" => out.push(Cause::required("spec.scope", "")),
        "Cluster" | "Namespaced" => {}
        other => out.push(Cause::not_supported(
            "spec.scope",
            &json!(other),
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = versions(crd);
    if versions.is_empty() {
        out.push(Cause::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    } else if versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count()
        != 1
    {
        let names: Vec<&str> = versions.iter().map(|v| text(v, "/name")).collect();
        out.push(Cause::invalid(
            "spec.versions",
            &json!(names),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let version = text(v, "/name");
        if version.is_empty() {
            out.push(Cause::required(&format!("{at}.name"), ""));
        } else if !is_dns1035(version) {
            out.push(Cause::invalid(
                &format!("{at}.name"),
                &json!(version),
                DNS1035_MSG,
            ));
        } else if seen.contains(&version) {
            out.push(Cause::duplicate(&format!("{at}.name"), &json!(version)));
        }
        seen.push(version);
        if !v
            .pointer("/schema/openAPIV3Schema")
            .is_some_and(Value::is_object)
        {
            out.push(Cause::required(
                &format!("{at}.schema.openAPIV3Schema"),
                "schemas are required",
            ));
        }
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, c) in columns.iter().enumerate() {
            let at = format!("{at}.additionalPrinterColumns[{j}]");
            if text(c, "/name").is_empty() {
                out.push(Cause::required(&format!("{at}.name"), ""));
            }
            match text(c, "/type") {
                "" => out.push(Cause::required(&format!("{at}.type"), "")),
                t if COLUMN_TYPES.contains(&t) => {}
                t => out.push(Cause::not_supported(
                    &format!("{at}.type"),
                    &json!(t),
                    &COLUMN_TYPES,
                )),
            }
            simple_json_path(text(c, "/jsonPath"), &format!("{at}.jsonPath"), &mut out);
        }
        if let Some(scale) = v.pointer("/subresources/scale").filter(|s| s.is_object()) {
            let at = format!("{at}.subresources.scale");
            for field in ["specReplicasPath", "statusReplicasPath"] {
                simple_json_path(
                    text(scale, &format!("/{field}")),
                    &format!("{at}.{field}"),
                    &mut out,
                );
            }
        }
    }
    if let Some(old) = old.filter(|o| established(o)) {
        for (pointer, field) in [
            ("/spec/scope", "spec.scope"),
            ("/spec/names/kind", "spec.names.kind"),
        ] {
            let new = text(crd, pointer);
            if new != text(old, pointer) {
                out.push(Cause::invalid(field, &json!(new), "field is immutable"));
            }
        }
    }
    out
}

/// `validateSimpleJSONPath`: printer columns and scale paths start with a dot.
fn simple_json_path(path: &str, field: &str, out: &mut Vec<Cause>) {
    if path.is_empty() {
        out.push(Cause::required(field, ""));
    } else if !path.starts_with('.') {
        out.push(Cause::invalid(
            field,
            &json!(path),
            "must be a simple json path starting with .",
        ));
    }
}

fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
}

/// Sets the status the apiextensions controllers would: `acceptedNames` (the spec's names),
/// `NamesAccepted` and `Established` True (their `lastTransitionTime` kept from `old` while
/// they stay True), and `storedVersions` (the ones before, plus the storage version).
pub fn set_status(crd: &mut Value, old: Option<&Value>, now: &str) {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = json!({});
    for field in [
        "plural",
        "singular",
        "kind",
        "listKind",
        "shortNames",
        "categories",
    ] {
        match names.get(field) {
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(v) if !v.is_null() => accepted[field] = v.clone(),
            _ => {}
        }
    }
    let since = |ty: &str| {
        old.and_then(|o| o.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty && c["status"] == "True"))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now))
    };
    let conditions = json!([
        {"type": "NamesAccepted", "status": "True", "lastTransitionTime": since("NamesAccepted"),
         "reason": "NoConflicts", "message": "no conflicts found"},
        {"type": "Established", "status": "True", "lastTransitionTime": since("Established"),
         "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
    ]);
    let mut stored = old
        .map(|o| strings(o, "/status/storedVersions"))
        .unwrap_or_default();
    if let Some(v) = versions(crd)
        .iter()
        .find(|v| v["storage"] == json!(true))
        .map(|v| text(v, "/name").to_owned())
        && !stored.contains(&v)
    {
        stored.push(v);
    }
    crd["status"] =
        json!({"acceptedNames": accepted, "conditions": conditions, "storedVersions": stored});
}

/// A CRD version's resource type in owned form: the key under which it is interned.
#[derive(Debug, Clone, PartialEq)]
struct TypeSpec {
    group: String,
    version: String,
    plural: String,
    singular: String,
    kind: String,
    namespaced: bool,
    short_names: Vec<String>,
    categories: Vec<String>,
    subresources: Vec<&'static str>,
    /// The CRD's name: objects of every version share this storage.
    storage: String,
    storage_version: String,
    columns: Vec<ColumnSpec>,
    scale: Option<(String, String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
struct ColumnSpec {
    name: String,
    type_: String,
    format: String,
    description: String,
    priority: i64,
    json_path: String,
}

/// The description `kubectl explain` gives `metadata.creationTimestamp` (the default `Age`
/// column's).
const CREATION_TIMESTAMP_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn column_specs(version: &Value) -> Vec<ColumnSpec> {
    let columns: Vec<ColumnSpec> = version
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let json_path = text(c, "/jsonPath").to_owned();
            let description = match text(c, "/description") {
                "" => {
                    format!("Custom resource definition column (in JSONPath format): {json_path}")
                }
                d => d.to_owned(),
            };
            ColumnSpec {
                name: text(c, "/name").to_owned(),
                type_: text(c, "/type").to_owned(),
                format: text(c, "/format").to_owned(),
                description,
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                json_path,
            }
        })
        .collect();
    if !columns.is_empty() {
        return columns;
    }
    // `serveDefaultColumnsIfEmpty`.
    vec![ColumnSpec {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        description: CREATION_TIMESTAMP_DOC.into(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    }]
}

/// The types a CRD defines: its served versions (in the order they were listed) and its storage
/// version (served or not). `None` when it names no storage version or lacks names.
pub fn types_of(crd: &Value) -> Option<(Vec<&'static ResourceType>, &'static ResourceType)> {
    let names = |field: &str| text(crd, &format!("/spec/names/{field}")).to_owned();
    let (group, plural, kind) = (text(crd, "/spec/group"), names("plural"), names("kind"));
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return None;
    }
    let versions = versions(crd);
    let storage_version = versions
        .iter()
        .find(|v| v["storage"] == json!(true))
        .map(|v| text(v, "/name").to_owned())?;
    let singular = match names("singular") {
        s if s.is_empty() => kind.to_lowercase(),
        s => s,
    };
    let spec_of = |v: &Value| {
        let mut subresources = Vec::new();
        if v.pointer("/subresources/status")
            .is_some_and(Value::is_object)
        {
            subresources.push("status");
        }
        let scale = v
            .pointer("/subresources/scale")
            .filter(|s| s.is_object())
            .map(|s| {
                subresources.push("scale");
                let path = text(s, "/labelSelectorPath");
                (
                    text(s, "/specReplicasPath").to_owned(),
                    text(s, "/statusReplicasPath").to_owned(),
                    (!path.is_empty()).then(|| path.to_owned()),
                )
            });
        TypeSpec {
            group: group.to_owned(),
            version: text(v, "/name").to_owned(),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced: text(crd, "/spec/scope") != "Cluster",
            short_names: strings(crd, "/spec/names/shortNames"),
            categories: strings(crd, "/spec/names/categories"),
            subresources,
            storage: format!("{plural}.{group}"),
            storage_version: storage_version.clone(),
            columns: column_specs(v),
            scale,
        }
    };
    let served = versions
        .iter()
        .filter(|v| v["served"] == json!(true))
        .map(|v| intern(spec_of(v)))
        .collect();
    let stored = versions
        .iter()
        .find(|v| v["storage"] == json!(true))
        .map(|v| intern(spec_of(v)))?;
    Some((served, stored))
}

/// Every CRD-defined type leaked so far in this process, by definition.
static INTERNED: Mutex<Vec<(TypeSpec, &'static ResourceType)>> = Mutex::new(Vec::new());

/// The one `&'static ResourceType` for a definition: leaked the first time it is seen.
fn intern(spec: TypeSpec) -> &'static ResourceType {
    let mut pool = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, rt)) = pool.iter().find(|(s, _)| *s == spec) {
        return rt;
    }
    let rt = leak(&spec);
    pool.push((spec, rt));
    rt
}

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn leak_strs(v: &[String]) -> &'static [&'static str] {
    Box::leak(
        v.iter()
            .map(|s| leak_str(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

fn leak(spec: &TypeSpec) -> &'static ResourceType {
    let columns: Vec<PrinterColumn> = spec
        .columns
        .iter()
        .map(|c| PrinterColumn {
            name: leak_str(&c.name),
            type_: leak_str(&c.type_),
            format: leak_str(&c.format),
            description: leak_str(&c.description),
            priority: c.priority,
            json_path: leak_str(&c.json_path),
        })
        .collect();
    Box::leak(Box::new(ResourceType {
        group: leak_str(&spec.group),
        version: leak_str(&spec.version),
        plural: leak_str(&spec.plural),
        singular: leak_str(&spec.singular),
        kind: leak_str(&spec.kind),
        namespaced: spec.namespaced,
        short_names: leak_strs(&spec.short_names),
        categories: leak_strs(&spec.categories),
        subresources: Box::leak(spec.subresources.clone().into_boxed_slice()),
        builtin: false,
        storage: leak_str(&spec.storage),
        // Custom resources always carry metadata.generation.
        generation: true,
        storage_version: leak_str(&spec.storage_version),
        printer_columns: Box::leak(columns.into_boxed_slice()),
        scale: spec
            .scale
            .as_ref()
            .map(|(spec_replicas, status_replicas, selector)| ScalePaths {
                spec_replicas: leak_str(spec_replicas),
                status_replicas: leak_str(status_replicas),
                label_selector: selector.as_deref().map(leak_str),
            }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {"name": "v1alpha1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}},
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                 "additionalPrinterColumns": [{"name": "Color", "type": "string", "jsonPath": ".spec.color"}]},
                {"name": "v0", "served": false, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}}
            ]}})
    }

    #[test]
    fn a_crd_defines_its_served_versions_once() {
        let mut crd = widget();
        default(&mut crd);
        assert!(
            validate(&crd, None).is_empty(),
            "{:?}",
            validate(&crd, None)
        );
        let (served, stored) = types_of(&crd).unwrap();
        let versions: Vec<&str> = served.iter().map(|t| t.version).collect();
        assert_eq!(versions, ["v1alpha1", "v1"]);
        let v1 = served[1];
        assert!(std::ptr::eq(v1, stored));
        assert_eq!(
            (v1.singular, v1.storage, v1.storage_version, v1.builtin),
            ("widget", "widgets.example.com", "v1", false)
        );
        assert_eq!(v1.subresources, ["status", "scale"]);
        assert_eq!(v1.printer_columns[0].json_path, ".spec.color");
        assert_eq!(
            served[0].printer_columns[0].name, "Age",
            "the default column"
        );
        let (again, _) = types_of(&crd).unwrap();
        assert!(
            std::ptr::eq(again[1], v1),
            "the same definition reuses its entry"
        );
    }

    #[test]
    fn status_accepts_the_names_and_keeps_transition_times() {
        let mut crd = widget();
        default(&mut crd);
        set_status(&mut crd, None, "2026-01-01T00:00:00Z");
        assert_eq!(crd["status"]["acceptedNames"]["listKind"], "WidgetList");
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
        let old = crd.clone();
        crd["spec"]["versions"][0]["storage"] = json!(true);
        crd["spec"]["versions"][1]["storage"] = json!(false);
        set_status(&mut crd, Some(&old), "2026-02-01T00:00:00Z");
        assert_eq!(
            crd["status"]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(crd["status"]["storedVersions"], json!(["v1", "v1alpha1"]));
    }

    #[test]
    fn invalid_crds_name_their_fields() {
        let mut crd = widget();
        crd["metadata"]["name"] = json!("gadgets.example.com");
        crd["spec"]["scope"] = json!("Global");
        crd["spec"]["versions"][0]["storage"] = json!(true);
        crd["spec"]["versions"][1]["additionalPrinterColumns"][0]["jsonPath"] = json!("spec.color");
        let fields: Vec<String> = validate(&crd, None).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.scope",
                "spec.versions",
                "spec.versions[1].additionalPrinterColumns[0].jsonPath"
            ]
        );
        let mut old = widget();
        set_status(&mut old, None, "2026-01-01T00:00:00Z");
        let mut new = widget();
        new["spec"]["scope"] = json!("Cluster");
        let causes = validate(&new, Some(&old));
        assert_eq!(
            causes[0].message,
            "Invalid value: \"Cluster\": field is immutable"
        );
    }

    #[test]
    fn the_bundled_crds_are_valid() {
        let crds = bundled();
        assert_eq!(crds.len(), 2);
        for mut crd in crds {
            default(&mut crd);
            assert!(
                validate(&crd, None).is_empty(),
                "{:?}",
                validate(&crd, None)
            );
            assert!(types_of(&crd).is_some());
        }
    }
}
