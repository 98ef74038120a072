//! A compiled runbook script, with the parts of `ctx` it can read.
//!
//! Building `ctx` turns the whole triggering event into Rhai values (every label, annotation
//! and group field, with `labels` and `annotations` as maps of their own besides) and drops
//! them after the run: 8 % of the instructions an alert cost (callgrind, 38,000 of 469,000).
//! Most scripts read `ctx.params`, `ctx.labels` and `ctx.dry_run` and never `ctx.event`, so
//! [`CtxReads`] finds, once at load, which of the costly keys a script names; a run builds
//! only those. A script that uses `ctx` as a whole (passes it to a function, indexes it,
//! calls a method on it) gets all of it. Nothing else can reach `ctx`: the sandbox has no
//! `eval`, and Rhai functions see no outer variables.

use std::ops::Deref;

use rhai::{AST, ASTNode, Expr, Stmt};

/// The name scripts know the run's context by.
const CTX: &str = "ctx";

/// A compiled script ([`crate::compile`]); derefs to its [`AST`].
#[derive(Debug)]
pub struct Script {
    ast: AST,
    reads: CtxReads,
}

impl Script {
    pub fn new(ast: AST) -> Self {
        let reads = CtxReads::of(&ast);
        Script { ast, reads }
    }

    /// Which of `ctx`'s keys a run of this script gets.
    pub(crate) fn reads(&self) -> &CtxReads {
        &self.reads
    }
}

impl Deref for Script {
    type Target = AST;

    fn deref(&self) -> &AST {
        &self.ast
    }
}

/// What a script reads of `ctx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CtxReads {
    /// `ctx` itself: every key.
    Whole,
    /// Only `ctx.<key>…` for these keys (none when the script never names `ctx`).
    Keys(Vec<String>),
}

impl CtxReads {
    /// Walks the script, function bodies and closures included: every use of the variable
    /// `ctx` must be the left side of a property access (`ctx.labels.x`, `ctx.params["y"]`,
    /// `ctx?.event`), or the script reads it whole.
    pub(crate) fn of(ast: &AST) -> CtxReads {
        let mut keys: Vec<String> = Vec::new();
        let mut whole = false;
        ast.walk(&mut |path: &[ASTNode]| {
            match path.last() {
                Some(ASTNode::Expr(Expr::Variable(var, ..))) if var.1 == CTX => {
                    match property_read(path) {
                        Some(key) if keys.iter().any(|k| k == key) => {}
                        Some(key) => keys.push(key.to_owned()),
                        None => whole = true,
                    }
                }
                // Rhai's walk does not enter a `break` value or a closure's captures.
                Some(ASTNode::Stmt(Stmt::BreakLoop(Some(_), ..) | Stmt::Share(_))) => {
                    whole = true;
                }
                _ => {}
            }
            !whole
        });
        if whole {
            CtxReads::Whole
        } else {
            CtxReads::Keys(keys)
        }
    }

    /// Whether a run's `ctx` must hold `key`.
    pub(crate) fn wants(&self, key: &str) -> bool {
        match self {
            CtxReads::Whole => true,
            CtxReads::Keys(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// The key read when the last node of `path` (a variable) is the left side of a dot whose
/// right side starts with a property: `ctx.key`, `ctx.key.more`, `ctx.key[i]`, `ctx.key.f()`.
fn property_read<'a>(path: &[ASTNode<'a>]) -> Option<&'a str> {
    let [.., ASTNode::Expr(Expr::Dot(dot, ..)), ASTNode::Expr(var)] = path else {
        return None;
    };
    if !std::ptr::eq(&dot.lhs, *var) {
        return None;
    }
    let first = match &dot.rhs {
        Expr::Dot(inner, ..) | Expr::Index(inner, ..) => &inner.lhs,
        rhs => rhs,
    };
    match first {
        Expr::Property(property, ..) => Some(property.2.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(source: &str) -> CtxReads {
        CtxReads::of(&crate::compile(std::path::Path::new("t.rhai"), source).unwrap())
    }

    fn keys(list: &[&str]) -> CtxReads {
        CtxReads::Keys(list.iter().map(|k| (*k).to_owned()).collect())
    }

    #[test]
    fn property_reads_name_their_keys_wherever_they_are() {
        let cases = [
            ("log(\"fired\");", keys(&[])),
            ("let ns = ctx.labels.namespace; log(ns);", keys(&["labels"])),
            (
                "if ctx.dry_run { log(ctx.params.deployment) }",
                keys(&["dry_run", "params"]),
            ),
            (
                "log(ctx.params[\"x\"]); log(ctx.labels.keys().len)",
                keys(&["params", "labels"]),
            ),
            ("log(ctx?.event?.id)", keys(&["event"])),
            (
                "log(`at ${ctx.annotations.summary}`)",
                keys(&["annotations"]),
            ),
            (
                "switch ctx.labels.severity { \"x\" => log(ctx.event.id), _ => () }",
                keys(&["labels", "event"]),
            ),
            (
                "let n = 0; for l in ctx.labels.values() { log(l) } while n < 1 { log(ctx.run_id); n += 1 }",
                keys(&["labels", "run_id"]),
            ),
            (
                "do { log(ctx.team) } while false; try { log(ctx.actor) } catch { log(ctx.runbook) }",
                keys(&["team", "actor", "runbook"]),
            ),
            (
                "fn f(x) { x } f(ctx.params.a); return ctx.event;",
                keys(&["params", "event"]),
            ),
            ("fn g() { global::ctx.event } g()", keys(&["event"])),
        ];
        for (source, expected) in cases {
            assert_eq!(reads(source), expected, "{source}");
        }
    }

    #[test]
    fn any_other_use_reads_ctx_whole() {
        for source in [
            "log(ctx)",
            "let c = ctx; log(c.labels)",
            "log(ctx[\"event\"])",
            "log(ctx.keys())",
            "log(type_of(ctx))",
            "log(`${ctx}`)",
            "let f = || ctx.event; log(f.call())",
            "loop { break ctx.event; }",
            "fn h(ctx) { ctx } log(h(1))",
        ] {
            assert_eq!(reads(source), CtxReads::Whole, "{source}");
        }
    }
}
