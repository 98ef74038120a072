//! `firebreak demo --scenario 2`: a canary's closed loop on one machine, with the real
//! Prometheus and Alertmanager (Debian's `prometheus` and `prometheus-alertmanager`).
//!
//! 1. kubesim starts in process with `ml-serving/recommender`: v1 as `recommender-primary`, a
//!    v2 canary as `recommender-canary`, an HTTPRoute sending them 90/10 of 200 simulated
//!    requests a second (kubesim's traffic model, exported at its `/metrics`).
//! 2. Prometheus scrapes kubesim every second and evaluates a canary error-rate rule;
//!    Alertmanager sends the alert to the engine's webhook.
//! 3. `canary-progressive` steps v2 up (10, 25, 50, 100%) through its gates (error rate,
//!    p99 latency, enough requests), one line per interval. At 50% v2 goes bad.
//! 4. The failed gate shifts every request back to v1 and scales the canary to zero; the alert
//!    (`canary-rollback`) finds it done and waits until the error rate recovered and the
//!    alert resolved.
//! 5. The route's error rate over the demo, as a chart; the route, as kubectl would show it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use firebreak_audit::{Journal, RecordBody, RunStatus};
use firebreak_bus::port::free_loopback_port;
use serde_json::{Value, json};

use crate::config::Config;
use crate::demo::{heading, write_runbooks};
use crate::progress::stdout_sink;
use crate::serve::Engine;

/// The cluster scenario 2 starts with.
pub const RECOMMENDER: &str = include_str!("../demo/recommender-canary.yaml");

const NS: &str = "ml-serving";
const PRIMARY: &str = "recommender-primary";
const CANARY: &str = "recommender-canary";

/// The error-rate rule a team would put on its canary; its labels say which route and
/// backends the alert is about.
const RULES: &str = r#"groups:
  - name: canary
    interval: 1s
    rules:
      - alert: CanaryErrorRateHigh
        expr: |
          sum(rate(istio_requests_total{reporter="destination",destination_workload="recommender-canary",response_code=~"5.."}[10s]))
            / sum(rate(istio_requests_total{reporter="destination",destination_workload="recommender-canary"}[10s])) > 0.05
        labels:
          severity: page
          namespace: ml-serving
          route: httproute/recommender
          stable: recommender-primary
          canary: recommender-canary
        annotations:
          summary: "recommender canary answers {{ $value | humanizePercentage }} errors"
          window: 10s
          recovery_timeout: 2m
"#;

/// Where the two programs are: on `PATH`, or where Debian puts them.
pub(crate) fn find(program: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program));
    on_path
        .chain([PathBuf::from("/usr/bin").join(program)])
        .find(|p| p.is_file())
}

/// Whether scenario 2 can run here; else what to install.
pub fn missing() -> Option<String> {
    let missing: Vec<&str> = ["prometheus", "prometheus-alertmanager"]
        .into_iter()
        .filter(|p| find(p).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "scenario 2 runs the real {}: install {} (Debian: apt-get install {})",
            missing.join(" and "),
            if missing.len() == 1 { "it" } else { "them" },
            missing.join(" ")
        )
    })
}

/// A child process killed when dropped.
pub(crate) struct Program {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Program {
    pub(crate) fn spawn(name: &'static str, dir: &Path, args: &[String]) -> Result<Program> {
        let path = find(name).with_context(|| format!("{name} is not installed"))?;
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(&path)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(Program { child, name, log })
    }

    /// The real Prometheus in `dir` on `port`, scraping kubesim at `kubesim` every second;
    /// `extra` is more of its configuration (rules, alerting).
    pub(crate) fn prometheus(
        dir: &Path,
        port: u16,
        kubesim: std::net::SocketAddr,
        extra: &str,
    ) -> Result<Program> {
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{extra}\
                 scrape_configs:\n  - job_name: kubesim\n    static_configs:\n      - targets: ['{kubesim}']\n"
            ),
        )?;
        Program::spawn(
            "prometheus",
            dir,
            &[
                "--config.file=prometheus.yml".into(),
                "--storage.tsdb.path=tsdb".into(),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ],
        )
    }

    pub(crate) async fn wait_ready(&mut self, url: &str) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if let Ok(r) = http.get(url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} was not ready at {url} within 30 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn scenario2(work: &Path) -> Result<()> {
    heading("1. a simulated cluster: recommender v1 (primary) and a v2 canary at 10% of 200 req/s");
    let (sim, kubeconfig) = crate::demo::start_sim(work, Duration::from_millis(300)).await?;
    sim.apply_yaml(RECOMMENDER)
        .context("deploying recommender")?;
    println!("   HTTPRoute ml-serving/recommender: {PRIMARY} 90, {CANARY} 10");

    heading("2. the real Prometheus (scraping kubesim every second) and Alertmanager");
    let (engine_port, prom_port, am_port) = (
        free_loopback_port()?,
        free_loopback_port()?,
        free_loopback_port()?,
    );
    let dir = work.join("monitoring");
    std::fs::create_dir_all(dir.join("am"))?;
    std::fs::write(
        dir.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: firebreak\n  group_by: [alertname]\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: firebreak\n    \
             webhook_configs:\n      - url: http://127.0.0.1:{engine_port}/v1/alertmanager\n        \
             send_resolved: true\n"
        ),
    )?;
    let mut am = Program::spawn(
        "prometheus-alertmanager",
        &dir,
        &[
            "--config.file=alertmanager.yml".into(),
            "--storage.path=am".into(),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".into(),
        ],
    )?;
    std::fs::write(dir.join("rules.yml"), RULES)?;
    let alerting = format!(
        "rule_files: [rules.yml]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n"
    );
    let mut prom = Program::prometheus(&dir, prom_port, sim.addr(), &alerting)?;
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let am_url = format!("http://127.0.0.1:{am_port}");
    am.wait_ready(&format!("{am_url}/-/ready")).await?;
    prom.wait_ready(&format!("{prom_url}/-/ready")).await?;
    println!(
        "   prometheus {prom_url}, alertmanager {am_url}, rule CanaryErrorRateHigh (> 5% over 10s)"
    );

    let runbooks = work.join("runbooks");
    write_runbooks(&runbooks)?;
    let mut cfg = Config {
        listen: format!("127.0.0.1:{engine_port}").parse()?,
        data_dir: work.join("data"),
        runbooks,
        ..Config::default()
    };
    cfg.kubernetes.kubeconfig = Some(kubeconfig.clone());
    cfg.connectors
        .insert("prometheus".into(), json!({ "url": prom_url }));
    cfg.connectors
        .insert("alertmanager".into(), json!({ "url": am_url }));
    let (registry, _) = crate::serve::connectors(&cfg, true).await?;
    let engine = Engine::start(&cfg, registry, Some(stdout_sink("   │ "))).await?;
    let journal = engine.dispatcher.journal.clone();
    wait_traffic(&prom_url).await?;
    println!(
        "   engine on http://{}; Prometheus sees the canary's traffic",
        engine.addr
    );

    heading("3. canary-progressive: 10 → 25 → 50 → 100%, gates: error rate < 5%, p99 < 500 ms");
    let started = jiff::Timestamp::now();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{}/v1/trigger", engine.addr))
        .json(&json!({
            "runbook": "canary-progressive",
            "actor": "demo",
            "params": {
                "namespace": NS, "route": "httproute/recommender",
                "stable": PRIMARY, "canary": CANARY,
                "steps": "10,25,50,100", "interval": "3s", "window": "5s", "min_requests": 20,
            },
        }))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("the trigger was refused: {}", resp.text().await?);
    }
    wait_until(&journal, "the shift to 50%", Duration::from_secs(60), |j| {
        shifted_to(j, 50)
    })
    .await?;
    // v2 goes bad at 50%: three answers in ten are errors, as a bad build would answer.
    let bad = RECOMMENDER
        .split("\n---\n")
        .find(|doc| doc.contains(&format!("name: {CANARY}")) && doc.contains("kind: Deployment"))
        .context("the canary's Deployment in the manifest")?
        .replace(
            "kubesim.io/latency-ms: \"45\"",
            "kubesim.io/latency-ms: \"45\"\n        kubesim.io/error-rate: \"0.3\"",
        );
    sim.apply_yaml(&bad).context("making v2 bad")?;
    println!("   ⚡ v2 goes bad at 50%: 30% of its answers are errors");

    let progressive = wait_run(&journal, "canary-progressive", Duration::from_secs(120)).await?;
    println!(
        "   canary-progressive: {:?}",
        progressive.status.unwrap_or(RunStatus::Failed)
    );
    heading("4. the alert: canary-rollback finds traffic back on v1 and waits for recovery");
    let rollback = wait_run(&journal, "canary-rollback", Duration::from_secs(180)).await?;
    println!(
        "   canary-rollback: {:?}",
        rollback.status.unwrap_or(RunStatus::Failed)
    );

    heading("5. the route's error rate through the demo (Prometheus, 1 s steps)");
    let chart = error_rate_chart(&prom_url, started).await?;
    println!("{chart}");
    let route = route_weights(&sim)?;
    println!("   HTTPRoute ml-serving/recommender now: {route}");

    heading("6. the audit trails");
    for run in [&progressive, &rollback] {
        print!(
            "{}",
            firebreak_audit::render_timeline(&journal.records_for_run(&run.run_id)?)
        );
    }
    crate::demo::print_verified(&journal)?;
    engine.stop().await?;
    sim.shutdown().await;
    drop((prom, am));
    // The bad canary was rolled back (the progressive run fails on purpose), and the alert's
    // run saw the recovery.
    if progressive.status != Some(RunStatus::Failed)
        || rollback.status != Some(RunStatus::Succeeded)
    {
        bail!(
            "expected the canary rolled back and recovered; got canary-progressive {:?}, canary-rollback {:?}",
            progressive.status,
            rollback.status
        );
    }
    println!(
        "   scenario 2: the bad canary was shifted back, scaled to zero, and the alert resolved"
    );
    Ok(())
}

/// The route's weights, read from kubesim.
fn route_weights(sim: &kubesim::SimHandle) -> Result<String> {
    let route = sim
        .sim()
        .get(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            Some(NS),
            "recommender",
        )
        .context("reading the route")?;
    let refs = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(refs
        .iter()
        .map(|b| format!("{} {}", b["name"].as_str().unwrap_or("?"), b["weight"]))
        .collect::<Vec<_>>()
        .join(", "))
}

async fn wait_traffic(prom: &str) -> Result<()> {
    let q = format!("sum(rate(istio_requests_total{{destination_workload=\"{CANARY}\"}}[5s]))");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if query(prom, &q).await?.is_some_and(|v| v > 0.0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("Prometheus saw no canary traffic within 30 s")
}

async fn query(prom: &str, promql: &str) -> Result<Option<f64>> {
    let body: Value = reqwest::Client::new()
        .post(format!("{prom}/api/v1/query"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("query={}", encode(promql)))
        .send()
        .await?
        .json()
        .await?;
    Ok(body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok()))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The route's error rate since `from`, one column per second, as a bar chart.
async fn error_rate_chart(prom: &str, from: jiff::Timestamp) -> Result<String> {
    let promql = format!(
        "(sum(rate(istio_requests_total{{destination_workload_namespace=\"{NS}\",response_code=~\"5..\"}}[3s])) or vector(0)) \
         / sum(rate(istio_requests_total{{destination_workload_namespace=\"{NS}\"}}[3s]))"
    );
    let end = jiff::Timestamp::now();
    let body: Value = reqwest::Client::new()
        .post(format!("{prom}/api/v1/query_range"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "query={}&start={}&end={}&step=1",
            encode(&promql),
            from.as_second(),
            end.as_second()
        ))
        .send()
        .await?
        .json()
        .await?;
    let values: Vec<f64> = body["data"]["result"][0]["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p[1].as_str()?.parse().ok())
        .collect();
    Ok(chart(&values))
}

/// A small bar chart: rows from the highest value down, one column per sample.
pub fn chart(values: &[f64]) -> String {
    const ROWS: usize = 6;
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    if values.is_empty() {
        return "   (no samples)".into();
    }
    let top = if max > 0.0 { max } else { 1.0 };
    let mut out = String::new();
    for row in (0..ROWS).rev() {
        let level = top * row as f64 / ROWS as f64;
        let label = if row == ROWS - 1 {
            format!("{:>5.1}% ┤", top * 100.0)
        } else if row == 0 {
            format!("{:>5.1}% ┤", 0.0)
        } else {
            "       │".to_owned()
        };
        out.push_str("   ");
        out.push_str(&label);
        for v in values {
            out.push(if *v > level { '█' } else { ' ' });
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "           └{}\n            {} s: the breach, the shift back, the recovery",
        "─".repeat(values.len()),
        values.len()
    ));
    out
}

fn shifted_to(journal: &Journal, weight: i64) -> bool {
    journal.runs().iter().any(|r| {
        r.runbook == "canary-progressive"
            && journal
                .records_for_run(&r.run_id)
                .unwrap_or_default()
                .iter()
                .any(|rec| match &rec.body {
                    RecordBody::StepFinished { name, outputs, .. } => {
                        name == "traffic::shift" && outputs["weights"][CANARY] == weight
                    }
                    _ => false,
                })
    })
}

async fn wait_until(
    journal: &Journal,
    what: &str,
    limit: Duration,
    done: impl Fn(&Journal) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done(journal) {
        if Instant::now() > deadline {
            bail!("{what} did not happen within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The first finished run of `runbook`, or an error after `limit`.
pub(crate) async fn wait_run(
    journal: &Journal,
    runbook: &str,
    limit: Duration,
) -> Result<firebreak_audit::RunSummary> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(run) = journal
            .runs()
            .into_iter()
            .find(|r| r.runbook == runbook && r.status.is_some())
        {
            println!(
                "   {runbook}: {:?}",
                run.status.unwrap_or(RunStatus::Failed)
            );
            return Ok(run);
        }
        if Instant::now() > deadline {
            bail!("{runbook} did not finish within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_as_tall_as_the_highest_value() {
        let c = chart(&[0.0, 0.0, 0.3, 0.15, 0.0]);
        let lines: Vec<&str> = c.lines().collect();
        assert!(lines[0].contains("30.0%"), "{c}");
        assert!(lines[0].ends_with("  █  "), "{c}");
        assert!(lines[5].ends_with("  ██ "), "{c}");
        assert!(c.contains("5 s"), "{c}");
    }
}
