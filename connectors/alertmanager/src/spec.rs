//! The self-description of every `am::` action. Start at [`actions`].

use firebreak_connector::{ActionSpec, Effect, ParamSpec, ParamType};

fn action(
    name: &'static str,
    doc: &'static str,
    effect: Effect,
    params: Vec<ParamSpec>,
    example: &'static str,
) -> ActionSpec {
    ActionSpec {
        name,
        doc,
        effect,
        params,
        namespace_param: None,
        rbac: Vec::new(),
        example,
    }
}

/// Every action of the Alertmanager connector.
pub fn actions() -> Vec<ActionSpec> {
    vec![
        action(
            "silence",
            "Silences the alerts the matchers select for `duration`, answering the silence id \
             Alertmanager returned ({id, matchers, ends_at}). The comment carries the run, so \
             a retry or a resume finds this silence instead of making another.",
            Effect::Mutate,
            vec![
                ParamSpec::required(
                    "matchers",
                    ParamType::Any,
                    "a map label → value, or a list like [\"alertname=\\\"X\\\"\", \"service=~\\\"a|b\\\"\"]",
                ),
                ParamSpec::required("duration", ParamType::Any, "seconds, or \"30m\", \"2h\""),
                ParamSpec::optional("comment", ParamType::String, "why, for people"),
            ],
            r#"let s = am::silence(#{alertname: ctx.labels.alertname, namespace: ns}, "30m", "firebreak is rolling back");"#,
        ),
        action(
            "expire",
            "Expires (lifts) a silence by id; an expired one is left as it is.",
            Effect::Mutate,
            vec![ParamSpec::required(
                "id",
                ParamType::String,
                "the id silence returned",
            )],
            r#"am::expire(s.id)"#,
        ),
        action(
            "alerts",
            "The alerts Alertmanager holds, optionally filtered by matchers: {count, alerts: \
             [{labels, annotations, state, silenced_by, starts_at, fingerprint}]}.",
            Effect::Observe,
            vec![ParamSpec::optional(
                "filter",
                ParamType::Any,
                "a map or a list of matchers, as for silence",
            )],
            r#"am::alerts(#{alertname: "CanaryErrorRate"})"#,
        ),
    ]
}
