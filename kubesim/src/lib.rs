//! kubesim: a Kubernetes API simulator with a faithful Deployment controller that the real
//! kubectl and kube-rs both drive.
//!
//! Start at [`Sim::start`] (a server on 127.0.0.1) or [`router`] (in-process). The request path
//! is `api` (routing and verbs) → `store` (admission, resourceVersions, change log) →
//! `hook` (the controllers, run after every write and on a tick); `watch` streams the change
//! log. Discovery, OpenAPI and Table rendering are derived from the served resources in
//! `resources`: the built-in table plus the kinds the stored CustomResourceDefinitions define
//! (`crd`).
//!
//! Fidelity notes and the wire behaviour this imitates: `shared/KUBESIM-NOTES.md`.

mod admin;
mod api;
mod authn;
mod authz;
pub mod cli;
pub mod cluster;
pub mod controller;
mod convert;
mod crd;
mod defaults;
mod discovery;
pub mod hook;
mod jsonpath;
pub mod kubeconfig;
mod logs;
mod openapi;
pub mod patch;
mod protobuf;
pub mod resources;
pub mod selectors;
mod sim;
mod ssa;
pub mod status;
pub mod store;
mod strict;
mod table;
pub mod traffic;
mod validate;
mod watch;

pub use hook::{ControllerConfig, Fault};
pub use sim::{AuditEntry, Sim, SimConfig, SimError, SimHandle, parse_manifests};

/// The router of a simulator, for in-process use (same as [`Sim::router`]).
pub fn router(sim: &Sim) -> axum::Router {
    sim.router()
}
