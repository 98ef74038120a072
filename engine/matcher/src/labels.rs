//! Alertmanager-style label matchers: `name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`.
//!
//! Start at [`LabelMatcher::parse`] and [`parse_matchers`] (which also takes the
//! `{a="b", c=~"d"}` list form). Semantics follow Alertmanager: regexes are anchored as
//! `^(?:re)$`, and a missing label equals the empty string, so `team=""` matches an alert
//! without a `team` label and `team!=""` requires one.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use regex::Regex;

/// The operator of one matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`: equal.
    Equal,
    /// `!=`: not equal.
    NotEqual,
    /// `=~`: the anchored regex matches.
    Regex,
    /// `!~`: the anchored regex does not match.
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One compiled label matcher.
#[derive(Debug, Clone)]
pub struct LabelMatcher {
    /// The label name.
    pub name: String,
    /// The operator.
    pub op: MatchOp,
    /// The value or the (unanchored, as written) regex.
    pub value: String,
    /// The anchored, compiled regex for `=~` and `!~`, shared by every matcher of the
    /// pattern (see [`compiled`]).
    regex: Option<Arc<Regex>>,
}

impl PartialEq for LabelMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl fmt::Display for LabelMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

/// Why a matcher did not parse. Positions are 0-based character offsets into the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MatcherError {
    /// 0-based character offset of the problem within the matcher text.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl MatcherError {
    fn at(offset: usize, message: impl Into<String>) -> Self {
        MatcherError {
            offset,
            message: message.into(),
        }
    }
}

impl LabelMatcher {
    /// Builds a matcher, compiling `=~`/`!~` values as `^(?:value)$`.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, regex::Error> {
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(compiled(&format!("^(?:{value})$"))?),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(LabelMatcher {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
            regex,
        })
    }

    /// Parses one matcher such as `severity=~"critical|page"` or `team = ml`.
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        let mut matchers = parse_matchers(text)?;
        if matchers.len() != 1 {
            return Err(MatcherError::at(
                0,
                format!("expected one matcher, found {}", matchers.len()),
            ));
        }
        Ok(matchers.remove(0))
    }

    /// Whether a label value (`None` = label absent, which counts as `""`) satisfies this.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let value = value.unwrap_or("");
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.regex().is_match(value),
            MatchOp::NotRegex => !self.regex().is_match(value),
        }
    }

    /// Whether the labels reached through `lookup` satisfy this matcher.
    pub fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.matches_value(lookup(&self.name))
    }

    fn regex(&self) -> &Arc<Regex> {
        self.regex
            .as_ref()
            .expect("regex operators are built with a compiled regex")
    }
}

/// The compiled regexes of the patterns some matcher holds. Runbooks repeat patterns
/// (`severity=~"critical|page"` in most of a team's), and each compiled regex holds about
/// 12 KB, so a server with many runbooks keeps one per pattern instead of one per matcher.
struct Compiled {
    patterns: HashMap<String, Weak<Regex>>,
    /// The size at which patterns no matcher holds any more are dropped (twice the live
    /// ones after the last sweep), so reloading runbooks does not grow the map.
    sweep_at: usize,
}

static COMPILED: LazyLock<Mutex<Compiled>> = LazyLock::new(|| {
    Mutex::new(Compiled {
        patterns: HashMap::new(),
        sweep_at: 64,
    })
});

/// `pattern` compiled, shared with every other matcher of the same pattern.
fn compiled(pattern: &str) -> Result<Arc<Regex>, regex::Error> {
    let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(regex) = compiled.patterns.get(pattern).and_then(Weak::upgrade) {
        return Ok(regex);
    }
    let regex = Arc::new(Regex::new(pattern)?);
    if compiled.patterns.len() >= compiled.sweep_at {
        compiled.patterns.retain(|_, held| held.strong_count() > 0);
        compiled.sweep_at = (compiled.patterns.len() * 2).max(64);
    }
    compiled
        .patterns
        .insert(pattern.to_owned(), Arc::downgrade(&regex));
    Ok(regex)
}

/// How many cached patterns satisfy `which`.
#[cfg(test)]
fn compiled_patterns(which: impl Fn(&str) -> bool) -> usize {
    let compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    compiled.patterns.keys().filter(|p| which(p)).count()
}

/// Parses one matcher or a `{...}` list of comma-separated matchers. Values may be
/// double-quoted (with `\"`, `\\`, `\n` escapes) or bare (trimmed, up to the next comma or
/// closing brace).
pub fn parse_matchers(text: &str) -> Result<Vec<LabelMatcher>, MatcherError> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser { chars, pos: 0 };
    p.skip_ws();
    let braced = p.eat('{');
    let mut out = Vec::new();
    loop {
        p.skip_ws();
        if braced && p.eat('}') {
            break;
        }
        if !braced && p.at_end() {
            if out.is_empty() {
                return Err(MatcherError::at(p.pos, "empty matcher"));
            }
            break;
        }
        out.push(p.matcher(braced)?);
        p.skip_ws();
        if p.eat(',') {
            continue;
        }
        if braced {
            if p.eat('}') {
                break;
            }
            return Err(MatcherError::at(
                p.pos,
                "expected `,` or `}` after a matcher",
            ));
        }
        if !p.at_end() {
            return Err(MatcherError::at(p.pos, "expected `,` after a matcher"));
        }
        break;
    }
    p.skip_ws();
    if !p.at_end() {
        return Err(MatcherError::at(
            p.pos,
            "unexpected text after the matchers",
        ));
    }
    Ok(out)
}

/// The one-line reason of a regex error (its `Display` draws a multi-line caret diagram).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or(&text).trim();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn matcher(&mut self, braced: bool) -> Result<LabelMatcher, MatcherError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            self.pos += 1;
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(MatcherError::at(
                start,
                "expected a label name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
            ));
        }
        self.skip_ws();
        let op_at = self.pos;
        let op = if self.eat('=') {
            if self.eat('~') {
                MatchOp::Regex
            } else {
                MatchOp::Equal
            }
        } else if self.eat('!') {
            if self.eat('=') {
                MatchOp::NotEqual
            } else if self.eat('~') {
                MatchOp::NotRegex
            } else {
                return Err(MatcherError::at(op_at, "expected `!=` or `!~`"));
            }
        } else {
            return Err(MatcherError::at(
                op_at,
                format!("expected an operator (=, !=, =~, !~) after label `{name}`"),
            ));
        };
        self.skip_ws();
        let value_at = self.pos;
        let value = if self.eat('"') {
            self.quoted(value_at)?
        } else {
            let start = self.pos;
            while self
                .peek()
                .is_some_and(|c| c != ',' && !(braced && c == '}'))
            {
                self.pos += 1;
            }
            let raw: String = self.chars[start..self.pos].iter().collect();
            raw.trim_end().to_owned()
        };
        LabelMatcher::new(&name, op, &value).map_err(|e| {
            MatcherError::at(
                value_at,
                format!("invalid regex for label `{name}`: {}", regex_reason(&e)),
            )
        })
    }

    fn quoted(&mut self, open_at: usize) -> Result<String, MatcherError> {
        let mut value = String::new();
        loop {
            match self.peek() {
                None => return Err(MatcherError::at(open_at, "unterminated quoted value")),
                Some('"') => {
                    self.pos += 1;
                    return Ok(value);
                }
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some('n') => value.push('\n'),
                        Some('"') => value.push('"'),
                        Some('\\') => value.push('\\'),
                        // Anything else is kept with its backslash (regex escapes like `\d`).
                        Some(c) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => {
                            return Err(MatcherError::at(open_at, "unterminated quoted value"));
                        }
                    }
                    self.pos += 1;
                }
                Some(c) => {
                    value.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(matcher: &str, pairs: &[(&str, &str)]) -> bool {
        let m = LabelMatcher::parse(matcher).unwrap_or_else(|e| panic!("{matcher}: {e}"));
        let l = labels(pairs);
        m.matches(|n| l.get(n).map(String::as_str))
    }

    #[test]
    fn equal_and_not_equal() {
        assert!(check(r#"severity="critical""#, &[("severity", "critical")]));
        assert!(!check(r#"severity="critical""#, &[("severity", "page")]));
        assert!(check(r#"severity!="critical""#, &[("severity", "page")]));
        assert!(!check(
            r#"severity!="critical""#,
            &[("severity", "critical")]
        ));
    }

    #[test]
    fn regex_is_anchored_on_both_ends() {
        assert!(check(
            r#"severity=~"critical|page""#,
            &[("severity", "page")]
        ));
        // Unanchored, `crit` would match `critical`; anchored as ^(?:crit)$ it must not.
        assert!(!check(r#"severity=~"crit""#, &[("severity", "critical")]));
        assert!(!check(
            r#"severity=~"critical""#,
            &[("severity", "not-critical")]
        ));
        // The group keeps an alternation from escaping the anchors.
        assert!(!check(r#"severity=~"a|b""#, &[("severity", "ab")]));
        assert!(check(r#"severity!~"crit""#, &[("severity", "critical")]));
        assert!(!check(r#"severity!~"crit.*""#, &[("severity", "critical")]));
        assert!(check(r#"code=~"5\d\d""#, &[("code", "503")]));
    }

    #[test]
    fn missing_label_is_the_empty_string() {
        assert!(check(r#"team="""#, &[]));
        assert!(!check(r#"team!="""#, &[]));
        assert!(check(r#"team!="ml""#, &[]));
        assert!(!check(r#"team="ml""#, &[]));
        assert!(check(r#"team=~"ml|""#, &[]));
        assert!(check(r#"team=~".*""#, &[]));
        assert!(!check(r#"team=~".+""#, &[]));
        assert!(check(r#"team!~".+""#, &[]));
    }

    #[test]
    fn unquoted_values_and_spaces() {
        assert!(check("severity = critical", &[("severity", "critical")]));
        assert!(check("severity=~crit.*", &[("severity", "critical")]));
        assert!(check("  a != b  ", &[("a", "c")]));
    }

    #[test]
    fn quoted_escapes() {
        let m = LabelMatcher::parse(r#"msg="say \"hi\" \\ now""#).unwrap();
        assert_eq!(m.value, r#"say "hi" \ now"#);
        let m = LabelMatcher::parse(r#"msg="a,b}""#).unwrap();
        assert_eq!(m.value, "a,b}");
    }

    #[test]
    fn list_form() {
        let ms = parse_matchers(r#"{alertname="X", severity=~"critical|page", ns!=kube-system}"#)
            .unwrap();
        assert_eq!(ms.len(), 3);
        assert_eq!(ms[2].name, "ns");
        assert_eq!(ms[2].op, MatchOp::NotEqual);
        assert_eq!(ms[2].value, "kube-system");
        assert_eq!(ms[1].to_string(), r#"severity=~"critical|page""#);
        assert!(parse_matchers("{}").unwrap().is_empty());
        assert_eq!(parse_matchers("a=b, c=d").unwrap().len(), 2);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = LabelMatcher::parse(r#"severity=~"(crit""#).unwrap_err();
        assert_eq!(e.offset, 10);
        assert!(
            e.message.starts_with("invalid regex for label `severity`"),
            "{e}"
        );
        let e = LabelMatcher::parse("severity").unwrap_err();
        assert_eq!(e.offset, 8);
        assert!(e.message.contains("expected an operator"));
        let e = LabelMatcher::parse(r#"1abc="x""#).unwrap_err();
        assert_eq!(e.offset, 0);
        let e = LabelMatcher::parse(r#"a="x"#).unwrap_err();
        assert_eq!(e.message, "unterminated quoted value");
        let e = LabelMatcher::parse("a!b").unwrap_err();
        assert_eq!(e.offset, 1);
        let e = parse_matchers(r#"{a="x" b="y"}"#).unwrap_err();
        assert_eq!(e.offset, 7);
        assert!(LabelMatcher::parse("").is_err());
        assert!(LabelMatcher::parse("a=b, c=d").is_err());
    }

    /// Runbooks often repeat a pattern (`severity=~"critical|page"`); every matcher of one
    /// pattern shares one compiled regex (about 12 KB each), and patterns no matcher holds any
    /// more are forgotten as new ones come, so reloads do not grow the cache.
    #[test]
    fn matchers_of_one_pattern_share_one_compiled_regex() {
        let a = LabelMatcher::parse(r#"severity=~"critical|page""#).unwrap();
        let b = &parse_matchers(r#"{team="ml", severity=~"critical|page"}"#).unwrap()[1];
        let c = LabelMatcher::parse(r#"severity!~"critical|page""#).unwrap();
        let other = LabelMatcher::parse(r#"severity=~"critical|warning""#).unwrap();
        let (a, b, c, other) = (a.regex(), b.regex(), c.regex(), other.regex());
        assert!(std::sync::Arc::ptr_eq(a, b) && std::sync::Arc::ptr_eq(a, c));
        assert!(!std::sync::Arc::ptr_eq(a, other));

        let prefix = "interning-test-";
        for n in 0..5_000 {
            let m = LabelMatcher::new("x", MatchOp::Regex, &format!("{prefix}{n}")).unwrap();
            assert!(m.matches_value(Some(&format!("{prefix}{n}"))));
        }
        let held = compiled_patterns(|p| p.contains(prefix));
        assert!(held < 1_000, "{held} dropped patterns still cached");
    }
}
