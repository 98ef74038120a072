//! Runbook parameters: where each value comes from ([`ParamFrom`]), its type
//! ([`ParamType`]) and the conversion of a raw value into that type ([`ParamType::coerce`]).
//!
//! Typed values as the script sees them (`ctx.params.NAME`):
//! - `string` → JSON string;
//! - `int` → JSON integer (from an integer or a decimal string);
//! - `float` → JSON number (from a number or a numeric string);
//! - `bool` → JSON bool (from a bool or the strings `true` / `false`);
//! - `duration` → the duration text as written, trimmed (`"2m"`), after checking it parses
//!   (see [`crate::parse_duration`]), so audit records read like the manifest;
//! - `list` → JSON array of strings (from an array of scalars, or a comma-separated string,
//!   items trimmed, empty items dropped).

use serde::Deserialize;
use serde_json::Value;

use crate::duration::parse_duration;

/// The declared type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Text (the default).
    #[default]
    String,
    /// A signed 64-bit integer.
    Int,
    /// A 64-bit float.
    Float,
    /// `true` or `false`.
    Bool,
    /// A duration such as `30s` or `1h30m`.
    Duration,
    /// A list of strings.
    List,
}

impl ParamType {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::Bool => "bool",
            ParamType::Duration => "duration",
            ParamType::List => "list",
        }
    }

    /// Converts a raw value (a label's text, a hand-given JSON value, a manifest default)
    /// into this type, or says why it cannot.
    pub fn coerce(self, value: &Value) -> Result<Value, String> {
        let wrong = || format!("expected {}, got {}", self.expected(), describe(value));
        match (self, value) {
            (ParamType::String, Value::String(_)) => Ok(value.clone()),
            (ParamType::Int, Value::Number(n)) if n.is_i64() => Ok(value.clone()),
            (ParamType::Int, Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| wrong()),
            (ParamType::Float, Value::Number(n)) => Ok(Value::from(n.as_f64().ok_or_else(wrong)?)),
            (ParamType::Float, Value::String(s)) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Value::from(f)),
                _ => Err(wrong()),
            },
            (ParamType::Bool, Value::Bool(_)) => Ok(value.clone()),
            (ParamType::Bool, Value::String(s)) => match s.trim() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(wrong()),
            },
            (ParamType::Duration, Value::String(s)) => match parse_duration(s) {
                Ok(_) => Ok(Value::String(s.trim().to_owned())),
                Err(e) => Err(e.to_string()),
            },
            (ParamType::List, Value::String(s)) => Ok(Value::Array(
                s.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::String(item.to_owned()))
                    .collect(),
            )),
            (ParamType::List, Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(_) => Ok(item.clone()),
                    Value::Number(_) | Value::Bool(_) => Ok(Value::String(item.to_string())),
                    _ => Err(format!(
                        "expected a list of scalars, got an item that is {}",
                        describe(item)
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            _ => Err(wrong()),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Int => "an integer",
            ParamType::Float => "a number",
            ParamType::Bool => "true or false",
            ParamType::Duration => "a duration like 30s or 1h30m",
            ParamType::List => "a list or a comma-separated string",
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the bool {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

/// Where a parameter's value comes from when an event (not a person) starts the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamFrom {
    /// An event label (for alerts `data.labels`; see [`crate::RunbookSet::matches`]).
    Label(String),
    /// An alert annotation.
    Annotation(String),
    /// An event field: `id`, `source`, `type`, `subject`, `time`, `namespace`,
    /// `fingerprint`, or a path into the payload such as `data.receiver`.
    Event(String),
    /// Not taken from the event: given by hand on manual triggers, else the default.
    Given,
}

/// The top-level event fields a `from: event` parameter may name (besides `data.…`).
pub const EVENT_FIELDS: &[&str] = &[
    "id",
    "source",
    "type",
    "subject",
    "time",
    "namespace",
    "fingerprint",
];

/// One declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Where the value comes from for event-started runs.
    pub from: ParamFrom,
    /// The declared type.
    pub ty: ParamType,
    /// A run cannot start without a value.
    pub required: bool,
    /// Used when the source has no value; already converted to `ty`.
    pub default: Option<Value>,
    /// Free text for `firebreak check` and docs.
    pub description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string() {
        assert_eq!(ParamType::String.coerce(&json!("a")), Ok(json!("a")));
        let e = ParamType::String.coerce(&json!(3)).unwrap_err();
        assert_eq!(e, "expected a string, got the number 3");
    }

    #[test]
    fn int() {
        assert_eq!(ParamType::Int.coerce(&json!(3)), Ok(json!(3)));
        assert_eq!(ParamType::Int.coerce(&json!(" -42 ")), Ok(json!(-42)));
        assert!(ParamType::Int.coerce(&json!(3.5)).is_err());
        let e = ParamType::Int.coerce(&json!("three")).unwrap_err();
        assert_eq!(e, "expected an integer, got the string \"three\"");
    }

    #[test]
    fn float() {
        assert_eq!(ParamType::Float.coerce(&json!(2)), Ok(json!(2.0)));
        assert_eq!(ParamType::Float.coerce(&json!("0.25")), Ok(json!(0.25)));
        assert!(ParamType::Float.coerce(&json!("NaN")).is_err());
        assert!(ParamType::Float.coerce(&json!(true)).is_err());
    }

    #[test]
    fn bool() {
        assert_eq!(ParamType::Bool.coerce(&json!(true)), Ok(json!(true)));
        assert_eq!(ParamType::Bool.coerce(&json!("false")), Ok(json!(false)));
        let e = ParamType::Bool.coerce(&json!("yes")).unwrap_err();
        assert_eq!(e, "expected true or false, got the string \"yes\"");
    }

    #[test]
    fn duration() {
        assert_eq!(
            ParamType::Duration.coerce(&json!(" 1h30m")),
            Ok(json!("1h30m"))
        );
        let e = ParamType::Duration.coerce(&json!("soon")).unwrap_err();
        assert!(e.starts_with("invalid duration \"soon\""), "{e}");
        assert!(ParamType::Duration.coerce(&json!(30)).is_err());
    }

    #[test]
    fn list() {
        assert_eq!(
            ParamType::List.coerce(&json!("a, b,,c ")),
            Ok(json!(["a", "b", "c"]))
        );
        assert_eq!(
            ParamType::List.coerce(&json!(["x", 1, true])),
            Ok(json!(["x", "1", "true"]))
        );
        let e = ParamType::List.coerce(&json!([["nested"]])).unwrap_err();
        assert!(e.contains("a list of scalars"), "{e}");
        assert!(ParamType::List.coerce(&json!({"a": 1})).is_err());
    }
}
