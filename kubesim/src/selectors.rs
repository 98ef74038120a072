//! Label and field selectors, as parsed from `?labelSelector=` / `?fieldSelector=`.
//!
//! Start at [`LabelSelector::parse`] (all operators: `=`, `==`, `!=`, `in`, `notin`, `key`,
//! `!key`) and [`FieldSelector::parse`]. [`format_label_selector`] prints a `LabelSelector`
//! object the way kubectl and the Table columns do (`app=web,tier in (a,b)`).

use serde_json::Value;

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

impl LabelSelector {
    /// Parses the query-string form, e.g. `app=web,tier in (a, b),!canary`.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector { reqs })
    }

    /// Builds a selector from a `LabelSelector` object (`matchLabels` + `matchExpressions`).
    pub fn from_object(sel: &Value) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                reqs.push((
                    k.clone(),
                    Op::Eq(v.as_str().unwrap_or_default().to_string()),
                ));
            }
        }
        for expr in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let values: Vec<String> = expr
                .get("values")
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let op = match expr
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::NotExists,
                other => {
                    return Err(SelectorError(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            reqs.push((key, op));
        }
        Ok(LabelSelector { reqs })
    }

    /// Whether this selects nothing-in-particular (matches everything).
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object with these labels (a JSON map or null) is selected.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|(key, op)| match op {
            Op::Eq(v) => get(key) == Some(v.as_str()),
            Op::NotEq(v) => get(key) != Some(v.as_str()),
            Op::In(vs) => get(key).is_some_and(|l| vs.iter().any(|v| v == l)),
            Op::NotIn(vs) => get(key).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Op::Exists => get(key).is_some(),
            Op::NotExists => get(key).is_none(),
        })
    }

    /// Whether an object's `metadata.labels` are selected.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels"))
    }
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_requirement(part: &str) -> Result<(String, Op), SelectorError> {
    let bad = || SelectorError(part.to_string());
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        valid_key(key).ok_or_else(bad)?;
        return Ok((key.to_string(), Op::NotExists));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok((
            valid_key(k.trim()).ok_or_else(bad)?,
            Op::NotEq(v.trim().to_string()),
        ));
    }
    if let Some((k, v)) = part.split_once("==") {
        return Ok((
            valid_key(k.trim()).ok_or_else(bad)?,
            Op::Eq(v.trim().to_string()),
        ));
    }
    if let Some((k, v)) = part.split_once('=') {
        return Ok((
            valid_key(k.trim()).ok_or_else(bad)?,
            Op::Eq(v.trim().to_string()),
        ));
    }
    // Set-based: `key in (a,b)` / `key notin (a,b)`.
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = valid_key(words[0]).ok_or_else(bad)?;
        let rest = words[1].trim();
        let (is_in, list) = if let Some(l) = rest.strip_prefix("notin") {
            (false, l)
        } else if let Some(l) = rest.strip_prefix("in") {
            (true, l)
        } else {
            return Err(bad());
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(bad)?;
        let values: Vec<String> = inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        return Ok((
            key,
            if is_in {
                Op::In(values)
            } else {
                Op::NotIn(values)
            },
        ));
    }
    Ok((valid_key(part).ok_or_else(bad)?, Op::Exists))
}

fn valid_key(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| key.to_string())
}

/// Prints a `LabelSelector` object as kubectl does (`metav1.FormatLabelSelector`).
pub fn format_label_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".to_string();
    };
    let mut parts = Vec::new();
    if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for expr in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = expr
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match expr
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    if parts.is_empty() {
        "<none>".to_string()
    } else {
        parts.join(",")
    }
}

/// A parsed field selector: `a.b=v,c!=w`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector {
    reqs: Vec<FieldReq>,
}

/// One `field=value` (or `!=`) of a field selector.
#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    field: String,
    /// The field as a JSON pointer (`/involvedObject/name`), made once: a list tests it
    /// against every object of its kind.
    pointer: String,
    eq: bool,
    value: String,
}

impl FieldSelector {
    /// Parses `metadata.name=web,involvedObject.kind=Deployment` (`=`, `==`, `!=`).
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            reqs.push(FieldReq {
                field: field.to_string(),
                pointer: format!("/{}", field.replace('.', "/")),
                eq,
                value: value.trim().to_string(),
            });
        }
        Ok(FieldSelector { reqs })
    }

    /// The fields used, to check them against what a resource supports.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.reqs.iter().map(|r| r.field.as_str())
    }

    /// Whether the object is selected. Fields are read by their JSON path; a missing field reads
    /// as the empty string, as in the apiserver's field sets.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| {
            let equal = match obj.pointer(&r.pointer) {
                Some(Value::String(s)) => *s == r.value,
                Some(Value::Bool(b)) => r.value == if *b { "true" } else { "false" },
                Some(Value::Number(n)) => n.to_string() == r.value,
                _ => r.value.is_empty(),
            };
            equal == r.eq
        })
    }
}

/// The field selectors each resource supports besides `metadata.name`/`metadata.namespace`
/// (others are rejected with 400 like the apiserver does).
pub fn supported_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
        ],
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "ReplicaSet" => &["status.replicas"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels() -> Value {
        json!({"app": "web", "tier": "front"})
    }

    #[test]
    fn every_operator_matches_as_kubernetes_does() {
        let l = labels();
        let yes = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(yes("app=web"));
        assert!(yes("app==web"));
        assert!(!yes("app!=web"));
        assert!(yes("app in (web, api)"));
        assert!(!yes("app notin (web)"));
        assert!(yes("canary notin (x)"));
        assert!(yes("tier"));
        assert!(!yes("!tier"));
        assert!(yes("!canary"));
        assert!(yes("app in (web),tier=front"));
        assert!(!yes("app in (web),tier=back"));
        assert!(yes(""));
    }

    #[test]
    fn bad_selectors_are_errors() {
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("=x").is_err());
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn object_selectors_and_formatting() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]});
        let parsed = LabelSelector::from_object(&sel).unwrap();
        assert!(parsed.matches(Some(&labels())));
        assert!(!parsed.matches(Some(&json!({"app": "web"}))));
        assert_eq!(format_label_selector(Some(&sel)), "app=web,tier in (front)");
        assert_eq!(format_label_selector(None), "<none>");
    }

    #[test]
    fn field_selectors_read_json_paths() {
        let ev = json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Deployment", "name": "web"}});
        assert!(
            FieldSelector::parse("involvedObject.kind=Deployment,involvedObject.name=web")
                .unwrap()
                .matches(&ev)
        );
        assert!(
            !FieldSelector::parse("involvedObject.name!=web")
                .unwrap()
                .matches(&ev)
        );
        assert!(
            FieldSelector::parse("metadata.namespace=")
                .unwrap()
                .matches(&ev)
        );
        // Booleans and numbers compare as the text they print as.
        let node = json!({"spec": {"unschedulable": true}, "count": 2});
        let selects = |text: &str| FieldSelector::parse(text).unwrap().matches(&node);
        assert!(selects("spec.unschedulable=true,count=2"));
        assert!(!selects("spec.unschedulable=false"));
        assert!(selects("spec.unschedulable!=false,count!=3"));
        assert!(!selects("count="));
    }
}
