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
        let Some(caps) = teams.blast_radius.filter(|_| !q.preview) else {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn query<'a>(
        runbook: &'a str,
        approved: bool,
        intent: &'a serde_json::Value,
    ) -> MutationQuery<'a> {
        MutationQuery {
            run_id: "r1",
            runbook,
            team: "ml",
            action: "k8s::scale",
            namespace: Some("ml-serving"),
            approved,
            intent,
            preview: false,
        }
    }

    fn guard(teams_extra: &str) -> (tempfile::TempDir, Guard) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runbooks");
        std::fs::create_dir(&dir).unwrap();
        let teams = tmp.path().join("teams.yaml");
        std::fs::write(
            &teams,
            format!(
                "teams:\n  - name: ml\n    namespaces: [ml-serving]\n    \
                 deploy_policy: {{ readiness_probe: true }}\n    members:\n      \
                 - {{ name: ann }}\n      - {{ name: ben }}\n{teams_extra}"
            ),
        )
        .unwrap();
        for (name, extra) in [
            ("frozen", ""),
            ("allowed", "allow_during_freeze: true\napproval: true\n"),
        ] {
            std::fs::write(
                dir.join(format!("{name}.yaml")),
                format!(
                    "name: {name}\nteam: ml\ndescription: d\nnamespaces: [ml-serving]\n{extra}"
                ),
            )
            .unwrap();
            std::fs::write(dir.join(format!("{name}.rhai")), "log(\"x\");\n").unwrap();
        }
        let runbooks = Runbooks::load(&dir, Some(&teams), Vec::new()).unwrap();
        (tmp, engine_guard(Arc::new(runbooks)))
    }

    #[test]
    fn a_freeze_stops_every_runbook_but_an_approved_one_allowed_during_freezes() {
        let now = jiff::Timestamp::now();
        let (_tmp, guard) = guard(&format!(
            "freezes:\n  - {{ name: release, from: {}, until: {}, teams: [ml] }}\n",
            now - jiff::SignedDuration::from_secs(3600),
            now + jiff::SignedDuration::from_secs(3600)
        ));
        let none = json!({});
        let refused = guard(&query("frozen", true, &none)).unwrap_err();
        assert!(
            refused.contains("freeze window \"release\"")
                && refused.contains("not allow_during_freeze"),
            "{refused}"
        );
        let refused = guard(&query("allowed", false, &none)).unwrap_err();
        assert!(refused.contains("only once approved"), "{refused}");
        assert_eq!(guard(&query("allowed", true, &none)), Ok(()));
    }

    #[test]
    fn the_deployment_policy_reads_the_intent_and_the_blast_radius_counts_what_it_let_through() {
        let (_tmp, guard) = guard("blast_radius: { per_cluster: 2, window: 1h }\n");
        let bad = json!({"workload": {"containers": [{"name": "m", "image": "x", "readiness_probe": false}]}});
        let refused = guard(&query("frozen", false, &bad)).unwrap_err();
        assert_eq!(
            refused,
            "deployment policy of team ml: container m has no readinessProbe"
        );
        let none = json!({});
        assert_eq!(guard(&query("frozen", false, &none)), Ok(()));
        assert_eq!(guard(&query("frozen", false, &none)), Ok(()));
        let refused = guard(&query("frozen", false, &none)).unwrap_err();
        assert!(
            refused.starts_with("blast radius: 2 mutating actions in the cluster within 3600s"),
            "{refused}"
        );
    }
}
