//! firebreak dispatch: the stage between the matcher and the runtime. It takes events off the
//! bus and starts each matched runbook once per incident, holding the guarantees every run
//! leans on: one run per incident (concurrency locks), quiet time after a run (cooldowns),
//! remediation budgets, events of a running incident handed to its run (joins), redeliveries
//! recognised, unfinished runs resumed with their locks, and every refusal or skip journaled.
//!
//! Start at [`Dispatcher::handle`] (one delivery) and [`Dispatcher::resume_unfinished`]; the
//! runbooks in force are [`Runbooks`] ([`Loaded::load`] checks manifests, scripts and their
//! connector calls). The binary wires it to a bus, a state store, a runner and a journal.

mod dispatcher;
mod memory;
mod runbooks;
mod takeover;

mod guards;
pub use dispatcher::{
    Dispatcher, REFUSAL_SUMMARY_EVERY, StartError, Started, approval_policy, run_id_for,
};
pub use guards::engine_guard;
pub use memory::SharedMemory;
pub use runbooks::{ConnectorSpecs, Loaded, Runbooks};
