//! The self-description of every `am::` action. Start at [`actions`].

use firebreak_connector::ErrorKind::{NotFound, Permanent};
use firebreak_connector::{ActionSpec, Effect, ErrorDoc, ParamSpec, ParamType};

fn action(
    name: &'static str,
    doc: &'static str,
    effect: Effect,
    params: Vec<ParamSpec>,
    errors: Vec<ErrorDoc>,
    example: &'static str,
) -> ActionSpec {
    ActionSpec {
        name,
        doc,
        effect,
        params,
        namespace_param: None,
        // No action waits: a silence's `duration` is how long it lasts, not how long the
        // call takes.
        waits: None,
        rbac: Vec::new(),
        errors,
        example,
    }
}

/// The matchers a script gave do not parse (see `crate::matchers`).
const BAD_MATCHERS: &str = "matchers are neither a map of label to string value nor a list of \
                            `name=\"value\"` texts (or `!=`, `=~`, `!~`), or there are none";

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
                    "a map label → value, or a list like `[\"alertname=\\\"X\\\"\", \
                     \"service=~\\\"a|b\\\"\"]`",
                ),
                ParamSpec::required("duration", ParamType::Any, "seconds, or \"30m\", \"2h\""),
                ParamSpec::optional("comment", ParamType::String, "why, for people"),
            ],
            vec![
                ErrorDoc::new(Permanent, BAD_MATCHERS),
                ErrorDoc::new(
                    Permanent,
                    "`duration` is not whole seconds or like \"90s\", \"30m\", \"2h\", or is \
                     outside 1 s to 7 days",
                ),
                ErrorDoc::new(
                    Permanent,
                    "Alertmanager refuses the silence (400: e.g. a regex that does not compile)",
                ),
                ErrorDoc::new(
                    Permanent,
                    "Alertmanager created the silence but returned no id, or it reads neither \
                     active nor pending afterwards",
                ),
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
            vec![
                ErrorDoc::new(Permanent, "`id` is not a silence id (a UUID)"),
                ErrorDoc::new(NotFound, "Alertmanager has no silence with that id"),
                ErrorDoc::new(
                    Permanent,
                    "the silence does not read expired after the delete",
                ),
            ],
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
            vec![
                ErrorDoc::new(Permanent, BAD_MATCHERS),
                ErrorDoc::new(
                    Permanent,
                    "Alertmanager refuses a filter (400: e.g. a regex that does not compile)",
                ),
            ],
            r#"am::alerts(#{alertname: "CanaryErrorRate"})"#,
        ),
    ]
}
