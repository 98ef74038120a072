//! The functions every script has: `step(name, || ...)`, `once(name, || ...)` and the
//! built-in steps `log`, `sleep`, `now`, `fail`, `evidence`, `resolved`, `wait_resolved`.
//! Each one is journaled by Rust through [`crate::step`]; a script can neither skip nor forge
//! its records.

use std::time::{Duration, Instant};

use firebreak_audit::{RecordBody, StepError, StepStatus};
use rhai::{Dynamic, Engine, FnPtr, ImmutableString, NativeCallContext};
use serde_json::{Value, json};
use tracing::info;

use crate::reference::{BuiltinSpec, Journaled, StepErrorDoc};
use crate::step::{
    self, Begin, Durability, LeafResult, ScriptError, begin, current, finish_replayed, run_leaf,
    to_json,
};

/// A closure's error, as `step` and `once` pass it on.
const CLOSURE_FAILED: StepErrorDoc = StepErrorDoc {
    kind: "script",
    when: "the closure raised an error: the step is journaled as failed (an inner step keeps \
           its own record and kind) and the error goes on to the caller",
};

/// What [`register`] gives every script, for the reference (`crate::reference`); a test there
/// holds the names and arities to what is registered.
pub(crate) const SPECS: &[BuiltinSpec] = &[
    BuiltinSpec {
        name: "step",
        signatures: &["step(name, || ...)", "step(name, inputs, || ...)"],
        doc: "Runs the closure as one named step: its start, its return value (the step's \
              output), its duration and outcome are journaled around it. The inputs journaled \
              are the variables the closure captured, by name (a captured `db_password` is \
              redacted like any secret-named key), or `inputs` when given. On resume, a step \
              that finished runs its closure again, its inner steps replaying from the journal, \
              and returns the journaled output.",
        journaled: Journaled::Composite,
        returns: "the closure's value",
        errors: &[CLOSURE_FAILED],
    },
    BuiltinSpec {
        name: "once",
        signatures: &["once(name, || ...)"],
        doc: "A value decided once per incident. The first run for an event evaluates the \
              closure as the step `once:NAME`; a later run of the same runbook for the same \
              event (the alert fired again after the cooldown) gets the value the first run \
              decided, without evaluating the closure: the version an alert blamed when the \
              incident began, say, so that a second run does not roll back the rollback. With \
              several replicas on NATS the decision is kept in the KV store they share, so the \
              later run gets it on whichever replica it runs; a store that cannot be read or \
              written fails the step before the closure's value is used.",
        journaled: Journaled::Composite,
        returns: "the closure's value, or the value the first run decided",
        errors: &[CLOSURE_FAILED],
    },
    BuiltinSpec {
        name: "log",
        signatures: &["log(message)"],
        doc: "A line in the run's audit trail, also in the engine's log and in the output of \
              `firebreak run`. Any value; it is shown as text.",
        journaled: Journaled::Deferred,
        returns: "`()`",
        errors: &[],
    },
    BuiltinSpec {
        name: "evidence",
        signatures: &["evidence(name, value)"],
        doc: "Attaches `value` (any value: a map, an action's answer) to the run as a named \
              evidence record. Observing connector actions attach their answers by themselves.",
        journaled: Journaled::Deferred,
        returns: "`()`",
        errors: &[StepErrorDoc {
            kind: "over_budget",
            when: "the value, as JSON, is larger than `limits.max_evidence_bytes`: the run ends \
                   `failed` (not catchable)",
        }],
    },
    BuiltinSpec {
        name: "sleep",
        signatures: &["sleep(ms)"],
        doc: "Waits `ms` milliseconds (an int, or text like `\"20s\"`, `\"5m\"`). A cancel or the \
              run's timeout ends it early; a run suspended for a shutdown waits only what was \
              left of it when it resumes. A wait of 2 s or more parks the run: it holds no \
              thread and no run slot while it waits.",
        journaled: Journaled::WriteAhead,
        returns: "`()`",
        errors: &[StepErrorDoc {
            kind: "invalid_argument",
            when: "`ms` is negative, not a wait, or longer than the longest wait (see the limits)",
        }],
    },
    BuiltinSpec {
        name: "now",
        signatures: &["now()"],
        doc: "The current time, the sandbox's only clock. Journaled, so a resumed run sees the \
              time its first attempt saw.",
        journaled: Journaled::Deferred,
        returns: "RFC 3339 text in UTC, e.g. `\"2025-06-01T12:00:00.123456Z\"`",
        errors: &[],
    },
    BuiltinSpec {
        name: "ms",
        signatures: &["ms(wait)"],
        doc: "A wait in milliseconds: an int is milliseconds already; text is like \
              `\"500ms\"`, `\"90s\"`, `\"5m\"`, `\"1h30m\"` (a duration param's text), and \
              bare digits in text are seconds.",
        journaled: Journaled::No,
        returns: "int (milliseconds)",
        errors: &[StepErrorDoc {
            kind: "script",
            when: "`wait` is not like that (an unknown unit, a space, a sign)",
        }],
    },
    BuiltinSpec {
        name: "fail",
        signatures: &["fail(message)"],
        doc: "Fails the run with `message`: a failed step of kind `fail`, and an error that, \
              uncaught, ends the run `failed` with that message.",
        journaled: Journaled::Deferred,
        returns: "never returns",
        errors: &[StepErrorDoc {
            kind: "fail",
            when: "always",
        }],
    },
    BuiltinSpec {
        name: "approve",
        signatures: &["approve(why)"],
        doc: "Asks people to approve the run here, before anything is decided: by the \
              runbook's `approval` policy, or without one a member of its team within 30 \
              minutes. The request is journaled with `why`; decisions come through the API, the \
              CLI or chat. A run is approved once: later mutations and `approve` calls go on \
              without asking again. In a dry run it asks nobody.",
        journaled: Journaled::WriteAhead,
        returns: "`#{approved_by: [names]}` (empty when the run was approved already); in a dry \
                  run `#{dry_run: true, would: \"wait for approval\"}`",
        errors: &[
            StepErrorDoc {
                kind: "denied",
                when: "an approver said no: the run ends `denied` (not catchable)",
            },
            StepErrorDoc {
                kind: "expired",
                when: "nobody approved before the request expired: the run ends `expired` (not \
                       catchable)",
            },
        ],
    },
    BuiltinSpec {
        name: "resolved",
        signatures: &["resolved()"],
        doc: "Whether an event that joined this run said its incident resolved (Alertmanager's \
              `resolved` notification of the same alert).",
        journaled: Journaled::Deferred,
        returns: "bool",
        errors: &[],
    },
    BuiltinSpec {
        name: "wait_resolved",
        signatures: &["wait_resolved(timeout)"],
        doc: "Waits until an event joins the run saying its incident resolved, at most \
              `timeout` (milliseconds, or text like `\"5m\"`). Ended early like `sleep`; a \
              resumed run waits only what was left. Like `sleep`, a wait of 2 s or more parks \
              the run (no thread, no run slot) until the resolution or the timeout.",
        journaled: Journaled::WriteAhead,
        returns: "bool: whether the incident resolved in time",
        errors: &[StepErrorDoc {
            kind: "invalid_argument",
            when: "`timeout` is not a wait, or is longer than the longest wait (see the limits)",
        }],
    },
];

pub(crate) fn register(engine: &mut Engine) {
    engine.register_fn(
        "step",
        |ctx: NativeCallContext, name: ImmutableString, body: FnPtr| {
            let inputs = captured_inputs(&ctx, &body);
            closure_step(&ctx, &name, inputs, &body)
        },
    );
    engine.register_fn(
        "step",
        |ctx: NativeCallContext, name: ImmutableString, inputs: Dynamic, body: FnPtr| {
            closure_step(&ctx, &name, to_json(&inputs), &body)
        },
    );
    engine.register_fn(
        "once",
        |ctx: NativeCallContext, name: ImmutableString, body: FnPtr| once(&ctx, &name, &body),
    );
    engine.register_fn("resolved", resolved);
    engine.register_fn("wait_resolved", wait_resolved);
    engine.register_fn("log", log);
    engine.register_fn("sleep", sleep);
    engine.register_fn("sleep", sleep_text);
    engine.register_fn("approve", approve);
    engine.register_fn("now", now);
    engine.register_fn("fail", fail);
    engine.register_fn("evidence", evidence);
    engine.register_fn("ms", ms);
}

/// `step(name, || ...)`: journals the closure's start, its return value as outputs, its
/// duration and outcome (deferred: an action inside makes them durable before it runs). Steps
/// inside it are numbered and journaled on their own. On resume, a step that finished before
/// re-runs its closure (whose inner steps replay from the journal) and returns the journaled
/// output.
fn closure_step(
    ctx: &NativeCallContext,
    name: &str,
    inputs: Value,
    body: &FnPtr,
) -> Result<Dynamic, ScriptError> {
    composite_step(name, inputs, || {
        body.call_within_context::<Dynamic>(ctx, ())
    })
}

/// A step made of steps (a closure, a canary analysis): numbered and journaled around `body`,
/// whose own steps are numbered and journaled inside it (see [`closure_step`]).
pub(crate) fn composite_step(
    name: &str,
    inputs: Value,
    body: impl FnOnce() -> Result<Dynamic, ScriptError>,
) -> Result<Dynamic, ScriptError> {
    let cx = current()?;
    let (step, replayed) = match begin(&cx, name)? {
        Begin::Replayed(step, outputs) => (step, Some(outputs)),
        Begin::Live(step) | Begin::Resumed(step, _) => {
            if cx.journals_start(step) {
                cx.defer(vec![RecordBody::StepStarted {
                    step,
                    name: name.to_owned(),
                    inputs,
                    intent: None,
                }]);
            }
            (step, None)
        }
    };
    let span = cx.step_span(step, name);
    cx.open_span(span.clone());
    let started = Instant::now();
    let result = span.in_scope(body);
    cx.close_span();
    let duration_ms = started.elapsed().as_millis() as u64;
    crate::trace::record_outcome(
        &span,
        if result.is_ok() { "ok" } else { "error" },
        result
            .as_ref()
            .err()
            .map(|_| cx.stopped().map_or("script", step::Stop::token)),
    );
    match (result, replayed) {
        (Ok(_), Some(outputs)) => finish_replayed(&cx, step, name, outputs),
        (Ok(value), None) => {
            cx.defer(vec![RecordBody::StepFinished {
                step,
                name: name.to_owned(),
                inputs: None,
                status: StepStatus::Ok,
                outputs: to_json(&value),
                error: None,
                duration_ms,
                attempts: 1,
            }]);
            Ok(value)
        }
        // Suspended or parked inside: no end, the body runs again (its finished inner steps
        // replay).
        (Err(error), _)
            if matches!(
                cx.stopped(),
                Some(step::Stop::Suspended | step::Stop::Parked)
            ) =>
        {
            Err(error)
        }
        (Err(error), _) => {
            let kind = cx.stopped().map_or("script", step::Stop::token);
            cx.defer(vec![RecordBody::StepFinished {
                step,
                name: name.to_owned(),
                inputs: None,
                status: StepStatus::Error,
                outputs: Value::Null,
                error: Some(StepError {
                    kind: kind.to_owned(),
                    message: error.to_string(),
                }),
                duration_ms,
                attempts: 1,
            }]);
            Err(error)
        }
    }
}

/// What a closure captured, as the step's inputs. The run's `ctx` map is left out: it is in
/// the `run_started` record already.
/// Captures are journaled by their variable names, so a captured `db_password` is redacted
/// like any secret-named key.
fn captured_inputs(ctx: &NativeCallContext, body: &FnPtr) -> Value {
    let curry = body.curry();
    // A closure is a script function whose first parameters are its captures.
    let names: Vec<String> = ctx
        .iter_namespaces()
        .find_map(|module| {
            module
                .iter_script_fn_info()
                .find(|(_, _, name, params, _)| *name == body.fn_name() && *params >= curry.len())
                .map(|(.., def)| def.params.iter().map(ToString::to_string).collect())
        })
        .unwrap_or_default();
    let captured: serde_json::Map<String, Value> = curry
        .iter()
        .enumerate()
        .filter(|(_, v)| !is_ctx(v))
        .map(|(i, v)| {
            let name = names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("captured_{i}"));
            (name, to_json(v))
        })
        .collect();
    if captured.is_empty() {
        json!({})
    } else {
        json!({ "captured": captured })
    }
}

fn is_ctx(value: &Dynamic) -> bool {
    value.read_lock::<rhai::Map>().is_some_and(|m| {
        m.contains_key("run_id") && m.contains_key("event") && m.contains_key("runbook")
    })
}

/// `log(message)`: a journaled line, also sent to tracing and the caller's progress sink.
fn log(message: Dynamic) -> Result<Dynamic, ScriptError> {
    let message = message.to_string();
    run_leaf(
        "log",
        json!({ "message": message }),
        Durability::Deferred,
        |cx, _| {
            let (run_id, runbook, line) = (
                cx.meta.run_id.clone(),
                cx.meta.runbook.clone(),
                message.clone(),
            );
            cx.emit(
                move || info!(run_id = %run_id, runbook = %runbook, message = %line, "script log"),
            );
            cx.forward_held(message.clone());
            LeafResult::ok(Value::Null)
        },
    )
}

/// `sleep(ms)`: waits, bounded by `Limits::max_sleep`, ended early by cancel or the deadline.
/// A wait of at least `park_after` parks the run instead of holding a thread (see
/// [`crate::RunnerConfig::park_after`]); such a sleep (or one replayed) may run on the async
/// worker, its start journaled by the park's write, before the wait.
pub(crate) fn sleep(ms: rhai::INT) -> Result<Dynamic, ScriptError> {
    let cx = current()?;
    let max = cx.max_sleep;
    let step = cx.peek_step();
    // Resumed inside this sleep: only what was left of it.
    let wait = u64::try_from(ms)
        .ok()
        .map(Duration::from_millis)
        .filter(|wait| *wait <= max)
        .map(|wait| wait.saturating_sub(cx.already_waited(step)));
    let (parks, durability) = cx.plan_wait(step, wait, true);
    drop(cx);
    run_leaf("sleep", json!({ "ms": ms }), durability, |cx, step| {
        let Some(wait) = wait else {
            return LeafResult::failed(
                "invalid_argument",
                format!(
                    "sleep({ms}): the wait must be between 0 and {} ms",
                    max.as_millis()
                ),
            );
        };
        if parks {
            return cx.park(step, "sleep", wait);
        }
        let _waiting = step::Waiting::begin();
        match cx.block_on(cx.until_stopped(tokio::time::sleep(wait))) {
            Ok(()) => LeafResult::ok(Value::Null),
            Err(stop) => LeafResult::stopped(stop),
        }
    })
}

/// `sleep("20s")`: [`sleep`] with the wait as text, as `wait_resolved` takes it.
fn sleep_text(wait: ImmutableString) -> Result<Dynamic, ScriptError> {
    match parse_wait(&Dynamic::from(wait.clone())) {
        Ok(wait) => sleep(rhai::INT::try_from(wait.as_millis()).unwrap_or(rhai::INT::MAX)),
        Err(message) => run_leaf(
            "sleep",
            json!({ "ms": wait.as_str() }),
            Durability::Deferred,
            |_, _| LeafResult::failed("invalid_argument", format!("sleep: {message}")),
        ),
    }
}

/// `approve(why)`: asks for the run's approval here, before anything is decided (the
/// runbook's `approval` policy, or a member of its team within 30 minutes). Returns who
/// approved; a deny or the request's expiry ends the run. A run is approved once: later
/// mutations and `approve` calls go on without asking again. In a dry run it says it would ask.
fn approve(why: ImmutableString) -> Result<Dynamic, ScriptError> {
    run_leaf(
        "approve",
        json!({ "reason": why.as_str() }),
        Durability::WriteAhead,
        |cx, step| {
            if cx.dry_run {
                return LeafResult::ok(json!({ "dry_run": true, "would": "wait for approval" }));
            }
            let plan = json!({ "action": "approve", "reason": why.as_str() });
            match cx.await_approval(Some(step), "approve", Some(why.to_string()), plan) {
                Ok(approved_by) => LeafResult::ok(json!({ "approved_by": approved_by })),
                Err(_) => LeafResult::stopped(cx.stopped().unwrap_or(step::Stop::Cancelled)),
            }
        },
    )
}

/// `now()`: the current time as RFC 3339 text. Journaled, so a resumed run sees the same time.
fn now() -> Result<Dynamic, ScriptError> {
    run_leaf("now", json!({}), Durability::Deferred, |_, _| {
        LeafResult::ok(Value::String(jiff::Timestamp::now().to_string()))
    })
}

/// `fail(message)`: ends the run as failed with this message.
fn fail(message: Dynamic) -> Result<Dynamic, ScriptError> {
    let message = message.to_string();
    run_leaf(
        "fail",
        json!({ "message": message }),
        Durability::Deferred,
        |_, _| LeafResult::failed("fail", message.clone()),
    )
}

/// `evidence(name, value)`: attaches a value to the run as evidence.
pub(crate) fn evidence(name: ImmutableString, value: Dynamic) -> Result<Dynamic, ScriptError> {
    let data = to_json(&value);
    run_leaf(
        "evidence",
        json!({ "name": name.as_str() }),
        Durability::Deferred,
        |_, step| {
            let mut result = LeafResult::ok(Value::Null);
            result.extra.push(RecordBody::Evidence {
                step,
                name: name.to_string(),
                data,
            });
            result
        },
    )
}

/// The step name `once(name, ...)` is journaled under.
fn once_step(name: &str) -> String {
    format!("once:{name}")
}

/// `once(name, || ...)`: a value decided once per incident. The first run for an event
/// evaluates the closure (a step named `once:NAME`, its inner steps journaled as usual); a
/// later run of the same runbook for the same event (the alert fired again after the
/// cooldown) gets the value the first run decided, without evaluating the closure. For
/// example the revision an alert blamed when the incident began: a second run must not roll
/// back the rollback. With several replicas the decision is shared through the engine's
/// [`crate::IncidentMemory`], since the first run may have run on another replica.
fn once(ctx: &NativeCallContext, name: &str, body: &FnPtr) -> Result<Dynamic, ScriptError> {
    let cx = current()?;
    let step_name = once_step(name);
    let memory = cx.memory.clone().map(|m| (m, once_key(&cx.meta, name)));
    let shared = match &memory {
        Some((memory, key)) => {
            // A network call: on a thread of its own, not inline on an async worker.
            if cx.inline() {
                return Err(step::needs_thread());
            }
            match cx.block_on(cx.until_stopped(memory.recall(key))) {
                // This run's own decision (a resume): its step replays below.
                Ok(Ok(found)) => found.filter(|(run_id, _)| *run_id != cx.meta.run_id),
                Ok(Err(message)) => {
                    let message = format!("cannot read the incident's decision: {message}");
                    return run_leaf(&step_name, json!({}), Durability::Deferred, move |_, _| {
                        LeafResult::failed("unavailable", message.clone())
                    });
                }
                Err(stop) => {
                    return run_leaf(&step_name, json!({}), Durability::Deferred, move |_, _| {
                        LeafResult::stopped(stop)
                    });
                }
            }
        }
        None => None,
    };
    match shared.or_else(|| earlier_decision(&cx, &step_name)) {
        Some((run_id, value)) => run_leaf(
            &step_name,
            json!({ "decided_by_run": run_id }),
            Durability::Deferred,
            move |_, _| LeafResult::ok(value.clone()),
        ),
        None => composite_step(&step_name, json!({}), || {
            let value = body.call_within_context::<Dynamic>(ctx, ())?;
            if let Some((memory, key)) = &memory {
                share_decision(&cx, memory.as_ref(), key, &value)?;
            }
            Ok(value)
        }),
    }
}

/// The key a `once` decision is shared under: the runbook, the incident, the name.
fn once_key(meta: &firebreak_audit::RunMeta, name: &str) -> String {
    format!("{}\u{1f}{}\u{1f}{name}", meta.runbook, meta.event_id)
}

/// Stores this run's decision for the replicas that handle the incident's later runs; a
/// decision that cannot be stored fails the step (a later run elsewhere would decide again).
fn share_decision(
    cx: &step::RunContext,
    memory: &dyn crate::IncidentMemory,
    key: &str,
    value: &Dynamic,
) -> Result<(), ScriptError> {
    let value: Value = rhai::serde::from_dynamic(value)
        .map_err(|e| step::script_error(format!("once: the value cannot be kept: {e}")))?;
    let stored = cx
        .block_on(cx.until_stopped(memory.remember(key, &cx.meta.run_id, value)))
        .map_err(|stop| step::script_error(format!("once: run {}", stop.token())))?
        .map_err(|message| {
            step::script_error(format!(
                "once: cannot share the incident's decision: {message}"
            ))
        })?;
    if stored.0 != cx.meta.run_id {
        tracing::warn!(run_id = %cx.meta.run_id, decided_by = %stored.0, key, "another run decided this incident's value at the same time; this run goes on with its own");
    }
    Ok(())
}

/// The output of step `step_name` in the earliest other run of this runbook for this event.
fn earlier_decision(cx: &step::RunContext, step_name: &str) -> Option<(String, Value)> {
    let runs = cx.journal.runs_for_event(&cx.meta.event_id);
    runs.iter()
        .filter(|r| r.runbook == cx.meta.runbook && r.run_id != cx.meta.run_id)
        .find_map(|r| {
            let records = cx.journal.records_for_run(&r.run_id).ok()?;
            records.into_iter().find_map(|record| match record.body {
                RecordBody::StepFinished {
                    name,
                    status: StepStatus::Ok | StepStatus::Replayed,
                    outputs,
                    ..
                } if name == step_name => Some((r.run_id.clone(), outputs)),
                _ => None,
            })
        })
}

/// `resolved()`: whether an event that joined the run said its incident resolved.
fn resolved() -> Result<Dynamic, ScriptError> {
    run_leaf("resolved", json!({}), Durability::Deferred, |cx, _| {
        LeafResult::ok(Value::Bool(cx.resolved()))
    })
}

/// Parses a wait: whole milliseconds, or text like `"90s"`, `"5m"`, `"1h30m"`, `"500ms"` (a
/// duration param's text).
pub(crate) fn parse_wait(value: &Dynamic) -> Result<Duration, String> {
    if let Ok(ms) = value.as_int() {
        return u64::try_from(ms)
            .map(Duration::from_millis)
            .map_err(|_| format!("{ms} is not a wait in milliseconds"));
    }
    let text = value.to_string();
    let t = text.trim();
    let unlike = || format!("{t:?} is not a wait like 30000, \"90s\", \"5m\" or \"1h30m\"");
    if t.is_empty() {
        return Err(unlike());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().map_err(|_| unlike())?;
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..letters] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("{t:?} has an unknown unit (ms, s, m or h)")),
        };
        rest = &rest[letters..];
        total = total.saturating_add(n.saturating_mul(ms));
    }
    Ok(Duration::from_millis(total))
}

/// `ms(wait)`: a wait (`"90s"`, `"1h30m"`, a duration param) in milliseconds.
fn ms(value: Dynamic) -> Result<rhai::INT, ScriptError> {
    let wait = parse_wait(&value).map_err(|e| step::script_error(format!("ms: {e}")))?;
    Ok(rhai::INT::try_from(wait.as_millis()).unwrap_or(rhai::INT::MAX))
}

/// `wait_resolved(timeout)`: waits until an event joins the run saying its incident resolved,
/// at most `timeout` (ms, or `"5m"`); returns whether it did. Bounded like `sleep`.
fn wait_resolved(timeout: Dynamic) -> Result<Dynamic, ScriptError> {
    let parsed = parse_wait(&timeout);
    let shown = timeout.to_string();
    let cx = current()?;
    let step = cx.peek_step();
    // Resumed inside this wait: only what was left of it.
    let wait = match parsed {
        Ok(w) if w <= cx.max_sleep => Ok(w.saturating_sub(cx.already_waited(step))),
        Ok(_) => Err(format!(
            "wait_resolved({shown}): the wait must be at most {} ms",
            cx.max_sleep.as_millis()
        )),
        Err(message) => Err(format!("wait_resolved: {message}")),
    };
    // A long wait for an incident still open parks, as a long `sleep` does; a joined event
    // saying it resolved wakes the run early.
    let (parks, durability) = cx.plan_wait(step, wait.as_ref().ok().copied(), !cx.resolved());
    drop(cx);
    run_leaf(
        "wait_resolved",
        json!({ "timeout": shown }),
        durability,
        |cx, step| {
            let wait = match wait {
                Ok(wait) => wait,
                Err(message) => return LeafResult::failed("invalid_argument", message),
            };
            if parks {
                return cx.park(step, "wait_resolved", wait);
            }
            let _waiting = step::Waiting::begin();
            match cx.block_on(cx.until_stopped(cx.wait_resolved(wait))) {
                Ok(resolved) => LeafResult::ok(Value::Bool(resolved)),
                Err(stop) => LeafResult::stopped(stop),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_as_duration_params_write_them() {
        for (text, ms) in [
            ("500ms", 500),
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("2", 2_000),
        ] {
            assert_eq!(
                parse_wait(&Dynamic::from(text.to_owned())),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        assert_eq!(
            parse_wait(&Dynamic::from_int(250)),
            Ok(Duration::from_millis(250))
        );
        for bad in ["", "soon", "5 m", "m5", "3d", "-1s"] {
            assert!(parse_wait(&Dynamic::from(bad.to_owned())).is_err(), "{bad}");
        }
    }
}
