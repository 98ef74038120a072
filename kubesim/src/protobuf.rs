//! Protobuf request bodies, decoded into the JSON they stand for.
//!
//! kubectl 1.32+ sends the objects of its imperative commands (`create namespace`, `create
//! deployment`, `create configmap`, `expose`, `run`, `auth can-i` …) as protobuf: a `k8s\0`
//! magic, then a `runtime.Unknown` whose `typeMeta` names the kind and whose `raw` holds the
//! object (KUBESIM-NOTES §3). Protobuf carries field numbers, not names, so decoding needs the
//! schema: `k8s.proto` beside this file is a trimmed copy of the upstream `generated.proto`
//! messages, whose field names are the JSON names. [`decode`] walks the bytes with it.
//!
//! Mapping to JSON follows what the Go types' JSON encoding gives for the same object:
//! `bytes` become base64, `Time` an RFC 3339 string, `Quantity` its string, `IntOrString` an
//! int or a string, `RawExtension` the JSON it wraps. Go's protobuf writes every non-pointer
//! field, even empty ones, where its JSON leaves them out (`omitempty`): so empty strings,
//! zeros and `false` are dropped, except on fields marked `[keep]` (pointers whose zero means
//! something, like `replicas: 0`). A field number the schema does not know is an error, never
//! skipped: losing a field silently would store something other than what was sent.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Number, Value};

const SCHEMA: &str = include_str!("k8s.proto");

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not something kubesim has a schema for (answered 415: send JSON instead).
    #[error("kubesim cannot decode protobuf {0}; send it as JSON (application/json)")]
    Unsupported(String),
    /// Malformed bytes, or a field the schema does not know (answered 400).
    #[error("cannot decode the protobuf body: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

/// A `k8s\0`-enveloped protobuf object as its JSON, with `apiVersion` and `kind` set.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let unknown = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| malformed("no k8s\\0 magic at the start of the body"))?;
    let (mut type_meta, mut raw, mut encoding) = (Value::Null, &[][..], String::new());
    each_field(unknown, |n, wire| {
        match (n, wire) {
            (1, Wire::Bytes(b)) => {
                type_meta = decode_message(b, "k8s.io.apimachinery.pkg.runtime.TypeMeta")?;
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3, Wire::Bytes(b)) => encoding = String::from_utf8_lossy(b).into_owned(),
            (4, Wire::Bytes(_)) => {}
            _ => return Err(malformed(format!("field {n} of runtime.Unknown"))),
        }
        Ok(())
    })?;
    let api_version = type_meta["apiVersion"].as_str().unwrap_or("");
    let kind = type_meta["kind"].as_str().unwrap_or("");
    if !encoding.is_empty() {
        return Err(DecodeError::Unsupported(format!(
            "{kind} with content encoding {encoding}"
        )));
    }
    let message = message_name(api_version, kind)
        .filter(|name| schema().messages.contains_key(name))
        .ok_or_else(|| DecodeError::Unsupported(format!("{api_version} {kind}")))?;
    let mut object = decode_message(raw, &message)?;
    let map = object
        .as_object_mut()
        .ok_or_else(|| malformed("the object is not a message"))?;
    // apiVersion and kind first, as a JSON client writes them.
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version.to_owned()));
    out.insert("kind".into(), Value::String(kind.to_owned()));
    out.append(map);
    Ok(Value::Object(out))
}

/// `apps/v1` + `Deployment` → `k8s.io.api.apps.v1.Deployment`.
fn message_name(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "core",
        "rbac.authorization.k8s.io" => "rbac",
        "authorization.k8s.io" => "authorization",
        "authentication.k8s.io" => "authentication",
        "networking.k8s.io" => "networking",
        "apps" | "policy" | "batch" | "autoscaling" => group,
        _ => return None,
    };
    (!version.is_empty() && !kind.is_empty())
        .then(|| format!("k8s.io.api.{package}.{version}.{kind}"))
}

// ---------------------------------------------------------------------------------------------
// The schema

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Optional,
    Repeated,
    Map,
}

#[derive(Debug)]
struct Field {
    name: String,
    label: Label,
    /// The type; for a map, its value type.
    ty: String,
    /// For a map, its key type.
    key: String,
    /// Keep the zero value (a pointer field whose zero means something).
    keep: bool,
    /// An embedded struct: JSON puts its fields in the parent.
    inline: bool,
}

#[derive(Debug, Default)]
struct Schema {
    messages: HashMap<String, HashMap<u64, Field>>,
}

fn schema() -> &'static Schema {
    static SCHEMA_CELL: OnceLock<Schema> = OnceLock::new();
    SCHEMA_CELL.get_or_init(|| parse_schema(SCHEMA).expect("k8s.proto parses (tested)"))
}

/// Parses the subset of proto2 that `k8s.proto` is written in: `message NAME {` blocks of
/// `optional|repeated TYPE name = N [keep|inline];` and `map<K, V> name = N;` lines.
fn parse_schema(text: &str) -> Result<Schema, String> {
    let mut schema = Schema::default();
    let mut current: Option<(String, HashMap<u64, Field>)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split("//").next().unwrap_or("").trim();
        let at = || format!("k8s.proto line {}: {raw}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("message ") {
            let name = rest.trim_end_matches('{').trim();
            if current.is_some() || name.is_empty() {
                return Err(at());
            }
            current = Some((name.to_owned(), HashMap::new()));
            continue;
        }
        if line == "}" {
            let (name, fields) = current.take().ok_or_else(at)?;
            if schema.messages.insert(name, fields).is_some() {
                return Err(format!("{}: defined twice", at()));
            }
            continue;
        }
        let (_, fields) = current.as_mut().ok_or_else(at)?;
        let decl = line.strip_suffix(';').ok_or_else(at)?;
        let (decl, option) = match decl.split_once('[') {
            Some((d, option)) => (d.trim(), option.strip_suffix(']').ok_or_else(at)?),
            None => (decl, ""),
        };
        let (keep, inline) = match option {
            "" => (false, false),
            "keep" => (true, false),
            "inline" => (false, true),
            _ => return Err(at()),
        };
        let (lhs, number) = decl.rsplit_once('=').ok_or_else(at)?;
        let number: u64 = number.trim().parse().map_err(|_| at())?;
        let (label, key, ty, name) = if let Some(map) = lhs.trim().strip_prefix("map<") {
            let (types, name) = map.split_once('>').ok_or_else(at)?;
            let (k, v) = types.split_once(',').ok_or_else(at)?;
            (Label::Map, k.trim(), v.trim(), name.trim())
        } else {
            let mut words = lhs.split_whitespace();
            let label = match words.next() {
                Some("optional") => Label::Optional,
                Some("repeated") => Label::Repeated,
                _ => return Err(at()),
            };
            let ty = words.next().ok_or_else(at)?;
            let name = words.next().ok_or_else(at)?;
            (label, "", ty, name)
        };
        let field = Field {
            name: name.to_owned(),
            label,
            ty: ty.to_owned(),
            key: key.to_owned(),
            keep,
            inline,
        };
        if fields.insert(number, field).is_some() {
            return Err(format!("{}: field number used twice", at()));
        }
    }
    if current.is_some() {
        return Err("k8s.proto ends inside a message".into());
    }
    Ok(schema)
}

// ---------------------------------------------------------------------------------------------
// The wire format

/// One field as it is on the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.at)
                .ok_or_else(|| malformed("truncated varint"))?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| malformed("truncated field"))?;
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, DecodeError> {
        if self.at >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| malformed("length does not fit"))?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            other => return Err(malformed(format!("wire type {other} is not supported"))),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn each_field<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(u64, Wire<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut reader = Reader { buf, at: 0 };
    while let Some((number, wire)) = reader.next()? {
        f(number, wire)?;
    }
    Ok(())
}

/// Builds a protobuf message (for the documents kubesim serves as protobuf: `/openapi/v2`).
#[derive(Debug, Default)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = u8::try_from(v & 0x7f).expect("seven bits");
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    /// A length-delimited field (string, bytes or message).
    pub(crate) fn bytes(mut self, number: u64, bytes: &[u8]) -> Self {
        self.varint((number << 3) | 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        self
    }

    pub(crate) fn string(self, number: u64, s: &str) -> Self {
        self.bytes(number, s.as_bytes())
    }

    pub(crate) fn message(self, number: u64, m: Writer) -> Self {
        self.bytes(number, &m.0)
    }

    pub(crate) fn varint_field(mut self, number: u64, v: u64) -> Self {
        self.varint(number << 3);
        self.varint(v);
        self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn decode_message(buf: &[u8], name: &str) -> Result<Value, DecodeError> {
    if let Some(value) = decode_special(buf, name)? {
        return Ok(value);
    }
    let fields = schema()
        .messages
        .get(name)
        .ok_or_else(|| DecodeError::Unsupported(name.to_owned()))?;
    let mut out = Map::new();
    each_field(buf, |number, wire| {
        let field = fields.get(&number).ok_or_else(|| {
            malformed(format!("field {number} of {name} is not known to kubesim"))
        })?;
        let what = || format!("{name}.{}", field.name);
        match field.label {
            Label::Optional => {
                let value = decode_value(wire, &field.ty, &what())?;
                if field.inline {
                    if let Value::Object(fields) = value {
                        out.extend(fields);
                    }
                } else if field.keep || !is_zero(&value) {
                    out.insert(field.name.clone(), value);
                } else {
                    out.remove(&field.name);
                }
            }
            Label::Repeated => {
                let items = out
                    .entry(field.name.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let items = items.as_array_mut().expect("repeated fields are arrays");
                match wire {
                    // A packed run of numbers.
                    Wire::Bytes(bytes) if is_number(&field.ty) => {
                        let mut reader = Reader { buf: bytes, at: 0 };
                        while reader.at < bytes.len() {
                            items.push(decode_value(
                                Wire::Varint(reader.varint()?),
                                &field.ty,
                                &what(),
                            )?);
                        }
                    }
                    wire => items.push(decode_value(wire, &field.ty, &what())?),
                }
            }
            Label::Map => {
                let Wire::Bytes(entry) = wire else {
                    return Err(malformed(format!("{} is not a map entry", what())));
                };
                let (mut key, mut value) = (Value::Null, Value::Null);
                each_field(entry, |n, wire| {
                    match n {
                        1 => key = decode_value(wire, &field.key, &what())?,
                        2 => value = decode_value(wire, &field.ty, &what())?,
                        _ => return Err(malformed(format!("{}: map entry field {n}", what()))),
                    }
                    Ok(())
                })?;
                let key = match key {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                if value.is_null() {
                    // An absent value is the type's zero.
                    value = zero_of(&field.ty);
                }
                let map = out
                    .entry(field.name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                map.as_object_mut()
                    .expect("map fields are objects")
                    .insert(key, value);
            }
        }
        Ok(())
    })?;
    Ok(Value::Object(out))
}

fn is_number(ty: &str) -> bool {
    matches!(ty, "int32" | "int64" | "bool")
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(_) | Value::Object(_) => false,
    }
}

fn zero_of(ty: &str) -> Value {
    match ty {
        "string" | "bytes" => Value::String(String::new()),
        "bool" => Value::Bool(false),
        "int32" | "int64" | "double" => Value::Number(0.into()),
        _ => Value::Object(Map::new()),
    }
}

fn decode_value(wire: Wire<'_>, ty: &str, what: &str) -> Result<Value, DecodeError> {
    let wrong = || malformed(format!("{what}: wire type does not match {ty}"));
    Ok(match (ty, wire) {
        ("string", Wire::Bytes(b)) => Value::String(
            std::str::from_utf8(b)
                .map_err(|_| malformed(format!("{what}: not UTF-8")))?
                .to_owned(),
        ),
        ("bytes", Wire::Bytes(b)) => Value::String(base64_encode(b)),
        ("bool", Wire::Varint(v)) => Value::Bool(v != 0),
        // Negative int32s are sign-extended to 64 bits on the wire.
        ("int64", Wire::Varint(v)) => Value::Number(i64::from_ne_bytes(v.to_ne_bytes()).into()),
        ("int32", Wire::Varint(v)) => {
            let v = i64::from_ne_bytes(v.to_ne_bytes());
            Value::Number(i32::try_from(v).map_err(|_| wrong())?.into())
        }
        ("double", Wire::Fixed64(v)) => Number::from_f64(f64::from_bits(v))
            .map(Value::Number)
            .ok_or_else(|| malformed(format!("{what}: not a finite number")))?,
        (message, Wire::Bytes(b)) if message.contains('.') => decode_message(b, message)?,
        _ => return Err(wrong()),
    })
}

/// The types whose JSON is not the plain mapping of their fields.
fn decode_special(buf: &[u8], name: &str) -> Result<Option<Value>, DecodeError> {
    let ints = |buf: &[u8]| -> Result<HashMap<u64, i64>, DecodeError> {
        let mut out = HashMap::new();
        each_field(buf, |n, wire| match wire {
            Wire::Varint(v) => {
                out.insert(n, i64::from_ne_bytes(v.to_ne_bytes()));
                Ok(())
            }
            _ => Err(malformed(format!("{name}: field {n} is not a number"))),
        })?;
        Ok(out)
    };
    let only_bytes = |buf: &[u8], want: u64| -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        each_field(buf, |n, wire| match wire {
            Wire::Bytes(b) if n == want => {
                out = b.to_vec();
                Ok(())
            }
            _ => Err(malformed(format!("{name}: unexpected field {n}"))),
        })?;
        Ok(out)
    };
    let value = match name {
        // {seconds, nanos}; a zero time is JSON null, which the object then leaves out.
        _ if name == format!("{META}.Time") || name == format!("{META}.MicroTime") => {
            let t = ints(buf)?;
            let (secs, nanos) = (
                t.get(&1).copied().unwrap_or(0),
                t.get(&2).copied().unwrap_or(0),
            );
            if secs == 0 && nanos == 0 {
                Value::Null
            } else {
                let ts = jiff::Timestamp::new(secs, i32::try_from(nanos).unwrap_or(0))
                    .map_err(|e| malformed(format!("{name}: {e}")))?;
                let micro = name.ends_with("MicroTime");
                Value::String(if micro {
                    format!("{ts:.6}")
                } else {
                    format!("{ts:.0}")
                })
            }
        }
        _ if name == format!("{META}.Duration") => {
            let nanos = ints(buf)?.get(&1).copied().unwrap_or(0);
            Value::String(go_duration(nanos))
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            Value::String(String::from_utf8_lossy(&only_bytes(buf, 1)?).into_owned())
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            let (mut kind, mut int, mut text) = (0, 0, String::new());
            each_field(buf, |n, wire| {
                match (n, wire) {
                    (1, Wire::Varint(v)) => kind = v,
                    (2, Wire::Varint(v)) => int = i64::from_ne_bytes(v.to_ne_bytes()),
                    (3, Wire::Bytes(b)) => text = String::from_utf8_lossy(b).into_owned(),
                    _ => return Err(malformed(format!("{name}: unexpected field {n}"))),
                }
                Ok(())
            })?;
            if kind == 1 {
                Value::String(text)
            } else {
                Value::Number(int.into())
            }
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let raw = only_bytes(buf, 1)?;
            if raw.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&raw)
                    .map_err(|e| malformed(format!("{name}: the raw bytes are not JSON: {e}")))?
            }
        }
        // A list of strings, written in JSON as the plain array.
        "k8s.io.api.authorization.v1.ExtraValue" | "k8s.io.api.authentication.v1.ExtraValue" => {
            let mut items = Vec::new();
            each_field(buf, |n, wire| match wire {
                Wire::Bytes(b) if n == 1 => {
                    items.push(Value::String(String::from_utf8_lossy(b).into_owned()));
                    Ok(())
                }
                _ => Err(malformed(format!("{name}: unexpected field {n}"))),
            })?;
            Value::Array(items)
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `250ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = match n {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", trim_fraction(n, div));
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, s) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let secs = format!("{}s", trim_fraction(s, 1_000_000_000));
    match (h, m) {
        (0, 0) => format!("{sign}{secs}"),
        (0, m) => format!("{sign}{m}m{secs}"),
        (h, m) => format!("{sign}{h}h{m}m{secs}"),
    }
}

/// `n / div` with its fraction, trailing zeros dropped: 1500/1000 → `1.5`.
fn trim_fraction(n: u64, div: u64) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let frac = format!("{frac:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        Writer::default().bytes(n, bytes).finish()
    }

    fn int(n: u64, v: u64) -> Vec<u8> {
        Writer::default().varint_field(n, v).finish()
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        [b"k8s\0".to_vec(), field(1, &type_meta), field(2, raw)].concat()
    }

    #[test]
    fn the_schema_parses_and_every_type_it_names_is_defined() {
        let schema = parse_schema(SCHEMA).unwrap();
        let special = [
            "Time",
            "MicroTime",
            "Duration",
            "Quantity",
            "IntOrString",
            "RawExtension",
            "FieldsV1",
            "ExtraValue",
        ];
        for (name, fields) in &schema.messages {
            for field in fields.values() {
                let ty = &field.ty;
                let known = matches!(
                    ty.as_str(),
                    "string" | "bytes" | "bool" | "int32" | "int64" | "double"
                ) || schema.messages.contains_key(ty)
                    || special.iter().any(|s| ty.ends_with(&format!(".{s}")));
                assert!(known, "{name}.{}: type {ty} is not defined", field.name);
            }
        }
        assert!(schema.messages.len() > 50, "{}", schema.messages.len());
    }

    #[test]
    fn a_configmap_decodes_with_its_maps_and_bytes() {
        let meta = [field(1, b"cm1"), field(3, b"team-a"), field(2, b"")].concat();
        let entry = |k: &[u8], v: &[u8]| [field(1, k), field(2, v)].concat();
        let raw = [
            field(1, &meta),
            field(2, &entry(b"a", b"b")),
            field(2, &entry(b"c", b"")),
            field(3, &entry(b"bin", &[0, 1, 2, 255])),
        ]
        .concat();
        let object = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cm1", "namespace": "team-a"},
                   "data": {"a": "b", "c": ""}, "binaryData": {"bin": "AAEC/w=="}})
        );
    }

    #[test]
    fn special_types_map_to_their_json() {
        // IntOrString: a port number and a named port; a Quantity.
        let int_or_string = |v: &[u8]| {
            decode_message(v, "k8s.io.apimachinery.pkg.util.intstr.IntOrString").unwrap()
        };
        assert_eq!(
            int_or_string(&[int(1, 0), int(2, 8080)].concat()),
            json!(8080)
        );
        assert_eq!(
            int_or_string(&[int(1, 1), field(3, b"http")].concat()),
            json!("http")
        );
        let quantity = decode_message(
            &field(1, b"250m"),
            "k8s.io.apimachinery.pkg.api.resource.Quantity",
        )
        .unwrap();
        assert_eq!(quantity, json!("250m"));
        let time = decode_message(&int(1, 1_700_000_000), &format!("{META}.Time")).unwrap();
        assert_eq!(time, json!("2023-11-14T22:13:20Z"));
        assert_eq!(go_duration(90_500_000_000), "1m30.5s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(250_000_000), "250ms");
    }

    #[test]
    fn replicas_zero_is_kept_where_other_zeros_are_dropped() {
        let spec = [int(1, 0), int(5, 0)].concat(); // replicas 0, minReadySeconds 0
        let object = decode(&envelope("apps/v1", "Deployment", &field(2, &spec))).unwrap();
        assert_eq!(object["spec"], json!({"replicas": 0}));
    }

    #[test]
    fn an_unknown_field_or_kind_is_an_error_not_a_loss() {
        let err = decode(&envelope("v1", "ConfigMap", &field(99, b"x"))).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Malformed(m) if m.contains("field 99 of k8s.io.api.core.v1.ConfigMap")),
            "{err}"
        );
        let err = decode(&envelope("example.com/v1", "Widget", b"")).unwrap_err();
        assert!(matches!(err, DecodeError::Unsupported(_)), "{err}");
        let err = decode(b"{\"kind\":\"ConfigMap\"}").unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
        // Truncated: the length says more than there is.
        let mut body = envelope("v1", "ConfigMap", &field(1, b"abc"));
        body.truncate(body.len() - 1);
        assert!(matches!(decode(&body), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        for (bytes, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"hello", "aGVsbG8="),
        ] {
            assert_eq!(base64_encode(bytes), b64);
        }
    }
}
