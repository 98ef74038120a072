//! The `prom::` actions: typed arguments, validation, and the calls to [`Api`].
//!
//! Start at [`query`]; [`query_range`], [`check()`] and [`alerts`] follow the same shape:
//! parse and check the arguments (a bad one is a Permanent error naming the parameter), ask
//! Prometheus, shape the answer as JSON for the script.

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use crate::Error;
use crate::api::Api;
use crate::check::{self, Op};
use crate::result;
use crate::time::{parse_duration, parse_time};

/// The most points a range query may ask for per series (Rhai's array limit is 10 000;
/// Prometheus's own is 11 000).
pub const MAX_POINTS_PER_SERIES: u128 = 10_000;

/// `query(promql[, time])`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryArgs {
    pub promql: String,
    /// RFC 3339, Unix seconds, or `"now-10m"`; absent = now.
    #[serde(default)]
    pub time: Option<Value>,
}

/// `query_range(promql, range, step[, end])`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRangeArgs {
    pub promql: String,
    /// How far back from `end`: `"10m"` or seconds.
    pub range: Value,
    /// Resolution: `"30s"` or seconds.
    pub step: Value,
    /// The newest instant; absent = now.
    #[serde(default)]
    pub end: Option<Value>,
}

/// `check(promql, op, threshold[, min_samples_query[, min_samples]])`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckArgs {
    pub promql: String,
    pub op: String,
    pub threshold: f64,
    #[serde(default)]
    pub min_samples_query: Option<String>,
    /// Traffic the `min_samples_query` must reach; default 1.
    #[serde(default)]
    pub min_samples: Option<f64>,
}

/// `alerts()`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsArgs {}

/// An instant query: `{resultType, result: [{metric, value, time}], warnings}`.
pub async fn query(api: &Api, args: QueryArgs) -> Result<Value, Error> {
    let promql = promql("query", "promql", &args.promql)?;
    let time = args
        .time
        .as_ref()
        .map(|t| parse_time(t, Timestamp::now()).map_err(|r| Error::invalid("query", "time", r)))
        .transpose()?;
    let (mut answer, mut warnings) = api.query(&what("query", promql), promql, time).await?;
    result::bound(&mut answer, &mut warnings);
    Ok(result::to_output(&answer, &warnings))
}

/// A range query over the last `range` (before `end`) every `step`:
/// `{resultType: "matrix", result: [{metric, values: [[t, v], ...], summary}], warnings}`.
pub async fn query_range(api: &Api, args: QueryRangeArgs) -> Result<Value, Error> {
    const ACTION: &str = "query_range";
    let promql = promql(ACTION, "promql", &args.promql)?;
    let range = parse_duration(&args.range).map_err(|r| Error::invalid(ACTION, "range", r))?;
    let step = parse_duration(&args.step).map_err(|r| Error::invalid(ACTION, "step", r))?;
    let points = range.as_millis() / step.as_millis().max(1) + 1;
    if points > MAX_POINTS_PER_SERIES {
        return Err(Error::invalid(
            ACTION,
            "step",
            format!(
                "range {range:?} every {step:?} is {points} points per series, more than \
                 {MAX_POINTS_PER_SERIES}; use a larger step"
            ),
        ));
    }
    let now = Timestamp::now();
    let end = match &args.end {
        Some(e) => parse_time(e, now).map_err(|r| Error::invalid(ACTION, "end", r))?,
        None => now,
    };
    let start = SignedDuration::try_from(range)
        .ok()
        .and_then(|r| end.checked_sub(r).ok())
        .ok_or_else(|| Error::invalid(ACTION, "range", "reaches before the earliest time"))?;
    let (mut answer, mut warnings) = api
        .query_range(&what(ACTION, promql), promql, start, end, step)
        .await?;
    result::bound(&mut answer, &mut warnings);
    Ok(result::to_output(&answer, &warnings))
}

/// A metric check: `{verdict: "pass"|"fail"|"inconclusive", value, threshold, op, reason,
/// metric, samples, min_samples}`. Both queries are evaluated at the same instant.
pub async fn check(api: &Api, args: CheckArgs) -> Result<Value, Error> {
    const ACTION: &str = "check";
    let promql = promql(ACTION, "promql", &args.promql)?;
    let op: Op = args
        .op
        .parse()
        .map_err(|r| Error::invalid(ACTION, "op", r))?;
    if !args.threshold.is_finite() {
        return Err(Error::invalid(
            ACTION,
            "threshold",
            "must be a finite number",
        ));
    }
    let samples_query = args
        .min_samples_query
        .as_deref()
        .map(|q| self::promql(ACTION, "min_samples_query", q))
        .transpose()?;
    let min_samples = args.min_samples.unwrap_or(1.0);
    if !min_samples.is_finite() || min_samples < 0.0 {
        return Err(Error::invalid(
            ACTION,
            "min_samples",
            "must be a number >= 0",
        ));
    }
    let now = Timestamp::now();
    let main_what = what(ACTION, promql);
    let samples_what =
        samples_query.map(|q| format!("prom::check min_samples_query {}", quoted(q)));
    let main = api.query(&main_what, promql, Some(now));
    // Asked together; when both fail, the main query's error is the one reported, whichever
    // answer came first (the same failure reads the same in every run and trail).
    let (main, samples) = match (samples_query, &samples_what) {
        (Some(q), Some(w)) => {
            let (main, samples) = futures::join!(main, api.query(w, q, Some(now)));
            (main?, Some(samples?))
        }
        _ => (main.await?, None),
    };
    let outcome = check::evaluate(
        &main.0,
        op,
        args.threshold,
        samples.as_ref().map(|(answer, _)| (answer, min_samples)),
    )
    .map_err(|reason| Error::Unusable {
        what: main_what.clone(),
        reason,
    })?;
    info!(
        query = promql,
        verdict = ?outcome.verdict,
        value = ?outcome.value.map(|v| v.0),
        threshold = args.threshold,
        op = op.as_str(),
        "metric check"
    );
    let mut out = serde_json::to_value(&outcome).unwrap_or_default();
    let warnings: Vec<&String> = main
        .1
        .iter()
        .chain(samples.iter().flat_map(|s| &s.1))
        .collect();
    out["warnings"] = json!(warnings);
    Ok(out)
}

/// Currently firing alerts: `{alerts: [{labels, annotations, state, activeAt, value}], count}`.
pub async fn alerts(api: &Api, _args: AlertsArgs) -> Result<Value, Error> {
    let firing: Vec<_> = api
        .alerts("prom::alerts")
        .await?
        .into_iter()
        .filter(|a| a.state == "firing")
        .collect();
    Ok(json!({ "count": firing.len(), "alerts": firing }))
}

fn promql<'a>(action: &'static str, param: &'static str, text: &'a str) -> Result<&'a str, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::invalid(action, param, "the query is empty"));
    }
    Ok(text)
}

/// `prom::<action> `<query>``, the query shortened for messages.
fn what(action: &str, promql: &str) -> String {
    format!("prom::{action} {}", quoted(promql))
}

fn quoted(promql: &str) -> String {
    const MAX: usize = 120;
    if promql.chars().count() > MAX {
        format!("`{}…`", promql.chars().take(MAX).collect::<String>())
    } else {
        format!("`{promql}`")
    }
}
