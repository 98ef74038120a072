//! The event watcher against kubesim: a crash-looping pod is published once, not on every
//! restart; what existed before the watcher started is not replayed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use firebreak_event::Event;
use firebreak_kubernetes::watcher;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::harness::Cluster;

/// Moves the simulated clock on (10 s a step, at most 100 steps) until some pod matching
/// `selector` in `ns` has restarted at least `n` times.
async fn wait_restarts(c: &Cluster, ns: &str, selector: &str, n: i32) -> Result<()> {
    let api: kube::Api<Pod> = kube::Api::namespaced(c.client.clone(), ns);
    for _ in 0..100 {
        let pods = api.list(&ListParams::default().labels(selector)).await?;
        let max = pods
            .items
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .map(|c| c.restart_count)
            .max()
            .unwrap_or_default();
        if max >= n {
            return Ok(());
        }
        c.sim.sim().advance_clock(Duration::from_secs(10));
    }
    bail!("no pod matching {selector} in {ns} restarted {n} times in 1000 simulated seconds")
}

/// Receives until an event matches `pred`, moving the simulated clock on while waiting;
/// returns everything received, the match last. Bounded by 30 s.
async fn receive_until(
    c: &Cluster,
    rx: &mut mpsc::Receiver<Event>,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Result<Vec<Event>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let step = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Some(e)) = tokio::time::timeout_at(step, rx.recv()).await {
            let done = pred(&e);
            got.push(e);
            if done {
                return Ok(got);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no {what} within 30s; got {got:?}");
        }
        c.sim.sim().advance_clock(Duration::from_secs(5));
    }
}

#[tokio::test]
async fn a_crashloop_is_published_once_not_on_every_restart() -> Result<()> {
    let mut config = kubesim::SimConfig::default();
    config
        .controllers
        .image_faults
        .insert("web:crash".into(), kubesim::Fault::CrashLoop);
    let c = Cluster::start_with(config).await?;
    c.deploy_web("app", "web:1").await?;
    c.kubectl(&["scale", "deploy/web", "--replicas=1", "-n", "app"])
        .await?;
    c.rollout_status("app").await?;

    let (tx, mut rx) = mpsc::channel(100);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watcher::run(
        c.client.clone(),
        vec!["app".into()],
        tx,
        shutdown.clone(),
    ));
    c.kubectl(&["set", "image", "deploy/web", "app=web:crash", "-n", "app"])
        .await?;

    // The first crashloop event arrives ...
    let got = receive_until(&c, &mut rx, "crashloop event", |e| e.kind == "crashloop").await?;
    let first = got.last().unwrap().clone();
    assert_eq!(first.source, "k8s");
    assert_eq!(first.namespace.as_deref(), Some("app"));
    assert!(first.subject.starts_with("pod/web-"), "{}", first.subject);
    assert_eq!(first.data["labels"]["deployment"], "web");
    assert_eq!(first.subject_name(), "firebreak.events.k8s.crashloop");

    // ... the pod keeps crashing ...
    wait_restarts(&c, "app", "app=web", 4).await?;
    // ... and a second crash-looping pod, started only now, marks the point where the pod
    // stream has delivered everything before it: its crashloop is the next one published.
    let marker: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "marker", "namespace": "app", "labels": {"app": "marker"}},
        "spec": {"containers": [{"name": "app", "image": "web:crash"}]}
    }))?;
    kube::Api::namespaced(c.client.clone(), "app")
        .create(&Default::default(), &marker)
        .await?;
    let later = receive_until(&c, &mut rx, "marker crashloop", |e| {
        e.kind == "crashloop" && e.subject == "pod/marker"
    })
    .await?;
    let repeats: Vec<_> = later
        .iter()
        .filter(|e| e.kind == "crashloop" && e.subject == first.subject)
        .collect();
    assert!(
        repeats.is_empty(),
        "published again on restart: {repeats:?}"
    );
    // Warning events (kubelet BackOff) about the same pod and reason are deduplicated too.
    let mut fingerprints: Vec<_> = got
        .iter()
        .chain(&later)
        .filter(|e| e.kind == "warning")
        .map(|e| e.fingerprint.clone().unwrap_or_default())
        .collect();
    let n = fingerprints.len();
    fingerprints.sort();
    fingerprints.dedup();
    assert_eq!(
        fingerprints.len(),
        n,
        "a warning fingerprint was published twice"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .context("watcher did not stop within 10s of shutdown")??;
    Ok(())
}

/// The watcher gives no signal when its first list is done, so this keeps creating fresh
/// Warning markers until one is published: from then on it is watching live. Returns what
/// was received meanwhile.
async fn wait_watching(
    events: &kube::Api<k8s_openapi::api::core::v1::Event>,
    rx: &mut mpsc::Receiver<Event>,
) -> Result<Vec<Event>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        let name = format!("marker{i}");
        events
            .create(&Default::default(), &warning(&name, "Marker", 1))
            .await?;
        let poll_until = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(e)) = tokio::time::timeout_at(poll_until, rx.recv()).await {
            let is_marker = e.data["reason"] == "Marker";
            seen.push(e);
            if is_marker {
                return Ok(seen);
            }
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
    }
    bail!("no marker warning was published within 30s")
}

fn warning(name: &str, reason: &str, count: i32) -> k8s_openapi::api::core::v1::Event {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "app"},
        "involvedObject": {"kind": "Deployment", "name": "web", "namespace": "app",
                           "uid": format!("{name}-uid")},
        "reason": reason, "message": format!("{reason} happened"), "type": "Warning",
        "count": count, "lastTimestamp": format!("2026-11-27T04:00:{count:02}Z"),
    }))
    .unwrap()
}

#[tokio::test]
async fn what_existed_before_the_watcher_started_is_not_replayed_unless_it_recurs() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_namespace("app").await?;
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(c.client.clone(), "app");
    events
        .create(&Default::default(), &warning("old", "OldTrouble", 1))
        .await?;

    let (tx, mut rx) = mpsc::channel(100);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watcher::run_with(
        c.client.clone(),
        watcher::Config {
            namespaces: vec!["app".into()],
            dedup_window: Duration::from_secs(600),
        },
        tx,
        shutdown.clone(),
    ));
    let seen = wait_watching(&events, &mut rx).await?;
    assert!(
        seen.iter().all(|e| e.data["reason"] != "OldTrouble"),
        "a warning that existed before the start was replayed: {seen:?}"
    );

    // It recurs (count 2): now it is news.
    let mut old = events.get("old").await?;
    old.count = Some(2);
    old.last_timestamp = warning("old", "OldTrouble", 2).last_timestamp;
    events.replace("old", &Default::default(), &old).await?;
    let recurred = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = rx.recv().await.context("watcher stopped")?;
            if e.data["reason"] == "OldTrouble" {
                return anyhow::Ok(e);
            }
        }
    })
    .await
    .context("the recurring warning was not published within 30s")??;
    assert_eq!(recurred.kind, "warning");
    assert_eq!(recurred.subject, "deployment/web");
    assert_eq!(recurred.data["count"], 2);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok(())
}

#[tokio::test]
async fn after_a_watch_error_it_resumes_without_replaying_or_losing() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_namespace("app").await?;
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(c.client.clone(), "app");
    let (tx, mut rx) = mpsc::channel(100);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watcher::run(
        c.client.clone(),
        vec!["app".into()],
        tx,
        shutdown.clone(),
    ));
    wait_watching(&events, &mut rx).await?;
    events
        .create(&Default::default(), &warning("before", "Before", 1))
        .await?;
    receive_until(&c, &mut rx, "the Before warning", |e| {
        e.data["reason"] == "Before"
    })
    .await?;

    // Compaction ends every open watch and expires its resourceVersion: the watcher must
    // re-list. A warning created right now must still arrive, and nothing seen before may.
    let lists_before = event_lists(&c);
    let compact = http::Request::post("/_sim/compact").body(Vec::new())?;
    c.client.request_text(compact).await?;
    events
        .create(&Default::default(), &warning("after", "After", 1))
        .await?;
    let got = receive_until(&c, &mut rx, "the After warning", |e| {
        e.data["reason"] == "After"
    })
    .await?;
    let replayed: Vec<_> = got
        .iter()
        .filter(|e| e.data["reason"] == "Before" || e.data["reason"] == "Marker")
        .collect();
    assert!(
        replayed.is_empty(),
        "replayed after the re-list: {replayed:?}"
    );
    assert!(
        event_lists(&c) > lists_before,
        "the watcher did not re-list after the watch ended"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok(())
}

/// How many times the events of `app` were listed (not watched).
fn event_lists(c: &Cluster) -> usize {
    c.sim
        .sim()
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path == "/api/v1/namespaces/app/events"
                && !r.query.contains("watch=true")
        })
        .count()
}

#[tokio::test]
async fn a_stalled_rollout_fails_the_wait_and_is_published() -> Result<()> {
    let mut config = kubesim::SimConfig::default();
    config
        .controllers
        .image_faults
        .insert("web:stuck".into(), kubesim::Fault::NeverReady);
    let c = Cluster::start_with(config).await?;
    c.deploy_web("app", "web:1").await?;
    let (tx, mut rx) = mpsc::channel(100);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watcher::run(
        c.client.clone(),
        vec!["app".into()],
        tx,
        shutdown.clone(),
    ));
    c.kubectl(&[
        "patch",
        "deploy/web",
        "-n",
        "app",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":30}}"#,
    ])
    .await?;
    c.kubectl(&["set", "image", "deploy/web", "app=web:stuck", "-n", "app"])
        .await?;
    let stalled = receive_until(&c, &mut rx, "rollout_stalled event", |e| {
        e.kind == "rollout_stalled"
    })
    .await?
    .pop()
    .unwrap();
    assert_eq!(stalled.subject, "deployment/web");
    assert_eq!(stalled.data["reason"], "ProgressDeadlineExceeded");
    assert_eq!(stalled.data["images"], serde_json::json!(["app=web:stuck"]));

    let (cx, _) = crate::harness::context(false);
    let err = c
        .call(
            &cx,
            "wait_rollout",
            serde_json::json!({"ns": "app", "deploy": "web", "timeout": 30}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, firebreak_connector::ErrorKind::Permanent);
    assert_eq!(
        err.message,
        "deployment \"web\" exceeded its progress deadline"
    );
    let (ok, _, stderr) = c
        .kubectl_raw(&[
            "rollout",
            "status",
            "deploy/web",
            "-n",
            "app",
            "--timeout=30s",
        ])
        .await?;
    assert!(!ok && stderr.contains(&err.message), "{stderr}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok(())
}
