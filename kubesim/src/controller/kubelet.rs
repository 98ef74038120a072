//! The simulated scheduler and kubelet: pods are bound to a Ready, schedulable node, their
//! containers start and become Ready after [`ControllerConfig::pod_ready_delay`], and injected
//! [`Fault`]s make them crash-loop, fail to pull, be slow or be OOM-killed. Also [`pod_logs`],
//! the synthesized output behind `pods/log`.
//!
//! Start at [`sync_pods`]: `schedule` binds a pending pod, then `desired_pod_status` computes the
//! whole pod status as a pure function of the pod, its node, its faults and the clock, and
//! `record_transitions` emits the events a real kubelet would for the difference with the old
//! status. Because the status is a function of time, the same clock gives the same status and
//! nothing is written.

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::events::{self, Involved, Source};
use super::replicaset::is_pod_active;
use super::{ControllerConfig, Fault, PassCluster, node, obj};
use crate::cluster::{Cluster, ClusterError, Kind};

/// The pod annotation that injects a fault into every container of the pod.
pub const FAULT_ANNOTATION: &str = "kubesim.io/fault";
/// A crash-looping container runs this long before it exits.
const CRASH_RUN_MS: i64 = 2_000;
/// An OOM-killed container runs this long before the kernel kills it.
const OOM_RUN_MS: i64 = 45_000;
/// A never-ready image reports `ErrImagePull` this long before `ImagePullBackOff`.
const ERR_IMAGE_PULL_MS: i64 = 5_000;
/// The kubelet's crash back-off: 10 s doubling up to 5 min.
const BACKOFF_BASE_MS: i64 = 10_000;
const BACKOFF_CAP_MS: i64 = 300_000;
/// Requests logged by a running model server, one per this interval.
const LOG_INTERVAL_MS: i64 = 5_000;
/// At most this many lines are synthesized for one pod.
const MAX_LOG_LINES: usize = 10_000;

/// What the scheduler needs to know about a node.
struct NodeInfo {
    name: String,
    ready: bool,
    schedulable: bool,
    host_ip: String,
    pods: usize,
}

/// Schedules pending pods and syncs the status of every pod on a node.
pub(crate) fn sync_pods(cluster: &mut PassCluster<'_>, cfg: &ControllerConfig, now: Timestamp) {
    let pods = cluster.all(Kind::Pod);
    if pods.is_empty() {
        return;
    }
    let mut nodes: Vec<NodeInfo> = cluster
        .list(Kind::Node, None)
        .iter()
        .map(|n| NodeInfo {
            name: obj::name(n).to_owned(),
            ready: node::node_is_ready(n),
            schedulable: !obj::bool_at(n, &["spec", "unschedulable"]),
            host_ip: node::host_ip(n),
            pods: 0,
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let by_name: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    for pod in pods.iter() {
        if let Some(&i) = obj::str_at(pod, &["spec", "nodeName"]).and_then(|n| by_name.get(n)) {
            nodes[i].pods += usize::from(is_pod_active(pod));
        }
    }
    for pod in pods.iter() {
        if !is_pod_active(pod) {
            continue;
        }
        let bound = obj::str_at(pod, &["spec", "nodeName"]).and_then(|n| by_name.get(n));
        if bound.is_some_and(|&i| is_settled(pod, &nodes[i], cfg)) {
            continue;
        }
        let key = obj::key(pod);
        if let Err(error) = sync_pod(cluster, cfg, now, Value::clone(pod), &mut nodes, &by_name) {
            super::log_error("kubelet", &key, &error);
        }
    }
}

fn sync_pod(
    cluster: &mut dyn Cluster,
    cfg: &ControllerConfig,
    now: Timestamp,
    mut pod: Value,
    nodes: &mut [NodeInfo],
    by_name: &HashMap<String, usize>,
) -> Result<(), ClusterError> {
    let node_index = match obj::str_at(&pod, &["spec", "nodeName"]) {
        Some(name) => match by_name.get(name) {
            Some(&i) => i,
            // The node is gone; the pod stays as it was (the real one would be Unknown).
            None => return Ok(()),
        },
        None => match schedule(cluster, now, &mut pod, nodes)? {
            Some(i) => i,
            None => return Ok(()),
        },
    };
    let node = &nodes[node_index];
    let status = desired_pod_status(&pod, node, cfg, now);
    let old_status = pod.get("status").cloned().unwrap_or_else(|| json!({}));
    if obj::status_eq(&old_status, &status) {
        return Ok(());
    }
    let mut updated = pod.clone();
    updated["status"] = status;
    let updated = cluster.update_status(Kind::Pod, updated)?;
    record_transitions(cluster, now, &old_status, &updated, node);
    Ok(())
}

/// Whether a pod's status can no longer change with time alone: Ready on a Ready node, every
/// container running, ready and without a fault. Such pods are skipped without computing their
/// status, which keeps a quiet reconcile cheap.
fn is_settled(pod: &Value, node: &NodeInfo, cfg: &ControllerConfig) -> bool {
    if !node.ready || !super::replicaset::is_pod_ready(pod) {
        return false;
    }
    let containers = pod.pointer("/spec/containers").and_then(Value::as_array);
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let (Some(containers), Some(statuses)) = (containers, statuses) else {
        return false;
    };
    containers.len() == statuses.len()
        && containers.iter().zip(statuses).all(|(c, s)| {
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            container_fault(pod, c, cfg).is_none()
                && s.get("name") == c.get("name")
                && s.get("ready").and_then(Value::as_bool) == Some(true)
                && s.pointer("/state/running").is_some()
                && s.get("image").and_then(Value::as_str) == Some(full_image(image).as_str())
        })
}

/// The scheduler: binds the pod to the Ready, schedulable node with the fewest pods, or records
/// why it cannot.
fn schedule(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    pod: &mut Value,
    nodes: &mut [NodeInfo],
) -> Result<Option<usize>, ClusterError> {
    let chosen = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.ready && n.schedulable)
        .min_by_key(|(_, n)| n.pods)
        .map(|(i, _)| i);
    let Some(i) = chosen else {
        return mark_unschedulable(cluster, now, pod, nodes).map(|()| None);
    };
    let mut bound = pod.clone();
    obj::obj_mut(&mut bound, &["spec"]).insert("nodeName".to_owned(), json!(nodes[i].name));
    *pod = cluster.update(Kind::Pod, bound)?;
    nodes[i].pods += 1;
    let message = format!(
        "Successfully assigned {} to {}",
        obj::key(pod),
        nodes[i].name
    );
    events::record(
        cluster,
        now,
        Source::SCHEDULER,
        &Involved::new(pod, "Pod", "v1"),
        events::NORMAL,
        "Scheduled",
        &message,
    );
    Ok(Some(i))
}

/// `PodScheduled=False/Unschedulable` and a `FailedScheduling` event, once per message.
fn mark_unschedulable(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    pod: &Value,
    nodes: &[NodeInfo],
) -> Result<(), ClusterError> {
    let message = if nodes.is_empty() {
        "no nodes available to schedule pods".to_owned()
    } else {
        let not_ready = nodes.iter().filter(|n| !n.ready).count();
        let cordoned = nodes.iter().filter(|n| n.ready && !n.schedulable).count();
        let mut reasons = Vec::new();
        if not_ready > 0 {
            reasons.push(format!(
                "{not_ready} node(s) had untolerated taint {{node.kubernetes.io/not-ready: }}"
            ));
        }
        if cordoned > 0 {
            reasons.push(format!("{cordoned} node(s) were unschedulable"));
        }
        let n = nodes.len();
        format!(
            "0/{n} nodes are available: {}. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling.",
            reasons.join(", ")
        )
    };
    let current = obj::condition(pod.pointer("/status/conditions"), "PodScheduled");
    if current
        .and_then(|c| c.get("message"))
        .and_then(Value::as_str)
        == Some(message.as_str())
    {
        return Ok(());
    }
    let mut updated = pod.clone();
    let status = obj::obj_mut(&mut updated, &["status"]);
    status.insert("phase".to_owned(), json!("Pending"));
    status.insert(
        "conditions".to_owned(),
        json!([{"type": "PodScheduled", "status": "False", "lastProbeTime": null,
                "lastTransitionTime": obj::fmt_time(now), "reason": "Unschedulable", "message": message}]),
    );
    let updated = cluster.update_status(Kind::Pod, updated)?;
    events::record(
        cluster,
        now,
        Source::SCHEDULER,
        &Involved::new(&updated, "Pod", "v1"),
        events::WARNING,
        "FailedScheduling",
        &message,
    );
    Ok(())
}

/// The fault of one container: pod annotation, then [`ControllerConfig::image_faults`], then
/// the image tag.
pub fn container_fault(pod: &Value, container: &Value, cfg: &ControllerConfig) -> Option<Fault> {
    if let Some(fault) = obj::annotation(pod, FAULT_ANNOTATION).and_then(Fault::parse) {
        return Some(fault);
    }
    let image = container.get("image").and_then(Value::as_str).unwrap_or("");
    cfg.image_faults
        .get(image)
        .copied()
        .or_else(|| Fault::from_image(image))
}

/// Where a container is in its life at a moment.
#[derive(Debug, Clone, PartialEq)]
enum Life {
    /// Not started yet (sandbox being created).
    Creating,
    /// The image cannot be pulled.
    PullFailing { backing_off: bool },
    /// Running since `since` (ms).
    Running { since: i64 },
    /// Waiting out a crash back-off of `backoff` ms.
    BackOff { backoff: i64 },
}

/// A container's simulated history up to now.
#[derive(Debug, Clone, PartialEq)]
struct ContainerSim {
    life: Life,
    restarts: i64,
    /// The last finished attempt: (started, finished) in ms.
    last_run: Option<(i64, i64)>,
}

/// Replays a container that dies after `run_ms` of every run: the first restart is immediate,
/// later ones wait 10 s, 20 s, 40 s … 5 min, as the kubelet's back-off does.
fn crash_cycle(start: i64, now: i64, run_ms: i64) -> ContainerSim {
    let mut run_start = start;
    let mut restarts = 0;
    let mut last_run = None;
    loop {
        let end = run_start + run_ms;
        if now < end {
            return ContainerSim {
                life: Life::Running { since: run_start },
                restarts,
                last_run,
            };
        }
        last_run = Some((run_start, end));
        let backoff = if restarts == 0 {
            0
        } else {
            (BACKOFF_BASE_MS << (restarts - 1).min(16)).min(BACKOFF_CAP_MS)
        };
        if now < end + backoff {
            return ContainerSim {
                life: Life::BackOff { backoff },
                restarts,
                last_run,
            };
        }
        run_start = end + backoff;
        restarts += 1;
    }
}

/// A container's history from the moment its pod's sandbox was ready.
fn simulate_container(fault: Option<Fault>, start: i64, now: i64) -> ContainerSim {
    let healthy = |since| ContainerSim {
        life: Life::Running { since },
        restarts: 0,
        last_run: None,
    };
    match fault {
        _ if now < start => ContainerSim {
            life: Life::Creating,
            restarts: 0,
            last_run: None,
        },
        None | Some(Fault::SlowReady(_)) => healthy(start),
        Some(Fault::CrashLoop) => crash_cycle(start, now, CRASH_RUN_MS),
        Some(Fault::OomKilled) => crash_cycle(start, now, OOM_RUN_MS),
        Some(Fault::NeverReady) => ContainerSim {
            life: Life::PullFailing {
                backing_off: now - start >= ERR_IMAGE_PULL_MS,
            },
            restarts: 0,
            last_run: None,
        },
    }
}

/// A Go `time.Duration` string for whole seconds (`10s`, `1m20s`, `5m0s`).
fn go_duration(ms: i64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// `docker.io/library/nginx:1.0` for `nginx:1.0`, as the container runtime reports images.
fn full_image(image: &str) -> String {
    let (first, rest) = image.split_once('/').unwrap_or(("", image));
    let mut name = if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        image.to_owned()
    } else {
        format!("docker.io/{image}")
    };
    let last = name.rsplit('/').next().unwrap_or("");
    if !last.contains(':') && !last.contains('@') {
        name.push_str(":latest");
    }
    name
}

fn image_id(image: &str) -> String {
    let full = full_image(image);
    let repo = full.split('@').next().unwrap_or(&full);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    let h = |salt: &str| obj::fnv64a(format!("{salt}{image}").as_bytes());
    format!(
        "{repo}@sha256:{:016x}{:016x}{:016x}{:016x}",
        h("a"),
        h("b"),
        h("c"),
        h("d")
    )
}

fn container_id(pod: &Value, name: &str, restarts: i64) -> String {
    let h =
        |salt: &str| obj::fnv64a(format!("{salt}{}/{name}/{restarts}", obj::uid(pod)).as_bytes());
    format!(
        "containerd://{:016x}{:016x}{:016x}{:016x}",
        h("a"),
        h("b"),
        h("c"),
        h("d")
    )
}

/// `name_namespace(uid)`, the kubelet's `format.Pod`.
fn format_pod(pod: &Value) -> String {
    format!(
        "{}_{}({})",
        obj::name(pod),
        obj::namespace(pod).unwrap_or(""),
        obj::uid(pod)
    )
}

/// A stable pod IP in the node's pod CIDR range.
fn pod_ip(pod: &Value) -> String {
    let h = obj::fnv32a(obj::uid(pod).as_bytes());
    format!("10.244.{}.{}", (h >> 8) % 250, 2 + (h % 250))
}

/// One container's status and whether it is ready.
fn container_status(
    pod: &Value,
    container: &Value,
    sim: &ContainerSim,
    fault: Option<Fault>,
    ready_delay_ms: i64,
    now: i64,
) -> (Value, bool) {
    let name = container.get("name").and_then(Value::as_str).unwrap_or("");
    let image = container.get("image").and_then(Value::as_str).unwrap_or("");
    let (state, ready, started) = match &sim.life {
        Life::Creating => (
            json!({"waiting": {"reason": "ContainerCreating"}}),
            false,
            false,
        ),
        Life::PullFailing { backing_off: false } => (
            json!({"waiting": {"reason": "ErrImagePull", "message": pull_error(image)}}),
            false,
            false,
        ),
        Life::PullFailing { backing_off: true } => (
            json!({"waiting": {"reason": "ImagePullBackOff",
                               "message": format!("Back-off pulling image \"{image}\"")}}),
            false,
            false,
        ),
        Life::Running { since } => {
            // startTime has seconds precision, so the precise start is unknown: count the delay
            // from the end of that second, so a pod is never Ready sooner than the delay says.
            let rounding = if ready_delay_ms > 0 { 1_000 } else { 0 };
            let ready = fault != Some(Fault::CrashLoop) && now >= since + rounding + ready_delay_ms;
            (
                json!({"running": {"startedAt": obj::fmt_ms(*since)}}),
                ready,
                true,
            )
        }
        Life::BackOff { backoff } => (
            json!({"waiting": {"reason": "CrashLoopBackOff",
                               "message": format!("back-off {} restarting failed container={name} pod={}",
                                                  go_duration(*backoff), format_pod(pod))}}),
            false,
            false,
        ),
    };
    let last_state = match sim.last_run {
        Some((started_at, finished_at)) => {
            let (reason, code) = if fault == Some(Fault::OomKilled) {
                ("OOMKilled", 137)
            } else {
                ("Error", 1)
            };
            json!({"terminated": {"exitCode": code, "reason": reason,
                                  "startedAt": obj::fmt_ms(started_at), "finishedAt": obj::fmt_ms(finished_at),
                                  "containerID": container_id(pod, name, sim.restarts.max(1) - 1)}})
        }
        None => json!({}),
    };
    let mut status = json!({
        "name": name,
        "image": if matches!(sim.life, Life::Creating | Life::PullFailing { .. }) { image.to_owned() } else { full_image(image) },
        "imageID": "",
        "ready": ready,
        "restartCount": sim.restarts,
        "started": started,
        "state": state,
        "lastState": last_state,
    });
    if !matches!(sim.life, Life::Creating | Life::PullFailing { .. }) {
        status["imageID"] = json!(image_id(image));
        status["containerID"] = json!(container_id(pod, name, sim.restarts));
    }
    (status, ready)
}

fn pull_error(image: &str) -> String {
    let full = full_image(image);
    format!(
        "failed to pull and unpack image \"{full}\": failed to resolve reference \"{full}\": {full}: not found"
    )
}

/// A pod condition, keeping the old transition time while the status holds.
fn pod_condition(
    old: &Value,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<&str>,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let transition = obj::condition(old.get("conditions"), type_)
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
    if let Some(reason) = reason {
        c["reason"] = json!(reason);
    }
    if let Some(message) = message {
        c["message"] = json!(message);
    }
    c
}

/// The whole pod status the kubelet would report now.
fn desired_pod_status(
    pod: &Value,
    node: &NodeInfo,
    cfg: &ControllerConfig,
    now: Timestamp,
) -> Value {
    let old = pod.get("status").cloned().unwrap_or_else(|| json!({}));
    let now_ms = now.as_millisecond();
    let stamp = obj::fmt_time(now);
    let start_ms =
        obj::time_ms_at(&old, &["startTime"]).unwrap_or(now_ms - now_ms.rem_euclid(1000));
    let sandbox_ms = start_ms + cfg.pod_start_delay.as_millis() as i64;
    let sandbox_ready = now_ms >= sandbox_ms;
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut statuses = Vec::with_capacity(containers.len());
    let mut unready = Vec::new();
    let mut all_started = true;
    for c in &containers {
        let fault = container_fault(pod, c, cfg);
        let delay = match fault {
            Some(Fault::SlowReady(d)) => d,
            _ => cfg.pod_ready_delay,
        };
        let sim = simulate_container(fault, sandbox_ms, now_ms);
        all_started &= !matches!(sim.life, Life::Creating | Life::PullFailing { .. });
        let (status, ready) =
            container_status(pod, c, &sim, fault, delay.as_millis() as i64, now_ms);
        if !ready {
            unready.push(
                c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            );
        }
        statuses.push(status);
    }
    let containers_ready = unready.is_empty() && !containers.is_empty();
    let not_ready_message = format!("containers with unready status: [{}]", unready.join(" "));
    let (ready_reason, ready_message) = if containers_ready {
        (None, None)
    } else {
        (Some("ContainersNotReady"), Some(not_ready_message.as_str()))
    };
    let pod_ready = containers_ready && node.ready;
    let conditions = json!([
        pod_condition(
            &old,
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            None,
            &stamp
        ),
        pod_condition(&old, "Initialized", true, None, None, &stamp),
        pod_condition(
            &old,
            "Ready",
            pod_ready,
            ready_reason,
            ready_message,
            &stamp
        ),
        pod_condition(
            &old,
            "ContainersReady",
            containers_ready,
            ready_reason,
            ready_message,
            &stamp
        ),
        pod_condition(&old, "PodScheduled", true, None, None, &stamp),
    ]);
    let mut status = json!({
        "phase": if all_started && sandbox_ready { "Running" } else { "Pending" },
        "conditions": conditions,
        "hostIP": node.host_ip,
        "hostIPs": [{"ip": node.host_ip}],
        "startTime": obj::fmt_ms(start_ms),
        "containerStatuses": statuses,
        "qosClass": old.get("qosClass").cloned().unwrap_or_else(|| json!("BestEffort")),
    });
    if sandbox_ready {
        let ip = pod_ip(pod);
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

/// The kubelet's (and node controller's) events for what changed between two pod statuses.
fn record_transitions(
    cluster: &mut dyn Cluster,
    now: Timestamp,
    old: &Value,
    pod: &Value,
    node: &NodeInfo,
) {
    let kubelet = Source {
        component: "kubelet",
        host: Some(&node.name),
    };
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new_statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (c, new) in containers.iter().zip(&new_statuses) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        let old_cs = old
            .get("containerStatuses")
            .and_then(Value::as_array)
            .and_then(|l| {
                l.iter()
                    .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
            })
            .cloned()
            .unwrap_or(Value::Null);
        let mut involved = Involved::new(pod, "Pod", "v1");
        involved.field_path = Some(format!("spec.containers{{{name}}}"));
        let mut emit = |type_: &str, reason: &str, message: String| {
            events::record(cluster, now, kubelet, &involved, type_, reason, &message);
        };
        for (type_, reason, message) in container_events(pod, c, &old_cs, new) {
            emit(type_, reason, message);
        }
    }
    let was_ready = obj::condition(old.get("conditions"), "Ready")
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True");
    if was_ready && !node.ready {
        events::record(
            cluster,
            now,
            Source::NODE_CONTROLLER,
            &Involved::new(pod, "Pod", "v1"),
            events::WARNING,
            "NodeNotReady",
            "Node is not ready",
        );
    }
}

/// The events for one container's transition from `old` to `new` status.
fn container_events(
    pod: &Value,
    container: &Value,
    old: &Value,
    new: &Value,
) -> Vec<(&'static str, &'static str, String)> {
    let name = container.get("name").and_then(Value::as_str).unwrap_or("");
    let image = container.get("image").and_then(Value::as_str).unwrap_or("");
    let waiting = |s: &Value| obj::str_at(s, &["state", "waiting", "reason"]).map(str::to_owned);
    let (old_wait, new_wait) = (waiting(old), waiting(new));
    let old_restarts = obj::i64_at(old, &["restartCount"]).unwrap_or(0);
    let new_restarts = obj::i64_at(new, &["restartCount"]).unwrap_or(0);
    let was_created = obj::str_at(old, &["containerID"]).is_some();
    let is_created = obj::str_at(new, &["containerID"]).is_some();
    let mut out = Vec::new();
    let start_events = |out: &mut Vec<_>| {
        let always = container.get("imagePullPolicy").and_then(Value::as_str) == Some("Always");
        if always {
            out.push((
                events::NORMAL,
                "Pulling",
                format!("Pulling image \"{image}\""),
            ));
            let size = 20_000_000 + u64::from(obj::fnv32a(image.as_bytes()) % 80_000_000);
            out.push((events::NORMAL, "Pulled", format!(
                "Successfully pulled image \"{image}\" in 1.204s (1.204s including waiting). Image size: {size} bytes.")));
        } else {
            out.push((
                events::NORMAL,
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            ));
        }
        out.push((
            events::NORMAL,
            "Created",
            format!("Created container: {name}"),
        ));
        out.push((
            events::NORMAL,
            "Started",
            format!("Started container {name}"),
        ));
    };
    if is_created && (!was_created || new_restarts > old_restarts) {
        start_events(&mut out);
    }
    if new_wait.as_deref() == Some("CrashLoopBackOff")
        && (old_wait != new_wait || new_restarts != old_restarts)
    {
        out.push((
            events::WARNING,
            "BackOff",
            format!(
                "Back-off restarting failed container {name} in pod {}",
                format_pod(pod)
            ),
        ));
    }
    if new_wait.as_deref() == Some("ErrImagePull") && old_wait != new_wait {
        out.push((
            events::NORMAL,
            "Pulling",
            format!("Pulling image \"{image}\""),
        ));
        out.push((
            events::WARNING,
            "Failed",
            format!("Failed to pull image \"{image}\": {}", pull_error(image)),
        ));
        out.push((events::WARNING, "Failed", "Error: ErrImagePull".to_owned()));
    }
    if new_wait.as_deref() == Some("ImagePullBackOff") && old_wait != new_wait {
        out.push((
            events::NORMAL,
            "BackOff",
            format!("Back-off pulling image \"{image}\""),
        ));
        out.push((
            events::WARNING,
            "Failed",
            "Error: ImagePullBackOff".to_owned(),
        ));
    }
    let probe = container.get("readinessProbe").filter(|p| !p.is_null());
    let running_unready = new.pointer("/state/running").is_some() && !obj::bool_at(new, &["ready"]);
    let was_running = old.pointer("/state/running").is_some();
    let slow = obj::annotation(pod, FAULT_ANNOTATION).is_some_and(|f| f.starts_with("slow-ready"))
        || matches!(Fault::from_image(image), Some(Fault::SlowReady(_)));
    if let Some(probe) = probe
        && running_unready
        && !was_running
        && slow
    {
        let message = match probe.pointer("/httpGet") {
            Some(_) => "Readiness probe failed: HTTP probe failed with statuscode: 503".to_owned(),
            None => format!(
                "Readiness probe failed: dial tcp {}: connect: connection refused",
                obj::str_at(pod, &["status", "podIP"]).unwrap_or("")
            ),
        };
        out.push((events::WARNING, "Unhealthy", message));
    }
    out
}

/// Synthesized log lines of a pod's first container (the current run, or for a container in
/// crash back-off the run that just died), the last `tail` lines if given. Deterministic for a
/// given pod and time: a model server starting up, then serving requests; a crash-looping one
/// fails to load its model and exits.
pub fn pod_logs(pod: &Value, now: jiff::Timestamp, tail: Option<usize>) -> Vec<String> {
    let Some(cs) = pod.pointer("/status/containerStatuses/0") else {
        return Vec::new();
    };
    let image = pod
        .pointer("/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or("model-server");
    let name = obj::name(pod);
    let now_ms = now.as_millisecond();
    let (start, end, crashed) =
        if let Some(started) = obj::time_ms_at(cs, &["state", "running", "startedAt"]) {
            (started, now_ms, None)
        } else if let Some(term) = cs.pointer("/lastState/terminated") {
            let started = obj::time_ms_at(term, &["startedAt"]).unwrap_or(now_ms);
            let finished = obj::time_ms_at(term, &["finishedAt"]).unwrap_or(now_ms);
            (
                started,
                finished,
                term.get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            )
        } else {
            return Vec::new();
        };
    let limit = tail.unwrap_or(MAX_LOG_LINES).min(MAX_LOG_LINES);
    let mut lines = startup_lines(name, image, start);
    match crashed.as_deref() {
        Some("OOMKilled") => {
            lines.extend(request_lines(name, start, end - 2_000, limit));
            lines.push(log_line(
                end - 1_500,
                "WARN ",
                "memory usage at 97% of limit (kv-cache 14.1GiB), shedding batch",
            ));
            lines.push(log_line(
                end - 200,
                "WARN ",
                "allocation of 2.00GiB for kv-cache block failed, retrying",
            ));
        }
        Some(_) => {
            // It dies loading the model: it never got to "loaded" or "listening".
            lines.truncate(2);
            lines.extend(crash_lines(image, start));
        }
        None if image_crashes(pod) => lines.truncate(2),
        None => lines.extend(request_lines(name, start, end, limit)),
    }
    let skip = lines.len().saturating_sub(limit);
    lines.split_off(skip)
}

/// Whether the pod's first container is crash-looping (its current run will die too).
fn image_crashes(pod: &Value) -> bool {
    pod.pointer("/status/containerStatuses/0/lastState/terminated/reason")
        .and_then(Value::as_str)
        == Some("Error")
}

fn log_line(ms: i64, level: &str, message: &str) -> String {
    let stamp = obj::fmt_ms(ms);
    let base = stamp.trim_end_matches('Z');
    format!("{base}.{:03}Z {level} {message}", ms.rem_euclid(1000))
}

fn startup_lines(pod_name: &str, image: &str, start: i64) -> Vec<String> {
    let tag = image.rsplit_once(':').map_or("latest", |(_, t)| t);
    let model = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split(':')
        .next()
        .unwrap_or("model");
    vec![
        log_line(
            start,
            "INFO ",
            &format!("model-server starting version={tag} pod={pod_name}"),
        ),
        log_line(
            start + 14,
            "INFO ",
            &format!("loading model weights from /models/{model} (shards=4, dtype=bf16)"),
        ),
        log_line(
            start + 830,
            "INFO ",
            "model loaded in 0.82s (7.24B parameters)",
        ),
        log_line(
            start + 905,
            "INFO ",
            "warmup complete: batch=8 p50=41ms p99=88ms",
        ),
        log_line(
            start + 950,
            "INFO ",
            "listening on 0.0.0.0:8080 (http) and 0.0.0.0:9090 (metrics)",
        ),
    ]
}

fn crash_lines(image: &str, start: i64) -> Vec<String> {
    vec![
        log_line(
            start + 1_210,
            "ERROR",
            &format!(
                "failed to load shard 3/4 of {image}: CUDA error: out of memory (tried to allocate 2.00 GiB)"
            ),
        ),
        log_line(
            start + 1_215,
            "ERROR",
            "Traceback (most recent call last): model_server/loader.py:212 in load_shard",
        ),
        log_line(
            start + 1_220,
            "ERROR",
            "RuntimeError: model initialisation failed, exiting with code 1",
        ),
    ]
}

/// One request line per [`LOG_INTERVAL_MS`] after startup, only the last `limit` generated.
fn request_lines(pod_name: &str, start: i64, end: i64, limit: usize) -> Vec<String> {
    let first = start + 1_000;
    if end < first {
        return Vec::new();
    }
    let count = ((end - first) / LOG_INTERVAL_MS + 1) as usize;
    (count.saturating_sub(limit)..count)
        .map(|i| {
            let at = first + i as i64 * LOG_INTERVAL_MS;
            let h = obj::fnv64a(format!("{pod_name}/{i}").as_bytes());
            if i % 3 == 2 {
                log_line(at, "INFO ", &format!("GET /healthz 200 0.{}ms", h % 9 + 1))
            } else {
                let latency = 40 + h % 400;
                let tokens = 16 + (h >> 16) % 512;
                log_line(
                    at,
                    "INFO ",
                    &format!(
                        "POST /v1/completions 200 {latency}ms tokens={tokens} request_id={:012x}",
                        h >> 16
                    ),
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_cycle_backs_off_like_the_kubelet() {
        // First run dies at 2 s and restarts at once.
        let s = crash_cycle(0, 2_500, CRASH_RUN_MS);
        assert_eq!(
            (s.restarts, s.life.clone()),
            (1, Life::Running { since: 2_000 })
        );
        // Second run dies at 4 s, waits 10 s.
        let s = crash_cycle(0, 5_000, CRASH_RUN_MS);
        assert_eq!(
            (s.restarts, s.life.clone()),
            (1, Life::BackOff { backoff: 10_000 })
        );
        assert_eq!(s.last_run, Some((2_000, 4_000)));
        // Restarted at 14 s, dies at 16 s, waits 20 s.
        let s = crash_cycle(0, 17_000, CRASH_RUN_MS);
        assert_eq!(
            (s.restarts, s.life.clone()),
            (2, Life::BackOff { backoff: 20_000 })
        );
        // After an hour the back-off is capped at 5 minutes.
        let s = crash_cycle(0, 3_600_000, CRASH_RUN_MS);
        assert!(s.restarts > 10 && s.restarts < 30, "{}", s.restarts);
        assert_eq!(go_duration(300_000), "5m0s");
        assert_eq!(go_duration(80_000), "1m20s");
    }

    #[test]
    fn images_are_reported_fully_qualified() {
        assert_eq!(full_image("nginx:1.0"), "docker.io/library/nginx:1.0");
        assert_eq!(
            full_image("bitnami/redis"),
            "docker.io/bitnami/redis:latest"
        );
        assert_eq!(
            full_image("registry:5000/ml/model:v2"),
            "registry:5000/ml/model:v2"
        );
        assert!(image_id("nginx:1.0").starts_with("docker.io/library/nginx@sha256:"));
    }

    fn running_pod(image: &str, started: &str) -> Value {
        json!({"metadata": {"name": "web-1", "namespace": "default", "uid": "u1"},
               "spec": {"containers": [{"name": "app", "image": image}]},
               "status": {"containerStatuses": [{"name": "app", "state": {"running": {"startedAt": started}}}]}})
    }

    #[test]
    fn logs_are_deterministic_and_tail() {
        let pod = running_pod("ml/model:v1", "2026-01-01T00:00:00Z");
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let all = pod_logs(&pod, now, None);
        assert_eq!(all, pod_logs(&pod, now, None));
        assert!(
            all[0].starts_with(
                "2026-01-01T00:00:00.000Z INFO  model-server starting version=v1 pod=web-1"
            ),
            "{}",
            all[0]
        );
        assert_eq!(all.len(), 5 + 120);
        let tail = pod_logs(&pod, now, Some(3));
        assert_eq!(tail, all[all.len() - 3..]);
        assert!(pod_logs(&json!({"metadata": {"name": "p"}}), now, None).is_empty());
    }

    #[test]
    fn crashed_pods_log_errors() {
        let pod = json!({"metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "app", "image": "ml/model:crashloop"}]},
            "status": {"containerStatuses": [{"name": "app",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                    "startedAt": "2026-01-01T00:00:02Z", "finishedAt": "2026-01-01T00:00:04Z"}}}]}});
        let lines = pod_logs(&pod, "2026-01-01T00:00:10Z".parse().unwrap(), None);
        assert!(
            lines
                .last()
                .unwrap()
                .contains("ERROR RuntimeError: model initialisation failed"),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("CUDA error: out of memory"))
        );
    }
}
