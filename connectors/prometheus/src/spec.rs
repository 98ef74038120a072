//! The self-description of every `prom::` action: parameters in positional order, effect
//! (all Observe: they read metrics and touch nothing), no namespace parameter, no RBAC rules
//! (Prometheus is not the Kubernetes API), and an example.
//!
//! Start at [`actions`].

use firebreak_connector::ErrorKind::{Permanent, Timeout};
use firebreak_connector::{ActionSpec, Effect, ErrorDoc, ErrorKind, ParamSpec, ParamType};

fn promql() -> ParamSpec {
    ParamSpec::required("promql", ParamType::String, "the PromQL expression")
}

const fn e(kind: ErrorKind, when: &'static str) -> ErrorDoc {
    ErrorDoc::new(kind, when)
}

/// What Prometheus itself says about a query it will not answer (its `errorType`).
fn query_errors() -> [ErrorDoc; 3] {
    [
        e(
            Permanent,
            "Prometheus rejects the query: `bad_data` (PromQL that does not parse, a bad \
             parameter) or `execution` (e.g. many-to-many matching)",
        ),
        e(
            Timeout,
            "Prometheus gave up on the query (its own query timeout, `errorType: timeout`)",
        ),
        e(
            Permanent,
            "the answer is larger than the connector reads (32 MiB) or holds native histograms, \
             which the connector does not read",
        ),
    ]
}

fn observe(
    name: &'static str,
    doc: &'static str,
    params: Vec<ParamSpec>,
    errors: Vec<ErrorDoc>,
    example: &'static str,
) -> ActionSpec {
    ActionSpec {
        name,
        doc,
        effect: Effect::Observe,
        params,
        namespace_param: None,
        // No action waits: each is one query (or two), bounded by the connector's timeout;
        // a `range` is a span of the past, not a wait.
        waits: None,
        rbac: Vec::new(),
        errors,
        example,
    }
}

/// Every action of the Prometheus connector, in the order `firebreak connectors` lists them.
pub fn actions() -> Vec<ActionSpec> {
    vec![
        observe(
            "query",
            "Instant query (GET /api/v1/query). Returns {resultType, result: [{metric, value, \
             time}], warnings}; scalars and strings come as one element with empty metric; \
             NaN and infinities come as the strings \"NaN\", \"+Inf\", \"-Inf\".",
            vec![
                promql(),
                ParamSpec::optional(
                    "time",
                    ParamType::Any,
                    "evaluation instant: RFC 3339, Unix seconds, or \"now-10m\"; absent = now",
                ),
            ],
            [
                vec![
                    e(Permanent, "`promql` is empty"),
                    e(
                        Permanent,
                        "`time` is not RFC 3339, Unix seconds or \"now-<duration>\"",
                    ),
                ],
                query_errors().to_vec(),
            ]
            .concat(),
            r#"prom::query("histogram_quantile(0.99, sum by (le) (rate(model_request_duration_seconds_bucket{deployment=\"fraud-model\"}[5m])))")"#,
        ),
        observe(
            "query_range",
            "Range query (GET /api/v1/query_range) over the last `range` every `step`. Returns \
             {resultType: \"matrix\", result: [{metric, values: [[t, v], ...], summary: {count, \
             min, max, avg, last}}], warnings}.",
            vec![
                promql(),
                ParamSpec::required(
                    "range",
                    ParamType::Any,
                    "how far back, e.g. \"10m\", or seconds",
                ),
                ParamSpec::required(
                    "step",
                    ParamType::Any,
                    "resolution, e.g. \"30s\", or seconds",
                ),
                ParamSpec::optional(
                    "end",
                    ParamType::Any,
                    "newest instant: RFC 3339, Unix seconds, or \"now-10m\"; absent = now",
                ),
            ],
            [
                vec![
                    e(Permanent, "`promql` is empty"),
                    e(
                        Permanent,
                        "`range` or `step` is not a duration, or `end` not an instant",
                    ),
                    e(
                        Permanent,
                        "`range` every `step` is more than 10000 points per series (use a larger \
                         step)",
                    ),
                ],
                query_errors().to_vec(),
            ]
            .concat(),
            r#"prom::query_range("sum(rate(model_requests_total{code=~\"5..\"}[1m]))", "10m", "30s")"#,
        ),
        observe(
            "check",
            "Metric check `value <op> threshold` that can say inconclusive. Returns {verdict: \
             \"pass\"|\"fail\"|\"inconclusive\", value, threshold, op, reason, metric, samples, \
             min_samples, warnings}. No data, NaN, more than one series, or a min_samples_query \
             below min_samples (default 1) is inconclusive, never a silent pass or fail.",
            vec![
                promql(),
                ParamSpec::required(
                    "op",
                    ParamType::String,
                    "one of \"<\", \"<=\", \">\", \">=\"",
                ),
                ParamSpec::required("threshold", ParamType::Float, "the number to compare with"),
                ParamSpec::optional(
                    "min_samples_query",
                    ParamType::String,
                    "PromQL giving the traffic behind the value (e.g. request count); below \
                     min_samples makes the check inconclusive",
                ),
                ParamSpec::optional(
                    "min_samples",
                    ParamType::Float,
                    "traffic the min_samples_query must reach; default 1",
                ),
            ],
            [
                vec![
                    e(
                        Permanent,
                        "`promql` or `min_samples_query` is empty, `op` is not one of \"<\", \
                         \"<=\", \">\", \">=\", `threshold` is not finite, or `min_samples` is \
                         negative",
                    ),
                    e(
                        Permanent,
                        "a query returns a range vector or a string: a check compares one number \
                         (no data, NaN and several series are not errors: they are \
                         `inconclusive`)",
                    ),
                ],
                query_errors().to_vec(),
            ]
            .concat(),
            r#"prom::check("histogram_quantile(0.99, sum by (le) (rate(model_request_duration_seconds_bucket[5m])))", "<", 0.5, "sum(increase(model_requests_total[5m]))", 100)"#,
        ),
        observe(
            "alerts",
            "Alerts currently firing in Prometheus (GET /api/v1/alerts), as evidence. Returns \
             {count, alerts: [{labels, annotations, state, activeAt, value}]}.",
            vec![],
            vec![],
            "prom::alerts()",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_observes_and_optional_params_come_last() {
        let actions = actions();
        let names: Vec<_> = actions.iter().map(|a| a.name).collect();
        assert_eq!(names, ["query", "query_range", "check", "alerts"]);
        for a in &actions {
            assert_eq!(a.effect, Effect::Observe, "{}", a.name);
            assert_eq!(a.namespace_param, None, "{}", a.name);
            assert!(a.rbac.is_empty(), "{}", a.name);
            assert!(
                a.example.starts_with(&format!("prom::{}(", a.name)),
                "{}",
                a.name
            );
            let first_optional = a
                .params
                .iter()
                .position(|p| !p.required)
                .unwrap_or(a.params.len());
            assert!(
                a.params[first_optional..].iter().all(|p| !p.required),
                "{}",
                a.name
            );
        }
    }
}
