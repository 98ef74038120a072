//! The connector contract: what every connector (Kubernetes, Prometheus, traffic, chat, ...)
//! implements so the runtime can expose its actions to Rhai scripts as journaled steps.
//!
//! Types only, no I/O. Start at [`Connector`].
//!
//! A connector describes itself ([`ActionSpec`]): its actions, their typed parameters in
//! positional order, whether each one mutates the world, which parameter names the Kubernetes
//! namespace it touches (so the *engine*, not the script, can refuse actions outside the
//! runbook's namespaces), how long it waits by design if it does ([`WaitSpec`], so the engine
//! does not cut a wait the script asked for), and the RBAC rules it needs. The runtime
//! registers every action of every connector in the registry as `<connector>::<action>(args...)`
//! in Rhai.
//!
//! Observing actions run through [`Connector::call`]. Mutating actions run in two halves, so
//! that the engine, not the connector, keeps the guarantees every action needs:
//! 1. [`Connector::plan`] reads the world and resolves an [`Intent`] (the target revision and
//!    its template hash, the replica count, the exact pods) and writes nothing;
//! 2. the engine journals the intent in the step's write-ahead record; in a dry run it stops
//!    here and answers the intent;
//! 3. [`Connector::apply`] brings the world to the intent: it first checks whether the world
//!    already holds it (then it writes nothing), writes otherwise, and confirms the effect
//!    before it answers. A retry, or a resume after a crash between the write and the step's
//!    end, applies the journaled intent again, which finds it done: nothing acts twice.

pub mod plugin;
pub mod rbac;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whether an action only looks (evidence) or changes something (counts against budgets,
/// is skipped in dry runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Reads state; the output is attached to the run as evidence.
    Observe,
    /// Changes state; refused outside the runbook's namespaces, skipped in dry runs.
    Mutate,
}

/// The JSON type of one positional parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Int,
    Float,
    Bool,
    Map,
    Array,
    Any,
}

/// One positional parameter of an action.
#[derive(Debug, Clone, Serialize)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    /// Optional parameters come last; a script may omit any trailing optional ones.
    pub required: bool,
    pub doc: &'static str,
}

impl ParamType {
    /// The type as the reference names it: `string`, `int`, `float`, `bool`, `map`, `array`,
    /// `any`.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::Bool => "bool",
            ParamType::Map => "map",
            ParamType::Array => "array",
            ParamType::Any => "any",
        }
    }
}

impl ParamSpec {
    /// A parameter the script must give.
    pub fn required(name: &'static str, ty: ParamType, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            required: true,
            doc,
        }
    }

    /// A trailing parameter the script may leave out.
    pub fn optional(name: &'static str, ty: ParamType, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            required: false,
            doc,
        }
    }
}

/// One Kubernetes RBAC rule an action needs (for the least-privilege Role in the docs).
#[derive(Debug, Clone, Serialize)]
pub struct RbacRule {
    pub api_groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Self-description of one action.
#[derive(Debug, Clone, Serialize)]
pub struct ActionSpec {
    /// Name as called from Rhai, e.g. `rollback` in `k8s::rollback(ns, deploy)`.
    pub name: &'static str,
    pub doc: &'static str,
    pub effect: Effect,
    pub params: Vec<ParamSpec>,
    /// The parameter holding the namespace the action touches, checked by the engine against
    /// the runbook's `namespaces`. `None` for cluster-scoped actions (e.g. cordon).
    pub namespace_param: Option<&'static str>,
    /// How long the action waits by design (a rollout to finish, a route to settle), so that
    /// the engine lets it; `None` for an action that only makes requests.
    pub waits: Option<WaitSpec>,
    pub rbac: Vec<RbacRule>,
    /// The errors this action can return beyond the ones every action can ([`common_errors`]),
    /// each with the condition that causes it, for the runbook reference.
    pub errors: Vec<ErrorDoc>,
    /// Example call, shown by `firebreak connectors` and in docs.
    pub example: &'static str,
}

/// How long an action waits on purpose. The engine limits one attempt of a connector call, and
/// lets an action that waits run for its wait plus a margin when that is longer; the run's
/// own `timeout` still bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WaitSpec {
    /// The parameter that says how long, read as [`parse_duration`] reads it (the connector
    /// must read it the same way); `None`: the action always waits up to `default`.
    pub param: Option<&'static str>,
    /// How long it waits when the parameter is left out (or there is none).
    pub default: Duration,
}

impl WaitSpec {
    /// Waits as long as parameter `param` says, `default` when the script leaves it out.
    pub const fn by_param(param: &'static str, default: Duration) -> WaitSpec {
        WaitSpec {
            param: Some(param),
            default,
        }
    }

    /// Always waits up to `wait`.
    pub const fn fixed(wait: Duration) -> WaitSpec {
        WaitSpec {
            param: None,
            default: wait,
        }
    }

    /// How long a call with `args` (by parameter name) waits; an error names what is wrong
    /// with the parameter (the connector refuses such a call).
    pub fn wait(&self, args: &serde_json::Map<String, Value>) -> Result<Duration, String> {
        match self.param.and_then(|p| args.get(p)) {
            None | Some(Value::Null) => Ok(self.default),
            Some(value) => parse_duration(value),
        }
    }
}

/// A duration as runbooks give one to a connector: whole seconds (`90`, `"90"`), or whole
/// seconds, minutes or hours (`"90s"`, `"5m"`, `"1h"`). The error says why not, for a message
/// that names the parameter. Range checks are the caller's.
pub fn parse_duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a whole number of seconds")),
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: u64 = num
                .parse()
                .map_err(|_| format!("{s:?} is not a duration like \"90s\" or \"5m\""))?;
            let mult = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => return Err(format!("{s:?} has an unknown unit (use s, m or h)")),
            };
            Ok(Duration::from_secs(n.saturating_mul(mult)))
        }
        other => Err(format!("{other} is not a duration")),
    }
}

/// One error an action can return: its kind and, for people, when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorDoc {
    pub kind: ErrorKind,
    /// The condition, e.g. "the Deployment does not exist".
    pub when: &'static str,
}

impl ErrorDoc {
    pub const fn new(kind: ErrorKind, when: &'static str) -> ErrorDoc {
        ErrorDoc { kind, when }
    }
}

/// The errors any action of any connector can return, whatever it does: the services they
/// talk to fail, refuse or are slow the same way for every action.
pub fn common_errors() -> Vec<ErrorDoc> {
    vec![
        ErrorDoc::new(
            ErrorKind::Transient,
            "the service could not be reached or answered 429 or 5xx (connection refused or \
             reset, an API server or Prometheus restarting, a proxy without a backend)",
        ),
        ErrorDoc::new(
            ErrorKind::Denied,
            "the service refused the connector's credentials (401/403: the Kubernetes RBAC of \
             firebreak's service account, an auth proxy in front of Prometheus or Alertmanager)",
        ),
        ErrorDoc::new(
            ErrorKind::Timeout,
            "a request got no answer in time (the connector's own limit per request, or a \
             408/504 from the API server)",
        ),
        ErrorDoc::new(
            ErrorKind::Permanent,
            "the service answered with an error that a retry would get again (another 4xx) or \
             with something that is not its documented answer",
        ),
    ]
}

/// Why an action failed; the runtime's retry policy is decided from this, never from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Worth retrying with backoff (connection reset, 5xx, 429).
    Transient,
    /// Will fail the same way again (bad input, invalid object, nothing to roll back to).
    Permanent,
    /// The object does not exist.
    NotFound,
    /// Someone else changed the object between our read and our write.
    Conflict,
    /// Refused by policy: the engine's tenancy rules or the API server's RBAC.
    Denied,
    /// Did not finish in time.
    Timeout,
}

impl ErrorKind {
    /// Every kind, in the order the reference lists them.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Transient,
        ErrorKind::Permanent,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Denied,
        ErrorKind::Timeout,
    ];

    /// Only transient failures are retried.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient)
    }

    /// The kind as journaled and shown to scripts: `transient`, `not_found`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Denied => "denied",
            ErrorKind::Timeout => "timeout",
        }
    }

    /// What the kind means, for people (the reference's table of kinds).
    pub fn meaning(self) -> &'static str {
        match self {
            ErrorKind::Transient => "worth trying again: the service failed, not the request",
            ErrorKind::Permanent => {
                "will fail the same way again: bad input, an object in a state the action \
                 refuses, an effect the cluster does not show"
            }
            ErrorKind::NotFound => "the object the action needs does not exist",
            ErrorKind::Conflict => {
                "someone else changed the object between the action's read and its write"
            }
            ErrorKind::Denied => "refused by policy: the engine's rules or the service's",
            ErrorKind::Timeout => "did not finish in time",
        }
    }
}

/// An action's failure: a kind for the policy, a message for people.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct ActionError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ActionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Receives progress lines while a long action runs (rollout waits, canary steps).
pub type ProgressSink = Arc<dyn Fn(&str) + Send + Sync>;

/// What the engine tells a connector about the call it is making.
#[derive(Clone)]
pub struct ActionContext {
    pub run_id: String,
    pub runbook: String,
    pub team: String,
    /// Namespaces the runbook may act on (already enforced by the engine for `namespace_param`;
    /// connectors that discover namespaces themselves must check against it too).
    pub namespaces: Vec<String>,
    pub progress: ProgressSink,
}

impl std::fmt::Debug for ActionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionContext")
            .field("run_id", &self.run_id)
            .field("runbook", &self.runbook)
            .field("team", &self.team)
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

/// What a mutating action resolved to do, before doing it (see the module docs).
///
/// Serialized flat: `{"summary": ..., "noop": ..., <detail>...}`. The detail holds everything
/// [`Connector::apply`] needs, and the same fields the action's real answer has, because a dry
/// run answers with the intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// One line for people, in the future tense of a dry run: what will change.
    pub summary: String,
    /// The world already holds the intent (or the action no longer applies): applying it
    /// writes nothing.
    #[serde(default)]
    pub noop: bool,
    #[serde(flatten)]
    pub detail: serde_json::Map<String, Value>,
}

impl Intent {
    /// An intent whose `detail` is `detail` (a JSON object; anything else is kept under
    /// `value`).
    pub fn new(summary: impl Into<String>, detail: Value) -> Intent {
        let detail = match detail {
            Value::Object(map) => map,
            other => {
                let mut map = serde_json::Map::new();
                map.insert("value".into(), other);
                map
            }
        };
        Intent {
            summary: summary.into(),
            noop: false,
            detail,
        }
    }

    /// The same intent, marked as changing nothing.
    pub fn noop(mut self) -> Intent {
        self.noop = true;
        self
    }

    /// A field of the detail.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.detail.get(key)
    }

    /// A field of the detail, parsed; a missing or malformed field is a permanent error
    /// (the intent was journaled by this connector, so that is a bug or a hand edit).
    pub fn field<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, ActionError> {
        let value = self.detail.get(key).cloned().unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|e| {
            ActionError::new(
                ErrorKind::Permanent,
                format!("journaled intent has no usable `{key}`: {e}"),
            )
        })
    }

    /// What a dry run answers: the detail, plus `dry_run: true`, `changed: false` and the
    /// summary under `would`.
    pub fn dry_run_answer(&self) -> Value {
        let mut out = self.detail.clone();
        out.insert("dry_run".into(), Value::Bool(true));
        out.insert("changed".into(), Value::Bool(false));
        out.insert("would".into(), Value::String(self.summary.clone()));
        Value::Object(out)
    }
}

/// A connector: a named set of actions backed by some client (kube-rs, reqwest, ...).
pub trait Connector: Send + Sync + 'static {
    /// Module name in Rhai, e.g. `k8s`.
    fn name(&self) -> &'static str;
    /// Every action this connector offers.
    fn actions(&self) -> Vec<ActionSpec>;
    /// Runs an observing action. `args` are the positional arguments by parameter name,
    /// already type-checked against the spec.
    fn call<'a>(
        &'a self,
        action: &'a str,
        args: serde_json::Map<String, Value>,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>>;

    /// A mutating action, first half: reads the world and resolves what the action will do.
    /// Writes nothing. The default refuses: a connector with mutating actions implements it.
    fn plan<'a>(
        &'a self,
        action: &'a str,
        args: serde_json::Map<String, Value>,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Intent, ActionError>> {
        let _ = (args, cx);
        Box::pin(std::future::ready(Err(not_mutating(self.name(), action))))
    }

    /// A mutating action, second half: brings the world to `intent`. Checks first whether the
    /// world already holds it (then answers at once, writing nothing), and confirms the effect
    /// before answering (the route carries the weights, the policy selects the pods): an
    /// effect that is not there is an error, never a success.
    fn apply<'a>(
        &'a self,
        action: &'a str,
        args: serde_json::Map<String, Value>,
        intent: &'a Intent,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        let _ = (args, intent, cx);
        Box::pin(std::future::ready(Err(not_mutating(self.name(), action))))
    }
}

fn not_mutating(connector: &str, action: &str) -> ActionError {
    ActionError::new(
        ErrorKind::Permanent,
        format!("{connector}::{action} is not a mutating action of this connector"),
    )
}

/// The set of connectors the binary wires in, one `register` line each.
#[derive(Default, Clone)]
pub struct Registry {
    connectors: Vec<Arc<dyn Connector>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connector. Panics on a duplicate name: that is a wiring bug in the binary.
    pub fn register(&mut self, connector: Arc<dyn Connector>) -> &mut Self {
        assert!(
            self.get(connector.name()).is_none(),
            "connector {} registered twice",
            connector.name()
        );
        self.connectors.push(connector);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.iter().find(|c| c.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Connector>> {
        self.connectors.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_people_are_the_serialized_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for ty in [
            ParamType::String,
            ParamType::Int,
            ParamType::Float,
            ParamType::Bool,
            ParamType::Map,
            ParamType::Array,
            ParamType::Any,
        ] {
            assert_eq!(serde_json::to_value(ty).unwrap(), ty.as_str());
        }
    }

    #[test]
    fn durations_read_like_runbooks_write_them() {
        use serde_json::json;
        for (value, secs) in [
            (json!(30), 30),
            (json!("45"), 45),
            (json!("90s"), 90),
            (json!(" 5m "), 300),
            (json!("2h"), 7200),
            (json!(0), 0),
        ] {
            assert_eq!(
                parse_duration(&value),
                Ok(Duration::from_secs(secs)),
                "{value}"
            );
        }
        for bad in [
            json!(-1),
            json!(1.5),
            json!("5d"),
            json!("m"),
            json!("1h30m"),
            json!([1]),
        ] {
            assert!(parse_duration(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_wait_is_its_parameter_or_its_default() {
        use serde_json::json;
        let args = |v: Value| v.as_object().unwrap().clone();
        let spec = WaitSpec::by_param("timeout", Duration::from_secs(300));
        assert_eq!(spec.wait(&args(json!({}))), Ok(Duration::from_secs(300)));
        assert_eq!(
            spec.wait(&args(json!({"timeout": null}))),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            spec.wait(&args(json!({"timeout": "10m"}))),
            Ok(Duration::from_secs(600))
        );
        assert!(spec.wait(&args(json!({"timeout": "soon"}))).is_err());
        let fixed = WaitSpec::fixed(Duration::from_secs(60));
        assert_eq!(
            fixed.wait(&args(json!({"timeout": "10m"}))),
            Ok(Duration::from_secs(60))
        );
    }

    #[test]
    fn every_kind_is_listed_once() {
        // A kind added to the enum needs an arm here (the match must be exhaustive), with the
        // next number, and then a place in `ALL` for this test to pass.
        fn number(kind: ErrorKind) -> usize {
            match kind {
                ErrorKind::Transient => 0,
                ErrorKind::Permanent => 1,
                ErrorKind::NotFound => 2,
                ErrorKind::Conflict => 3,
                ErrorKind::Denied => 4,
                ErrorKind::Timeout => 5,
            }
        }
        const KINDS: usize = 6;
        let numbers: std::collections::BTreeSet<usize> =
            ErrorKind::ALL.iter().map(|k| number(*k)).collect();
        assert_eq!(numbers, (0..KINDS).collect());
        assert_eq!(ErrorKind::ALL.len(), KINDS);
        let names: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), KINDS, "each kind has a name of its own");
    }
}
