//! Metric checks that can say **inconclusive** (DESIGN.md: "no data or too little traffic
//! must neither pass nor fail a canary silently").
//!
//! Start at [`evaluate`]: it takes the answers of the check's query and of its optional
//! `min_samples_query` and returns a [`CheckOutcome`]. A check passes or fails only when the
//! query gives exactly one number that is not NaN and the traffic query, if any, gives one
//! number of at least `min_samples`; every other case is [`Verdict::Inconclusive`] with a
//! reason a person can act on. Pure; the queries are run by [`crate::actions::check`].

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::result::{Answer, Labels, Point, SampleValue};

/// A comparison a check applies as `value <op> threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    /// The operator as scripts write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    /// Whether `value <op> threshold` holds (never for NaN).
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
        }
    }
}

impl FromStr for Op {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            other => {
                return Err(format!(
                    "{other:?} is not one of \"<\", \"<=\", \">\", \">=\""
                ));
            }
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Op {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The value is on the good side of the threshold.
    Pass,
    /// The value is on the bad side of the threshold.
    Fail,
    /// There was nothing trustworthy to compare: no data, NaN, several series, too little
    /// traffic.
    Inconclusive,
}

/// What `prom::check` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckOutcome {
    pub verdict: Verdict,
    /// The query's value, when it gave exactly one (`"NaN"` stays visible).
    pub value: Option<SampleValue>,
    pub threshold: f64,
    pub op: Op,
    /// Why this verdict, in words.
    pub reason: String,
    /// The labels of the series the value came from.
    pub metric: Option<Labels>,
    /// The `min_samples_query`'s value, when one was given and it gave exactly one.
    pub samples: Option<SampleValue>,
    /// The traffic needed, when a `min_samples_query` was given.
    pub min_samples: Option<f64>,
}

/// What one query gave, for a check.
enum Single<'a> {
    NoData,
    Many(usize),
    One(&'a Point),
}

/// The one value of an instant answer, or why there is none. A range vector or a string
/// cannot be checked: that is a mistake in the script, reported as an error.
fn single(answer: &Answer) -> Result<Single<'_>, String> {
    match answer {
        Answer::Vector(points) => Ok(match points.as_slice() {
            [] => Single::NoData,
            [one] => Single::One(one),
            many => Single::Many(many.len()),
        }),
        Answer::Scalar(point) => Ok(Single::One(point)),
        Answer::Matrix(_) => Err(
            "a check needs an instant vector or a scalar, and this query returns a range vector \
             (drop the [range] selector or wrap it in a function such as rate())"
                .to_owned(),
        ),
        Answer::String(_) => {
            Err("a check needs a number, and this query returns a string".to_owned())
        }
    }
}

/// The traffic gate: `None` when there is enough, else the reason for inconclusive.
fn traffic_problem(samples: &Single<'_>, min_samples: f64) -> Option<String> {
    match samples {
        Single::NoData => {
            Some("min_samples_query returned no data: no traffic to judge".to_owned())
        }
        Single::Many(n) => Some(format!(
            "min_samples_query returned {n} series; it must return one (aggregate it, e.g. sum(...))"
        )),
        Single::One(p) if p.value.0.is_nan() => Some("min_samples_query returned NaN".to_owned()),
        Single::One(p) if p.value.0 < min_samples => Some(format!(
            "too little traffic: min_samples_query returned {}, fewer than {}",
            p.value.0, min_samples
        )),
        Single::One(_) => None,
    }
}

/// Decides a check from the query's answer and, if given, the `min_samples_query`'s answer
/// with the traffic it must reach. `Err` when an answer has a type a check cannot compare.
pub fn evaluate(
    answer: &Answer,
    op: Op,
    threshold: f64,
    samples: Option<(&Answer, f64)>,
) -> Result<CheckOutcome, String> {
    let main = single(answer)?;
    let gate = match samples {
        Some((samples, min)) => Some((
            single(samples).map_err(|e| format!("min_samples_query: {e}"))?,
            min,
        )),
        None => None,
    };
    let one = match &main {
        Single::One(p) => Some(*p),
        _ => None,
    };
    let (verdict, reason) = if let Some(problem) =
        gate.as_ref().and_then(|(s, min)| traffic_problem(s, *min))
    {
        (Verdict::Inconclusive, problem)
    } else {
        match main {
            Single::NoData => (
                Verdict::Inconclusive,
                "the query returned no data (no such series, or no samples in its window)"
                    .to_owned(),
            ),
            Single::Many(n) => (
                Verdict::Inconclusive,
                format!(
                    "the query returned {n} series; a check needs exactly one (aggregate it, e.g. max(...) or sum(...))"
                ),
            ),
            Single::One(p) if p.value.0.is_nan() => (
                Verdict::Inconclusive,
                "the query returned NaN (e.g. 0/0: no requests in the window)".to_owned(),
            ),
            Single::One(p) if op.holds(p.value.0, threshold) => (
                Verdict::Pass,
                format!("{} {op} {threshold}", show(p.value.0)),
            ),
            Single::One(p) => (
                Verdict::Fail,
                format!("{} is not {op} {threshold}", show(p.value.0)),
            ),
        }
    };
    Ok(CheckOutcome {
        verdict,
        value: one.map(|p| p.value),
        threshold,
        op,
        reason,
        metric: one.map(|p| p.metric.clone()),
        samples: gate.as_ref().and_then(|(s, _)| match s {
            Single::One(p) => Some(p.value),
            _ => None,
        }),
        min_samples: gate.map(|(_, min)| min),
    })
}

fn show(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{Series, Summary, Text};

    fn point(v: f64) -> Point {
        Point {
            metric: Labels::from([("version".to_owned(), "v2".to_owned())]),
            value: SampleValue(v),
            time: 1.0,
        }
    }

    fn vector(values: &[f64]) -> Answer {
        Answer::Vector(values.iter().copied().map(point).collect())
    }

    fn verdict(answer: &Answer, op: &str, threshold: f64) -> (Verdict, String) {
        let o = evaluate(answer, op.parse().unwrap(), threshold, None).unwrap();
        (o.verdict, o.reason)
    }

    #[test]
    fn each_operator_on_both_sides_of_the_threshold() {
        let cases = [
            ("<", 0.5, 1.0, Verdict::Pass),
            ("<", 1.0, 1.0, Verdict::Fail),
            ("<=", 1.0, 1.0, Verdict::Pass),
            ("<=", 1.5, 1.0, Verdict::Fail),
            (">", 2.0, 1.0, Verdict::Pass),
            (">", 1.0, 1.0, Verdict::Fail),
            (">=", 1.0, 1.0, Verdict::Pass),
            (">=", 0.9, 1.0, Verdict::Fail),
            ("<", f64::INFINITY, 1.0, Verdict::Fail),
            (">", f64::INFINITY, 1.0, Verdict::Pass),
        ];
        for (op, value, threshold, expected) in cases {
            assert_eq!(
                verdict(&vector(&[value]), op, threshold).0,
                expected,
                "{value} {op} {threshold}"
            );
        }
        let o = evaluate(&vector(&[0.25]), Op::Lt, 0.5, None).unwrap();
        assert_eq!(o.reason, "0.25 < 0.5");
        assert_eq!(o.value, Some(SampleValue(0.25)));
        assert_eq!(o.metric.unwrap()["version"], "v2");
        let o = evaluate(&vector(&[0.75]), Op::Lt, 0.5, None).unwrap();
        assert_eq!(o.reason, "0.75 is not < 0.5");
    }

    #[test]
    fn scalars_can_be_checked() {
        let scalar = Answer::Scalar(point(3.0));
        assert_eq!(verdict(&scalar, ">=", 3.0).0, Verdict::Pass);
    }

    #[test]
    fn no_data_nan_and_many_series_are_inconclusive() {
        let (v, reason) = verdict(&vector(&[]), "<", 1.0);
        assert_eq!(v, Verdict::Inconclusive);
        assert!(reason.contains("no data"), "{reason}");
        let (v, reason) = verdict(&vector(&[f64::NAN]), "<", 1.0);
        assert_eq!(v, Verdict::Inconclusive);
        assert!(reason.contains("NaN"), "{reason}");
        let (v, reason) = verdict(&vector(&[0.1, 0.2, 0.3]), "<", 1.0);
        assert_eq!(v, Verdict::Inconclusive);
        assert!(reason.contains("3 series"), "{reason}");
        let out = serde_json::to_value(evaluate(&vector(&[f64::NAN]), Op::Gt, 1.0, None).unwrap())
            .unwrap();
        assert_eq!(out["verdict"], "inconclusive");
        assert_eq!(out["value"], "NaN");
        assert_eq!(out["op"], ">");
    }

    #[test]
    fn too_little_traffic_is_inconclusive_even_with_a_good_value() {
        let good = vector(&[0.1]);
        let cases: [(Answer, &str); 4] = [
            (
                vector(&[0.0]),
                "too little traffic: min_samples_query returned 0, fewer than 1",
            ),
            (
                vector(&[]),
                "min_samples_query returned no data: no traffic to judge",
            ),
            (vector(&[5.0, 6.0]), "min_samples_query returned 2 series"),
            (vector(&[f64::NAN]), "min_samples_query returned NaN"),
        ];
        for (samples, reason) in cases {
            let o = evaluate(&good, Op::Lt, 1.0, Some((&samples, 1.0))).unwrap();
            assert_eq!(o.verdict, Verdict::Inconclusive, "{reason}");
            assert!(o.reason.starts_with(reason), "{}", o.reason);
            assert_eq!(
                o.value,
                Some(SampleValue(0.1)),
                "the value is still reported"
            );
        }
        let enough = evaluate(&good, Op::Lt, 1.0, Some((&vector(&[120.0]), 100.0))).unwrap();
        assert_eq!(enough.verdict, Verdict::Pass);
        assert_eq!(enough.samples, Some(SampleValue(120.0)));
        assert_eq!(enough.min_samples, Some(100.0));
        let short = evaluate(&good, Op::Lt, 1.0, Some((&vector(&[99.0]), 100.0))).unwrap();
        assert_eq!(short.verdict, Verdict::Inconclusive);
        assert_eq!(short.samples, Some(SampleValue(99.0)));
    }

    #[test]
    fn ranges_and_strings_cannot_be_checked() {
        let matrix = Answer::Matrix(vec![Series {
            metric: Labels::new(),
            values: vec![],
            summary: Summary::of(&[]),
        }]);
        assert!(
            evaluate(&matrix, Op::Lt, 1.0, None)
                .unwrap_err()
                .contains("range vector")
        );
        let text = Answer::String(Text {
            metric: Labels::new(),
            value: "x".into(),
            time: 0.0,
        });
        assert!(
            evaluate(&text, Op::Lt, 1.0, None)
                .unwrap_err()
                .contains("string")
        );
        let e = evaluate(&vector(&[1.0]), Op::Lt, 1.0, Some((&matrix, 1.0))).unwrap_err();
        assert!(e.starts_with("min_samples_query: "), "{e}");
    }

    #[test]
    fn operators_parse_and_bad_ones_are_refused() {
        for op in ["<", "<=", ">", ">="] {
            assert_eq!(op.parse::<Op>().unwrap().as_str(), op);
        }
        for bad in ["==", "=<", "lt", ""] {
            assert!(
                bad.parse::<Op>().unwrap_err().contains("is not one of"),
                "{bad}"
            );
        }
    }
}
