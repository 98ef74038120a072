//! Rollout bench: drives N Deployments (default 1,000; `KUBESIM_BENCH_DEPLOYMENTS` overrides)
//! through creation and a rolling update on kubesim's store. The user writes are made in one
//! batch and the controllers run once per simulated second (as kube-controller-manager works off
//! its informers); the line printed gives all writes (user + controllers) per second, the time
//! of one quiet reconcile (what the server pays after each API write) and peak RSS.
//!
//! Run: `cargo bench -p kubesim --bench rollout`.

use std::time::{Duration, Instant};

use kubesim::cluster::{Cluster, Kind};
use kubesim::controller::{ControllerConfig, reconcile};
use kubesim::store::Store;
use serde_json::{Value, json};

fn deployment(i: usize) -> Value {
    let name = format!("svc-{i:04}");
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": "model:v1"}]}},
        }
    })
}

fn rolled_out(d: &Value) -> bool {
    let s = &d["status"];
    d["metadata"]["generation"] == s["observedGeneration"]
        && s["updatedReplicas"] == d["spec"]["replicas"]
        && s["availableReplicas"] == d["spec"]["replicas"]
        && s["replicas"] == d["spec"]["replicas"]
}

/// Peak resident set size (`VmHWM`) in MiB, from /proc.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let n: usize = std::env::var("KUBESIM_BENCH_DEPLOYMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let cfg = ControllerConfig {
        pod_ready_delay: Duration::from_secs(1),
        ..ControllerConfig::default()
    };
    // The server default watch window (SimConfig::watch_window).
    let mut store = Store::new(10_000);
    store.clock.freeze(true);
    let rv0 = store.current_rv();
    let started = Instant::now();

    for i in 0..n {
        Cluster::create(&mut store, Kind::Deployment, deployment(i)).expect("deployment created");
    }
    settle(&mut store, &cfg, n);

    for i in 0..n {
        let name = format!("svc-{i:04}");
        let mut d = Cluster::get(&store, Kind::Deployment, Some("default"), &name)
            .expect("deployment exists");
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("model:v2");
        Cluster::update(&mut store, Kind::Deployment, d).expect("deployment updated");
    }
    let ticks = settle(&mut store, &cfg, n);
    let elapsed = started.elapsed();
    let writes = store.current_rv() - rv0;

    let quiet = Instant::now();
    reconcile(&mut store, &cfg);
    let quiet = quiet.elapsed();
    assert_eq!(
        store.current_rv() - rv0,
        writes,
        "a quiet reconcile writes nothing"
    );
    println!(
        "kubesim rollout bench: {n} deployments created and rolled ({ticks} ticks), {writes} writes in {:.2}s = {:.0} ops/s, quiet reconcile {:.1} ms, peak RSS {:.1} MiB",
        elapsed.as_secs_f64(),
        writes as f64 / elapsed.as_secs_f64(),
        quiet.as_secs_f64() * 1000.0,
        peak_rss_mib()
    );
}

/// Ticks the simulated clock a second at a time until every Deployment is rolled out.
fn settle(store: &mut Store, cfg: &ControllerConfig, n: usize) -> usize {
    for tick in 1..=120 {
        store.clock.advance(jiff::SignedDuration::from_secs(1));
        reconcile(store, cfg);
        let done = Cluster::list(store, Kind::Deployment, Some("default"))
            .iter()
            .filter(|d| rolled_out(d))
            .count();
        if done == n {
            return tick;
        }
    }
    panic!("deployments not rolled out after 120 simulated seconds");
}
