//! firebreak runtime: the hardened Rhai sandbox, journaled steps and the bridge to connectors.
//!
//! Start at [`Runner`]: [`Runner::start`] runs a script (short ones of local steps inline on
//! the async worker, the rest on a blocking thread), returns once its start is journaled and
//! journals its end; [`Runner::resume`] picks up an unfinished run from
//! the journal without repeating finished steps. Then:
//! - [`sandbox`]: [`build_engine`] (every Rhai limit and restriction, in one function),
//!   [`Limits`], [`compile`];
//! - `step`: the per-thread run context and the journaling around every step;
//! - `builtins`: `step(name, || ...)`, `log`, `sleep`, `now`, `fail`, `evidence`;
//! - `connectors`: `<connector>::<action>(args...)` for every registered connector, and
//!   `connected(name)`, whether one is configured;
//! - `canary`: `canary(opts)`, a progressive canary analysis over `traffic::` and `prom::`;
//! - [`policy`]: the retry policy for connector errors;
//! - [`reference`]: all of the above as data, for the runbook reference (docs/RUNBOOKS.md).
//!
//! What a script sees: a constant `ctx` map (`event`, `labels`, `annotations`, `params`,
//! `run_id`, `runbook`, `team`, `actor`, `dry_run`) and the functions above. Functions
//! defined with `fn` do not see `ctx`; pass it as an argument.

pub mod approval;
mod builtins;
mod canary;
mod compute;
mod connectors;
pub mod guard;
pub mod memory;
pub mod policy;
pub mod reference;
mod runner;
pub mod sandbox;
mod script;
mod step;
pub mod trace;

pub use approval::{Decision, DecisionError, Pending, Standing};
pub use compute::default_shares as default_computing_scripts;
pub use guard::{Fence, Guard, MutationQuery};
pub use memory::IncidentMemory;
pub use policy::RetryPolicy;
pub use runner::{
    Budget, ResumePlan, RunHandle, RunLink, RunOutcome, RunPlan, Runner, RunnerConfig, RuntimeError,
};
pub use sandbox::{CompileError, Limits, build_engine, check_calls, compile};
pub use script::Script;
pub use step::{JoinError, JoinedEvent};

pub use firebreak_audit::{ApprovalPolicy, RunStatus};
pub use firebreak_connector::ProgressSink;
pub use rhai::AST;
pub use tokio_util::sync::CancellationToken;
