//! `firebreak demo`: the mission's scenarios end to end on one machine. `--scenario 1` needs
//! nothing else running; `--scenario 2` (in `demo_canary`) also starts the real Prometheus and
//! Alertmanager; `--scenario 3` (in `demo_teams`) the real Prometheus; without a flag all run
//! (2 and 3 are skipped, saying what to install, where those are missing).
//!
//! Scenario 1:
//!
//! 1. kubesim starts in process; `ml-serving/fraud-model` is deployed at v1 behind a Service,
//!    then rolled to v2 (revision 2), as a team would ship a new model version.
//! 2. The engine starts on the embedded bus with the shipped runbooks and the Kubernetes
//!    connector pointed at kubesim.
//! 3. A real Alertmanager 0.25 `ModelLatencyHigh` webhook body (captured from the real
//!    program) is POSTed to the engine's webhook over HTTP.
//! 4. `model-latency-rollback` runs: evidence, rollback to the previous ReplicaSet, rollout
//!    wait — progress is drawn as it happens.
//! 5. The audit timeline and the rollout history are printed: v1 is back, as revision 3, on
//!    the same ReplicaSet v1 ran on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use firebreak_connector::{ActionContext, Connector, Registry};
use firebreak_kubernetes::KubernetesConnector;
use serde_json::{Value, json};

use crate::config::Config;
use crate::progress::stdout_sink;
use crate::serve::Engine;

/// The shipped runbooks, compiled into the binary so the demo runs from any folder.
pub const SHIPPED_RUNBOOKS: &[(&str, &str)] = &[
    (
        "model-latency-rollback.yaml",
        include_str!("../../runbooks/model-latency-rollback.yaml"),
    ),
    (
        "model-latency-rollback.rhai",
        include_str!("../../runbooks/model-latency-rollback.rhai"),
    ),
    (
        "crashloop-triage.yaml",
        include_str!("../../runbooks/crashloop-triage.yaml"),
    ),
    (
        "crashloop-triage.rhai",
        include_str!("../../runbooks/crashloop-triage.rhai"),
    ),
    (
        "quarantine-pod.yaml",
        include_str!("../../runbooks/quarantine-pod.yaml"),
    ),
    (
        "quarantine-pod.rhai",
        include_str!("../../runbooks/quarantine-pod.rhai"),
    ),
    (
        "canary-rollback.yaml",
        include_str!("../../runbooks/canary-rollback.yaml"),
    ),
    (
        "canary-rollback.rhai",
        include_str!("../../runbooks/canary-rollback.rhai"),
    ),
    (
        "canary-progressive.yaml",
        include_str!("../../runbooks/canary-progressive.yaml"),
    ),
    (
        "canary-progressive.rhai",
        include_str!("../../runbooks/canary-progressive.rhai"),
    ),
    (
        "model-deploy.yaml",
        include_str!("../../runbooks/model-deploy.yaml"),
    ),
    (
        "model-deploy.rhai",
        include_str!("../../runbooks/model-deploy.rhai"),
    ),
];

/// A shipped runbook file's text.
pub fn shipped(name: &str) -> &'static str {
    SHIPPED_RUNBOOKS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .expect("a shipped runbook file")
}

/// The cluster the demo starts with.
const FRAUD_MODEL: &str = include_str!("../demo/fraud-model.yaml");
/// A real Alertmanager 0.25 webhook body for ModelLatencyHigh on ml-serving/fraud-model.
pub const LATENCY_ALERT: &str = include_str!("../fixtures/alertmanager-model-latency-high.json");

#[derive(Args)]
pub struct DemoArgs {
    /// Which scenario: 1 (a bad model version rolled back), 2 (a canary shifted back when its
    /// error rate breaches), 3 (three teams deploy and roll back from chat, with approvals), or
    /// all (the default).
    #[arg(long, value_parser = ["1", "2", "3", "all"], default_value = "all")]
    pub scenario: String,
    /// Keep the simulated cluster running afterwards (until Ctrl-C) to look around with kubectl.
    #[arg(long)]
    pub keep: bool,
    /// Where to keep the demo's data (journal, bus); default: a temporary folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let work = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&work)?;
    let (one, two, three) = match args.scenario.as_str() {
        "1" => (true, false, false),
        "2" => (false, true, false),
        "3" => (false, false, true),
        _ => (true, true, true),
    };
    if one {
        println!(
            "\n━━ scenario 1: a new model version raised latency → back to the previous ReplicaSet"
        );
        scenario1(&args, &work).await?;
    }
    if two {
        println!(
            "\n━━ scenario 2: a canary's error rate breaches → traffic shifted back, canary rolled back"
        );
        match crate::demo_canary::missing() {
            Some(why) if one => println!("\n   skipped: {why}"),
            Some(why) => bail!("{why}"),
            None => crate::demo_canary::scenario2(&work.join("scenario2")).await?,
        }
    }
    if three {
        println!(
            "\n━━ scenario 3: three teams deploy and roll back their models from chat, through one audited process"
        );
        match crate::demo_canary::find("prometheus") {
            None if one || two => println!(
                "\n   skipped: scenario 3 gates deploys with the real prometheus: install it (Debian: apt-get install prometheus)"
            ),
            None => bail!(
                "scenario 3 gates deploys with the real prometheus: install it (Debian: apt-get install prometheus)"
            ),
            Some(_) => crate::demo_teams::scenario3(&work.join("scenario3")).await?,
        }
    }
    Ok(())
}

/// Scenario 1 in `work`.
async fn scenario1(args: &DemoArgs, work: &Path) -> Result<()> {
    heading("1. a simulated cluster: ml-serving/fraud-model, v1 then v2");
    let (sim, kubeconfig) = start_sim(work, Duration::from_millis(400)).await?;
    sim.apply_yaml(FRAUD_MODEL)
        .context("deploying fraud-model v1")?;
    let client = firebreak_kubernetes::client::for_url(&sim.url())?;
    let k8s = KubernetesConnector::new(client.clone());
    let cx = ActionContext {
        run_id: "demo-setup".into(),
        runbook: "demo".into(),
        team: "ml-platform".into(),
        namespaces: vec!["ml-serving".into()],
        progress: stdout_sink("   "),
    };
    call(
        &k8s,
        &cx,
        "wait_rollout",
        json!({"ns": "ml-serving", "deploy": "fraud-model", "timeout": "60s"}),
    )
    .await?;
    let v2 = FRAUD_MODEL
        .replace("fraud-model:v1", "fraud-model:v2")
        .replace("deploy fraud-model v1", "deploy fraud-model v2");
    sim.apply_yaml(&v2).context("rolling out fraud-model v2")?;
    call(
        &k8s,
        &cx,
        "wait_rollout",
        json!({"ns": "ml-serving", "deploy": "fraud-model", "timeout": "60s"}),
    )
    .await?;
    print_history(&k8s, &cx).await?;

    heading("2. firebreak on the embedded bus, shipped runbooks, Kubernetes connector → kubesim");
    let runbooks = work.join("runbooks");
    write_runbooks(&runbooks)?;
    let cfg = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: work.join("data"),
        runbooks: runbooks.clone(),
        ..Config::default()
    };
    let mut registry = Registry::new();
    registry.register(Arc::new(KubernetesConnector::new(client.clone())));
    let engine = Engine::start(&cfg, registry, Some(stdout_sink("   │ "))).await?;
    println!("   engine listening on http://{}", engine.addr);

    heading("3. Alertmanager fires ModelLatencyHigh (a real Alertmanager 0.25 webhook body)");
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{}/v1/alertmanager", engine.addr))
        .header("content-type", "application/json")
        .header("user-agent", "Alertmanager/0.25.0")
        .body(LATENCY_ALERT)
        .send()
        .await?;
    let status = resp.status();
    println!("   POST /v1/alertmanager → {status} {}", resp.text().await?);
    if !status.is_success() {
        bail!("the engine refused the alert");
    }

    heading("4. the runbook runs");
    let journal = engine.dispatcher.journal.clone();
    let run =
        crate::demo_canary::wait_run(&journal, "model-latency-rollback", Duration::from_secs(120))
            .await?;

    heading("5. the audit trail");
    print!(
        "{}",
        firebreak_audit::render_timeline(&journal.records_for_run(&run.run_id)?)
    );

    heading("6. rollout history after the run");
    print_history(&k8s, &cx).await?;
    crate::demo::print_verified(&journal)?;
    println!("   journal: {}", journal.path().display());

    engine.stop().await?;
    if args.keep {
        heading("the simulated cluster is still up");
        println!(
            "   export KUBECONFIG={} KUBECACHEDIR=$(mktemp -d)\n   kubectl -n ml-serving get deploy,rs,pods,svc\n   kubectl -n ml-serving rollout history deployment/fraud-model\n   (Ctrl-C to stop)",
            kubeconfig.display()
        );
        tokio::signal::ctrl_c().await?;
    } else {
        println!(
            "\n   run `firebreak demo --keep` to keep the simulated cluster up and look around with kubectl"
        );
    }
    sim.shutdown().await;
    if run.status != Some(firebreak_audit::RunStatus::Succeeded) {
        bail!("the run did not succeed: {:?}", run.status);
    }
    Ok(())
}

/// kubesim in process with pods ready after `ready_delay`, and its kubeconfig in `work`.
pub(crate) async fn start_sim(
    work: &Path,
    ready_delay: Duration,
) -> Result<(kubesim::SimHandle, PathBuf)> {
    let sim = kubesim::Sim::start(kubesim::SimConfig {
        controllers: kubesim::ControllerConfig {
            pod_ready_delay: ready_delay,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .context("starting kubesim")?;
    std::fs::create_dir_all(work)?;
    let kubeconfig = work.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    Ok((sim, kubeconfig))
}

/// Verifies the demo's journal and says so.
pub(crate) fn print_verified(journal: &firebreak_audit::Journal) -> Result<()> {
    let report = firebreak_audit::verify(journal.path())?;
    println!(
        "\n   audit chain verified: {} records, last hash {}",
        report.records,
        &report.last_hash[..16]
    );
    Ok(())
}

pub(crate) fn heading(text: &str) {
    println!("\n── {text}");
}

async fn call(
    k8s: &KubernetesConnector,
    cx: &ActionContext,
    action: &str,
    args: Value,
) -> Result<Value> {
    let Value::Object(args) = args else {
        unreachable!("args are a JSON object")
    };
    k8s.call(action, args, cx)
        .await
        .map_err(|e| anyhow::anyhow!("{action}: {e}"))
}

async fn print_history(k8s: &KubernetesConnector, cx: &ActionContext) -> Result<()> {
    let h = call(
        k8s,
        cx,
        "rollout_history",
        json!({"ns": "ml-serving", "deploy": "fraud-model"}),
    )
    .await?;
    println!(
        "   deployment.apps/fraud-model (current revision {})",
        h["current_revision"]
    );
    println!(
        "   {:<9} {:<28} {:<26} IMAGES",
        "REVISION", "REPLICASET", "CHANGE-CAUSE"
    );
    for row in h["revisions"].as_array().into_iter().flatten() {
        let images: Vec<&str> = row["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "   {:<9} {:<28} {:<26} {}",
            row["revision"].to_string(),
            row["replicaset"].as_str().unwrap_or(""),
            row["change_cause"].as_str().unwrap_or(""),
            images.join(",")
        );
    }
    Ok(())
}

pub fn write_runbooks(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in SHIPPED_RUNBOOKS {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}
