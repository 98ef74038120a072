//! Prometheus query answers: the wire format of `/api/v1/query` and `/api/v1/query_range`
//! decoded into typed results, and those results as the JSON scripts see.
//!
//! Start at [`QueryData`] (the `data` of a successful answer), then [`QueryData::decode`],
//! [`bound`] and [`to_output`].
//! Sample values travel as strings on the wire (`"0.25"`, `"NaN"`, `"+Inf"`); here they are
//! `f64`, and on the way out a [`SampleValue`] writes finite values as JSON numbers and the
//! rest as Prometheus spells them, since JSON has no NaN. Pure; no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// The most series one answer hands to a script; the rest are dropped with a warning.
pub const MAX_SERIES: usize = 500;
/// The most points (samples) one answer hands to a script, over all its series.
pub const MAX_POINTS: usize = 50_000;

/// A series' labels.
pub type Labels = BTreeMap<String, String>;

/// The `data` of a successful query answer, by `resultType`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub enum QueryData {
    /// One sample per series (instant query).
    Vector(Vec<WireInstant>),
    /// Many samples per series (range query, or a range selector in an instant query).
    Matrix(Vec<WireSeries>),
    /// A single number, e.g. `time()` or `1 + 1`.
    Scalar(WireSample),
    /// A string literal.
    String(WireSample),
}

/// `[<unix seconds>, "<value>"]` on the wire.
pub type WireSample = (f64, String);

/// One element of a vector answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WireInstant {
    #[serde(default)]
    pub metric: Labels,
    pub value: Option<WireSample>,
    /// Native histogram sample (experimental in Prometheus 2.x); not supported.
    pub histogram: Option<Value>,
}

/// One element of a matrix answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WireSeries {
    #[serde(default)]
    pub metric: Labels,
    pub values: Option<Vec<WireSample>>,
    /// Native histogram samples (experimental in Prometheus 2.x); not supported.
    pub histograms: Option<Value>,
}

/// A sample value that serializes as a JSON number when finite and as `"NaN"`, `"+Inf"` or
/// `"-Inf"` otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleValue(pub f64);

impl Serialize for SampleValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("+Inf")
        } else {
            s.serialize_str("-Inf")
        }
    }
}

/// Parses a wire value: a Go float (`"1e-3"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
pub fn parse_value(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .map_err(|_| format!("sample value {text:?} is not a number"))
}

/// One series' sample at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub metric: Labels,
    pub value: SampleValue,
    /// Unix seconds of the sample.
    pub time: f64,
}

/// The value of a string answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Text {
    pub metric: Labels,
    pub value: String,
    pub time: f64,
}

/// One series over time, with a summary so scripts need not loop over points.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub metric: Labels,
    /// `[[<unix seconds>, <value>], ...]`, oldest first.
    pub values: Vec<(f64, SampleValue)>,
    pub summary: Summary,
}

/// min/max/avg over a series' values that are not NaN, and its last value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Number of points, NaN included.
    pub count: usize,
    pub min: Option<SampleValue>,
    pub max: Option<SampleValue>,
    pub avg: Option<SampleValue>,
    /// The newest point's value.
    pub last: Option<SampleValue>,
}

impl Summary {
    /// Summarises values given oldest first.
    pub fn of(values: &[(f64, SampleValue)]) -> Self {
        let numbers: Vec<f64> = values
            .iter()
            .map(|(_, v)| v.0)
            .filter(|v| !v.is_nan())
            .collect();
        let (min, max, avg) = if numbers.is_empty() {
            (None, None, None)
        } else {
            let min = numbers.iter().copied().fold(f64::INFINITY, f64::min);
            let max = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let avg = numbers.iter().sum::<f64>() / numbers.len() as f64;
            (
                Some(SampleValue(min)),
                Some(SampleValue(max)),
                Some(SampleValue(avg)),
            )
        };
        Summary {
            count: values.len(),
            min,
            max,
            avg,
            last: values.last().map(|(_, v)| *v),
        }
    }
}

/// A decoded answer: what `prom::query` and `prom::query_range` return.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Vector(Vec<Point>),
    Scalar(Point),
    String(Text),
    Matrix(Vec<Series>),
}

impl Answer {
    /// The `resultType` name Prometheus uses.
    pub fn result_type(&self) -> &'static str {
        match self {
            Answer::Vector(_) => "vector",
            Answer::Scalar(_) => "scalar",
            Answer::String(_) => "string",
            Answer::Matrix(_) => "matrix",
        }
    }
}

impl QueryData {
    /// Decodes wire samples into numbers. Fails on a value that is not a number or on native
    /// histogram samples.
    pub fn decode(self) -> Result<Answer, String> {
        Ok(match self {
            QueryData::Vector(items) => Answer::Vector(
                items
                    .into_iter()
                    .map(|i| {
                        let (time, value) = match (i.value, i.histogram) {
                            (Some(v), _) => v,
                            (None, Some(_)) => return Err(histograms_unsupported()),
                            (None, None) => return Err("a vector sample has no value".to_owned()),
                        };
                        Ok(Point {
                            metric: i.metric,
                            value: SampleValue(parse_value(&value)?),
                            time,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            ),
            QueryData::Matrix(series) => Answer::Matrix(
                series
                    .into_iter()
                    .map(|s| {
                        let values = match (s.values, s.histograms) {
                            (Some(v), _) => v,
                            (None, Some(_)) => return Err(histograms_unsupported()),
                            (None, None) => Vec::new(),
                        };
                        let values = values
                            .into_iter()
                            .map(|(t, v)| Ok((t, SampleValue(parse_value(&v)?))))
                            .collect::<Result<Vec<_>, String>>()?;
                        Ok(Series {
                            metric: s.metric,
                            summary: Summary::of(&values),
                            values,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            ),
            QueryData::Scalar((time, value)) => Answer::Scalar(Point {
                metric: Labels::new(),
                value: SampleValue(parse_value(&value)?),
                time,
            }),
            QueryData::String((time, value)) => Answer::String(Text {
                metric: Labels::new(),
                value,
                time,
            }),
        })
    }
}

fn histograms_unsupported() -> String {
    "native histogram samples are not supported; query a float expression such as \
     histogram_quantile(...)"
        .to_owned()
}

/// Drops series beyond [`MAX_SERIES`] and [`MAX_POINTS`], saying so in `warnings`.
pub fn bound(answer: &mut Answer, warnings: &mut Vec<String>) {
    let total = match answer {
        Answer::Vector(points) => {
            let total = points.len();
            points.truncate(MAX_SERIES);
            (total, points.len())
        }
        Answer::Matrix(series) => {
            let total = series.len();
            let mut budget = MAX_POINTS;
            let keep = series
                .iter()
                .take(MAX_SERIES)
                .take_while(|s| {
                    let fits = s.values.len() <= budget;
                    budget = budget.saturating_sub(s.values.len());
                    fits
                })
                .count();
            series.truncate(keep);
            (total, keep)
        }
        Answer::Scalar(_) | Answer::String(_) => return,
    };
    if total.1 < total.0 {
        warnings.push(format!(
            "firebreak kept {} of {} series (at most {MAX_SERIES} series and {MAX_POINTS} points per answer); narrow the query",
            total.1, total.0
        ));
    }
}

/// The JSON a script gets: `{resultType, result, warnings}`. Scalars and strings become a
/// one-element `result` with empty `metric`, so every answer has the same shape.
pub fn to_output(answer: &Answer, warnings: &[String]) -> Value {
    let result = match answer {
        Answer::Vector(points) => serde_json::to_value(points),
        Answer::Scalar(point) => serde_json::to_value([point]),
        Answer::String(text) => serde_json::to_value([text]),
        Answer::Matrix(series) => serde_json::to_value(series),
    }
    .unwrap_or_default();
    serde_json::json!({
        "resultType": answer.result_type(),
        "result": result,
        "warnings": warnings,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const INSTANT: &str = include_str!("../tests/fixtures/prom-query-instant.json");
    const RANGE: &str = include_str!("../tests/fixtures/prom-query-range.json");

    fn data(fixture: &str) -> QueryData {
        let envelope: Value = serde_json::from_str(fixture).unwrap();
        assert_eq!(envelope["status"], "success");
        serde_json::from_value(envelope["data"].clone()).unwrap()
    }

    #[test]
    fn instant_fixture_decodes_to_two_points() {
        let Answer::Vector(points) = data(INSTANT).decode().unwrap() else {
            panic!("expected a vector")
        };
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].metric["version"], "v1");
        assert_eq!(points[0].value, SampleValue(0.0022222222222222222));
        assert_eq!(points[1].metric["deployment"], "fraud-model");
        assert_eq!(points[1].value, SampleValue(0.2548132290975111));
        assert_eq!(points[1].time, 1795730504.354);
        let out = to_output(&Answer::Vector(points), &[]);
        assert_eq!(out["resultType"], "vector");
        assert_eq!(out["result"][1]["value"], json!(0.2548132290975111));
        assert_eq!(out["result"][1]["metric"]["namespace"], "team-a");
        assert_eq!(out["warnings"], json!([]));
    }

    #[test]
    fn range_fixture_decodes_with_summaries() {
        let Answer::Matrix(series) = data(RANGE).decode().unwrap() else {
            panic!("expected a matrix")
        };
        assert_eq!(series.len(), 2);
        let v2 = &series[1];
        assert_eq!(v2.metric["version"], "v2");
        assert_eq!(v2.values.len(), 19);
        assert_eq!(v2.values[0], (1795730486.103, SampleValue(0.0)));
        assert_eq!(v2.summary.count, 19);
        assert_eq!(v2.summary.min, Some(SampleValue(0.0)));
        assert_eq!(v2.summary.max, Some(SampleValue(0.24971011527180953)));
        assert_eq!(v2.summary.last, Some(SampleValue(0.24971011527180953)));
        let sum: f64 = v2.values.iter().map(|(_, v)| v.0).sum();
        assert_eq!(v2.summary.avg, Some(SampleValue(sum / 19.0)));
        let out = to_output(&Answer::Matrix(series), &[]);
        assert_eq!(out["resultType"], "matrix");
        assert_eq!(
            out["result"][0]["values"][3],
            json!([1795730489.103, 0.0024999999999999996])
        );
        assert_eq!(
            out["result"][0]["summary"]["last"],
            json!(0.0022222222222222222)
        );
    }

    #[test]
    fn non_finite_values_are_kept_as_prometheus_spells_them() {
        assert!(parse_value("NaN").unwrap().is_nan());
        assert_eq!(parse_value("+Inf").unwrap(), f64::INFINITY);
        assert_eq!(parse_value("-Inf").unwrap(), f64::NEG_INFINITY);
        assert_eq!(parse_value("1e-3").unwrap(), 0.001);
        assert_eq!(
            parse_value("fast").unwrap_err(),
            "sample value \"fast\" is not a number"
        );
        let values = json!([
            SampleValue(f64::NAN),
            SampleValue(f64::INFINITY),
            SampleValue(f64::NEG_INFINITY),
            SampleValue(1.5)
        ]);
        assert_eq!(values, json!(["NaN", "+Inf", "-Inf", 1.5]));
    }

    #[test]
    fn summary_skips_nan_but_reports_it_last() {
        let v = |x| (0.0, SampleValue(x));
        let s = Summary::of(&[v(1.0), v(f64::NAN), v(3.0), v(f64::NAN)]);
        assert_eq!(s.count, 4);
        assert_eq!(s.min, Some(SampleValue(1.0)));
        assert_eq!(s.max, Some(SampleValue(3.0)));
        assert_eq!(s.avg, Some(SampleValue(2.0)));
        assert!(s.last.unwrap().0.is_nan());
        let empty = Summary::of(&[v(f64::NAN)]);
        assert_eq!((empty.min, empty.max, empty.avg), (None, None, None));
        let none = Summary::of(&[]);
        assert_eq!((none.count, none.last), (0, None));
    }

    #[test]
    fn scalars_and_strings_have_the_vector_shape() {
        let scalar: QueryData = serde_json::from_value(
            json!({"resultType": "scalar", "result": [1795730504.354, "NaN"]}),
        )
        .unwrap();
        let out = to_output(&scalar.decode().unwrap(), &["w".to_owned()]);
        assert_eq!(
            out,
            json!({"resultType": "scalar", "result": [{"metric": {}, "value": "NaN", "time": 1795730504.354}], "warnings": ["w"]})
        );
        let string: QueryData =
            serde_json::from_value(json!({"resultType": "string", "result": [1.5, "hello"]}))
                .unwrap();
        let out = to_output(&string.decode().unwrap(), &[]);
        assert_eq!(
            out["result"],
            json!([{"metric": {}, "value": "hello", "time": 1.5}])
        );
    }

    #[test]
    fn unknown_extra_fields_are_ignored_and_bad_shapes_refused() {
        let with_stats: QueryData = serde_json::from_value(
            json!({"resultType": "vector", "result": [], "stats": {"timings": {}}}),
        )
        .unwrap();
        assert_eq!(with_stats.decode().unwrap(), Answer::Vector(vec![]));
        assert!(
            serde_json::from_value::<QueryData>(json!({"resultType": "table", "result": []}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<QueryData>(
                json!({"resultType": "vector", "result": [{"metric": {}, "value": [1, 2]}]})
            )
            .is_err()
        );
        let bad_number: QueryData = serde_json::from_value(
            json!({"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]}),
        )
        .unwrap();
        assert_eq!(
            bad_number.decode().unwrap_err(),
            "sample value \"x\" is not a number"
        );
        let histogram: QueryData = serde_json::from_value(json!({"resultType": "vector", "result": [{"metric": {}, "histogram": [1, {"count": "3"}]}]})).unwrap();
        assert!(histogram.decode().unwrap_err().contains("native histogram"));
    }

    #[test]
    fn oversized_answers_are_bounded_with_a_warning() {
        let point = |i: usize| Point {
            metric: Labels::from([("i".to_owned(), i.to_string())]),
            value: SampleValue(1.0),
            time: 0.0,
        };
        let mut answer = Answer::Vector((0..MAX_SERIES + 7).map(point).collect());
        let mut warnings = Vec::new();
        bound(&mut answer, &mut warnings);
        let Answer::Vector(points) = &answer else {
            unreachable!()
        };
        assert_eq!(points.len(), MAX_SERIES);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains(&format!("kept {MAX_SERIES} of {}", MAX_SERIES + 7)));

        let series = |n: usize| Series {
            metric: Labels::new(),
            values: vec![(0.0, SampleValue(1.0)); n],
            summary: Summary::of(&[]),
        };
        let mut answer = Answer::Matrix(vec![series(MAX_POINTS - 10), series(10), series(1)]);
        let mut warnings = Vec::new();
        bound(&mut answer, &mut warnings);
        let Answer::Matrix(kept) = &answer else {
            unreachable!()
        };
        assert_eq!(kept.len(), 2);
        assert!(warnings[0].contains("kept 2 of 3"));

        let mut small = Answer::Vector(vec![point(1)]);
        let mut warnings = Vec::new();
        bound(&mut small, &mut warnings);
        assert!(warnings.is_empty());
    }
}
