//! The Kubernetes event watcher: turns Warning events, stalled rollouts, crash-looping and
//! OOM-killed containers into `firebreak_event::Event`s (`source = "k8s"`) for the bus.
//!
//! Start at [`run_with`]. It runs one kube-runtime watcher (with backoff) per resource kind
//! and namespace, turns every object it sees into [`Candidate`]s (pure functions
//! [`from_warning_event`], [`from_deployment`], [`from_pod`]), and lets [`Dedup`] decide what
//! to publish:
//! - what already existed when the watcher started is remembered, not published, unless it
//!   recurs later (its observation token changes: an event's count, a pod's restart count);
//! - the same (object, reason) is published at most once per window (default 10 minutes);
//! - after a watch error kube-runtime re-lists; objects that did not change meanwhile are
//!   recognised by their token and not replayed, and those that did change are published.

use std::collections::HashMap;
use std::time::Duration;

use firebreak_event::Event;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher as kube_watcher};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How the watcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespaces to watch; empty watches every namespace.
    pub namespaces: Vec<String>,
    /// The same (object, reason) is published at most once per window.
    pub dedup_window: Duration,
}

/// The default deduplication window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

impl Default for Config {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            dedup_window: DEFAULT_WINDOW,
        }
    }
}

/// Watches `namespaces` (all when empty) with the default 10-minute window until `shutdown`
/// is cancelled or `sink` is closed. See [`run_with`].
pub async fn run(
    client: kube::Client,
    namespaces: Vec<String>,
    sink: Sender<Event>,
    shutdown: CancellationToken,
) {
    let config = Config {
        namespaces,
        ..Config::default()
    };
    run_with(client, config, sink, shutdown).await
}

/// Something worth publishing, before deduplication.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// `warning`, `rollout_stalled`, `crashloop` or `oomkilled`.
    pub kind: &'static str,
    /// `<kind>/<name>` of the object it is about, kind in lower case.
    pub subject: String,
    pub namespace: Option<String>,
    /// Stable hash of (namespace, object uid, reason): the incident's identity.
    pub fingerprint: String,
    /// What was observed (an Event object, a container's state) ...
    pub observation: String,
    /// ... and its state: a changed token is a recurrence.
    pub token: String,
    pub time: Option<jiff::Timestamp>,
    pub data: Value,
}

/// Hex SHA-256 (first 16 bytes) of the parts, NUL-separated.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Candidate {
    /// The bus event. Its id is derived from the fingerprint and the observation token, so
    /// publishing the same observation twice is deduplicated by the bus as well.
    pub fn into_event(self) -> Event {
        let id = format!(
            "k8s-{}",
            fingerprint(&[&self.fingerprint, &self.observation, &self.token])
        );
        Event {
            id,
            source: "k8s".into(),
            kind: self.kind.into(),
            subject: self.subject,
            time: self.time.unwrap_or_else(jiff::Timestamp::now),
            namespace: self.namespace,
            fingerprint: Some(self.fingerprint),
            traceparent: None,
            data: self.data,
            written: Default::default(),
        }
    }
}

fn labels(reason: &str, kind: &str, name: &str, ns: &str) -> Value {
    let mut labels = json!({"reason": reason, "kind": kind, "name": name, "namespace": ns});
    // The object's name under its kind too (`pod`, `deployment`, ...), the way
    // kube-state-metrics labels series, so runbooks read `pod` whichever way it was reported.
    if !kind.is_empty() {
        labels[kind.to_ascii_lowercase()] = json!(name);
    }
    labels
}

/// A Warning core/v1 Event → `warning`.
pub fn from_warning_event(e: &CoreEvent) -> Option<Candidate> {
    if e.type_.as_deref() != Some("Warning") {
        return None;
    }
    let obj = &e.involved_object;
    let kind = obj.kind.clone().unwrap_or_default();
    let name = obj.name.clone().unwrap_or_default();
    let ns = obj
        .namespace
        .clone()
        .or_else(|| e.metadata.namespace.clone())
        .unwrap_or_default();
    let reason = e.reason.clone().unwrap_or_default();
    // Events without the object's uid are identified by kind and name instead.
    let uid = obj.uid.clone().unwrap_or_else(|| format!("{kind}/{name}"));
    let count = e
        .series
        .as_ref()
        .and_then(|s| s.count)
        .or(e.count)
        .unwrap_or(1);
    let time = e
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0));
    Some(Candidate {
        kind: "warning",
        subject: format!("{}/{name}", kind.to_lowercase()),
        namespace: (!ns.is_empty()).then(|| ns.clone()),
        fingerprint: fingerprint(&[&ns, &uid, &reason]),
        observation: format!(
            "event/{}",
            e.metadata.uid.clone().unwrap_or_else(|| format!(
                "{}/{}",
                ns,
                e.metadata.name.clone().unwrap_or_default()
            ))
        ),
        token: format!(
            "{count}/{}",
            time.map(|t| t.to_string()).unwrap_or_default()
        ),
        time,
        data: json!({
            "reason": reason,
            "message": e.message,
            "involvedObject": {"kind": kind, "name": name, "namespace": ns, "uid": obj.uid},
            "count": count,
            "labels": labels(&reason, &kind, &name, &ns),
        }),
    })
}

/// A Deployment whose Progressing condition is False/ProgressDeadlineExceeded →
/// `rollout_stalled`.
pub fn from_deployment(d: &Deployment) -> Option<Candidate> {
    let cond = d
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing")?;
    if cond.status != "False" || cond.reason.as_deref() != Some("ProgressDeadlineExceeded") {
        return None;
    }
    let name = d.metadata.name.clone().unwrap_or_default();
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let reason = "ProgressDeadlineExceeded";
    let since = cond.last_transition_time.as_ref().map(|t| t.0);
    Some(Candidate {
        kind: "rollout_stalled",
        subject: format!("deployment/{name}"),
        namespace: Some(ns.clone()),
        fingerprint: fingerprint(&[&ns, &uid, reason]),
        observation: format!("deployment/{uid}/{reason}"),
        token: since.map(|t| t.to_string()).unwrap_or_default(),
        time: since,
        data: json!({
            "reason": reason,
            "message": cond.message,
            "involvedObject": {"kind": "Deployment", "name": name, "namespace": ns, "uid": uid},
            "revision": crate::rollout::deployment_revision(d),
            "images": crate::rollout::deployment_images(d),
            "labels": {"reason": reason, "kind": "Deployment", "name": name, "namespace": ns,
                       "deployment": name},
        }),
    })
}

/// The Deployment a pod belongs to, from its ReplicaSet owner (`<deployment>-<hash>`).
fn owning_deployment(p: &Pod) -> Option<String> {
    let hash = p.metadata.labels.as_ref()?.get("pod-template-hash")?;
    let rs = p
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))?;
    rs.name.strip_suffix(&format!("-{hash}")).map(str::to_owned)
}

/// Containers waiting in CrashLoopBackOff → `crashloop`; containers whose last termination
/// was OOMKilled → `oomkilled`.
pub fn from_pod(p: &Pod) -> Vec<Candidate> {
    let name = p.metadata.name.clone().unwrap_or_default();
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let deployment = owning_deployment(p);
    let mut out = Vec::new();
    let statuses = p
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten());
    for c in statuses {
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let mut push = |kind: &'static str, reason: &str, message: Option<String>| {
            let mut labels = labels(reason, "Pod", &name, &ns);
            labels["container"] = json!(c.name);
            if let Some(d) = &deployment {
                labels["deployment"] = json!(d);
            }
            out.push(Candidate {
                kind,
                subject: format!("pod/{name}"),
                namespace: Some(ns.clone()),
                fingerprint: fingerprint(&[&ns, &uid, reason]),
                observation: format!("pod/{uid}/{}/{reason}", c.name),
                token: c.restart_count.to_string(),
                time: None,
                data: json!({
                    "reason": reason,
                    "message": message,
                    "involvedObject": {"kind": "Pod", "name": name, "namespace": ns, "uid": uid},
                    "container": c.name,
                    "image": c.image,
                    "count": c.restart_count,
                    "labels": labels,
                }),
            });
        };
        if let Some(w) = waiting
            && w.reason.as_deref() == Some("CrashLoopBackOff")
        {
            push("crashloop", "CrashLoopBackOff", w.message.clone());
        }
        if let Some(t) = last
            && t.reason.as_deref() == Some("OOMKilled")
        {
            push(
                "oomkilled",
                "OOMKilled",
                Some(format!("exit code {}", t.exit_code)),
            );
        }
    }
    out
}

/// What [`Dedup::observe`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Seen during the initial list: remembered, not published.
    Remembered,
    /// Already seen in exactly this state (a re-list after a watch error, an unrelated update).
    Unchanged,
    /// New or recurring, but this (object, reason) was published less than a window ago.
    Suppressed,
    /// Publish it.
    Publish,
}

/// The watcher's memory: the last token of every observation, and when each fingerprint
/// was last published. Time is passed in, so tests need no clock.
#[derive(Debug)]
pub struct Dedup {
    window: Duration,
    seen: HashMap<String, String>,
    published: HashMap<String, Instant>,
}

impl Dedup {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
            published: HashMap::new(),
        }
    }

    /// Decides about one candidate. `initial` is true while the watcher's first list runs.
    pub fn observe(&mut self, c: &Candidate, now: Instant, initial: bool) -> Decision {
        let previous = self.seen.insert(c.observation.clone(), c.token.clone());
        if initial {
            return Decision::Remembered;
        }
        if previous.as_deref() == Some(c.token.as_str()) {
            return Decision::Unchanged;
        }
        if let Some(at) = self.published.get(&c.fingerprint)
            && now.duration_since(*at) < self.window
        {
            return Decision::Suppressed;
        }
        self.published.insert(c.fingerprint.clone(), now);
        // Keep the map bounded by the window.
        let window = self.window;
        self.published
            .retain(|_, at| now.duration_since(*at) < window);
        Decision::Publish
    }

    /// Forgets observations under a prefix (an object that was deleted).
    pub fn forget(&mut self, prefix: &str) {
        self.seen.retain(|k, _| !k.starts_with(prefix));
    }
}

/// One watched object, whatever its kind.
#[derive(Debug)]
enum Watched {
    Event(Box<CoreEvent>),
    Deployment(Box<Deployment>),
    Pod(Box<Pod>),
}

impl Watched {
    fn candidates(&self) -> Vec<Candidate> {
        match self {
            Watched::Event(e) => from_warning_event(e).into_iter().collect(),
            Watched::Deployment(d) => from_deployment(d).into_iter().collect(),
            Watched::Pod(p) => from_pod(p),
        }
    }

    /// The observation prefix of everything this object produced.
    fn prefix(&self) -> String {
        match self {
            Watched::Event(e) => format!("event/{}", e.metadata.uid.clone().unwrap_or_default()),
            Watched::Deployment(d) => {
                format!("deployment/{}/", d.metadata.uid.clone().unwrap_or_default())
            }
            Watched::Pod(p) => format!("pod/{}/", p.metadata.uid.clone().unwrap_or_default()),
        }
    }
}

/// Where one watch stream is; decides whether what it sees may be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Listing for the first time: what exists is remembered, never published.
    Starting,
    /// Listing again after a watch error or an expired resourceVersion: only what changed
    /// since it was last seen is published.
    Relisting,
    /// Following live changes.
    Watching,
}

type Item = (
    usize,
    Result<kube_watcher::Event<Watched>, kube_watcher::Error>,
);

fn lift<K>(e: kube_watcher::Event<K>, f: fn(K) -> Watched) -> kube_watcher::Event<Watched> {
    use kube_watcher::Event as E;
    match e {
        E::Apply(k) => E::Apply(f(k)),
        E::Delete(k) => E::Delete(f(k)),
        E::InitApply(k) => E::InitApply(f(k)),
        E::Init => E::Init,
        E::InitDone => E::InitDone,
    }
}

fn stream_of<K>(
    idx: usize,
    api: Api<K>,
    config: kube_watcher::Config,
    f: fn(K) -> Watched,
) -> BoxStream<'static, Item>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let s = kube_watcher(api, config)
        .default_backoff()
        .map(move |r| (idx, r.map(|e| lift(e, f))));
    assert_stream(s).boxed()
}

fn assert_stream<S: Stream<Item = Item> + Send + 'static>(s: S) -> S {
    s
}

fn api_for<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs until `shutdown` is cancelled or `sink` is closed. Watch failures are logged and
/// retried with kube-runtime's default backoff; they never end the loop.
pub async fn run_with(
    client: kube::Client,
    config: Config,
    sink: Sender<Event>,
    shutdown: CancellationToken,
) {
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let mut streams = Vec::new();
    for ns in &scopes {
        let (events, deployments, pods) = (
            api_for::<CoreEvent>(&client, ns),
            api_for::<Deployment>(&client, ns),
            api_for::<Pod>(&client, ns),
        );
        let n = streams.len();
        streams.push(stream_of(
            n,
            events,
            kube_watcher::Config::default().fields("type=Warning"),
            |e| Watched::Event(Box::new(e)),
        ));
        streams.push(stream_of(
            n + 1,
            deployments,
            kube_watcher::Config::default(),
            |d| Watched::Deployment(Box::new(d)),
        ));
        streams.push(stream_of(
            n + 2,
            pods,
            kube_watcher::Config::default(),
            |p| Watched::Pod(Box::new(p)),
        ));
    }
    let mut tracker = Tracker::new(streams.len(), config.dedup_window);
    let mut merged = futures::stream::select_all(streams);
    info!(namespaces = ?config.namespaces, window_secs = config.dedup_window.as_secs(), "k8s watcher started");
    loop {
        // Shutdown: stop reading; nothing is buffered, so nothing is lost but the stream.
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = merged.next() => item,
        };
        let Some((idx, result)) = item else { break };
        let event = match result {
            Ok(e) => e,
            Err(error) => {
                // The backoff delays the next attempt; kube-runtime re-lists when needed.
                warn!(stream = idx, error = %error, "k8s watch failed; retrying with backoff");
                continue;
            }
        };
        for c in tracker.step(idx, event, Instant::now()) {
            info!(kind = c.kind, subject = %c.subject, namespace = ?c.namespace, fingerprint = %c.fingerprint, "publishing k8s event");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                sent = sink.send(c.into_event()) => if sent.is_err() {
                    info!("k8s watcher sink closed; stopping");
                    return;
                },
            }
        }
    }
    info!("k8s watcher stopped");
}

/// The watcher's decisions, without I/O: the [`State`] of every stream plus the [`Dedup`]
/// memory. [`Tracker::step`] takes one watcher event and returns what to publish.
struct Tracker {
    states: Vec<State>,
    dedup: Dedup,
}

impl Tracker {
    fn new(streams: usize, window: Duration) -> Self {
        Self {
            states: vec![State::Starting; streams],
            dedup: Dedup::new(window),
        }
    }

    fn step(
        &mut self,
        idx: usize,
        event: kube_watcher::Event<Watched>,
        now: Instant,
    ) -> Vec<Candidate> {
        let state = &mut self.states[idx];
        let obj = match event {
            kube_watcher::Event::Init => {
                if *state != State::Starting {
                    *state = State::Relisting;
                }
                return Vec::new();
            }
            kube_watcher::Event::InitDone => {
                if *state == State::Relisting {
                    info!(stream = idx, "k8s watch resumed after re-list");
                }
                *state = State::Watching;
                return Vec::new();
            }
            kube_watcher::Event::Delete(obj) => {
                self.dedup.forget(&obj.prefix());
                return Vec::new();
            }
            kube_watcher::Event::Apply(obj) | kube_watcher::Event::InitApply(obj) => obj,
        };
        let initial = *state == State::Starting;
        let mut out = Vec::new();
        for c in obj.candidates() {
            match self.dedup.observe(&c, now, initial) {
                Decision::Publish => out.push(c),
                other => {
                    debug!(kind = c.kind, subject = %c.subject, decision = ?other, "k8s event not published")
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crashing_pod(restarts: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-5d4f8-abcde", "namespace": "prod", "uid": "pod-uid",
                         "labels": {"app": "web", "pod-template-hash": "5d4f8"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "web-5d4f8", "uid": "rs-uid", "controller": true}]},
            "spec": {"containers": [{"name": "app", "image": "web:2"}]},
            "status": {"containerStatuses": [{"name": "app", "image": "web:2", "imageID": "",
                "ready": false, "restartCount": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
        }))
        .unwrap()
    }

    fn warning(count: i32, reason: &str) -> CoreEvent {
        serde_json::from_value(json!({
            "metadata": {"name": "web.1", "namespace": "prod", "uid": "ev-uid"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "prod", "uid": "pod-uid"},
            "reason": reason, "message": "Back-off restarting failed container",
            "type": "Warning", "count": count, "lastTimestamp": "2026-11-27T03:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn warning_events_become_warning_candidates() {
        let c = from_warning_event(&warning(3, "BackOff")).unwrap();
        assert_eq!(c.kind, "warning");
        assert_eq!(c.subject, "pod/web-1");
        assert_eq!(c.namespace.as_deref(), Some("prod"));
        assert_eq!(c.fingerprint, fingerprint(&["prod", "pod-uid", "BackOff"]));
        assert_eq!(c.data["count"], 3);
        assert_eq!(
            c.data["labels"],
            json!({"reason": "BackOff", "kind": "Pod", "name": "web-1", "namespace": "prod", "pod": "web-1"})
        );
        let mut normal = warning(1, "Pulled");
        normal.type_ = Some("Normal".into());
        assert!(from_warning_event(&normal).is_none());
        let ev = c.into_event();
        assert_eq!(ev.source, "k8s");
        assert_eq!(ev.subject_name(), "firebreak.events.k8s.warning");
        assert!(ev.id.starts_with("k8s-"));
    }

    #[test]
    fn pods_give_crashloop_and_oomkilled_with_their_deployment() {
        let cs = from_pod(&crashing_pod(2));
        let kinds: Vec<_> = cs.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["crashloop", "oomkilled"]);
        assert_eq!(cs[0].data["labels"]["deployment"], "web");
        assert_eq!(cs[0].subject, "pod/web-5d4f8-abcde");
        assert_ne!(cs[0].fingerprint, cs[1].fingerprint);
    }

    #[test]
    fn stalled_deployments_are_detected() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "d-uid"},
            "status": {"conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "ReplicaSet \"web-x\" has timed out progressing.",
                 "lastTransitionTime": "2026-11-27T03:00:00Z"}]}
        }))
        .unwrap();
        let c = from_deployment(&d).unwrap();
        assert_eq!(c.kind, "rollout_stalled");
        assert_eq!(c.subject, "deployment/web");
        let mut ok = d.clone();
        ok.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].status = "True".into();
        assert!(from_deployment(&ok).is_none());
    }

    #[test]
    fn crashloop_is_published_once_per_window() {
        let mut dedup = Dedup::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let crash = |n| from_pod(&crashing_pod(n)).remove(0);
        assert_eq!(dedup.observe(&crash(1), t0, false), Decision::Publish);
        // The kubelet restarts it again and again: same (pod, reason) → suppressed.
        for n in 2..6 {
            let at = t0 + Duration::from_secs(30 * n as u64);
            assert_eq!(dedup.observe(&crash(n), at, false), Decision::Suppressed);
        }
        // The same state again (an unrelated pod update) is no recurrence at all.
        assert_eq!(
            dedup.observe(&crash(5), t0 + Duration::from_secs(700), false),
            Decision::Unchanged
        );
        // Another restart after the window: published again.
        assert_eq!(
            dedup.observe(&crash(6), t0 + Duration::from_secs(700), false),
            Decision::Publish
        );
    }

    #[test]
    fn initial_list_is_remembered_and_only_recurrences_publish() {
        let mut dedup = Dedup::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let old = from_warning_event(&warning(4, "BackOff")).unwrap();
        assert_eq!(dedup.observe(&old, t0, true), Decision::Remembered);
        // A re-list after a watch error shows it unchanged: not replayed.
        assert_eq!(dedup.observe(&old, t0, false), Decision::Unchanged);
        // It recurs (count 5): published.
        let again = from_warning_event(&warning(5, "BackOff")).unwrap();
        assert_eq!(dedup.observe(&again, t0, false), Decision::Publish);
        // A different reason on the same object is a different incident.
        let other = from_warning_event(&warning(1, "Unhealthy")).unwrap();
        assert_ne!(other.fingerprint, again.fingerprint);
    }

    #[test]
    fn deleted_objects_are_forgotten() {
        let mut dedup = Dedup::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let c = from_pod(&crashing_pod(1)).remove(0);
        dedup.observe(&c, t0, true);
        dedup.forget(&Watched::Pod(Box::new(crashing_pod(1))).prefix());
        assert_eq!(
            dedup.observe(&c, t0 + Duration::from_secs(5), false),
            Decision::Publish
        );
    }

    #[test]
    fn a_relist_after_a_watch_error_publishes_only_what_changed() {
        use kube_watcher::Event as E;
        let mut t = Tracker::new(2, Duration::from_secs(600));
        let now = Instant::now();
        let ev = |count, reason| Watched::Event(Box::new(warning(count, reason)));
        let pod = |n| Watched::Pod(Box::new(crashing_pod(n)));
        // First list: remembered only.
        assert!(t.step(0, E::Init, now).is_empty());
        assert!(t.step(0, E::InitApply(ev(1, "BackOff")), now).is_empty());
        assert!(t.step(0, E::InitDone, now).is_empty());
        assert!(t.step(1, E::Init, now).is_empty());
        assert!(t.step(1, E::InitApply(pod(1)), now).is_empty());
        assert!(t.step(1, E::InitDone, now).is_empty());
        // Live: the warning recurs.
        let got = t.step(0, E::Apply(ev(2, "BackOff")), now);
        assert_eq!(got.len(), 1);
        // The watch fails and kube-runtime re-lists: the unchanged warning is not replayed,
        // the pod that restarted meanwhile (2 → 3) is new since the last look.
        assert!(t.step(0, E::Init, now).is_empty());
        assert!(t.step(0, E::InitApply(ev(2, "BackOff")), now).is_empty());
        assert!(t.step(0, E::InitDone, now).is_empty());
        assert!(t.step(1, E::Init, now).is_empty());
        let got = t.step(1, E::InitApply(pod(3)), now);
        let kinds: Vec<_> = got.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["crashloop", "oomkilled"]);
        assert!(t.step(1, E::InitDone, now).is_empty());
        // And more restarts within the window stay quiet.
        assert!(
            t.step(1, E::Apply(pod(4)), now + Duration::from_secs(60))
                .is_empty()
        );
    }
}
