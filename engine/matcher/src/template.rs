//! The concurrency key template: literal text with `{{params.NAME}}` and `{{runbook}}`
//! placeholders (spaces inside the braces allowed). Start at [`Template::parse`].

use serde_json::{Map, Value};

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The text as written in the manifest.
    pub source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
    Runbook,
}

/// Why a template did not parse; `offset` is a 0-based character offset into the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// Where the problem starts.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl Template {
    /// Parses the template; every `{{params.NAME}}` must name one of `params`.
    pub fn parse(
        text: &str,
        mut known_param: impl FnMut(&str) -> bool,
    ) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut consumed_chars = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let at = consumed_chars + rest[..open].chars().count();
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| TemplateError {
                offset: at,
                message: "unclosed `{{` in template".into(),
            })?;
            let expr = after[..close].trim();
            let part = if expr == "runbook" {
                Part::Runbook
            } else if let Some(name) = expr.strip_prefix("params.") {
                if !known_param(name) {
                    return Err(TemplateError {
                        offset: at,
                        message: format!("template references unknown param `{name}`"),
                    });
                }
                Part::Param(name.to_owned())
            } else {
                return Err(TemplateError {
                    offset: at,
                    message: format!(
                        "unknown template variable `{expr}`; use `params.NAME` or `runbook`"
                    ),
                });
            };
            parts.push(part);
            let used = open + 2 + close + 2;
            consumed_chars += rest[..used].chars().count();
            rest = &rest[used..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Template {
            source: text.to_owned(),
            parts,
        })
    }

    /// A template that is only the runbook name (the default concurrency key).
    pub fn runbook_name() -> Template {
        Template {
            source: "{{runbook}}".into(),
            parts: vec![Part::Runbook],
        }
    }

    /// Renders with typed params: strings as they are, numbers and bools printed, lists
    /// joined with `,`, an absent optional param as the empty string.
    pub fn render(&self, runbook: &str, params: &Map<String, Value>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Runbook => out.push_str(runbook),
                Part::Param(name) => match params.get(name) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Array(items)) => {
                        let items: Vec<String> = items
                            .iter()
                            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                            .collect();
                        out.push_str(&items.join(","));
                    }
                    Some(other) => out.push_str(&other.to_string()),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known(name: &str) -> bool {
        ["namespace", "deployment", "n", "hosts"].contains(&name)
    }

    #[test]
    fn renders_params_and_runbook() {
        let t = Template::parse(
            "{{params.namespace}}/{{ params.deployment }}:{{runbook}}",
            known,
        )
        .unwrap();
        let params = json!({"namespace": "team-a", "deployment": "fraud"});
        assert_eq!(
            t.render("rb", params.as_object().unwrap()),
            "team-a/fraud:rb"
        );
    }

    #[test]
    fn renders_typed_and_absent_values() {
        let t =
            Template::parse("{{params.n}}|{{params.hosts}}|{{params.deployment}}", known).unwrap();
        let params = json!({"n": 3, "hosts": ["a", "b"]});
        assert_eq!(t.render("rb", params.as_object().unwrap()), "3|a,b|");
        assert_eq!(Template::runbook_name().render("rb", &Map::new()), "rb");
        let plain = Template::parse("static", known).unwrap();
        assert_eq!(plain.render("rb", &Map::new()), "static");
    }

    #[test]
    fn errors_name_the_problem_and_its_offset() {
        let e = Template::parse("ns/{{params.nope}}", known).unwrap_err();
        assert_eq!(e.offset, 3);
        assert_eq!(e.message, "template references unknown param `nope`");
        let e = Template::parse("é{{params.namespace}}/{{labels.x}}", known).unwrap_err();
        assert_eq!(e.offset, 22);
        assert!(e.message.contains("unknown template variable `labels.x`"));
        let e = Template::parse("a{{params.namespace", known).unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (1, "unclosed `{{` in template")
        );
    }
}
