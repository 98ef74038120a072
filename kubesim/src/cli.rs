//! kubesim's command line, shared by the `kubesim` binary and `firebreak sim`: serves a
//! simulated Kubernetes API on 127.0.0.1 until SIGINT/SIGTERM.
//!
//! `kubesim --port 0 --kubeconfig ./kubeconfig --load ./manifests --state ./state.json [--no-crds]`

use std::path::PathBuf;

use crate::{Sim, SimConfig, SimError};

/// Why `kubesim` could not serve.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("loading manifests from {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: SimError,
    },
    #[error("starting kubesim")]
    Start(#[source] SimError),
    #[error("writing kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for a shutdown signal")]
    Signal(#[source] std::io::Error),
}

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
    /// Start without the bundled CRDs (Gateway API HTTPRoute, Istio VirtualService): those
    /// kinds are served only once their CustomResourceDefinitions are applied.
    #[arg(long)]
    pub no_crds: bool,
}

/// Serves until SIGINT/SIGTERM, then saves `--state` if given. The caller sets up logging.
pub async fn run(args: Args) -> Result<(), CliError> {
    let mut cfg = SimConfig {
        version: args.version.clone(),
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
        state_file: args.state.clone(),
        bundled_crds: !args.no_crds,
        ..SimConfig::default()
    };
    if let Some(dir) = &args.load {
        cfg = cfg.load_dir(dir).map_err(|source| CliError::Load {
            path: dir.clone(),
            source,
        })?;
    }
    let handle = Sim::start(cfg).await.map_err(CliError::Start)?;
    if let Some(path) = &args.kubeconfig {
        handle
            .write_kubeconfig(path)
            .map_err(|source| CliError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
    }
    println!("{}", handle.url());
    wait_for_signal().await?;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() -> Result<(), CliError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CliError::Signal)?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(CliError::Signal)?,
        _ = term.recv() => {}
    }
    Ok(())
}
