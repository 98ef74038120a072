//! Where the API server hands control to the controllers (`crate::controller`).
//!
//! The server calls [`reconcile`] after every committed write and on every tick, under the state
//! lock, with the store as the [`Cluster`]. The knobs ([`ControllerConfig`], [`Fault`]) are the
//! controllers' own; the admin endpoints and [`crate::Sim::configure`] change them.

pub use crate::controller::{ControllerConfig, Fault};

use crate::cluster::Cluster;

/// Runs the controllers until they settle (bounded by `cfg.max_passes`).
pub fn reconcile(cluster: &mut dyn Cluster, cfg: &ControllerConfig) {
    crate::controller::reconcile(cluster, cfg);
}

/// One pass of the controllers; the writes it made (none: settled).
pub fn reconcile_pass(cluster: &mut dyn Cluster, cfg: &ControllerConfig) -> usize {
    crate::controller::reconcile_pass(cluster, cfg)
}
