//! `canary(opts)`: a progressive canary analysis in one line of a runbook, the way Flagger
//! runs one. Start at [`canary`].
//!
//! The weight goes up through `steps` (or `step_weight` up to `max_weight`); at each weight,
//! every `interval`, each metric is checked with `prom::check` (a value, a threshold, the
//! traffic seen). An interval passes when every metric passes; a failing metric counts a
//! failed check, and `threshold` failed checks roll the canary back (`traffic::reset` to the
//! stable backend); an inconclusive interval (no data, NaN, several series, too little traffic,
//! Prometheus unreachable) holds the weight, and after `inconclusive.limit` of them the
//! analysis rolls back or halts where it is, as `inconclusive.then` says. Nothing that is not
//! a pass ever advances the weight, so a canary without traffic is never promoted.
//!
//! Every shift, wait and check is a journaled step inside one `canary` step, and each interval
//! leaves an evidence record with its numbers and decision. A resumed run replays them from
//! the journal, so it continues at the same weight and interval and never shifts twice.
//! Promotion (copying the canary's template to the stable Deployment) is the runbook's: the
//! analysis answers `outcome: "passed"`, `"rolled_back"` or `"halted"`.

use std::sync::Arc;

use rhai::{Dynamic, Engine, Map as RhaiMap};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::builtins::{composite_step, evidence, parse_wait, sleep};
use crate::connectors::Action;
use crate::reference::{BuiltinSpec, Journaled, StepErrorDoc};
use crate::step::{ScriptError, current, script_error, to_dynamic, to_json};

/// The connector actions an analysis drives; absent when their connector is not configured.
#[derive(Default)]
pub(crate) struct Tools {
    pub(crate) shift: Option<Arc<Action>>,
    pub(crate) reset: Option<Arc<Action>>,
    pub(crate) check: Option<Arc<Action>>,
}

/// `canary(opts)`, registered in [`register`], for the reference.
pub(crate) const SPEC: BuiltinSpec = BuiltinSpec {
    name: "canary",
    signatures: &["canary(opts)"],
    doc: "A progressive canary analysis, the way Flagger runs one. `opts` is a map: \
          `namespace`; `route` (as `traffic::shift` takes it); `stable` and `canary` (backend \
          names); `steps`, rising weights like `[10, 25, 50, 100]`, or `step_weight` (with \
          `max_weight`, default 100); `interval` (ms, or text like `\"30s\"`); `threshold`, \
          failed checks before the canary is rolled back (default 1); `metrics`, a list of \
          `#{name, query, op, threshold, requests, min_requests}`, each checked as \
          `prom::check(query, op, threshold, requests, min_requests)`; `inconclusive`, \
          `#{limit: 3, then: \"rollback\" | \"halt\"}`. At each weight it waits `interval` and \
          checks every metric: only an interval where every metric passes advances the weight; \
          a failed check counts toward `threshold`, which rolls the canary back \
          (`traffic::reset` to `stable`); an inconclusive interval (no data, NaN, several \
          series, too little traffic, Prometheus unreachable or the query refused) holds the \
          weight and counts toward `inconclusive.limit`. Every shift, wait and check is a \
          journaled step inside it and every interval an evidence record, so a resumed run \
          goes on at the same weight and interval without shifting twice. Promotion is the \
          runbook's own (`k8s::promote`).",
    journaled: Journaled::Composite,
    returns: "`#{outcome: \"passed\" | \"rolled_back\" | \"halted\", weight, failed_checks, \
              inconclusive_intervals, intervals, reason, history}`",
    errors: &[
        StepErrorDoc {
            kind: "script",
            when: "`opts` do not fit: an unknown key, both or neither of `steps` and \
                   `step_weight`, steps that do not rise strictly within 1..100, a zero \
                   `interval`, no metrics, `stable` equal to `canary`, a zero `threshold` or \
                   `inconclusive.limit`",
        },
        StepErrorDoc {
            kind: "script",
            when: "the traffic or prom connector is not configured",
        },
        StepErrorDoc {
            kind: "invalid_argument",
            when: "`interval` is longer than the longest wait (see the limits): the first \
                   interval's `sleep` fails",
        },
        StepErrorDoc {
            kind: "any",
            when: "`traffic::shift` or `traffic::reset` failed (see the traffic connector): the \
                   analysis stops with that error. A check that fails to run is inconclusive, \
                   never an error.",
        },
    ],
};

/// Registers `canary(opts)`.
pub(crate) fn register(engine: &mut Engine, tools: Tools) {
    let tools = Arc::new(tools);
    engine.register_fn("canary", move |opts: RhaiMap| canary(&tools, opts));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    namespace: String,
    /// `httproute/NAME`, `virtualservice/NAME` or `service/NAME`, as `traffic::shift` takes it.
    route: String,
    stable: String,
    canary: String,
    #[serde(default)]
    steps: Option<Vec<u32>>,
    #[serde(default)]
    step_weight: Option<u32>,
    #[serde(default)]
    max_weight: Option<u32>,
    /// Milliseconds, or text like `"30s"`.
    interval: Value,
    /// Failed checks before the canary is rolled back.
    #[serde(default = "one")]
    threshold: u32,
    metrics: Vec<Metric>,
    #[serde(default)]
    inconclusive: Inconclusive,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metric {
    name: String,
    /// PromQL whose single value is compared: `value <op> threshold` passes.
    query: String,
    op: String,
    threshold: f64,
    /// PromQL for the traffic seen in the window; below `min_requests` the check is
    /// inconclusive, never a pass.
    #[serde(default)]
    requests: Option<String>,
    #[serde(default)]
    min_requests: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inconclusive {
    #[serde(default = "three")]
    limit: u32,
    #[serde(default)]
    then: Then,
}

fn three() -> u32 {
    3
}

impl Default for Inconclusive {
    fn default() -> Self {
        Self {
            limit: three(),
            then: Then::Rollback,
        }
    }
}

/// What `inconclusive.limit` inconclusive intervals do.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Then {
    /// All traffic back to the stable backend.
    #[default]
    Rollback,
    /// Stop where it is and leave the decision to a person.
    Halt,
}

/// The weights an analysis steps through, checked.
fn weights(opts: &Options) -> Result<Vec<u32>, String> {
    let steps = match (&opts.steps, opts.step_weight) {
        (Some(_), Some(_)) => return Err("give either steps or step_weight, not both".into()),
        (Some(steps), None) => steps.clone(),
        (None, Some(step)) if step > 0 => {
            let max = opts.max_weight.unwrap_or(100).min(100);
            let mut steps: Vec<u32> = (1..).map(|i| i * step).take_while(|w| *w < max).collect();
            steps.push(max);
            steps
        }
        (None, Some(_)) => return Err("step_weight must be above 0".into()),
        (None, None) => return Err("give steps (e.g. [10, 25, 50, 100]) or step_weight".into()),
    };
    if steps.is_empty() {
        return Err("steps is empty".into());
    }
    if steps.iter().any(|w| *w == 0 || *w > 100) || steps.windows(2).any(|p| p[0] >= p[1]) {
        return Err(format!(
            "steps {steps:?} must rise strictly, each between 1 and 100"
        ));
    }
    Ok(steps)
}

fn parse(opts: RhaiMap) -> Result<(Options, Vec<u32>, i64), String> {
    let opts: Options = serde_json::from_value(to_json(&Dynamic::from_map(opts)))
        .map_err(|e| format!("options: {e}"))?;
    let steps = weights(&opts)?;
    let interval = parse_wait(&to_dynamic(&opts.interval)).map_err(|e| format!("interval: {e}"))?;
    if interval.is_zero() {
        return Err("interval must be above 0".into());
    }
    if opts.metrics.is_empty() {
        return Err("metrics is empty: an analysis without a metric would promote blindly".into());
    }
    if opts.stable == opts.canary {
        return Err(format!("stable and canary are both {:?}", opts.stable));
    }
    if opts.threshold == 0 || opts.inconclusive.limit == 0 {
        return Err("threshold and inconclusive.limit must be at least 1".into());
    }
    Ok((opts, steps, interval.as_millis() as i64))
}

/// `canary(#{namespace, route, stable, canary, steps | step_weight [max_weight], interval,
/// threshold, metrics: [#{name, query, op, threshold, requests, min_requests}],
/// inconclusive: #{limit, then: "rollback" | "halt"}})`.
fn canary(tools: &Tools, opts: RhaiMap) -> Result<Dynamic, ScriptError> {
    let (Some(shift), Some(reset), Some(check)) = (&tools.shift, &tools.reset, &tools.check) else {
        return Err(script_error(
            "canary() needs the traffic and prom connectors; configure connectors.prometheus \
             (url) and the Kubernetes cluster"
                .into(),
        ));
    };
    let inputs = to_json(&Dynamic::from_map(opts.clone()));
    let (opts, steps, interval_ms) =
        parse(opts).map_err(|e| script_error(format!("canary: {e}")))?;
    composite_step("canary", inputs, || {
        Analysis {
            opts: &opts,
            shift,
            reset,
            check,
        }
        .run(&steps, interval_ms)
        .map(|out| to_dynamic(&out))
    })
}

struct Analysis<'a> {
    opts: &'a Options,
    shift: &'a Action,
    reset: &'a Action,
    check: &'a Action,
}

/// What `canary()` answers: the outcome, the weight it ended at, the counts
/// (`[failed checks, inconclusive intervals, intervals]`), why, and each interval's decision.
fn summary(
    outcome: &str,
    weight: u32,
    counts: [u32; 3],
    reason: String,
    history: &[Value],
) -> Value {
    let [failed, inconclusive, intervals] = counts;
    json!({
        "outcome": outcome,
        "weight": weight,
        "failed_checks": failed,
        "inconclusive_intervals": inconclusive,
        "intervals": intervals,
        "reason": reason,
        "history": history,
    })
}

/// How one interval went.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decision {
    Pass,
    Fail,
    Inconclusive,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Fail => "fail",
            Decision::Inconclusive => "inconclusive",
        }
    }
}

impl Analysis<'_> {
    fn run(&self, steps: &[u32], interval_ms: i64) -> Result<Value, ScriptError> {
        let o = self.opts;
        let (mut failed, mut inconclusive, mut intervals) = (0u32, 0u32, 0u32);
        let mut history = Vec::new();
        for &weight in steps {
            self.set_weight(weight)?;
            loop {
                let _ = sleep(interval_ms)?;
                intervals += 1;
                let (decision, checks) = self.interval()?;
                match decision {
                    Decision::Pass => {}
                    Decision::Fail => failed += 1,
                    Decision::Inconclusive => inconclusive += 1,
                }
                history.push(json!({ "weight": weight, "decision": decision.as_str() }));
                let record = json!({
                    "interval": intervals,
                    "weight": weight,
                    "decision": decision.as_str(),
                    "checks": checks,
                    "failed_checks": failed,
                    "inconclusive_intervals": inconclusive,
                });
                let _ = evidence(
                    format!("canary interval {intervals}").into(),
                    to_dynamic(&record),
                )?;
                self.progress(weight, decision, &checks);
                let end = |outcome: &str, weight: u32, reason: String| {
                    summary(
                        outcome,
                        weight,
                        [failed, inconclusive, intervals],
                        reason,
                        &history,
                    )
                };
                if failed >= o.threshold {
                    self.roll_back()?;
                    let reason = format!("{failed} failed check(s) at {weight}%");
                    return Ok(end("rolled_back", 0, reason));
                }
                if decision == Decision::Inconclusive && inconclusive >= o.inconclusive.limit {
                    let reason = format!("{inconclusive} inconclusive interval(s) at {weight}%");
                    return Ok(match o.inconclusive.then {
                        Then::Rollback => {
                            self.roll_back()?;
                            end("rolled_back", 0, reason)
                        }
                        Then::Halt => end("halted", weight, reason),
                    });
                }
                if decision == Decision::Pass {
                    break;
                }
            }
        }
        let last = steps.last().copied().unwrap_or_default();
        let reason = format!("every gate passed up to {last}%");
        Ok(summary(
            "passed",
            last,
            [failed, inconclusive, intervals],
            reason,
            &history,
        ))
    }

    fn set_weight(&self, weight: u32) -> Result<(), ScriptError> {
        let o = self.opts;
        let mut weights = RhaiMap::new();
        weights.insert(
            o.stable.as_str().into(),
            Dynamic::from_int((100 - weight).into()),
        );
        weights.insert(o.canary.as_str().into(), Dynamic::from_int(weight.into()));
        let _ = self.shift.call(vec![
            o.namespace.clone().into(),
            o.route.clone().into(),
            Dynamic::from_map(weights),
        ])?;
        Ok(())
    }

    fn roll_back(&self) -> Result<(), ScriptError> {
        let o = self.opts;
        let _ = self.reset.call(vec![
            o.namespace.clone().into(),
            o.route.clone().into(),
            o.stable.clone().into(),
        ])?;
        Ok(())
    }

    /// Checks every metric once: a fail anywhere fails the interval; otherwise anything
    /// inconclusive makes it inconclusive; only all passes pass.
    fn interval(&self) -> Result<(Decision, Vec<Value>), ScriptError> {
        let mut checks = Vec::new();
        let mut decision = Decision::Pass;
        for m in &self.opts.metrics {
            let mut args: Vec<Dynamic> = vec![
                m.query.clone().into(),
                m.op.clone().into(),
                Dynamic::from_float(m.threshold),
            ];
            if let Some(requests) = &m.requests {
                args.push(requests.clone().into());
                args.push(Dynamic::from_float(m.min_requests.unwrap_or(1.0)));
            }
            let (verdict, outcome) = match self.check.call(args) {
                Ok(out) => {
                    let out = to_json(&out);
                    let verdict = match out["verdict"].as_str() {
                        Some("pass") => Decision::Pass,
                        Some("fail") => Decision::Fail,
                        _ => Decision::Inconclusive,
                    };
                    (verdict, out)
                }
                // Cancelled or suspended: the analysis stops here (and resumes here).
                Err(e) if current()?.stopped().is_some() => return Err(e),
                // Prometheus unreachable or the query rejected: never a pass.
                Err(e) => (
                    Decision::Inconclusive,
                    json!({ "verdict": "inconclusive", "reason": e.to_string() }),
                ),
            };
            decision = match (decision, verdict) {
                (Decision::Fail, _) | (_, Decision::Fail) => Decision::Fail,
                (Decision::Inconclusive, _) | (_, Decision::Inconclusive) => Decision::Inconclusive,
                _ => Decision::Pass,
            };
            checks.push(json!({
                "metric": m.name,
                "query": m.query,
                "op": m.op,
                "threshold": m.threshold,
                "value": outcome.get("value").cloned().unwrap_or(Value::Null),
                "requests": outcome.get("samples").cloned().unwrap_or(Value::Null),
                "verdict": verdict.as_str(),
                "reason": outcome.get("reason").cloned().unwrap_or(Value::Null),
            }));
        }
        Ok((decision, checks))
    }

    /// One line per interval for whoever watches the run: a weight bar and each gate.
    fn progress(&self, weight: u32, decision: Decision, checks: &[Value]) {
        let Ok(cx) = current() else { return };
        let filled = (weight as usize).div_ceil(10);
        let bar = format!("{}{}", "█".repeat(filled), "░".repeat(10 - filled));
        let gates: Vec<String> = checks
            .iter()
            .map(|c| {
                let value = c["value"]
                    .as_f64()
                    .map_or("no data".to_owned(), |v| format!("{v:.4}"));
                let mark = match c["verdict"].as_str() {
                    Some("pass") => "✓",
                    Some("fail") => "✗",
                    _ => "?",
                };
                format!(
                    "{} {value} {} {} {mark}",
                    c["metric"].as_str().unwrap_or(""),
                    c["op"].as_str().unwrap_or(""),
                    c["threshold"]
                )
            })
            .collect();
        cx.forward_held(format!(
            "canary {bar} {weight:>3}% │ {} │ {}",
            gates.join(" │ "),
            decision.as_str()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(extra: Value) -> Options {
        let mut base = json!({
            "namespace": "ns", "route": "httproute/r", "stable": "v1", "canary": "v2",
            "interval": "1s",
            "metrics": [{"name": "errors", "query": "x", "op": "<", "threshold": 0.05}],
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn step_weight_climbs_to_the_maximum() {
        let o = options(json!({"step_weight": 20, "max_weight": 50}));
        assert_eq!(weights(&o).unwrap(), vec![20, 40, 50]);
        let o = options(json!({"step_weight": 25}));
        assert_eq!(weights(&o).unwrap(), vec![25, 50, 75, 100]);
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        let base = json!({
            "namespace": "ns", "route": "httproute/r", "stable": "v1", "canary": "v2",
            "steps": [10, 50], "interval": "1s",
            "metrics": [{"name": "errors", "query": "x", "op": "<", "threshold": 0.05}],
        });
        let with = |key: &str, value: Value| {
            let mut o = base.clone();
            o[key] = value;
            crate::step::to_dynamic(&o).cast::<RhaiMap>()
        };
        for (opts, says) in [
            (with("colour", json!("red")), "unknown field `colour`"),
            (with("interval", json!("soon")), "interval"),
            (with("interval", json!(0)), "interval must be above 0"),
            (with("metrics", json!([])), "metrics is empty"),
            (with("canary", json!("v1")), "stable and canary are both"),
            (with("threshold", json!(0)), "at least 1"),
            (
                with("inconclusive", json!({"then": "pray"})),
                "unknown variant `pray`",
            ),
        ] {
            let e = parse(opts).unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
        assert!(parse(crate::step::to_dynamic(&base).cast()).is_ok());
    }

    #[test]
    fn bad_steps_are_refused_with_a_reason() {
        for (extra, says) in [
            (json!({}), "give steps"),
            (json!({"steps": []}), "empty"),
            (json!({"steps": [10, 10]}), "rise strictly"),
            (json!({"steps": [50, 101]}), "rise strictly"),
            (json!({"steps": [10], "step_weight": 5}), "not both"),
            (json!({"step_weight": 0}), "above 0"),
        ] {
            let e = weights(&options(extra.clone())).unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
    }
}
