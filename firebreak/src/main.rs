//! The `firebreak` binary: the one composition root that wires the stages together.
//!
//! Start reading at [`Command`]; each subcommand lives in its own module. `serve` builds the
//! whole pipeline in [`serve::Engine`]: ingest → bus → dispatcher (matcher) → runtime →
//! connectors → audit.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod api;
mod audit_cmd;
mod bench;
mod bench_remedy;
mod bench_waiting;
mod chat;
mod check;
mod config;
mod decide;
mod demo;
mod demo_canary;
mod demo_teams;
mod logformat;
mod logwriter;
mod notify;
mod progress;
mod reference;
mod replay;
mod run;
mod serve;
mod telemetry;
mod ui;

/// glibc's malloc spends a sixth of the engine's CPU under load on arena locking and
/// consolidation (measured with perf); mimalloc's per-thread heaps avoid most of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Incident-response runbooks for ML model serving on Kubernetes.
#[derive(Parser)]
#[command(name = "firebreak", version, about)]
struct Cli {
    /// Configuration file (default: ./firebreak.yaml if present, else built-in defaults).
    #[arg(long, short, global = true, env = "FIREBREAK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Approve a run waiting for approval (through a running server, with your token).
    Approve(decide::DecideArgs),
    /// Deny a run waiting for approval; it stops (`--reason` required).
    Deny(decide::DecideArgs),
    /// List the runs waiting for approval that you can see.
    Approvals(decide::ListArgs),
    /// Run the engine: HTTP ingest, bus, dispatcher, runbooks, audit.
    Serve {
        /// If the audit journal's tail does not verify, set the broken file aside (kept whole)
        /// and go on from its last good record, journaling the break; without this flag the
        /// engine refuses to start on it.
        #[arg(long)]
        audit_relink: bool,
    },
    /// Validate every runbook manifest and compile every script in DIR.
    Check {
        #[arg(default_value = "runbooks")]
        dir: PathBuf,
        /// Teams file to check the runbooks' owners and namespaces against.
        #[arg(long)]
        teams: Option<PathBuf>,
    },
    /// Start a runbook by hand (or replay a recorded event with --event) and follow it.
    Run(run::RunArgs),
    /// Replay each runbook's fixtures (DIR/tests/CASE/) as a dry run against an in-process
    /// kubesim and compare the audit trail with its golden file.
    Test(replay::TestArgs),
    /// Read and verify the audit journal.
    Audit {
        #[command(subcommand)]
        command: audit_cmd::AuditCommand,
    },
    /// Scenario 1 end to end on a simulated cluster: alert, runbook, rollback, audit trail.
    Demo(demo::DemoArgs),
    /// Run kubesim, the Kubernetes API simulator, in the foreground.
    Sim(kubesim::cli::Args),
    /// Load-test the engine and print one summary line.
    Bench(bench::BenchArgs),
    /// List the connectors' actions, print the Kubernetes RBAC rules they need, or print the
    /// whole runbook reference (docs/RUNBOOKS.md).
    Connectors {
        /// Print a least-privilege ClusterRole for the Kubernetes connector.
        #[arg(long)]
        rbac: bool,
        /// Print the runbook scripting reference as Markdown (`ctx`, the sandbox, built-ins,
        /// errors, every connector action), as docs/RUNBOOKS.md holds it.
        #[arg(long, conflicts_with = "rbac")]
        markdown: bool,
        /// Namespace of the generated Role (bind one per namespace runbooks act on).
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

/// Blocking threads beyond one per concurrent run, for file and fsync work (tokio's own
/// default for the whole pool).
const BLOCKING_SPARE: usize = 512;

fn main() -> Result<()> {
    // reqwest uses rustls without a built-in provider; install ring once, before any client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The load generator shares the machine with the server it measures: one thread, so its
    // own hand-offs between threads do not eat the server's CPU.
    // `serve` reads its configuration first: a script waiting in a step holds a blocking
    // thread, so the pool must fit every run it may run at once besides the file work.
    let serve_config = match &cli.command {
        Command::Serve { audit_relink } => {
            let mut cfg = config::Config::load(cli.config.as_deref())?;
            cfg.audit.relink_broken = *audit_relink;
            Some(cfg)
        }
        _ => None,
    };
    let mut builder = match cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(cfg) = &serve_config {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder
            .worker_threads(cfg.limits.workers(cores))
            .max_blocking_threads(cfg.limits.max_concurrent_runs + BLOCKING_SPARE);
    }
    let runtime = builder.enable_all().build()?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { .. } => {
                let _telemetry = telemetry::init();
                serve::serve(serve_config.expect("loaded above")).await
            }
            Command::Check { dir, teams } => check::check(&dir, teams.as_deref()),
            Command::Run(args) => {
                let cfg = config::Config::load(cli.config.as_deref())?;
                run::run(cfg, args).await
            }
            Command::Test(args) => {
                let cfg = config::Config::load(cli.config.as_deref())?;
                replay::run(cfg, args).await
            }
            Command::Audit { command } => {
                let cfg = config::Config::load(cli.config.as_deref())?;
                audit_cmd::audit(&cfg, command).await
            }
            Command::Demo(args) => demo::demo(args).await,
            Command::Sim(args) => {
                let _telemetry = telemetry::init();
                Ok(kubesim::cli::run(args).await?)
            }
            Command::Bench(args) => bench::bench(args).await,
            Command::Approve(args) => decide::decide(args, true).await,
            Command::Deny(args) => decide::decide(args, false).await,
            Command::Approvals(args) => decide::list(args).await,
            Command::Connectors { markdown: true, .. } => {
                print!("{}", reference::markdown(&serve::plugins()));
                Ok(())
            }
            Command::Connectors {
                rbac, namespace, ..
            } => {
                serve::print_connectors(rbac, &namespace);
                Ok(())
            }
        }
    });
    // Script threads of runs suspended at shutdown may still be inside a step; the journal
    // already says where they stopped, so do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
