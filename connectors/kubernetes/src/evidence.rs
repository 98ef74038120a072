//! Evidence actions (`Effect::Observe`): pods, logs, events and a `describe`-style summary
//! of a Deployment. They only read; the runtime attaches their output to the run.
//!
//! Start at [`pods`]; the summaries are built by pure functions ([`pod_summary`],
//! [`event_summary`]) that the unit tests exercise.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::{Api, ListParams, LogParams};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Error;
use crate::deploy::{self, DeployArgs};
use crate::rollout;

/// `pods(ns, selector)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsArgs {
    pub ns: String,
    pub selector: String,
}

/// `logs(ns, pod[, tail])`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    pub ns: String,
    pub pod: String,
    #[serde(default)]
    pub tail: Option<i64>,
}

/// `events(ns, kind, name)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsArgs {
    pub ns: String,
    pub kind: String,
    pub name: String,
}

/// Lines `logs` returns when no tail is given.
pub const DEFAULT_TAIL: i64 = 100;
/// The most lines `logs` returns.
pub const MAX_TAIL: i64 = 10_000;

/// Most bytes of log `logs` reads (the API server's `limitBytes`; cut again here in case a
/// server ignores it).
pub const MAX_LOG_BYTES: usize = 256 * 1024;

/// One pod as evidence: name, phase, ready, restarts, node, image, reason.
/// The Deployment a pod belongs to, read from its controller: a ReplicaSet the Deployment
/// controller named `<deployment>-<pod-template-hash>`.
pub fn pod_deployment(p: &Pod) -> Option<String> {
    let owner = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "ReplicaSet")?;
    let hash = p
        .metadata
        .labels
        .as_ref()?
        .get(crate::rollout::POD_TEMPLATE_HASH)?;
    owner
        .name
        .strip_suffix(hash.as_str())?
        .strip_suffix('-')
        .map(str::to_owned)
}

pub fn pod_summary(p: &Pod) -> Value {
    let status = p.status.clone().unwrap_or_default();
    let statuses = status.container_statuses.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
    // The most telling reason: a waiting container's, then a terminated one's, then the pod's.
    let reason = statuses
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .or_else(|| {
            statuses
                .iter()
                .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone())
        })
        .or_else(|| status.reason.clone());
    let last_termination = statuses
        .iter()
        .find_map(|c| c.last_state.as_ref()?.terminated.as_ref()?.reason.clone());
    let images: Vec<String> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| c.image.clone().unwrap_or_default())
        .collect();
    json!({
        "name": p.metadata.name,
        "phase": status.phase,
        "ready": ready,
        "restarts": restarts,
        "node": p.spec.as_ref().and_then(|s| s.node_name.clone()),
        "image": images.first(),
        "images": images,
        "reason": reason,
        "last_termination_reason": last_termination,
        "deployment": pod_deployment(p),
    })
}

/// `pods(ns, selector)`: the pods matching a label selector, by name.
pub async fn pods(client: &kube::Client, args: PodsArgs) -> Result<Value, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &args.ns);
    let list = api
        .list(&ListParams::default().labels(&args.selector))
        .await
        .map_err(Error::api(format!(
            "listing pods in {} matching {:?}",
            args.ns, args.selector
        )))?;
    let mut items = list.items;
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(json!({
        "namespace": args.ns,
        "selector": args.selector,
        "pods": items.iter().map(pod_summary).collect::<Vec<_>>(),
    }))
}

/// `logs(ns, pod[, tail])`: the last lines of the pod's default container (the
/// `kubectl.kubernetes.io/default-container` annotation, else the first container).
pub async fn logs(client: &kube::Client, args: LogsArgs) -> Result<Value, Error> {
    let tail = args.tail.unwrap_or(DEFAULT_TAIL);
    if !(1..=MAX_TAIL).contains(&tail) {
        return Err(Error::InvalidValue {
            action: "logs",
            param: "tail",
            reason: format!("{tail} is out of range (1..={MAX_TAIL})"),
        });
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &args.ns);
    let pod = api
        .get(&args.pod)
        .await
        .map_err(Error::api(format!("getting pod {}/{}", args.ns, args.pod)))?;
    let container = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container").cloned())
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
        });
    let lp = LogParams {
        container: container.clone(),
        tail_lines: Some(tail),
        limit_bytes: Some(MAX_LOG_BYTES as i64),
        ..LogParams::default()
    };
    let mut text = api.logs(&args.pod, &lp).await.map_err(Error::api(format!(
        "reading logs of pod {}/{}",
        args.ns, args.pod
    )))?;
    let truncated = text.len() >= MAX_LOG_BYTES;
    if text.len() > MAX_LOG_BYTES {
        let mut cut = MAX_LOG_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let lines: Vec<&str> = text.lines().collect();
    Ok(json!({
        "pod": format!("{}/{}", args.ns, args.pod),
        "container": container,
        "tail": tail,
        "lines": lines,
        "truncated": truncated,
    }))
}

fn event_time(e: &CoreEvent) -> Option<jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// One event as evidence.
pub fn event_summary(e: &CoreEvent) -> Value {
    json!({
        "type": e.type_,
        "reason": e.reason,
        "message": e.message,
        "count": e.count.unwrap_or(1),
        "first_seen": e.first_timestamp.as_ref().map(|t| t.0.to_string()),
        "last_seen": event_time(e).map(|t| t.to_string()),
        "source": e.source.as_ref().and_then(|s| s.component.clone()),
        "object": format!("{}/{}", e.involved_object.kind.as_deref().unwrap_or_default(),
                          e.involved_object.name.as_deref().unwrap_or_default()),
    })
}

/// Sorts events oldest first, as `kubectl get events --sort-by=.lastTimestamp`.
pub fn sort_events(events: &mut [CoreEvent]) {
    events.sort_by(|a, b| {
        event_time(a)
            .cmp(&event_time(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

async fn events_about(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<Vec<CoreEvent>, Error> {
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
    let fields = format!("involvedObject.kind={kind},involvedObject.name={name}");
    let list = api
        .list(&ListParams::default().fields(&fields))
        .await
        .map_err(Error::api(format!(
            "listing events about {kind} {ns}/{name}"
        )))?;
    let mut items = list.items;
    sort_events(&mut items);
    Ok(items)
}

/// `events(ns, kind, name)`: events about one object, newest last.
pub async fn events(client: &kube::Client, args: EventsArgs) -> Result<Value, Error> {
    let items = events_about(client, &args.ns, &args.kind, &args.name).await?;
    Ok(json!({
        "object": format!("{}/{}/{}", args.ns, args.kind, args.name),
        "events": items.iter().map(event_summary).collect::<Vec<_>>(),
    }))
}

/// The describe-style summary of a Deployment, given its ReplicaSets and events.
pub fn describe_summary(
    d: &Deployment,
    owned: &[k8s_openapi::api::apps::v1::ReplicaSet],
    events: &[CoreEvent],
) -> Value {
    let spec = d.spec.clone().unwrap_or_default();
    let st = d.status.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let new_rs = owned
        .iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| rollout::equal_ignore_hash(t, &spec.template))
        })
        .min_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &a.metadata.name,
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    &b.metadata.name,
                ))
        })
        .and_then(|rs| rs.metadata.name.clone());
    let mut rss: Vec<Value> = owned
        .iter()
        .map(|rs| {
            json!({
                "name": rs.metadata.name,
                "revision": rollout::revision_of(rs.metadata.annotations.as_ref()),
                "replicas": rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or_default(),
                "ready": rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or_default(),
                "images": rollout::replicaset_images(rs),
                "new": rs.metadata.name == new_rs,
            })
        })
        .collect();
    rss.sort_by_key(|v| v["revision"].as_i64().unwrap_or_default());
    let recent: Vec<Value> = events
        .iter()
        .rev()
        .take(10)
        .rev()
        .map(event_summary)
        .collect();
    json!({
        "name": d.metadata.name,
        "namespace": d.metadata.namespace,
        "revision": rollout::deployment_revision(d),
        "selector": deploy::selector_string(&spec.selector),
        "replicas": format!(
            "{replicas} desired | {} updated | {} total | {} available | {} unavailable",
            st.updated_replicas.unwrap_or_default(),
            st.replicas.unwrap_or_default(),
            st.available_replicas.unwrap_or_default(),
            st.unavailable_replicas.unwrap_or_default(),
        ),
        "paused": spec.paused.unwrap_or(false),
        "strategy": spec.strategy.as_ref().and_then(|s| s.type_.clone()),
        "images": rollout::deployment_images(d),
        "conditions": st.conditions.iter().flatten().map(|c| json!({
            "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
        })).collect::<Vec<_>>(),
        "new_replicaset": new_rs,
        "replicasets": rss,
        "events": recent,
    })
}

/// `describe(ns, deploy)`: replicas, conditions, images, ReplicaSets with revisions and the
/// last ten events, like `kubectl describe deployment`.
pub async fn describe(client: &kube::Client, args: DeployArgs) -> Result<Value, Error> {
    let d = deploy::get(client, &args.ns, &args.deploy).await?;
    let owned = deploy::owned_replicasets(client, &d).await?;
    let events = events_about(client, &args.ns, "Deployment", &args.deploy).await?;
    Ok(describe_summary(&d, &owned, &events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_summary_reports_crashloop_and_oom() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "web:2"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "app", "image": "web:2", "imageID": "", "ready": false,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
        }))
        .unwrap();
        let s = pod_summary(&p);
        assert_eq!(s["name"], "web-1");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["ready"], false);
        assert_eq!(s["restarts"], 4);
        assert_eq!(s["node"], "n1");
        assert_eq!(s["image"], "web:2");
        assert_eq!(s["reason"], "CrashLoopBackOff");
        assert_eq!(s["last_termination_reason"], "OOMKilled");
    }

    #[test]
    fn events_sort_newest_last() {
        let ev = |name: &str, t: &str| -> CoreEvent {
            serde_json::from_value(json!({
                "metadata": {"name": name}, "involvedObject": {"kind": "Pod", "name": "p"},
                "reason": name, "lastTimestamp": t, "type": "Warning"
            }))
            .unwrap()
        };
        let mut evs = vec![
            ev("c", "2026-11-27T03:00:03Z"),
            ev("a", "2026-11-27T03:00:01Z"),
            ev("b", "2026-11-27T03:00:02Z"),
        ];
        sort_events(&mut evs);
        let reasons: Vec<_> = evs.iter().map(|e| e.reason.clone().unwrap()).collect();
        assert_eq!(reasons, ["a", "b", "c"]);
        assert_eq!(event_summary(&evs[0])["object"], "Pod/p");
        assert_eq!(event_summary(&evs[0])["count"], 1);
    }
}
