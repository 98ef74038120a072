//! firebreak matcher: runbook manifests, Alertmanager-style label matchers, teams, and
//! event → runbook matching. Pure and sync: it reads runbook files and nothing else.
//!
//! Start at [`RunbookSet::load_dir`] (a folder of `NAME.yaml` + `NAME.rhai`, every problem
//! reported as `file:line:col: message`) and [`RunbookSet::matches`] (an [`Event`] in, the
//! runbooks to start out, with typed params and a concurrency key). The manifest schema is
//! documented in [`manifest`]; matchers in [`labels`]; params in [`params`]; tenancy in
//! [`teams`].
//!
//! [`Event`]: firebreak_event::Event

mod diag;
mod duration;
pub mod labels;
pub mod manifest;
pub mod params;
mod set;
pub mod teams;
pub mod template;

pub mod guards;
pub use diag::{Diagnostic, MAX_YAML_BYTES};
pub use duration::{DurationError, parse_duration};
pub use labels::{LabelMatcher, MatchOp, MatcherError, parse_matchers};
pub use manifest::{
    Approval, Budget, DEFAULT_APPROVAL_EXPIRY, DEFAULT_TIMEOUT, Manifest, Source, StatusFilter,
    Trigger,
};
pub use params::{ParamFrom, ParamSpec, ParamType};
pub use set::{MAX_SCRIPT_BYTES, Match, MatchError, Runbook, RunbookSet, fingerprint_dir};
pub use teams::{Member, Refusal, Team, Teams};
pub use template::Template;
