//! The engine's guard rails on mutating actions (freeze windows, blast-radius caps): a check
//! the embedding engine supplies ([`Runner::with_guard`](crate::Runner::with_guard)), asked
//! before every mutation is journaled and applied, after its approval. A refusal fails the
//! step with `denied` and is journaled as a `refusal`; the script cannot skip it.

use std::sync::Arc;

use crate::step::RunContext;

/// A mutation about to happen.
#[derive(Debug, Clone, Copy)]
pub struct MutationQuery<'a> {
    pub run_id: &'a str,
    pub runbook: &'a str,
    pub team: &'a str,
    /// `k8s::rollback`.
    pub action: &'a str,
    /// The namespace it acts in; `None` for the whole cluster.
    pub namespace: Option<&'a str>,
    /// People approved the run (its runbook has an approval policy and it was met).
    pub approved: bool,
    /// What the action resolved to do (the connector's intent).
    pub intent: &'a serde_json::Value,
    /// Asked before the approval request, as if it will be approved: refuse now what no
    /// approval could allow, and count nothing.
    pub preview: bool,
}

/// `Err(reason)` refuses the mutation.
pub type Guard = Arc<dyn Fn(&MutationQuery<'_>) -> Result<(), String> + Send + Sync>;

/// Whether this engine replica still holds the lease on a run's lock (`fence(key, run_id)`),
/// asked right before a mutation is applied (see [`Runner::with_fence`](crate::Runner::with_fence)).
/// Replicas sharing a NATS cluster take over a run whose lease ran out; a replica cut off
/// from NATS for longer than that must not act for the run any more, even if the mutation's
/// write-ahead record got through once NATS came back: the replica that took the run over
/// acts for it now. `false` suspends the run before the write; the journaled intent is
/// applied by whoever resumes it.
pub type Fence = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A run's lock and the fence that says whether its lease still holds.
#[derive(Clone)]
pub(crate) struct Lease {
    pub fence: Fence,
    pub key: String,
}

impl RunContext {
    /// Whether the run may still act: no lease to keep, or the lease on its lock holds.
    pub(crate) fn lease_holds(&self) -> bool {
        self.lease
            .as_ref()
            .is_none_or(|lease| (lease.fence)(&lease.key, &self.meta.run_id))
    }

    /// Why the guard refuses `action` in `namespace` now, if it does (never in a dry run).
    pub(crate) fn guard_refusal(
        &self,
        action: &str,
        namespace: Option<&str>,
        intent: &serde_json::Value,
        preview: bool,
    ) -> Option<String> {
        let guard = self.guard.as_ref().filter(|_| !self.dry_run)?;
        guard(&MutationQuery {
            run_id: &self.meta.run_id,
            runbook: &self.meta.runbook,
            team: &self.meta.team,
            action,
            namespace,
            approved: preview || self.approved(),
            intent,
            preview,
        })
        .err()
    }
}

/// Every kind [`refusal_kind`] answers.
pub const REFUSAL_KINDS: &[&str] = &[
    "namespace",
    "tenancy",
    "cluster_grant",
    "freeze",
    "blast_radius",
    "deploy_policy",
    "budget",
    "other",
];

/// The kind of a refusal, from its reason, for `firebreak_refusals_total{reason}`.
pub fn refusal_kind(reason: &str) -> &'static str {
    if reason.starts_with("freeze window") {
        "freeze"
    } else if reason.starts_with("blast radius") {
        "blast_radius"
    } else if reason.starts_with("deployment policy") {
        "deploy_policy"
    } else if reason.contains("outside runbook") || reason.contains("(the namespace) is missing") {
        "namespace"
    } else if reason.contains("has no grant") {
        "cluster_grant"
    } else if reason.contains("may not start runbook") || reason.contains("not a member") {
        "tenancy"
    } else if reason.contains("budget") {
        "budget"
    } else {
        "other"
    }
}

/// Counts a refusal in `firebreak_refusals_total{reason}`.
pub fn count_refusal(reason: &str) {
    metrics::counter!("firebreak_refusals_total", "reason" => refusal_kind(reason)).increment(1);
}
