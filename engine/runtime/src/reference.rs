//! What a script can use, as data: the built-ins, the `ctx` map, the sandbox's rules and
//! limits, what the engine adds around every connector action, and how it handles each error
//! kind. The binary renders it, together with the connectors' own action specs, as
//! `docs/RUNBOOKS.md` (`firebreak connectors --markdown`).
//!
//! Start at [`builtins`]. Each table sits beside what it describes, so a change shows up next
//! to it: a built-in's spec beside its registration (`builtins`, `connectors::CONNECTED`,
//! `canary::SPEC`), the `ctx` keys beside the code that fills them (`runner::CTX_KEYS`), the
//! limits beside their defaults ([`crate::Limits::docs`], [`crate::Budget::docs`]). The tests below hold
//! the built-ins' table to what is registered.

use std::time::Duration;

use firebreak_connector::{Effect, ErrorKind, WaitSpec};

use crate::connectors::WAIT_MARGIN;
use crate::{RetryPolicy, RunnerConfig};

/// One function every script has (not a connector action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinSpec {
    pub name: &'static str,
    /// How a script calls it, one line per form, e.g. `step(name, || ...)`.
    pub signatures: &'static [&'static str],
    pub doc: &'static str,
    pub journaled: Journaled,
    /// What the call evaluates to.
    pub returns: &'static str,
    /// How it can fail.
    pub errors: &'static [StepErrorDoc],
}

/// Whether and how a built-in leaves records in the run's audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journaled {
    /// Not a step: a helper that records nothing.
    No,
    /// A step whose records join the run's next durable write: it touches nothing outside the
    /// engine, so a crash before that write loses nothing a re-run would not do again.
    Deferred,
    /// A step that waits or acts: its start is durable before it does, its end before the
    /// script goes on.
    WriteAhead,
    /// A step around a closure: its start and end frame the steps inside, each journaled on
    /// its own.
    Composite,
}

impl Journaled {
    /// One line for people.
    pub fn describe(self) -> &'static str {
        match self {
            Journaled::No => "no: a helper, not a step",
            Journaled::Deferred => {
                "yes, a step; its records join the run's next durable write (it touches nothing \
                 outside the engine)"
            }
            Journaled::WriteAhead => {
                "yes, a step; its start is durable before it waits, its end before the script \
                 goes on"
            }
            Journaled::Composite => {
                "yes, a step around the closure; the steps inside are numbered and journaled on \
                 their own"
            }
        }
    }
}

/// One way a built-in (or the engine around an action) fails: the kind the step is journaled
/// with, or what ends the run, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepErrorDoc {
    pub kind: &'static str,
    pub when: &'static str,
}

/// One key of the `ctx` map every script sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtxKey {
    pub name: &'static str,
    /// The Rhai type: `map`, `string`, `bool`.
    pub ty: &'static str,
    pub doc: &'static str,
}

/// One bound a run is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDoc {
    pub name: &'static str,
    /// The value in force, for people (`10,000`, `1 MiB`, `300 s`).
    pub value: String,
    /// Where to change it in firebreak.yaml, if anywhere.
    pub setting: Option<&'static str>,
    pub doc: &'static str,
}

/// How a run can end, or a step's failure reach the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub what: &'static str,
    /// Whether `try { ... } catch (e) { ... }` sees it.
    pub catchable: bool,
    pub doc: &'static str,
}

/// An error the engine itself gives a connector action's step, whatever the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    pub kind: &'static str,
    pub when: String,
}

/// Every built-in, in the order the reference lists them.
pub fn builtins() -> Vec<BuiltinSpec> {
    let mut all = crate::builtins::SPECS.to_vec();
    all.push(crate::connectors::CONNECTED);
    all.push(crate::canary::SPEC);
    all
}

/// The keys of `ctx`, in the order the reference lists them.
pub fn ctx() -> Vec<CtxKey> {
    crate::runner::CTX_KEYS.to_vec()
}

/// The sandbox's rules, one sentence each.
pub fn sandbox_rules() -> Vec<&'static str> {
    crate::sandbox::RULES.to_vec()
}

/// Every bound a run is held to under `config`: the sandbox's limits, the run's budgets and
/// the engine's limit on one connector call.
pub fn limits(config: &RunnerConfig) -> Vec<LimitDoc> {
    let mut all = config.limits.docs();
    all.extend(config.budget.docs());
    all.push(LimitDoc {
        name: "connector call",
        value: format!(
            "{}, or for an action that waits, its wait plus {}",
            seconds(config.action_timeout),
            seconds(WAIT_MARGIN)
        ),
        setting: None,
        doc: "one attempt of one connector action. An action that waits by design (its \
              reference says **Waits**, e.g. `k8s::wait_rollout`'s `timeout`) may run for its \
              wait plus the margin when that is longer, so the wait the script asked for is \
              kept; the run's `timeout` bounds every call",
    });
    all
}

/// How a failed step reaches the script, and what ends a run from outside the script.
pub fn outcomes() -> Vec<Outcome> {
    vec![
        Outcome {
            what: "a failed step",
            catchable: true,
            doc: "the step is journaled as failed with its kind and message, and the script \
                  gets the error ``step N `name` failed (kind): message``; uncaught, the run \
                  ends `failed` with it",
        },
        Outcome {
            what: "`cancelled`",
            catchable: false,
            doc: "someone cancelled the run (the API, Ctrl-C in `firebreak run`)",
        },
        Outcome {
            what: "`timed_out`",
            catchable: false,
            doc: "the runbook's `timeout` passed (an approval's expiry is added to it)",
        },
        Outcome {
            what: "`failed` by a limit",
            catchable: false,
            doc: "the script went past a sandbox limit (operations, sizes, call depth) or the \
                  run spent one of its budgets; the reason is journaled",
        },
        Outcome {
            what: "`denied`, `expired`",
            catchable: false,
            doc: "an approver said no, or nobody approved before the request expired",
        },
        Outcome {
            what: "suspended (no end)",
            catchable: false,
            doc: "the engine is stopping: the run stops at once without an end record and the \
                  next start resumes it, running the step in flight again (a wait for what was \
                  left of it, a mutation by applying its journaled intent)",
        },
    ]
}

/// What the engine does with a connector action that failed with `kind`, under `policy`.
pub fn handling(kind: ErrorKind, policy: &RetryPolicy) -> String {
    match kind {
        ErrorKind::Transient => {
            let waits: Vec<String> = (1..policy.max_attempts)
                .filter_map(|attempt| policy.next_delay(kind, attempt))
                .map(millis)
                .collect();
            format!(
                "retried: {} attempts in all, waiting {} between them (a mutation's apply is \
                 retried with the intent already journaled, never planned again). The last \
                 failure fails the step; its message ends `(after N attempts)`.",
                policy.max_attempts,
                waits.join(", ")
            )
        }
        ErrorKind::Conflict => "fails the step at once: the connector already read again and \
                                wrote again while the change in between left its intent valid; \
                                what is left is someone else's change, never overwritten."
            .to_owned(),
        ErrorKind::Denied => "fails the step at once; a refusal by the engine (namespace, \
                              cluster grant, guard rail) is also journaled as a `refusal` record."
            .to_owned(),
        ErrorKind::Timeout => "fails the step at once, not retried.".to_owned(),
        ErrorKind::Permanent | ErrorKind::NotFound => "fails the step at once.".to_owned(),
    }
}

/// The errors the engine gives any connector action's step, before or around the connector.
pub fn action_errors(config: &RunnerConfig) -> Vec<EngineError> {
    vec![
        EngineError {
            kind: "invalid_argument",
            when: "an argument's type does not fit its parameter (a string where an int is \
                   expected); checked before the action runs. An unknown action or a wrong \
                   number of arguments is refused when the script loads (`firebreak check`)."
                .to_owned(),
        },
        EngineError {
            kind: "denied",
            when: "the action's namespace parameter names a namespace outside the runbook's \
                   `namespaces` (or is missing); reads are refused too"
                .to_owned(),
        },
        EngineError {
            kind: "denied",
            when: "a mutation without a namespace parameter (it acts on the whole cluster) and, \
                   with a teams file, the run's team has no `cluster_actions` grant naming it"
                .to_owned(),
        },
        EngineError {
            kind: "denied",
            when: "a guard rail of the teams file refuses a mutation: a deployment policy on \
                   what the pods would run, a freeze window, or the blast-radius window"
                .to_owned(),
        },
        EngineError {
            kind: "timeout",
            when: format!(
                "no answer within {} for one attempt (the engine's limit per connector call; \
                 for an action that waits, its wait plus {} when that is longer), or before the \
                 run's `timeout`",
                seconds(config.action_timeout),
                seconds(WAIT_MARGIN)
            ),
        },
        EngineError {
            kind: "audit",
            when: "the audit journal could not write the step's records: the step fails, it \
                   never goes on unjournaled"
                .to_owned(),
        },
    ]
}

/// What the engine does around a connector action with a given [`Effect`], for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectDoc {
    /// One line, for each action.
    pub short: &'static str,
    /// The whole of it, once.
    pub long: &'static str,
}

/// What a connector action with `effect` does around the connector.
pub fn effect(effect: Effect) -> EffectDoc {
    match effect {
        Effect::Observe => EffectDoc {
            short: "observe: reads only; its answer is kept as evidence; runs in dry runs too",
            long: "Reads only. Journaled as a step (its start durable before the call, its end \
                   before the script goes on), and its answer is attached to the run as \
                   evidence. Runs in dry runs too.",
        },
        Effect::Mutate => EffectDoc {
            short: "mutate: its intent is journaled before it writes; a dry run answers the plan \
                    and writes nothing; waits for approval when the runbook asks for one",
            long: "Changes the world, in two halves. The connector plans (reads, and resolves an \
                   intent), the engine journals the intent before anything is written, then the \
                   connector applies it: it writes nothing when the world already holds it, and \
                   confirms the effect before it answers (the answer carries `changed`). A retry \
                   or a resumed run applies the journaled intent again and never plans twice. In \
                   a dry run it answers the plan (`dry_run: true`, `changed: false`, `would`, \
                   and the intent's fields) and never writes. It waits for approval first when \
                   the runbook asks for one, and the teams file's guard rails can refuse it.",
        },
    }
}

/// How long an action that waits by design may run, for people: what sets its wait and the
/// engine's limit on one attempt of it ([`crate::connectors::attempt_limit`]).
pub fn wait_rule(waits: &WaitSpec, config: &RunnerConfig) -> String {
    let wait = match waits.param {
        Some(p) => format!("up to `{p}` (default {})", seconds(waits.default)),
        None => format!("up to {}", seconds(waits.default)),
    };
    format!(
        "{wait}; the engine lets one attempt run that plus {}, or {} when that is longer, and \
         never past the run's `timeout`",
        seconds(WAIT_MARGIN),
        seconds(config.action_timeout)
    )
}

/// Which namespace an action may touch, for people: the engine's tenancy rule applied to
/// `qualified` (`k8s::cordon`), whose namespace parameter is `param`.
pub fn namespace_rule(qualified: &str, param: Option<&str>, effect: Effect) -> String {
    match (param, effect) {
        (Some(p), _) => {
            format!("`{p}`: the engine refuses any namespace outside the runbook's `namespaces`")
        }
        (None, Effect::Mutate) => format!(
            "none: it acts on the whole cluster; with a teams file the team needs a \
             `cluster_actions` grant naming `{qualified}`"
        ),
        (None, Effect::Observe) => "none".to_owned(),
    }
}

/// `1,000,000`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `16 MiB`, `1 KiB`, or bytes.
pub(crate) fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", count(n >> 20)),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", count(n >> 10)),
        n => format!("{} bytes", count(n)),
    }
}

/// `300 s`, or `250 ms` below a second or off the second.
pub(crate) fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 && !d.is_zero() {
        format!("{} s", count(d.as_secs()))
    } else {
        millis(d)
    }
}

fn millis(d: Duration) -> String {
    format!("{} ms", count(d.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use firebreak_connector::Registry;
    use rhai::Engine;

    use super::*;

    /// How many arguments a signature like `step(name, || ...)` passes.
    fn arity(signature: &str) -> usize {
        let inner = signature
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(inner, _)| inner.trim())
            .unwrap_or_else(|| panic!("{signature} has no (arguments)"));
        if inner.is_empty() {
            return 0;
        }
        let mut depth = 0i32;
        let mut commas = 0;
        for c in inner.chars() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => commas += 1,
                _ => {}
            }
        }
        commas + 1
    }

    #[test]
    fn the_builtins_table_is_what_scripts_get() {
        // Every function a script gets beside the standard packages and connector modules.
        let mut engine = Engine::new_raw();
        crate::builtins::register(&mut engine);
        crate::connectors::register(&mut engine, &Registry::new());
        let registered: BTreeSet<(String, usize)> = engine
            .collect_fn_metadata(
                None,
                |f| Some((f.metadata.name.to_string(), f.metadata.num_params)),
                false,
            )
            .into_iter()
            .collect();
        let documented: BTreeSet<(String, usize)> = builtins()
            .iter()
            .flat_map(|b| {
                b.signatures.iter().map(|s| {
                    assert!(
                        s.starts_with(&format!("{}(", b.name)),
                        "{s} under {}",
                        b.name
                    );
                    (b.name.to_owned(), arity(s))
                })
            })
            .collect();
        assert_eq!(
            documented, registered,
            "the built-ins' specs (name, arity) must match what is registered"
        );
    }

    #[test]
    fn every_builtin_says_what_it_does_and_returns() {
        let all = builtins();
        let names: BTreeSet<_> = all.iter().map(|b| b.name).collect();
        assert_eq!(names.len(), all.len(), "a built-in listed twice");
        for b in &all {
            assert!(!b.doc.is_empty() && !b.returns.is_empty(), "{}", b.name);
        }
    }

    #[test]
    fn values_read_like_people_write_them() {
        assert_eq!(count(10_000_000), "10,000,000");
        assert_eq!(count(100), "100");
        assert_eq!(bytes(1 << 20), "1 MiB");
        assert_eq!(bytes(16 << 20), "16 MiB");
        assert_eq!(bytes(1500), "1,500 bytes");
        assert_eq!(seconds(Duration::from_secs(300)), "300 s");
        assert_eq!(seconds(Duration::from_millis(200)), "200 ms");
    }

    #[test]
    fn the_wait_rule_says_what_the_engine_allows() {
        let config = RunnerConfig::default();
        let by_param = WaitSpec::by_param("timeout", Duration::from_secs(300));
        assert_eq!(
            wait_rule(&by_param, &config),
            "up to `timeout` (default 300 s); the engine lets one attempt run that plus 30 s, \
             or 120 s when that is longer, and never past the run's `timeout`"
        );
        let fixed = WaitSpec::fixed(Duration::from_secs(60));
        assert!(wait_rule(&fixed, &config).starts_with("up to 60 s; "));
        let limits = limits(&config);
        let call = limits.iter().find(|l| l.name == "connector call").unwrap();
        assert_eq!(
            call.value,
            "120 s, or for an action that waits, its wait plus 30 s"
        );
    }

    #[test]
    fn transient_handling_follows_the_policy() {
        let text = handling(ErrorKind::Transient, &RetryPolicy::default());
        assert!(text.contains("4 attempts"), "{text}");
        assert!(text.contains("200 ms, 400 ms, 800 ms"), "{text}");
    }
}
