//! The bridge from Rhai to connectors: every action of every connector in the registry
//! becomes `<connector>::<action>(args...)`, a journaled step. Start at [`register`], then
//! [`Action::call`].
//!
//! Per call: arguments are converted to JSON and checked against the action's [`ParamSpec`]s;
//! an action whose namespace parameter is outside the run's namespaces is refused
//! (a `refusal` record, then a script error); the async connector runs through the runtime
//! handle with a timeout ([`attempt_limit`]: the engine's limit per call, or for an action that
//! waits by design, its wait plus [`WAIT_MARGIN`]), under cancel and the run's deadline;
//! transient failures are retried per [`RetryPolicy`](crate::RetryPolicy); progress lines
//! become `progress` records and reach the caller's sink; an observing action's output is also
//! journaled as evidence.
//!
//! A mutating action runs in two halves ([`crate::step::run_mutation`]): the connector's
//! `plan` resolves an intent, which is journaled before anything is written; a dry run answers
//! the intent and never reaches the connector's `apply`; a retry, or a resume, applies the
//! journaled intent again and never plans twice.

use std::sync::Arc;
use std::time::Duration;

use firebreak_audit::{AuditError, RecordBody};
use firebreak_connector::{
    ActionContext, ActionError, ActionSpec, Connector, Effect, ErrorKind, Intent, ParamType,
    Registry, WaitSpec,
};
use rhai::{Dynamic, Engine, Module};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::warn;

use crate::reference::{BuiltinSpec, Journaled};
use crate::step::{
    Durability, LeafResult, Planned, RunContext, ScriptError, Stop, error_chain, run_leaf,
    run_mutation, to_json,
};

/// Most positional parameters an action may have.
const MAX_ARITY: usize = 8;

/// What an action that waits by design gets beyond its wait: the requests before and after
/// it, and time for the connector to answer that the wait ran out (its own `timeout` error
/// says more than the engine's).
pub(crate) const WAIT_MARGIN: Duration = Duration::from_secs(30);

/// The longest one attempt of an action may run, before the run's deadline caps it:
/// `action_timeout`, or for an action that waits ([`ActionSpec::waits`]) its wait for these
/// `args` plus [`WAIT_MARGIN`] when that is longer. A wait that does not parse leaves
/// `action_timeout`: the connector refuses such a call at once.
pub(crate) fn attempt_limit(
    action_timeout: Duration,
    waits: Option<&WaitSpec>,
    args: &Map<String, Value>,
) -> Duration {
    match waits.and_then(|w| w.wait(args).ok()) {
        Some(wait) => action_timeout.max(wait.saturating_add(WAIT_MARGIN)),
        None => action_timeout,
    }
}

/// `connected(module)`, registered in [`register`], for the reference.
pub(crate) const CONNECTED: BuiltinSpec = BuiltinSpec {
    name: "connected",
    signatures: &["connected(module)"],
    doc: "Whether the connector `module` (`\"k8s\"`, `\"prom\"`, `\"traffic\"`, `\"am\"`) is \
          configured on this engine, for steps a runbook can do without. Calling an action of a \
          connector that is not configured is an error (function not found).",
    journaled: Journaled::No,
    returns: "bool",
    errors: &[],
};

/// Registers one static module per connector, one function per allowed arity per action.
pub(crate) fn register(engine: &mut Engine, registry: &Registry) {
    let mut tools = crate::canary::Tools::default();
    for connector in registry.iter() {
        let mut module = Module::new();
        for spec in connector.actions() {
            assert!(
                spec.params.len() <= MAX_ARITY,
                "{}::{} has {} parameters; at most {MAX_ARITY} are supported",
                connector.name(),
                spec.name,
                spec.params.len()
            );
            let min = spec
                .params
                .iter()
                .rposition(|p| p.required)
                .map_or(0, |i| i + 1);
            let action = Arc::new(Action {
                qualified: format!("{}::{}", connector.name(), spec.name),
                connector: connector.clone(),
                spec,
            });
            for arity in min..=action.spec.params.len() {
                set_arity(&mut module, action.clone(), arity);
            }
            match action.qualified.as_str() {
                "traffic::shift" => tools.shift = Some(action),
                "traffic::reset" => tools.reset = Some(action),
                "prom::check" => tools.check = Some(action),
                _ => {}
            }
        }
        engine.register_static_module(connector.name(), module.into());
    }
    crate::canary::register(engine, tools);
    // `connected("am")`: whether a connector is configured, for steps a runbook can do without.
    let names: Vec<String> = registry.iter().map(|c| c.name().to_owned()).collect();
    engine.register_fn("connected", move |name: &str| {
        names.iter().any(|n| n == name)
    });
}

/// Rhai functions have a fixed arity; one closure per arity forwards to [`Action::call`].
fn set_arity(module: &mut Module, action: Arc<Action>, arity: usize) {
    let name = action.spec.name;
    macro_rules! arity {
        ($($arg:ident),*) => {{
            module.set_native_fn(name, move |$($arg: Dynamic),*| action.call(vec![$($arg),*]));
        }};
    }
    match arity {
        0 => arity!(),
        1 => arity!(a),
        2 => arity!(a, b),
        3 => arity!(a, b, c),
        4 => arity!(a, b, c, d),
        5 => arity!(a, b, c, d, e),
        6 => arity!(a, b, c, d, e, f),
        7 => arity!(a, b, c, d, e, f, g),
        8 => arity!(a, b, c, d, e, f, g, h),
        _ => unreachable!("arity checked at registration"),
    }
}

pub(crate) struct Action {
    /// `connector::action`, the step's name.
    qualified: String,
    connector: Arc<dyn Connector>,
    spec: ActionSpec,
}

impl Action {
    /// Runs the action as a journaled step of the current run (positional arguments).
    pub(crate) fn call(&self, args: Vec<Dynamic>) -> Result<Dynamic, ScriptError> {
        let (named, bad_argument) = self.arguments(&args);
        let checked = |cx: &RunContext, step: u32| -> Result<(), LeafResult> {
            if let Some(message) = bad_argument.clone() {
                return Err(LeafResult::failed("invalid_argument", message));
            }
            if let Some(reason) = self.refusal(cx, &named) {
                warn!(run_id = %cx.meta.run_id, action = %self.qualified, reason = %reason, "action refused");
                crate::guard::count_refusal(&reason);
                let mut result = LeafResult::failed("denied", reason.clone());
                result.extra.push(RecordBody::Refusal {
                    step: Some(step),
                    action: self.qualified.clone(),
                    reason,
                });
                return Err(result);
            }
            Ok(())
        };
        if self.spec.effect == Effect::Observe {
            return run_leaf(
                &self.qualified,
                Value::Object(named.clone()),
                Durability::WriteAhead,
                |cx, step| match checked(cx, step) {
                    Err(refused) => refused,
                    Ok(()) => self.observe(cx, step, named.clone()),
                },
            );
        }
        let namespace = self
            .spec
            .namespace_param
            .and_then(|p| named.get(p))
            .and_then(Value::as_str)
            .map(str::to_owned);
        run_mutation(
            &self.qualified,
            namespace,
            Value::Object(named.clone()),
            |cx, step| {
                checked(cx, step)?;
                self.plan(cx, step, named.clone())
            },
            |intent| match serde_json::from_value::<Intent>(intent.clone()) {
                Ok(intent) => intent.dry_run_answer(),
                Err(_) => intent.clone(),
            },
            |cx, step, intent| self.apply(cx, step, named.clone(), intent),
        )
    }

    /// Positional script values → JSON by parameter name, and the first type problem.
    fn arguments(&self, args: &[Dynamic]) -> (Map<String, Value>, Option<String>) {
        let mut named = Map::new();
        let mut problem = None;
        for (i, (param, arg)) in self.spec.params.iter().zip(args).enumerate() {
            let value = to_json(arg);
            if value.is_null() && !param.required {
                continue;
            }
            if problem.is_none() && !type_matches(param.ty, &value) {
                problem = Some(format!(
                    "{}: parameter `{}` (#{}) must be {}, got {}",
                    self.qualified,
                    param.name,
                    i + 1,
                    type_name(param.ty),
                    describe(&value)
                ));
            }
            named.insert(param.name.to_owned(), value);
        }
        (named, problem)
    }

    /// The engine's tenancy rule: an action that names a namespace, reading or writing, only
    /// inside the runbook's namespaces (another team's logs and events are theirs too); a
    /// mutation of the whole cluster (no namespace: cordon a node, silence alerts) only with
    /// the team's grant in the teams file.
    fn refusal(&self, cx: &RunContext, named: &Map<String, Value>) -> Option<String> {
        let Some(param) = self.spec.namespace_param else {
            return match &cx.cluster_actions {
                Some(granted)
                    if self.spec.effect == Effect::Mutate && !granted.contains(&self.qualified) =>
                {
                    Some(format!(
                        "`{}` acts on the whole cluster and team {} has no grant for it (teams file: cluster_actions)",
                        self.qualified, cx.meta.team
                    ))
                }
                _ => None,
            };
        };
        match named.get(param).and_then(Value::as_str) {
            Some(ns) if cx.namespaces.iter().any(|allowed| allowed == ns) => None,
            Some(ns) => Some(format!(
                "namespace `{ns}` is outside runbook {}'s namespaces [{}]",
                cx.meta.runbook,
                cx.namespaces.join(", ")
            )),
            None => Some(format!("`{param}` (the namespace) is missing")),
        }
    }

    /// The context a connector sees, with a progress sink whose lines are journaled.
    fn context(&self, cx: &RunContext) -> (ActionContext, mpsc::UnboundedReceiver<String>) {
        let (tx, lines) = mpsc::unbounded_channel::<String>();
        let acx = ActionContext {
            run_id: cx.meta.run_id.clone(),
            runbook: cx.meta.runbook.clone(),
            team: cx.meta.team.clone(),
            namespaces: cx.namespaces.clone(),
            progress: Arc::new(move |line: &str| {
                let _ = tx.send(line.to_owned());
            }),
        };
        (acx, lines)
    }

    /// An observing action: its answer is the step's output and the run's evidence.
    fn observe(&self, cx: &RunContext, step: u32, args: Map<String, Value>) -> LeafResult {
        let (acx, mut lines) = self.context(cx);
        let limit = attempt_limit(cx.action_timeout, self.spec.waits.as_ref(), &args);
        let outcome = self.with_retries(cx, step, limit, &mut lines, || {
            self.connector.call(self.spec.name, args.clone(), &acx)
        });
        self.result(outcome, |value, result| {
            result.extra.push(RecordBody::Evidence {
                step,
                name: self.qualified.clone(),
                data: value,
            });
        })
    }

    /// A mutation's first half: the connector's plan, as journalable JSON. Planning reads and
    /// never waits, so it gets the engine's limit per call whatever the action declares.
    fn plan(&self, cx: &RunContext, step: u32, args: Map<String, Value>) -> Planned {
        let (acx, mut lines) = self.context(cx);
        let outcome = self.with_retries(cx, step, cx.action_timeout, &mut lines, || {
            let args = args.clone();
            let acx = &acx;
            async move {
                let intent = self.connector.plan(self.spec.name, args, acx).await?;
                serde_json::to_value(&intent).map_err(|e| {
                    ActionError::new(ErrorKind::Permanent, format!("intent is not JSON: {e}"))
                })
            }
        });
        let result = self.result(outcome, |_, _| {});
        match result.outcome {
            Ok(intent) => Ok(intent),
            Err(_) => Err(result),
        }
    }

    /// A mutation's second half: the connector applies the journaled intent.
    fn apply(
        &self,
        cx: &RunContext,
        step: u32,
        args: Map<String, Value>,
        intent: &Value,
    ) -> LeafResult {
        let intent: Intent = match serde_json::from_value(intent.clone()) {
            Ok(intent) => intent,
            Err(e) => {
                return LeafResult::failed(
                    "permanent",
                    format!(
                        "the journaled intent of {} does not parse: {e}",
                        self.qualified
                    ),
                );
            }
        };
        let (acx, mut lines) = self.context(cx);
        let limit = attempt_limit(cx.action_timeout, self.spec.waits.as_ref(), &args);
        let outcome = self.with_retries(cx, step, limit, &mut lines, || {
            self.connector
                .apply(self.spec.name, args.clone(), &intent, &acx)
        });
        self.result(outcome, |_, _| {})
    }

    /// Runs `attempt` on the runtime, retrying transient failures per the run's policy, each
    /// attempt under `limit` (see [`attempt_limit`]), all under cancel and the run's deadline;
    /// journals its progress lines.
    fn with_retries<F, Fut>(
        &self,
        cx: &RunContext,
        step: u32,
        limit: Duration,
        lines: &mut mpsc::UnboundedReceiver<String>,
        mut attempt_once: F,
    ) -> Outcome
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Value, ActionError>>,
    {
        cx.block_on(async {
            let mut attempt = 1;
            loop {
                let bound = cx.remaining(limit);
                let call = tokio::time::timeout(bound, attempt_once());
                let result = match cx.until_stopped(with_progress(cx, step, call, lines)).await {
                    Err(stop) => return Outcome::Stopped(stop, attempt),
                    Ok(Err(audit)) => return Outcome::Audit(audit, attempt),
                    Ok(Ok(Err(_elapsed))) => Err(ActionError::new(
                        ErrorKind::Timeout,
                        format!("no answer within {} ms", bound.as_millis()),
                    )),
                    Ok(Ok(Ok(result))) => result,
                };
                match result {
                    Ok(value) => return Outcome::Done(Ok(value), attempt),
                    Err(error) => match cx.retry.next_delay(error.kind, attempt) {
                        None => return Outcome::Done(Err(error), attempt),
                        Some(delay) => {
                            warn!(run_id = %cx.meta.run_id, action = %self.qualified, attempt, error = %error, "transient failure, retrying");
                            if let Err(stop) = cx.until_stopped(tokio::time::sleep(delay)).await {
                                return Outcome::Stopped(stop, attempt);
                            }
                            attempt += 1;
                        }
                    },
                }
            }
        })
    }

    /// An outcome as the step's result; `on_ok` may add records (evidence) to a success.
    fn result(&self, outcome: Outcome, on_ok: impl FnOnce(Value, &mut LeafResult)) -> LeafResult {
        let (mut result, attempts) = match outcome {
            Outcome::Stopped(stop, attempts) => (LeafResult::stopped(stop), attempts),
            Outcome::Audit(error, attempts) => (
                LeafResult::failed(
                    "audit",
                    format!("audit journal write failed: {}", error_chain(&error)),
                ),
                attempts,
            ),
            Outcome::Done(Err(error), attempts) => {
                let kind = serde_json::to_value(error.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "permanent".to_owned());
                let message = if attempts > 1 {
                    format!("{} (after {attempts} attempts)", error.message)
                } else {
                    error.message
                };
                (LeafResult::failed(&kind, message), attempts)
            }
            Outcome::Done(Ok(value), attempts) => {
                let mut result = LeafResult::ok(value.clone());
                on_ok(value, &mut result);
                (result, attempts)
            }
        };
        result.attempts = attempts;
        result
    }
}

enum Outcome {
    Done(Result<Value, ActionError>, u32),
    Stopped(Stop, u32),
    Audit(AuditError, u32),
}

/// Awaits `call` while journaling (durably) and forwarding each progress line it emits.
async fn with_progress<F: std::future::Future>(
    cx: &RunContext,
    step: u32,
    call: F,
    lines: &mut mpsc::UnboundedReceiver<String>,
) -> Result<F::Output, AuditError> {
    tokio::pin!(call);
    loop {
        tokio::select! {
            biased;
            Some(line) = lines.recv() => progress(cx, step, line).await?,
            out = &mut call => {
                while let Ok(line) = lines.try_recv() {
                    progress(cx, step, line).await?;
                }
                return Ok(out);
            }
        }
    }
}

async fn progress(cx: &RunContext, step: u32, line: String) -> Result<(), AuditError> {
    cx.forward(&line);
    cx.journal
        .append(cx.draft(RecordBody::Progress {
            step,
            message: line,
        }))
        .await
        .map(drop)
}

fn type_matches(ty: ParamType, value: &Value) -> bool {
    match ty {
        ParamType::String => value.is_string(),
        ParamType::Int => value.is_i64() || value.is_u64(),
        ParamType::Float => value.is_number(),
        ParamType::Bool => value.is_boolean(),
        ParamType::Map => value.is_object(),
        ParamType::Array => value.is_array(),
        ParamType::Any => true,
    }
}

fn type_name(ty: ParamType) -> &'static str {
    match ty {
        ParamType::String => "a string",
        ParamType::Int => "an int",
        ParamType::Float => "a number",
        ParamType::Bool => "a bool",
        ParamType::Map => "a map",
        ParamType::Array => "an array",
        ParamType::Any => "anything",
    }
}

fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "nothing (())".to_owned(),
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an int",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    };
    let mut text = value.to_string();
    if text.chars().count() > 40 {
        text = text.chars().take(39).chain(['…']).collect();
    }
    format!("{kind} ({text})")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_declared_wait_lengthens_the_limit_and_nothing_else_does() {
        let per_call = Duration::from_secs(120);
        let waits = WaitSpec::by_param("timeout", Duration::from_secs(300));
        let limit = |w: Option<&WaitSpec>, a: Value| attempt_limit(per_call, w, &args(a));
        // The default wait, a longer one, one in seconds.
        assert_eq!(limit(Some(&waits), json!({})), Duration::from_secs(330));
        assert_eq!(
            limit(Some(&waits), json!({"timeout": "10m"})),
            Duration::from_secs(630)
        );
        assert_eq!(
            limit(Some(&waits), json!({"timeout": 200})),
            Duration::from_secs(230)
        );
        // A short wait keeps the limit per call; so does one the connector will refuse.
        assert_eq!(limit(Some(&waits), json!({"timeout": "30s"})), per_call);
        assert_eq!(limit(Some(&waits), json!({"timeout": "soon"})), per_call);
        // An action that does not wait, whatever its arguments say.
        assert_eq!(limit(None, json!({"timeout": "10m"})), per_call);
        let fixed = WaitSpec::fixed(Duration::from_secs(600));
        assert_eq!(limit(Some(&fixed), json!({})), Duration::from_secs(630));
    }
}
