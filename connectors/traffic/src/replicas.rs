//! The canary without a mesh: two Deployments behind one Service share its traffic by their
//! ready pods, so a weight is approximated by replica counts, the way Argo Rollouts does it
//! (`approximateWeightedCanaryStableReplicaCounts`, docs/features/canary): the canary gets
//! `total × weight / 100` pods rounded to the nearest (ties up), and, for a weight strictly
//! between 0 and 100 with at least two pods, never 0 nor all of them. The total is the sum of
//! the Deployments' replicas, kept as it is.
//!
//! Start at [`ReplicaSplit::read`] and [`replica_counts`].

use std::collections::BTreeMap;
use std::time::Duration;

use firebreak_connector::{ActionError, ErrorKind};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::route::api_error;

/// A Service and the Deployments whose pods it selects.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSplit {
    pub namespace: String,
    pub service: String,
    /// name → (spec replicas, ready replicas), by name.
    pub deployments: BTreeMap<String, (i32, i32)>,
}

impl ReplicaSplit {
    pub async fn read(client: &kube::Client, ns: &str, service: &str) -> Result<Self, ActionError> {
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get(service)
            .await
            .map_err(api_error(format!("reading service {ns}/{service}")))?;
        let selector = svc
            .spec
            .and_then(|s| s.selector)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ActionError::new(
                    ErrorKind::Permanent,
                    format!("service {ns}/{service} has no selector: no Deployments behind it"),
                )
            })?;
        let list = Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(api_error(format!("listing deployments in {ns}")))?;
        let mut deployments = BTreeMap::new();
        for d in list.items {
            let labels = d
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                deployments.insert(d.metadata.name.unwrap_or_default(), (replicas, ready));
            }
        }
        if deployments.is_empty() {
            return Err(ActionError::new(
                ErrorKind::Permanent,
                format!("service {ns}/{service} selects no Deployment"),
            ));
        }
        Ok(ReplicaSplit {
            namespace: ns.to_owned(),
            service: service.to_owned(),
            deployments,
        })
    }

    /// Each Deployment's share of the traffic now: its ready pods over all ready pods.
    pub fn weights(&self) -> BTreeMap<String, i64> {
        let ready: i64 = self.deployments.values().map(|(_, r)| i64::from(*r)).sum();
        self.deployments
            .iter()
            .map(|(name, (_, r))| {
                let share = if ready == 0 {
                    0
                } else {
                    (i64::from(*r) * 100 + ready / 2) / ready
                };
                (name.clone(), share)
            })
            .collect()
    }

    /// The replica counts the Deployments have now.
    pub fn replicas(&self) -> BTreeMap<String, i32> {
        self.deployments
            .iter()
            .map(|(n, (r, _))| (n.clone(), *r))
            .collect()
    }

    /// The total the counts are kept at.
    pub fn total(&self) -> i32 {
        self.deployments
            .values()
            .map(|(r, _)| *r)
            .sum::<i32>()
            .max(1)
    }
}

/// The replica counts for `weights` (percentages) over `total` pods (Argo Rollouts' rounding,
/// see the module docs). Two backends; a single one at 100 takes them all.
pub fn replica_counts(
    total: i32,
    weights: &BTreeMap<String, i64>,
) -> Result<BTreeMap<String, i32>, ActionError> {
    let live: Vec<(&String, i64)> = weights.iter().map(|(n, w)| (n, *w)).collect();
    if live.len() > 2 {
        return Err(ActionError::new(
            ErrorKind::Permanent,
            format!(
                "a replica-ratio canary splits between two Deployments, not {}",
                live.len()
            ),
        ));
    }
    let mut out = BTreeMap::new();
    if let [(only, _)] = live.as_slice() {
        out.insert((*only).clone(), total);
        return Ok(out);
    }
    // The second backend by weight is "the canary": the rounding rule is stated for it.
    let (canary, canary_weight, stable) = if live[0].1 <= live[1].1 {
        (live[0].0, live[0].1, live[1].0)
    } else {
        (live[1].0, live[1].1, live[0].0)
    };
    let exact = f64::from(total) * canary_weight as f64 / 100.0;
    let mut c = (exact + 0.5).floor() as i32;
    if canary_weight > 0 && canary_weight < 100 && total >= 2 {
        c = c.clamp(1, total - 1);
    }
    c = c.clamp(0, total);
    out.insert(canary.clone(), c);
    out.insert(stable.clone(), total - c);
    Ok(out)
}

/// Scales the Deployments to `counts`: those that grow first (so capacity never dips), then
/// those that shrink; then waits, bounded by `wait`, until their ready pods match, reporting
/// progress. Answers the replica counts reached.
pub async fn scale_to(
    client: &kube::Client,
    ns: &str,
    counts: &BTreeMap<String, i32>,
    current: &BTreeMap<String, i32>,
    wait: Duration,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), ActionError> {
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    let pp = PatchParams {
        field_manager: Some(firebreak_kubernetes::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let mut order: Vec<(&String, &i32)> = counts.iter().collect();
    order.sort_by_key(|(name, to)| **to <= current.get(*name).copied().unwrap_or(0));
    for (name, to) in order {
        if current.get(name) == Some(to) {
            continue;
        }
        api.patch_scale(name, &pp, &Patch::Merge(json!({"spec": {"replicas": to}})))
            .await
            .map_err(api_error(format!("scaling deployment {ns}/{name} to {to}")))?;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = String::new();
    loop {
        let mut pending = Vec::new();
        for (name, to) in counts {
            let d = api
                .get(name)
                .await
                .map_err(api_error(format!("reading deployment {ns}/{name}")))?;
            let status = d.status.unwrap_or_default();
            let ready = status.ready_replicas.unwrap_or(0);
            let total = status.replicas.unwrap_or(0);
            if ready != *to || total != *to {
                pending.push(format!("{name} {ready}/{to} ready"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let line = format!("waiting for replicas: {}", pending.join(", "));
        if line != last {
            progress(&line);
            last = line;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ActionError::new(
                ErrorKind::Timeout,
                format!(
                    "replicas did not settle within {}s: {}",
                    wait.as_secs(),
                    pending.join(", ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn counts(total: i32, stable: i64, canary: i64) -> (i32, i32) {
        let c = replica_counts(total, &w(&[("stable", stable), ("canary", canary)])).unwrap();
        (c["stable"], c["canary"])
    }

    #[test]
    fn counts_round_as_argo_rollouts_documents() {
        // docs/features/canary: 10 replicas at 10% → 1/9, at 41% → 4/6.
        assert_eq!(counts(10, 90, 10), (9, 1));
        assert_eq!(counts(10, 59, 41), (6, 4));
        // Never zero canary pods for a weight in (0, 100) with two or more pods.
        assert_eq!(counts(4, 99, 1), (3, 1));
        assert_eq!(counts(4, 1, 99), (1, 3));
        assert_eq!(counts(4, 100, 0), (4, 0));
        assert_eq!(counts(4, 0, 100), (0, 4));
        // Ties round up: 5 × 50% = 2.5 → 3 canary pods.
        assert_eq!(counts(5, 50, 50), (2, 3));
        assert!(replica_counts(4, &w(&[("a", 1), ("b", 1), ("c", 1)])).is_err());
    }
}
