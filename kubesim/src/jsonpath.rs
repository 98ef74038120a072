//! The JSONPath that CRD printer columns and scale subresources use (`.spec.hostnames`,
//! `.status.conditions[?(@.type=="Ready")].status`, `.spec.ports[0].port`, `.items[*].name`),
//! evaluated as client-go's `util/jsonpath` does with missing keys allowed: a path that leads
//! nowhere has no results rather than failing.
//!
//! Start at [`parse`] and [`find`]. Not supported (parse error): recursive descent (`..`),
//! slices (`[1:3]`), unions (`[a,b]`) and filter comparisons other than `==` and `!=`.

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `.name` or `['name']`.
    Field(String),
    /// `[3]`, `[-1]` (from the end).
    Index(i64),
    /// `[*]` or `.*`: every element or value.
    Wildcard,
    /// `[?(@.a.b)]` (exists) or `[?(@.a.b == "x")]`: the elements that match.
    Filter {
        path: Vec<String>,
        test: Option<(bool, Value)>,
    },
}

/// Parses a path like `.spec.hosts` (an optional `{…}` around it is accepted).
pub fn parse(path: &str) -> Result<Vec<Step>, String> {
    let text = path.trim();
    let text = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text)
        .trim();
    let text = text.strip_prefix('$').unwrap_or(text);
    let mut rest = text;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if rest.starts_with("..") {
            return Err(format!("recursive descent is not supported in {path:?}"));
        }
        if let Some(after) = rest.strip_prefix('.') {
            if let Some(after) = after.strip_prefix('*') {
                steps.push(Step::Wildcard);
                rest = after;
                continue;
            }
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                if after.is_empty() {
                    break;
                }
                return Err(format!("empty field name in {path:?}"));
            }
            steps.push(Step::Field(after[..end].to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let (step, after) = bracket(after, path)?;
            steps.push(step);
            rest = after;
        } else {
            // A leading field without a dot (`spec.hosts`).
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Field(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    Ok(steps)
}

/// Parses what follows a `[`; returns the step and the text after its `]`.
fn bracket<'a>(text: &'a str, path: &str) -> Result<(Step, &'a str), String> {
    if let Some(after) = text.strip_prefix('*') {
        let after = after
            .strip_prefix(']')
            .ok_or_else(|| format!("unclosed [ in {path:?}"))?;
        return Ok((Step::Wildcard, after));
    }
    if let Some(quote) = text.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let body = &text[1..];
        let end = body
            .find(quote)
            .ok_or_else(|| format!("unclosed quote in {path:?}"))?;
        let after = body[end + 1..]
            .strip_prefix(']')
            .ok_or_else(|| format!("unclosed [ in {path:?}"))?;
        return Ok((Step::Field(body[..end].to_owned()), after));
    }
    if let Some(filter) = text.strip_prefix("?(") {
        let end = filter
            .find(")]")
            .ok_or_else(|| format!("unclosed filter in {path:?}"))?;
        return Ok((parse_filter(&filter[..end], path)?, &filter[end + 2..]));
    }
    let end = text
        .find(']')
        .ok_or_else(|| format!("unclosed [ in {path:?}"))?;
    let index = text[..end]
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("unsupported subscript [{}] in {path:?}", &text[..end]))?;
    Ok((Step::Index(index), &text[end + 1..]))
}

/// `@.type=="Ready"`, `@.ready`, `@.port != 80`.
fn parse_filter(text: &str, path: &str) -> Result<Step, String> {
    let (left, test) = match (text.find("=="), text.find("!=")) {
        (Some(at), _) => (&text[..at], Some((true, &text[at + 2..]))),
        (None, Some(at)) => (&text[..at], Some((false, &text[at + 2..]))),
        (None, None) => (text, None),
    };
    if ['<', '>'].iter().any(|c| left.contains(*c)) {
        return Err(format!("only == and != filters are supported in {path:?}"));
    }
    let field = left
        .trim()
        .strip_prefix('@')
        .ok_or_else(|| format!("a filter must start with @ in {path:?}"))?;
    let mut fields = Vec::new();
    for step in parse(field)? {
        match step {
            Step::Field(f) => fields.push(f),
            _ => return Err(format!("a filter may only name fields in {path:?}")),
        }
    }
    let test = match test {
        None => None,
        Some((eq, literal)) => Some((eq, parse_literal(literal.trim(), path)?)),
    };
    Ok(Step::Filter { path: fields, test })
}

fn parse_literal(text: &str, path: &str) -> Result<Value, String> {
    if let Some(q) = text.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let body = text[1..]
            .strip_suffix(q)
            .ok_or_else(|| format!("unclosed quote in {path:?}"))?;
        return Ok(Value::String(body.to_owned()));
    }
    serde_json::from_str(text).map_err(|_| format!("unsupported literal {text:?} in {path:?}"))
}

/// Every value `steps` lead to in `obj`, in document order.
pub fn find<'a>(steps: &[Step], obj: &'a Value) -> Vec<&'a Value> {
    let mut current = vec![obj];
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            match (step, v) {
                (Step::Field(f), Value::Object(m)) => next.extend(m.get(f)),
                (Step::Index(i), Value::Array(a)) => {
                    let at = if *i < 0 { a.len() as i64 + i } else { *i };
                    next.extend(usize::try_from(at).ok().and_then(|at| a.get(at)));
                }
                (Step::Wildcard, Value::Array(a)) => next.extend(a.iter()),
                (Step::Wildcard, Value::Object(m)) => next.extend(m.values()),
                (Step::Filter { path, test }, Value::Array(a)) => {
                    next.extend(a.iter().filter(|item| {
                        let found = path.iter().try_fold(*item, |v, f| v.get(f));
                        match (found, test) {
                            (None, _) => false,
                            (Some(_), None) => true,
                            (Some(v), Some((eq, want))) => (v == want) == *eq,
                        }
                    }));
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

/// The first value a path leads to in `obj`, if the path parses and leads anywhere.
pub fn first<'a>(path: &str, obj: &'a Value) -> Option<&'a Value> {
    let steps = parse(path).ok()?;
    find(&steps, obj).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_find_fields_indexes_and_filters() {
        let obj = json!({"spec": {"hosts": ["a", "b"], "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]},
            "metadata": {"labels": {"app.kubernetes.io/name": "web"}}});
        let all = |p: &str| {
            find(&parse(p).unwrap(), &obj)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(all(".spec.hosts"), [json!(["a", "b"])]);
        assert_eq!(all(".spec.hosts[*]"), [json!("a"), json!("b")]);
        assert_eq!(all(".spec.ports[1].port"), [json!(443)]);
        assert_eq!(all(".spec.ports[-1].port"), [json!(443)]);
        assert_eq!(all("{.spec.ports[*].port}"), [json!(80), json!(443)]);
        assert_eq!(
            all(r#".status.conditions[?(@.type=="Ready")].status"#),
            [json!("True")]
        );
        assert_eq!(
            all(".status.conditions[?(@.type!='Ready')].type"),
            [json!("Synced")]
        );
        assert_eq!(
            all(".metadata.labels['app.kubernetes.io/name']"),
            [json!("web")]
        );
        assert!(all(".spec.missing.deeper").is_empty());
        assert!(all(".spec.hosts[5]").is_empty());
        assert!(parse(".spec..hosts").is_err());
        assert!(parse(".spec.ports[0:1]").is_err());
        assert!(parse(".a[?(@.n > 1)]").is_err());
        assert_eq!(first(".spec.hosts[0]", &obj), Some(&json!("a")));
    }
}
