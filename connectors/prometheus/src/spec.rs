//! The self-description of every `prom::` action: parameters in positional order, effect
//! (all Observe: they read metrics and touch nothing), no namespace parameter, no RBAC rules
//! (Prometheus is not the Kubernetes API), and an example.
//!
//! Start at [`actions`].

use firebreak_connector::{ActionSpec, Effect, ParamSpec, ParamType};

fn promql() -> ParamSpec {
    ParamSpec::required("promql", ParamType::String, "the PromQL expression")
}

fn observe(
    name: &'static str,
    doc: &'static str,
    params: Vec<ParamSpec>,
    example: &'static str,
) -> ActionSpec {
    ActionSpec {
        name,
        doc,
        effect: Effect::Observe,
        params,
        namespace_param: None,
        rbac: Vec::new(),
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
            r#"prom::check("histogram_quantile(0.99, sum by (le) (rate(model_request_duration_seconds_bucket[5m])))", "<", 0.5, "sum(increase(model_requests_total[5m]))", 100)"#,
        ),
        observe(
            "alerts",
            "Alerts currently firing in Prometheus (GET /api/v1/alerts), as evidence. Returns \
             {count, alerts: [{labels, annotations, state, activeAt, value}]}.",
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
