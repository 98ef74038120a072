//! `meta.k8s.io/v1 Table` responses: what `kubectl get` prints, computed server-side as the
//! apiserver's printers do (`pkg/printers/internalversion/printers.go`, always `Wide`).
//!
//! Start at [`to_table`]. Each built-in resource with special columns has its arm in
//! `columns`/`cells`; a custom resource gets `Name` plus its CRD version's
//! `additionalPrinterColumns` (JSONPath on the object, as the apiextensions server's
//! `tableconvertor` renders them; `Age` when the CRD has none); everything else `NAME AGE`.

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::resources::{PrinterColumn, ResourceType};
use crate::selectors::format_label_selector;

/// The Content-Type of a Table answer.
pub const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// What each row carries as `object` (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    /// From the query parameter (default `Metadata`).
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// `duration.HumanDuration`, the AGE column format.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn since(ts: Option<&Value>, now: Timestamp) -> String {
    match ts
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Timestamp>().ok())
    {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn age(obj: &Value, now: Timestamp) -> String {
    since(obj.pointer("/metadata/creationTimestamp"), now)
}

fn col(name: &str, ty: &str, priority: i32) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn n(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn name(obj: &Value) -> Value {
    json!(s(obj, "/metadata/name"))
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn containers_and_images(obj: &Value, pointer: &str) -> (String, String) {
    let list = obj
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = list.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = list.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// `metadata.name`'s description, the `Name` column's in custom resource Tables.
const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// `metadata.creationTimestamp`'s description.
const CREATED_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn columns(rt: &ResourceType) -> Vec<Value> {
    if !rt.printer_columns.is_empty() {
        let mut out = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DOC, "priority": 0}),
        ];
        out.extend(rt.printer_columns.iter().map(|c| {
            json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
        }));
        return out;
    }
    match (rt.group, rt.kind) {
        ("", "Pod") => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        ("apps", "Deployment") => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("", "Service") => vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
            col("Selector", "string", 1),
        ],
        ("", "Node") => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        (_, "Event") => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Subobject", "string", 1),
            col("Source", "string", 1),
            col("Message", "string", 0),
            col("First Seen", "string", 1),
            col("Count", "string", 1),
            col("Name", "string", 1),
        ],
        ("", "Namespace") => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Age", "string", 0),
        ],
        ("", "ConfigMap") => vec![
            col("Name", "string", 0),
            col("Data", "string", 0),
            col("Age", "string", 0),
        ],
        ("", "Endpoints") => vec![
            col("Name", "string", 0),
            col("Endpoints", "string", 0),
            col("Age", "string", 0),
        ],
        ("networking.k8s.io", "NetworkPolicy") => {
            vec![
                col("Name", "string", 0),
                col("Pod-Selector", "string", 0),
                col("Age", "string", 0),
            ]
        }
        ("", "ResourceQuota") => vec![
            col("Name", "string", 0),
            col("Age", "string", 0),
            col("Request", "string", 0),
            col("Limit", "string", 0),
        ],
        // The apiserver's default table convertor.
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DOC, "priority": 0}),
            json!({"name": "Created At", "type": "date", "format": "", "description": CREATED_DOC, "priority": 0}),
        ],
        _ => vec![col("Name", "string", 0), col("Age", "string", 0)],
    }
}

fn cells(rt: &ResourceType, obj: &Value, now: Timestamp) -> Vec<Value> {
    if !rt.printer_columns.is_empty() {
        let mut out = vec![name(obj)];
        out.extend(rt.printer_columns.iter().map(|c| custom_cell(c, obj, now)));
        return out;
    }
    match (rt.group, rt.kind) {
        ("", "Pod") => pod_cells(obj, now),
        ("apps", "Deployment") => {
            let (c, i) = containers_and_images(obj, "/spec/template/spec/containers");
            vec![
                name(obj),
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    n(obj, "/spec/replicas")
                )),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                json!(age(obj, now)),
                json!(c),
                json!(i),
                json!(format_label_selector(obj.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (c, i) = containers_and_images(obj, "/spec/template/spec/containers");
            vec![
                name(obj),
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                json!(age(obj, now)),
                json!(c),
                json!(i),
                json!(format_label_selector(obj.pointer("/spec/selector"))),
            ]
        }
        ("", "Service") => service_cells(obj, now),
        ("", "Node") => node_cells(obj, now),
        (_, "Event") => event_cells(obj, now),
        ("", "Namespace") => vec![
            name(obj),
            json!(s(obj, "/status/phase")),
            json!(age(obj, now)),
        ],
        ("", "ConfigMap") => {
            let count = |p: &str| {
                obj.pointer(p)
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
            };
            vec![
                name(obj),
                json!(count("/data") + count("/binaryData")),
                json!(age(obj, now)),
            ]
        }
        ("", "Endpoints") => vec![name(obj), json!(endpoints(obj)), json!(age(obj, now))],
        ("networking.k8s.io", "NetworkPolicy") => {
            let sel = obj.pointer("/spec/podSelector");
            let empty = sel.is_none_or(|v| {
                v.as_object().is_none_or(|m| {
                    m.values().all(|x| {
                        x.as_object().is_some_and(|o| o.is_empty())
                            || x.as_array().is_some_and(|a| a.is_empty())
                    })
                })
            });
            let text = if empty {
                "<none>".to_string()
            } else {
                format_label_selector(sel)
            };
            vec![name(obj), json!(text), json!(age(obj, now))]
        }
        ("", "ResourceQuota") => {
            let (req, lim) = quota(obj);
            vec![name(obj), json!(age(obj, now)), json!(req), json!(lim)]
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name(obj), json!(s(obj, "/metadata/creationTimestamp"))]
        }
        _ => vec![name(obj), json!(age(obj, now))],
    }
}

/// One printer column's cell (`tableconvertor.go`): the first value the JSONPath finds, as
/// the column's type (`null` when there is none, which kubectl prints as `<none>`). A `string`
/// column prints a list or map as compact JSON, as client-go's jsonpath does (HTTPRoute
/// HOSTNAMES: `["web.example.com"]`); a `date` column is an age.
fn custom_cell(column: &PrinterColumn, obj: &Value, now: Timestamp) -> Value {
    let Some(value) = crate::jsonpath::first(column.json_path, obj).filter(|v| !v.is_null()) else {
        return Value::Null;
    };
    match (column.type_, value) {
        ("string", Value::String(text)) => json!(text),
        ("string", Value::Array(_) | Value::Object(_)) => json!(go_json(value)),
        ("string", Value::Number(n)) => json!(go_number(n)),
        ("string", Value::Bool(b)) => json!(b.to_string()),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(text)) => match text.parse::<Timestamp>() {
            Ok(t) => json!(human_duration(now.as_second() - t.as_second())),
            Err(_) => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

/// Compact JSON as Go's `json.Marshal` writes it (HTML characters escaped).
fn go_json(value: &Value) -> String {
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// A JSON number as Go's `fmt` prints the int64 or float64 it decodes to.
fn go_number(n: &serde_json::Number) -> String {
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i.to_string(),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
        _ => n.to_string(),
    }
}

fn pod_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let statuses = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, |c| c.len());
    let mut reason = s(obj, "/status/phase").to_string();
    if !s(obj, "/status/reason").is_empty() {
        reason = s(obj, "/status/reason").to_string();
    }
    let mut restarts = 0;
    let mut ready = 0;
    let mut has_running = false;
    let mut last_restart: Option<Timestamp> = None;
    for c in statuses.iter().rev() {
        restarts += n(c, "/restartCount");
        if let Some(t) = c
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
            && last_restart.is_none_or(|l| t > l)
        {
            last_restart = Some(t);
        }
        if !s(c, "/state/waiting/reason").is_empty() {
            reason = s(c, "/state/waiting/reason").to_string();
        } else if c.pointer("/state/terminated").is_some() {
            let r = s(c, "/state/terminated/reason");
            reason = if !r.is_empty() {
                r.to_string()
            } else if n(c, "/state/terminated/signal") != 0 {
                format!("Signal:{}", n(c, "/state/terminated/signal"))
            } else {
                format!("ExitCode:{}", n(c, "/state/terminated/exitCode"))
            };
        } else if c.pointer("/state/running").is_some() && c.get("ready") == Some(&json!(true)) {
            has_running = true;
            ready += 1;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = "Terminating".into();
    }
    let restarts_text = match last_restart {
        Some(t) if restarts > 0 => format!(
            "{restarts} ({} ago)",
            human_duration(now.as_second() - t.as_second())
        ),
        _ => restarts.to_string(),
    };
    let ip = s(obj, "/status/podIP");
    let node = s(obj, "/spec/nodeName");
    let nominated = s(obj, "/status/nominatedNodeName");
    let gates = obj
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or(0, |g| g.len());
    vec![
        name(obj),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_text),
        json!(age(obj, now)),
        json!(if ip.is_empty() { "<none>" } else { ip }),
        json!(if node.is_empty() { "<none>" } else { node }),
        json!(if nominated.is_empty() {
            "<none>"
        } else {
            nominated
        }),
        json!(if gates == 0 {
            "<none>".to_string()
        } else {
            format!("0/{gates}")
        }),
    ]
}

fn service_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let ty = s(obj, "/spec/type");
    let cluster_ip = or_none(s(obj, "/spec/clusterIP").to_string());
    let external = match ty {
        "LoadBalancer" => {
            let ingress = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ips: Vec<&str> = ingress
                .iter()
                .map(|i| {
                    if s(i, "/ip").is_empty() {
                        s(i, "/hostname")
                    } else {
                        s(i, "/ip")
                    }
                })
                .collect();
            if ips.is_empty() {
                "<pending>".to_string()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => s(obj, "/spec/externalName").to_string(),
        _ => {
            let ips: Vec<&str> = obj
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            or_none(ips.join(","))
        }
    };
    let ports: Vec<String> = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let proto = s(p, "/protocol");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if np > 0 => format!("{}:{np}/{proto}", n(p, "/port")),
                        _ => format!("{}/{proto}", n(p, "/port")),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let selector: Vec<String> = obj
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    vec![
        name(obj),
        json!(ty),
        json!(cluster_ip),
        json!(external),
        json!(or_none(ports.join(","))),
        json!(age(obj, now)),
        json!(or_none(selector.join(","))),
    ]
}

fn node_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut status: Vec<String> = Vec::new();
    if let Some(ready) = conditions.iter().find(|c| s(c, "/type") == "Ready") {
        status.push(match s(ready, "/status") {
            "True" => "Ready".into(),
            "False" => "NotReady".into(),
            _ => "Unknown".into(),
        });
    } else {
        status.push("Unknown".into());
    }
    if obj.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        Some(role.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().map(str::to_string)
                    } else {
                        None
                    }
                })
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let address = |ty: &str| {
        obj.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| s(x, "/type") == ty))
            .map(|x| s(x, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        name(obj),
        json!(status.join(",")),
        json!(or_none(roles.join(","))),
        json!(age(obj, now)),
        json!(s(obj, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(or_none(s(obj, "/status/nodeInfo/osImage").to_string())),
        json!(or_none(
            s(obj, "/status/nodeInfo/kernelVersion").to_string()
        )),
        json!(or_none(
            s(obj, "/status/nodeInfo/containerRuntimeVersion").to_string()
        )),
    ]
}

fn event_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    // Served events may be core/v1 or events.k8s.io/v1; read either spelling.
    let pick = |a: &str, b: &str| {
        obj.pointer(a)
            .or_else(|| obj.pointer(b))
            .filter(|v| !v.is_null())
    };
    let first_ts =
        pick("/firstTimestamp", "/deprecatedFirstTimestamp").or_else(|| obj.pointer("/eventTime"));
    let first = since(first_ts, now);
    let last = match obj.pointer("/series/lastObservedTime") {
        Some(t) => since(Some(t), now),
        None => match pick("/lastTimestamp", "/deprecatedLastTimestamp") {
            Some(t) => since(Some(t), now),
            None => first.clone(),
        },
    };
    let count = obj
        .pointer("/series/count")
        .and_then(Value::as_i64)
        .or_else(|| pick("/count", "/deprecatedCount").and_then(Value::as_i64))
        .filter(|c| *c > 0)
        .unwrap_or(1);
    let involved = pick("/involvedObject", "/regarding")
        .cloned()
        .unwrap_or(json!({}));
    let kind = s(&involved, "/kind").to_lowercase();
    let target = if s(&involved, "/name").is_empty() {
        kind
    } else {
        format!("{kind}/{}", s(&involved, "/name"))
    };
    let source = pick("/source", "/deprecatedSource")
        .cloned()
        .unwrap_or(json!({}));
    let mut src = s(&source, "/component").to_string();
    if src.is_empty() {
        src = s(obj, "/reportingComponent").to_string();
        if src.is_empty() {
            src = s(obj, "/reportingController").to_string();
        }
    }
    let host = if s(&source, "/host").is_empty() {
        s(obj, "/reportingInstance")
    } else {
        s(&source, "/host")
    };
    if !host.is_empty() {
        src = format!("{src}, {host}");
    }
    let message = pick("/message", "/note")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_string();
    vec![
        json!(last),
        json!(s(obj, "/type")),
        json!(s(obj, "/reason")),
        json!(target),
        json!(s(&involved, "/fieldPath")),
        json!(src),
        json!(message),
        json!(first),
        json!(count),
        name(obj),
    ]
}

fn endpoints(obj: &Value) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut total = 0;
    for subset in obj
        .pointer("/subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .pointer("/ports")
            .and_then(Value::as_array)
            .map(|p| p.iter().map(|x| n(x, "/port")).collect())
            .unwrap_or_default();
        for addr in subset
            .pointer("/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = s(addr, "/ip");
            if ports.is_empty() {
                total += 1;
                if out.len() < 3 {
                    out.push(ip.to_string());
                }
            }
            for p in &ports {
                total += 1;
                if out.len() < 3 {
                    out.push(format!("{ip}:{p}"));
                }
            }
        }
    }
    if out.is_empty() {
        return "<none>".into();
    }
    let mut text = out.join(",");
    if total > out.len() {
        text.push_str(&format!(" + {} more...", total - out.len()));
    }
    text
}

fn quota(obj: &Value) -> (String, String) {
    let hard = obj
        .pointer("/status/hard")
        .or_else(|| obj.pointer("/spec/hard"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let used = obj
        .pointer("/status/used")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let (mut req, mut lim) = (Vec::new(), Vec::new());
    for (k, v) in &hard {
        let u = used.get(k).and_then(Value::as_str).unwrap_or("0");
        let entry = format!(
            "{k}: {u}/{}",
            v.as_str().map_or_else(|| v.to_string(), str::to_string)
        );
        if k.starts_with("limits.") {
            lim.push(entry)
        } else {
            req.push(entry)
        }
    }
    (req.join(", "), lim.join(", "))
}

/// Renders objects (served form of `rt`) as a Table with one row each.
pub fn to_table(
    rt: &ResourceType,
    objs: &[Value],
    now: Timestamp,
    include: IncludeObject,
    list_meta: Value,
) -> Value {
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(rt, o, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))});
                }
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns(rt),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn human_duration_matches_apimachinery() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(400 * 86400), "400d");
    }

    #[test]
    fn deployment_rows_show_ready_over_desired() {
        let rt = resources::by_kind("apps/v1", "Deployment").unwrap();
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let d = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.0"}]}}}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let t = to_table(
            rt,
            &[d],
            now,
            IncludeObject::Metadata,
            json!({"resourceVersion": "7"}),
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["web", "2/3", 3, 2, "60s", "app", "nginx:1.0", "app=web"])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn pod_status_prefers_waiting_reasons() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running", "containerStatuses": [{"restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"finishedAt": "2026-01-01T00:00:50Z"}}}]}});
        let c = pod_cells(&p, now);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "3 (10s ago)");
    }

    #[test]
    fn custom_resources_show_their_printer_columns() {
        let crd = crate::crd::bundled()
            .into_iter()
            .find(|c| c["spec"]["group"] == "networking.istio.io")
            .unwrap();
        let (served, _) = crate::crd::types_of(&crd).unwrap();
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let vs = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"hosts": ["web.shop.svc", "a<b"]}});
        let t = to_table(served[0], &[vs], now, IncludeObject::None, json!({}));
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Gateways", "Hosts", "Age"]);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["web", null, "[\"web.shop.svc\",\"a\\u003cb\"]", "60s"])
        );
        let column = |type_: &'static str, json_path: &'static str| PrinterColumn {
            name: "X",
            type_,
            format: "",
            description: "",
            priority: 0,
            json_path,
        };
        let obj = json!({"spec": {"replicas": 3.0, "ratio": 0.5, "on": true, "when": "nope"}});
        assert_eq!(
            custom_cell(&column("integer", ".spec.replicas"), &obj, now),
            json!(3)
        );
        assert_eq!(
            custom_cell(&column("string", ".spec.replicas"), &obj, now),
            json!("3")
        );
        assert_eq!(
            custom_cell(&column("string", ".spec.ratio"), &obj, now),
            json!("0.5")
        );
        assert_eq!(
            custom_cell(&column("boolean", ".spec.on"), &obj, now),
            json!(true)
        );
        assert_eq!(
            custom_cell(&column("integer", ".spec.on"), &obj, now),
            Value::Null
        );
        assert_eq!(
            custom_cell(&column("date", ".spec.when"), &obj, now),
            json!("<invalid>")
        );
    }

    #[test]
    fn cordoned_nodes_show_scheduling_disabled() {
        let now = Timestamp::now();
        let node = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(node_cells(&node, now)[1], "Ready,SchedulingDisabled");
    }
}
