//! The engine's guard rails, from the teams file of the current runbook set: freeze windows
//! and blast-radius caps (see [`firebreak_matcher::guards`]), as the runtime's
//! [`firebreak_runtime::Guard`]. The blast radius counts this engine's mutations.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use firebreak_runtime::{Guard, MutationQuery};

use crate::Runbooks;

/// The guard every run of `runbooks` is checked against.
pub fn engine_guard(runbooks: Arc<Runbooks>) -> Guard {
    let recent: Mutex<VecDeque<(Instant, Option<String>)>> = Mutex::default();
    Arc::new(move |q: &MutationQuery<'_>| {
        let loaded = runbooks.current();
        let Some(teams) = loaded.set.teams() else {
            return Ok(());
        };
        if let (Some(workload), Some(policy)) = (
            q.intent.get("workload"),
            teams.get(q.team).and_then(|t| t.deploy_policy.as_ref()),
        ) {
            let broken = policy.violations(workload);
            if !broken.is_empty() {
                return Err(format!(
                    "deployment policy of team {}: {}",
                    q.team,
                    broken.join("; ")
                ));
            }
        }
        let now = jiff::Timestamp::now();
        if let Some(freeze) = teams
            .freezes
            .iter()
            .find(|f| f.covers(q.team, q.namespace, now))
        {
            let allowed = loaded
                .set
                .get(q.runbook)
                .is_some_and(|rb| rb.manifest.allow_during_freeze);
            match (allowed, q.approved) {
                (true, true) => {}
                (true, false) => {
                    return Err(format!(
                        "freeze window {:?} is in effect: runbook {} may act during freezes only once approved, and this run was not",
                        freeze.name, q.runbook
                    ));
                }
                (false, _) => {
                    return Err(format!(
                        "freeze window {:?} is in effect for {}: no mutating actions (runbook {} is not allow_during_freeze)",
                        freeze.name,
                        q.namespace.map_or_else(
                            || format!("team {}", q.team),
                            |ns| format!("namespace {ns}")
                        ),
                        q.runbook
                    ));
                }
            }
        }
        let Some(caps) = teams.blast_radius else {
            return Ok(());
        };
        let mut recent = recent.lock().expect("blast radius lock");
        let since = Instant::now().checked_sub(caps.window);
        while recent
            .front()
            .is_some_and(|(at, _)| since.is_some_and(|s| *at < s))
        {
            recent.pop_front();
        }
        let window = format!("{}s", caps.window.as_secs());
        if let Some(max) = caps.per_cluster
            && recent.len() as u64 >= u64::from(max)
        {
            return Err(format!(
                "blast radius: {} mutating actions in the cluster within {window} already (at most {max}, across all teams)",
                recent.len()
            ));
        }
        if let (Some(max), Some(ns)) = (caps.per_namespace, q.namespace) {
            let here = recent
                .iter()
                .filter(|(_, n)| n.as_deref() == Some(ns))
                .count();
            if here as u64 >= u64::from(max) {
                return Err(format!(
                    "blast radius: {here} mutating actions in namespace {ns} within {window} already (at most {max})"
                ));
            }
        }
        recent.push_back((Instant::now(), q.namespace.map(str::to_owned)));
        Ok(())
    })
}
