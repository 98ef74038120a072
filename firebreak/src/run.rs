//! `firebreak run`: start a runbook by hand, or replay a recorded event, and follow it.
//!
//! In-process (the default), the run uses the configured data dir's journal and the
//! configured cluster, prints progress as it goes and the audit timeline at the end.
//! `--dry-run` makes every mutating action describe what it would do and change nothing; with
//! `--event FILE` (an Alertmanager webhook body or an event envelope) that replays a recorded
//! alert without side effects. `--server URL` instead asks a running `firebreak serve` through
//! `POST /v1/trigger`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use firebreak_audit::render_timeline;
use firebreak_event::Event;
use firebreak_runtime::{CancellationToken, RunPlan, RunStatus, Runner, RunnerConfig};
use serde_json::{Map, Value};

use firebreak_dispatch::Loaded;

use crate::config::Config;

#[derive(Args)]
pub struct RunArgs {
    /// The runbook to start (omit with --event).
    pub runbook: Option<String>,
    /// A parameter, `name=value` (repeatable).
    #[arg(long = "param", short = 'p', value_parser = parse_kv)]
    pub params: Vec<(String, String)>,
    /// Replay a recorded event: an Alertmanager webhook body or a firebreak event (JSON).
    #[arg(long)]
    pub event: Option<PathBuf>,
    /// Mutating actions describe what they would do and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Who is asking (recorded in the audit trail).
    #[arg(long, env = "USER", default_value = "cli")]
    pub actor: String,
    /// Ask a running `firebreak serve` at this URL instead of running in-process.
    #[arg(long)]
    pub server: Option<String>,
    /// API token for --server (or the teams check in-process).
    #[arg(long, env = "FIREBREAK_TOKEN")]
    pub token: Option<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected name=value, got {s:?}"))
}

pub async fn run(cfg: Config, args: RunArgs) -> Result<()> {
    let params: Map<String, Value> = args
        .params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    if let Some(server) = &args.server {
        let runbook = args
            .runbook
            .as_deref()
            .context("--server needs a runbook name")?;
        return trigger_remote(server, runbook, params, &args).await;
    }

    let loaded = Loaded::load(
        &cfg.runbooks,
        cfg.teams.as_deref(),
        &crate::serve::connector_specs(),
    )
    .map_err(|p| anyhow::anyhow!("runbooks do not load:\n  {}", p.join("\n  ")))?;
    let matches = match (&args.event, &args.runbook) {
        (Some(file), _) => {
            let body =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let events = decode_recorded(&body)?;
            let mut all = Vec::new();
            for e in events {
                for m in loaded.set.matches(&e) {
                    all.push((e.clone(), m?));
                }
            }
            if all.is_empty() {
                bail!("no runbook matches the event(s) in {}", file.display());
            }
            all
        }
        (None, Some(runbook)) => {
            let rb = loaded
                .set
                .get(runbook)
                .with_context(|| format!("unknown runbook {runbook}"))?;
            if let Some(teams) = loaded.set.teams() {
                let token = args
                    .token
                    .as_deref()
                    .context("a teams file is configured: give your API token with --token or FIREBREAK_TOKEN")?;
                teams.authorize_token(token, rb)?;
            }
            let event = firebreak_event::manual::trigger(
                runbook,
                params.clone(),
                &args.actor,
                args.dry_run,
            );
            let m = loaded.set.resolve_manual(runbook, &params)?;
            vec![(event, m)]
        }
        (None, None) => bail!("name a runbook, or give --event FILE"),
    };
    let (registry, _) = crate::serve::connectors(&cfg, true).await?;
    std::fs::create_dir_all(&cfg.data_dir)?;
    let journal =
        Arc::new(crate::audit_cmd::open_journal(&cfg).context(
            "opening the audit journal (is `firebreak serve` running? then use --server)",
        )?);
    let runner = Runner::new(
        &registry,
        journal.clone(),
        RunnerConfig {
            budget: cfg.limits.budget(),
            ..RunnerConfig::default()
        },
    );
    if !args.dry_run
        && let Some((_, m)) = matches
            .iter()
            .find(|(_, m)| m.runbook.manifest.approval.is_some())
    {
        bail!(
            "runbook {} needs approval before it changes anything; start it through the server \
             (`firebreak run --server URL`, POST /v1/trigger or chat) so its approvers can decide \
             (`firebreak approve RUN`), or try it here with --dry-run",
            m.runbook.manifest.name
        );
    }
    let mut failed = false;
    // Ctrl-C is caught from here on (before any run starts, so none can miss it).
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the Ctrl-C handler")?;
    for (event, m) in matches {
        let rb = &m.runbook.manifest;
        let run_id = uuid::Uuid::now_v7().to_string();
        println!(
            "▶ {} (team {}) run {run_id}{}",
            rb.name,
            rb.team,
            if args.dry_run { " [dry run]" } else { "" }
        );
        let handle = runner
            .start(terminal_plan(
                &loaded,
                &run_id,
                m,
                event,
                &args.actor,
                args.dry_run,
                Some(crate::progress::stdout_sink("  │ ")),
            ))
            .await?;
        // Ctrl-C cancels the run, journaled as cancelled by the operator: an interrupted
        // `firebreak run` never leaves a remediation for someone else to finish. (A run whose
        // process dies outright is closed as abandoned by the next engine, not resumed.)
        let join = handle_join_or_interrupt(handle, &args.actor, &mut interrupts);
        let outcome = join.await;
        println!();
        print!("{}", render_timeline(&journal.records_for_run(&run_id)?));
        failed |= outcome.status != RunStatus::Succeeded;
    }
    runner.drain().await;
    if failed {
        bail!("a run did not succeed");
    }
    Ok(())
}

/// Waits for the run; on Ctrl-C cancels it (the step in flight ends, the run journals
/// `cancelled by ACTOR (Ctrl-C)`) and waits for that end. A second Ctrl-C stops waiting: the
/// run is then left unfinished, and the next engine closes it as abandoned.
async fn handle_join_or_interrupt(
    handle: firebreak_runtime::RunHandle,
    actor: &str,
    interrupts: &mut tokio::signal::unix::Signal,
) -> firebreak_runtime::RunOutcome {
    let link = handle.link();
    let join = handle.join();
    tokio::pin!(join);
    tokio::select! {
        outcome = &mut join => return outcome,
        _ = interrupts.recv() => {}
    }
    eprintln!("\n  interrupted: cancelling the run (Ctrl-C again to stop waiting)");
    link.cancel_because(&format!("cancelled by {actor} (Ctrl-C)"));
    tokio::select! {
        outcome = &mut join => outcome,
        _ = interrupts.recv() => {
            eprintln!("  stopped waiting; the run is closed as abandoned by the next engine");
            std::process::exit(130);
        }
    }
}

/// An Alertmanager webhook body, or one event envelope / a list of them.
pub(crate) fn decode_recorded(body: &[u8]) -> Result<Vec<Event>> {
    let v: Value = serde_json::from_slice(body).context("the event file is not JSON")?;
    if v.get("alerts").is_some() {
        return Ok(firebreak_event::alertmanager::decode(body)?);
    }
    if v.is_array() {
        return Ok(serde_json::from_value(v)?);
    }
    Ok(vec![serde_json::from_value(v).context(
        "not an Alertmanager webhook nor a firebreak event",
    )?])
}

async fn trigger_remote(
    server: &str,
    runbook: &str,
    params: Map<String, Value>,
    args: &RunArgs,
) -> Result<()> {
    let http = reqwest::Client::new();
    let mut req = http
        .post(format!("{}/v1/trigger", server.trim_end_matches('/')))
        .json(&serde_json::json!({
            "runbook": runbook, "params": params, "actor": args.actor, "dry_run": args.dry_run,
        }));
    if let Some(token) = &args.token {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("posting to {server}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        let error = serde_json::from_str::<Value>(&body).unwrap_or(Value::Null);
        match (
            error["error"]["code"].as_str(),
            error["error"]["message"].as_str(),
        ) {
            (Some(code), Some(message)) => {
                bail!("{server} refused the trigger ({status}, {code}): {message}")
            }
            _ => bail!("{server} refused the trigger ({status}): {body}"),
        }
    }
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let ids = answer["accepted"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!(
        "accepted{}: {runbook} (event {ids}); follow it with `firebreak audit list`",
        if answer["dry_run"] == true {
            " as a dry run"
        } else {
            ""
        }
    );
    Ok(())
}

/// The plan of a run started from a terminal (`firebreak run`, `firebreak test`): no lock, no
/// cooldown, no approval, and marked interactive, so no server ever resumes it behind the
/// operator's back.
pub(crate) fn terminal_plan(
    loaded: &Loaded,
    run_id: &str,
    m: firebreak_matcher::Match,
    event: Event,
    actor: &str,
    dry_run: bool,
    progress: Option<firebreak_runtime::ProgressSink>,
) -> RunPlan {
    let rb = &m.runbook.manifest;
    RunPlan {
        run_id: run_id.to_owned(),
        runbook: rb.name.clone(),
        team: rb.team.clone(),
        namespaces: rb.namespaces.clone(),
        cluster_actions: loaded.set.cluster_grants(&rb.team),
        approval: None,
        ast: loaded.asts[&rb.name].clone(),
        event: Arc::new(event),
        timeout: rb.timeout,
        params: m.params,
        actor: actor.to_owned(),
        dry_run,
        progress,
        cancel: CancellationToken::new(),
        lock_key: None,
        cooldown: std::time::Duration::ZERO,
        interactive: true,
    }
}
