//! `firebreak bench --remedy`: how long from an alert's arrival to the remedy written, for the
//! shipped runbooks of scenarios 1 and 2 against kubesim.
//!
//! kubesim runs in this process, one cluster per scenario: `--incidents` Deployments `model-N`
//! rolled from v1 to v2 (scenario 1), then as many HTTPRoutes `route-N` sending 10% to a canary
//! (scenario 2). A real `firebreak serve` child (embedded bus, or JetStream with `--nats`) runs the shipped
//! runbooks (their run budgets lifted: the bench opens one incident per object). Alerts are
//! posted at a steady `--remedy-rate`, each its own incident; an alert's time is taken just
//! before its POST, the remedy's when kubesim committed the write (its request log): the
//! rollback's PUT of `model-N` (`model-latency-rollback`), the shift back's PUT of `route-N`
//! (`canary-rollback`). It prints one summary line with p50 and p99 of each.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use firebreak_bus::port::free_loopback_port;
use serde_json::Value;

use crate::bench::{BenchArgs, bus_for, percentiles, spawn_server_with, wait_ready};

const NS: &str = "ml-serving";

/// Incident N's alert body, or the API path its remedy writes.
type PerIncident = fn(usize) -> String;

pub async fn bench(args: BenchArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let runbooks = dir.path().join("runbooks");
    write_runbooks(&runbooks)?;
    let (nats_url, _nats, bus) = bus_for(&args, dir.path()).await?;
    let mut lines = Vec::new();
    for scenario in [Scenario::Rollback, Scenario::ShiftBack] {
        let latencies =
            measure(&args, scenario, dir.path(), &runbooks, nats_url.as_deref()).await?;
        let (p50, p99) = percentiles(latencies);
        lines.push(format!(
            "{} p50 {p50:.1} ms p99 {p99:.1} ms",
            scenario.name()
        ));
    }
    println!(
        "bench[{bus}] alert → remedy written ({} incidents each, {}/s): {}",
        args.incidents,
        args.remedy_rate,
        lines.join(", ")
    );
    Ok(())
}

#[derive(Clone, Copy)]
enum Scenario {
    /// Scenario 1: `model-latency-rollback` rolls `model-N` back.
    Rollback,
    /// Scenario 2: `canary-rollback` shifts `route-N` back to its primary.
    ShiftBack,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Rollback => "rollback",
            Scenario::ShiftBack => "shift back",
        }
    }
}

/// One scenario on a cluster of its own (kubesim's controller passes grow with the objects it
/// holds, and every pass holds its lock): the alerts' latencies in milliseconds.
async fn measure(
    args: &BenchArgs,
    scenario: Scenario,
    dir: &Path,
    runbooks: &Path,
    nats: Option<&str>,
) -> Result<Vec<f64>> {
    let n = args.incidents;
    let sim = kubesim::Sim::start(kubesim::SimConfig {
        controllers: kubesim::ControllerConfig {
            pod_ready_delay: Duration::ZERO,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .context("starting kubesim")?;
    let work = dir.join(scenario.name().replace(' ', "-"));
    std::fs::create_dir_all(&work)?;
    let kubeconfig = work.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    match scenario {
        Scenario::Rollback => {
            eprintln!("bench: {n} Deployments rolled from v1 to v2");
            sim.apply_yaml(&models(n, "v1"))?;
            settle(&sim, n).await?;
            sim.apply_yaml(&models(n, "v2"))?;
            settle(&sim, n).await?;
        }
        Scenario::ShiftBack => {
            eprintln!("bench: {n} HTTPRoutes sending 10% to a canary");
            sim.apply_yaml(&routes(n))?;
        }
    }
    let port = free_loopback_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server_with(
        &work,
        runbooks,
        port,
        nats,
        &[("FIREBREAK_KUBECONFIG", kubeconfig.display().to_string())],
    )?;
    let http = reqwest::Client::new();
    wait_ready(&http, &base, &mut server).await?;
    let (alert, written): (PerIncident, PerIncident) = match scenario {
        Scenario::Rollback => (latency_alert, deployment_path),
        Scenario::ShiftBack => (canary_alert, route_path),
    };
    let gap = Duration::from_secs_f64(1.0 / args.remedy_rate.max(1) as f64);
    let mut sent = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        let at = jiff::Timestamp::now();
        let resp = http
            .post(format!("{base}/v1/alertmanager"))
            .header("content-type", "application/json")
            .body(alert(i))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("the engine refused alert {i}: {}", resp.status());
        }
        sent.push(at);
    }
    let latencies = wait_written(&sim, &sent, written, Duration::from_secs(60)).await?;
    eprintln!(
        "bench: {}: {} remedies written",
        scenario.name(),
        latencies.len()
    );
    let _ = server.kill().await;
    sim.shutdown().await;
    Ok(latencies)
}

/// The shipped runbooks with their run budgets lifted (every alert here is its own incident).
fn write_runbooks(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in crate::demo::SHIPPED_RUNBOOKS {
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("budget:"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

fn deployment(name: &str, image: &str) -> String {
    format!(
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         spec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    \
         metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n        - name: server\n          \
         image: {image}\n"
    )
}

fn namespace() -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n")
}

/// `n` one-replica Deployments `model-N` at `version`.
fn models(n: usize, version: &str) -> String {
    let mut out = namespace();
    for i in 0..n {
        out.push_str(&deployment(
            &format!("model-{i}"),
            &format!("registry.example.invalid/ml/model:{version}"),
        ));
    }
    out
}

/// `n` HTTPRoutes `route-N` over Services `primary-N` (90) and `canary-N` (10), with a
/// one-replica `canary-N` Deployment (the runbook scales it to zero).
fn routes(n: usize) -> String {
    let service = |name: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
             spec:\n  selector:\n    app: {name}\n  ports:\n    - port: 80\n"
        )
    };
    let mut out = namespace();
    for i in 0..n {
        out.push_str(&deployment(
            &format!("canary-{i}"),
            "registry.example.invalid/ml/model:v2",
        ));
        out.push_str(&service(&format!("primary-{i}")));
        out.push_str(&service(&format!("canary-{i}")));
        out.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: route-{i}\n  namespace: {NS}\n\
             spec:\n  parentRefs:\n    - name: public\n      namespace: infra\n  rules:\n    - backendRefs:\n        \
             - name: primary-{i}\n          port: 80\n          weight: 90\n        - name: canary-{i}\n          port: 80\n          weight: 10\n"
        ));
    }
    out
}

/// Waits until every `model-N` finished its rollout.
async fn settle(sim: &kubesim::SimHandle, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = (0..n).all(|i| {
            sim.sim()
                .get("apps/v1", "Deployment", Some(NS), &format!("model-{i}"))
                .is_some_and(|d| rolled_out(&d))
        });
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the bench's Deployments did not roll out within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rolled_out(d: &Value) -> bool {
    let want = &d["spec"]["replicas"];
    d["status"]["observedGeneration"] == d["metadata"]["generation"]
        && &d["status"]["updatedReplicas"] == want
        && &d["status"]["availableReplicas"] == want
        && &d["status"]["replicas"] == want
}

fn deployment_path(i: usize) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/model-{i}")
}

fn route_path(i: usize) -> String {
    format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/route-{i}")
}

/// For each alert, the time from its POST to kubesim committing the first write to `path(i)`
/// after it.
async fn wait_written(
    sim: &kubesim::SimHandle,
    sent: &[jiff::Timestamp],
    path: PerIncident,
    limit: Duration,
) -> Result<Vec<f64>> {
    let deadline = Instant::now() + limit;
    loop {
        let log = sim.sim().requests();
        let found: Vec<Option<f64>> = sent
            .iter()
            .enumerate()
            .map(|(i, at)| {
                let p = path(i);
                log.iter()
                    .find(|r| {
                        matches!(r.method.as_str(), "PUT" | "PATCH")
                            && r.path == p
                            && r.code < 300
                            && r.at >= *at
                    })
                    .map(|r| (r.at - *at).total(jiff::Unit::Millisecond).unwrap_or(0.0))
            })
            .collect();
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            let missing = found.iter().filter(|f| f.is_none()).count();
            bail!(
                "{missing} of {} remedies were not written within {limit:?}",
                sent.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A ModelLatencyHigh webhook for `model-N` (the shape of the captured fixture).
fn latency_alert(i: usize) -> String {
    webhook(
        "ModelLatencyHigh",
        &format!(r#""namespace":"{NS}","deployment":"model-{i}","severity":"critical""#),
        r#""summary":"p99 latency above 500ms""#,
        i,
    )
}

/// A CanaryErrorRateHigh webhook for `route-N` (labels as the scenario-2 rule sets them).
fn canary_alert(i: usize) -> String {
    webhook(
        "CanaryErrorRateHigh",
        &format!(
            r#""namespace":"{NS}","route":"httproute/route-{i}","stable":"primary-{i}","canary":"canary-{i}","severity":"page""#
        ),
        r#""summary":"canary error rate above 5%","recovery_timeout":"1s""#,
        i,
    )
}

fn webhook(alertname: &str, labels: &str, annotations: &str, i: usize) -> String {
    let fingerprint = (alertname.len() as u64) << 40 | i as u64;
    let now = jiff::Timestamp::now();
    format!(
        r#"{{"receiver":"firebreak","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"{alertname}",{labels}}},"annotations":{{{annotations}}},"startsAt":"{now}","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://127.0.0.1:9090/graph","fingerprint":"{fingerprint:016x}"}}],"groupLabels":{{"alertname":"{alertname}"}},"commonLabels":{{"alertname":"{alertname}",{labels}}},"commonAnnotations":{{{annotations}}},"externalURL":"http://127.0.0.1:9093","version":"4","groupKey":"{{}}:{{alertname=\"{alertname}\"}}","truncatedAlerts":0}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alerts_decode_and_match_the_shipped_runbooks_labels() {
        for body in [latency_alert(7), canary_alert(7)] {
            let events = firebreak_event::alertmanager::decode(body.as_bytes()).expect("decodes");
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].label("namespace"), Some(NS));
        }
        let e = &firebreak_event::alertmanager::decode(canary_alert(3).as_bytes()).unwrap()[0];
        assert_eq!(e.label("route"), Some("httproute/route-3"));
    }
}
