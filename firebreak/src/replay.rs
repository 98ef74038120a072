//! `firebreak test [DIR]`: each runbook's recorded fixtures replayed as a dry run against an
//! in-process kubesim, its audit trail compared with a golden file. A team runs it in its own
//! CI: no cluster, no network, nothing changed.
//!
//! Fixtures live beside the runbooks, one folder per case under `DIR/tests/` (the folder
//! name is the case's; its event decides which runbooks run):
//!
//! - `event.json`: the recorded event (an Alertmanager webhook body or a firebreak event);
//! - `cluster.yaml`: the Kubernetes objects the run reads, applied to kubesim first; then
//!   `update.yaml` if present (a rollout to roll back needs a previous revision);
//! - `prometheus.json` if the runbook queries Prometheus: the recorded answers, by query
//!   (`{"QUERY": 0.02}`: one sample; `null`: no series), served to the run by a local stand-in
//!   for `/api/v1/query`. A query with no recorded answer is an error that names it;
//! - `dry-run.trail`: the golden trail, one line per audit record (its type, step name or
//!   action, status; for mutating steps what the dry run says it would do). No times, ids or
//!   hashes. `--update` writes it.
//!
//! A case fails when its trail differs, and the command exits 1 after printing every
//! difference.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use firebreak_dispatch::Loaded;
use firebreak_runtime::{Runner, RunnerConfig};
use serde_json::Value;

use crate::config::Config;

#[derive(Args)]
pub struct TestArgs {
    /// The runbook folder (default: the configured one); fixtures are under DIR/tests/.
    pub dir: Option<PathBuf>,
    /// Rewrite each case's golden `dry-run.trail` instead of comparing.
    #[arg(long)]
    pub update: bool,
    /// Only the cases whose folder name contains this.
    #[arg(long)]
    pub case: Option<String>,
}

pub async fn run(cfg: Config, args: TestArgs) -> Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| cfg.runbooks.clone());
    let loaded = Loaded::load(&dir, cfg.teams.as_deref(), &crate::serve::connector_specs())
        .map_err(|p| anyhow::anyhow!("runbooks do not load:\n  {}", p.join("\n  ")))?;
    let cases = cases(&dir.join("tests"), args.case.as_deref())?;
    if cases.is_empty() {
        bail!(
            "no test cases under {} (one folder per case, with event.json and cluster.yaml)",
            dir.join("tests").display()
        );
    }
    let mut failed = Vec::new();
    for case in &cases {
        let name = case_name(case);
        let trail = replay(&cfg, &loaded, case)
            .await
            .with_context(|| format!("replaying {}", case.display()))?;
        let text = trail.join("\n") + "\n";
        let golden = case.join("dry-run.trail");
        if args.update {
            std::fs::write(&golden, &text)
                .with_context(|| format!("writing {}", golden.display()))?;
            println!("updated  {name} ({} records)", trail.len());
            continue;
        }
        let want = match std::fs::read_to_string(&golden) {
            Ok(want) => want,
            Err(e) => {
                println!(
                    "FAILED   {name}: {}: {e} (record it with --update)",
                    golden.display()
                );
                failed.push(name);
                continue;
            }
        };
        if want == text {
            println!("ok       {name} ({} records)", trail.len());
        } else {
            println!(
                "FAILED   {name}: the trail differs from {}",
                golden.display()
            );
            print!("{}", diff(&want, &text));
            failed.push(name);
        }
    }
    // Runbooks no case exercises are worth knowing about, not a failure.
    for rb in loaded.set.iter().filter(|_| args.case.is_none()) {
        let name = &rb.manifest.name;
        if !cases.iter().any(|c| case_name(c) == *name) {
            println!("note     runbook {name} has no case under tests/{name}/");
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} cases failed: {}",
            failed.len(),
            cases.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn case_name(case: &Path) -> String {
    case.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The case folders (those with an `event.json`), sorted.
fn cases(tests: &Path, only: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut cases = Vec::new();
    let entries = match std::fs::read_dir(tests) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cases),
        Err(e) => return Err(e).with_context(|| format!("reading {}", tests.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.join("event.json").is_file()
            && only.is_none_or(|only| case_name(&path).contains(only))
        {
            cases.push(path);
        }
    }
    cases.sort();
    Ok(cases)
}

/// Replays one case in a fresh kubesim and data dir; returns its trail.
async fn replay(cfg: &Config, loaded: &Loaded, case: &Path) -> Result<Vec<String>> {
    let work = tempfile::tempdir()?;
    let (sim, kubeconfig) = crate::demo::start_sim(work.path(), Duration::ZERO).await?;
    for file in ["cluster.yaml", "update.yaml"] {
        let path = case.join(file);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            sim.apply_yaml(&text)
                .with_context(|| format!("applying {} to kubesim", path.display()))?;
            settle(&sim).await;
        }
    }
    let mut cfg = cfg.clone();
    cfg.data_dir = work.path().join("data");
    cfg.audit = Default::default();
    cfg.kubernetes.kubeconfig = Some(kubeconfig);
    cfg.kubernetes.disabled = false;
    std::fs::create_dir_all(&cfg.data_dir)?;
    let recorded = case.join("prometheus.json");
    let _prometheus = if recorded.exists() {
        let answers: serde_json::Map<String, Value> =
            serde_json::from_slice(&std::fs::read(&recorded)?)
                .with_context(|| format!("{} is not a JSON object", recorded.display()))?;
        let (url, server) = recorded_prometheus(answers).await?;
        cfg.connectors
            .insert("prometheus".into(), serde_json::json!({ "url": url }));
        Some(server)
    } else {
        cfg.connectors.remove("prometheus");
        None
    };
    let (registry, _) = crate::serve::connectors(&cfg, true).await?;
    let journal = Arc::new(crate::audit_cmd::open_journal(&cfg)?);
    let runner = Runner::new(
        &registry,
        journal.clone(),
        RunnerConfig {
            budget: cfg.limits.budget(),
            ..RunnerConfig::default()
        },
    );
    let body = std::fs::read(case.join("event.json"))?;
    let mut trail = Vec::new();
    for event in crate::run::decode_recorded(&body)? {
        let matches: Vec<_> = loaded
            .set
            .matches(&event)
            .into_iter()
            .collect::<Result<_, _>>()?;
        if matches.is_empty() {
            trail.push(format!(
                "no runbook matches {} {} {}",
                event.source, event.kind, event.subject
            ));
        }
        for m in matches {
            let run_id = uuid::Uuid::now_v7().to_string();
            let handle = runner
                .start(crate::run::terminal_plan(
                    loaded,
                    &run_id,
                    m,
                    event.clone(),
                    "firebreak-test",
                    true,
                    None,
                ))
                .await?;
            handle.join().await;
            for record in journal.records_for_run(&run_id)? {
                let record = serde_json::to_value(&record)?;
                if let Some(line) = trail_line(&record) {
                    trail.push(line);
                }
            }
        }
    }
    runner.drain().await;
    sim.shutdown().await;
    Ok(trail)
}

/// A stand-in for Prometheus's instant-query API that answers from `prometheus.json`;
/// returns its URL and the task serving it (aborted when dropped).
async fn recorded_prometheus(
    answers: serde_json::Map<String, Value>,
) -> Result<(String, AbortOnDrop)> {
    use axum::extract::Query;
    use axum::routing::get;
    use std::collections::HashMap;

    fn answer(
        answers: &serde_json::Map<String, Value>,
        query: Option<&String>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let query = query.map(String::as_str).unwrap_or_default();
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        let sample = |metric: Value, v: &Value| serde_json::json!({"metric": metric, "value": [now, v.to_string()]});
        let result = match answers.get(query) {
            None => {
                let error = serde_json::json!({
                    "status": "error",
                    "errorType": "bad_data",
                    "error": format!("firebreak test: prometheus.json has no recorded answer for {query:?}"),
                });
                return (axum::http::StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
            }
            Some(Value::Null) => Vec::new(),
            Some(v @ Value::Number(_)) => vec![sample(serde_json::json!({}), v)],
            Some(Value::Array(series)) => series
                .iter()
                .map(|s| sample(s["metric"].clone(), &s["value"]))
                .collect(),
            Some(other) => {
                let error = serde_json::json!({
                    "status": "error",
                    "errorType": "bad_data",
                    "error": format!("firebreak test: the recorded answer for {query:?} is not a number, null or a list of {{metric, value}}: {other}"),
                });
                return (axum::http::StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
            }
        };
        axum::Json(serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": result},
        }))
        .into_response()
    }

    // The connector queries with GET.
    let answers = Arc::new(answers);
    let app = axum::Router::new().route(
        "/api/v1/query",
        get(move |Query(q): Query<HashMap<String, String>>| async move {
            answer(&answers, q.get("query"))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, AbortOnDrop(task)))
}

/// Stops a spawned server when the replay ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lets kubesim's controllers finish what the last apply started (rollouts, pods).
async fn settle(sim: &kubesim::SimHandle) {
    for _ in 0..20 {
        sim.sim().reconcile();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One audit record as a golden line: its type, then its step name or action and status;
/// for a step that finished, what a dry run said it would do. Progress lines (timing) and
/// records without content of their own are left out.
pub fn trail_line(record: &Value) -> Option<String> {
    let body = &record["body"];
    let kind = body["type"].as_str()?;
    if kind == "progress" {
        return None;
    }
    let mut line = kind.to_owned();
    for key in ["name", "action", "status"] {
        if let Some(v) = body[key].as_str() {
            line.push(' ');
            line.push_str(v);
        }
    }
    if let Some(message) = body["error"]["message"].as_str() {
        line.push_str(&format!(
            ": {} {message}",
            body["error"]["kind"].as_str().unwrap_or("")
        ));
    }
    if let Some(would) = body["outputs"]["would"].as_str() {
        line.push_str(": would ");
        line.push_str(would);
    }
    if kind == "refusal"
        && let Some(reason) = body["reason"].as_str()
    {
        line.push_str(": ");
        line.push_str(reason);
    }
    Some(line)
}

/// A line diff: `-` for the golden file's lines, `+` for this run's, from the first
/// difference on.
fn diff(want: &str, got: &str) -> String {
    let want: Vec<&str> = want.lines().collect();
    let got: Vec<&str> = got.lines().collect();
    let same = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
    let mut out = format!("  (the first {same} lines match)\n");
    for line in &want[same..] {
        out.push_str(&format!("  - {line}\n"));
    }
    for line in &got[same..] {
        out.push_str(&format!("  + {line}\n"));
    }
    out
}
