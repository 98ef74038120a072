//! kubesim's command line, shared by the `kubesim` binary and `firebreak sim`: serves a
//! simulated Kubernetes API on 127.0.0.1 until SIGINT/SIGTERM.
//!
//! `kubesim --port 0 --kubeconfig ./kubeconfig --load ./manifests --state ./state.json`

use std::path::PathBuf;

use crate::{Sim, SimConfig};
use anyhow::Context;

/// Command-line options of `kubesim` (and `firebreak sim`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Load every YAML/JSON manifest under this folder at start.
    #[arg(long)]
    pub load: Option<PathBuf>,
    /// Write a kubeconfig for this server here at start.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Load state from this file at start (if it exists) and save it on shutdown.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The Kubernetes gitVersion to report (it also picks the dispatched kubectl).
    #[arg(long, default_value = "v1.32.4")]
    pub version: String,
}

/// Serves until SIGINT/SIGTERM, then saves `--state` if given. The caller sets up logging.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = SimConfig {
        version: args.version.clone(),
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
        state_file: args.state.clone(),
        ..SimConfig::default()
    };
    if let Some(dir) = &args.load {
        cfg = cfg
            .load_dir(dir)
            .with_context(|| format!("loading manifests from {}", dir.display()))?;
    }
    let handle = Sim::start(cfg).await.context("starting kubesim")?;
    if let Some(path) = &args.kubeconfig {
        handle
            .write_kubeconfig(path)
            .with_context(|| format!("writing kubeconfig {}", path.display()))?;
    }
    println!("{}", handle.url());
    wait_for_signal().await?;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
