//! The Rhai sandbox, hardened in one place: [`build_engine`]. Start there.
//!
//! A raw engine with only the packages scripts need (no clock, no file, no network: those
//! reach a script only through journaled steps), every limit set from [`Limits`], no `eval`,
//! no `import`, no custom syntax. `print`/`debug` go to tracing. Cancellation and the run's
//! deadline reach a running script through `on_progress`, which looks at the run owning the
//! current (blocking) thread, see [`crate::step`].
//!
//! [`compile`] parses a script once at load and reports errors as `file:line:col: message`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use firebreak_connector::Registry;
use rhai::module_resolvers::DummyModuleResolver;
use rhai::packages::{
    BasicArrayPackage, BasicMapPackage, BasicMathPackage, CorePackage, LogicPackage,
    MoreStringPackage, Package,
};
use rhai::{AST, Dynamic, Engine, OptimizationLevel};
use tracing::{debug, info};

use crate::reference::{self, LimitDoc};
use crate::script::Script;
use crate::{builtins, connectors, step};

/// Every bound a script runs under. The defaults suit incident runbooks: generous for real
/// work, small enough that a runaway script dies in well under a second of CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Script operations per run (a `loop {}` ends here if no timeout hits first).
    pub max_operations: u64,
    /// Nested function calls (recursion depth).
    pub max_call_levels: usize,
    /// Expression nesting at the top level and inside functions.
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Items in one array.
    pub max_array_size: usize,
    /// Entries in one object map.
    pub max_map_size: usize,
    /// Variables alive at once.
    pub max_variables: usize,
    /// Functions a script may define.
    pub max_functions: usize,
    /// Longest single `sleep(ms)`.
    pub max_sleep: Duration,
}

impl Limits {
    /// Each limit and its value, for the reference (`crate::reference`).
    pub fn docs(&self) -> Vec<LimitDoc> {
        let doc = |name, value, doc| LimitDoc {
            name,
            value,
            setting: None,
            doc,
        };
        vec![
            doc(
                "operations",
                reference::count(self.max_operations),
                "script operations per run: a `loop {}` ends here",
            ),
            doc(
                "call depth",
                reference::count(self.max_call_levels as u64),
                "nested function calls (recursion)",
            ),
            doc(
                "expression depth",
                format!(
                    "{} ({} in functions)",
                    self.max_expr_depth, self.max_function_expr_depth
                ),
                "nesting of one expression; checked when the script compiles",
            ),
            doc(
                "string",
                reference::bytes(self.max_string_size as u64),
                "bytes in one string",
            ),
            doc(
                "array",
                reference::count(self.max_array_size as u64),
                "items in one array",
            ),
            doc(
                "map",
                reference::count(self.max_map_size as u64),
                "entries in one object map",
            ),
            doc(
                "variables",
                reference::count(self.max_variables as u64),
                "variables alive at once",
            ),
            doc(
                "functions",
                reference::count(self.max_functions as u64),
                "functions a script may define with `fn`; checked when it compiles",
            ),
            doc(
                "longest wait",
                reference::seconds(self.max_sleep),
                "one `sleep(ms)` or `wait_resolved(timeout)`",
            ),
        ]
    }
}

/// What [`build_engine`] allows and refuses, one rule a sentence, for the reference.
pub(crate) const RULES: &[&str] = &[
    "No `eval`, no `import` (no modules at all), no custom syntax.",
    "No clock, file or network: Rhai's core, logic, string, array, map and math packages only. \
     Time comes from the journaled `now()`, the world through connector actions.",
    "`print(x)` and `debug(x)` write to the engine's log, not the audit trail: `log(x)` is what \
     the run's record keeps.",
    "Functions defined with `fn` do not see `ctx`: pass it as an argument.",
    "A script compiles once, when the runbooks load: a syntax error, an unknown connector \
     action or a wrong number of arguments is a `file:line:col` error in `firebreak check` and \
     on reload, not a failure mid-incident.",
    "Going past a limit below ends the run `failed`, and a script cannot catch it: `loop {}` \
     is terminated, not obeyed.",
];

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 10_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 1 << 20,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_variables: 1_000,
            max_functions: 100,
            max_sleep: Duration::from_secs(300),
        }
    }
}

/// The packages scripts get, made once and shared by every engine (the one runs share, the
/// one that compiles at load): only what scripts need, no BasicTimePackage (the clock is the
/// journaled `now()` step).
fn packages() -> &'static [rhai::Shared<rhai::Module>] {
    static PACKAGES: OnceLock<Vec<rhai::Shared<rhai::Module>>> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        vec![
            CorePackage::new().as_shared_module(),
            LogicPackage::new().as_shared_module(),
            MoreStringPackage::new().as_shared_module(),
            BasicArrayPackage::new().as_shared_module(),
            BasicMapPackage::new().as_shared_module(),
            BasicMathPackage::new().as_shared_module(),
        ]
    })
}

/// Builds the one engine every run shares: packages, limits, callbacks, built-in steps and
/// one static module per connector in `registry` (`<connector>::<action>(args...)`).
pub fn build_engine(limits: &Limits, registry: &Registry) -> Engine {
    let mut engine = Engine::new_raw();

    for package in packages() {
        engine.register_global_module(package.clone());
    }

    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_variables(limits.max_variables)
        .set_max_functions(limits.max_functions)
        // No imports of any kind: zero modules, and nothing to resolve them from.
        .set_max_modules(0)
        .set_module_resolver(DummyModuleResolver::new())
        // Simple: never evaluates functions at compile time (steps must run at run time).
        .set_optimization_level(OptimizationLevel::Simple);
    engine.disable_symbol("eval");

    engine.on_print(|text| {
        let run_id = step::current_run_id().unwrap_or_default();
        let text = text.to_owned();
        step::emit(move || info!(run_id = %run_id, script_output = %text, "script print"));
    });
    engine.on_debug(|text, source, pos| {
        let run_id = step::current_run_id().unwrap_or_default();
        let (text, source) = (text.to_owned(), source.unwrap_or("").to_owned());
        step::emit(move || debug!(run_id = %run_id, source = %source, position = %pos, script_output = %text, "script debug"));
    });
    engine.on_progress(step::on_progress);
    // The run's memory budget: every variable defined at run time measures what the
    // script's variables hold (the per-value limits above bound each one).
    #[allow(deprecated)] // volatile, not deprecated: rhai marks its unstable APIs this way
    engine.on_def_var(|is_runtime, _, context| {
        if is_runtime && let Ok(cx) = step::current() {
            let held: u64 = context.scope().iter_raw().map(|(_, _, v)| held_bytes(v)).sum();
            if held > cx.budget.max_script_bytes {
                return Err(cx.over_budget(format!(
                    "run budget: the script's variables hold {held} bytes, more than the {} allowed (limits.max_script_bytes)",
                    cx.budget.max_script_bytes
                )));
            }
        }
        Ok(true)
    });

    builtins::register(&mut engine);
    connectors::register(&mut engine, registry);
    engine
}

/// Bytes a value holds, about: string and blob bytes, plus a slot per array item and map
/// entry. Strings shared between variables count once per variable (an upper bound).
pub(crate) fn held_bytes(value: &Dynamic) -> u64 {
    const SLOT: u64 = 16;
    if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
        return s.len() as u64 + SLOT;
    }
    if let Some(items) = value.read_lock::<rhai::Array>() {
        return items.iter().map(|v| held_bytes(v) + SLOT).sum::<u64>() + SLOT;
    }
    if let Some(map) = value.read_lock::<rhai::Map>() {
        return map
            .iter()
            .map(|(k, v)| k.len() as u64 + held_bytes(v) + SLOT)
            .sum::<u64>()
            + SLOT;
    }
    if let Some(blob) = value.read_lock::<rhai::Blob>() {
        return blob.len() as u64 + SLOT;
    }
    SLOT
}

/// A script that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct CompileError {
    pub path: PathBuf,
    /// 1-based; 0 when Rhai gives no position.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Compiles a runbook script once, at load. `path` is only used in error messages.
pub fn compile(path: &Path, source: &str) -> Result<Arc<Script>, CompileError> {
    static COMPILER: OnceLock<Engine> = OnceLock::new();
    let engine = COMPILER.get_or_init(|| build_engine(&Limits::default(), &Registry::new()));
    engine
        .compile(source)
        .map(|mut ast| {
            ast.set_source(path.display().to_string());
            Arc::new(Script::new(ast))
        })
        .map_err(|e| CompileError {
            path: path.to_owned(),
            line: e.1.line().unwrap_or(0),
            column: e.1.position().unwrap_or(0),
            message: e.0.to_string(),
        })
}

/// Every connector call in `ast` that cannot succeed: an action the connector does not have,
/// or a number of arguments it does not take. Each is `file:line:col: message`, found before
/// any incident needs the script (`k8s::rolback(...)` would otherwise fail mid-incident).
/// `connectors` names each connector's Rhai module and its actions.
pub fn check_calls(
    path: &Path,
    ast: &AST,
    connectors: &[(&str, Vec<firebreak_connector::ActionSpec>)],
) -> Vec<String> {
    let mut problems = Vec::new();
    ast.walk(&mut |nodes: &[rhai::ASTNode]| {
        // A call is an expression, or a statement of its own (`k8s::rollback(..);`).
        let (call, pos) = match nodes.last() {
            Some(rhai::ASTNode::Expr(rhai::Expr::FnCall(call, pos)))
            | Some(rhai::ASTNode::Stmt(rhai::Stmt::FnCall(call, pos))) => (call, pos),
            _ => return true,
        };
        if call.namespace.is_empty() {
            return true;
        }
        let module = call.namespace.root();
        let at = format!(
            "{}:{}:{}",
            path.display(),
            pos.line().unwrap_or(0),
            pos.position().unwrap_or(0)
        );
        let Some((_, actions)) = connectors.iter().find(|(name, _)| *name == module) else {
            let known: Vec<&str> = connectors.iter().map(|(name, _)| *name).collect();
            problems.push(format!(
                "{at}: `{module}::{}`: no connector `{module}` (known: {})",
                call.name,
                known.join(", ")
            ));
            return true;
        };
        let Some(action) = actions.iter().find(|a| a.name == call.name.as_str()) else {
            let near = actions
                .iter()
                .map(|a| a.name)
                .min_by_key(|name| edit_distance(name, &call.name))
                .filter(|name| edit_distance(name, &call.name) <= 3)
                .map(|name| format!("; did you mean `{module}::{name}`?"))
                .unwrap_or_default();
            problems.push(format!(
                "{at}: `{module}::{}` is not an action of the {module} connector{near}",
                call.name
            ));
            return true;
        };
        let max = action.params.len();
        let min = action
            .params
            .iter()
            .rposition(|p| p.required)
            .map_or(0, |i| i + 1);
        let given = call.args.len();
        if given < min || given > max {
            let takes = if min == max {
                format!("{max}")
            } else {
                format!("{min} to {max}")
            };
            let names: Vec<&str> = action.params.iter().map(|p| p.name).collect();
            problems.push(format!(
                "{at}: `{module}::{}` takes {takes} arguments ({}), not {given}",
                call.name,
                names.join(", ")
            ));
        }
        true
    });
    problems
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
