//! The `kubesim` binary: serves a simulated Kubernetes API on 127.0.0.1 until SIGINT/SIGTERM.
//!
//! `kubesim --port 0 --kubeconfig ./kubeconfig --load ./manifests --state ./state.json`

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "kubesim",
    about = "A Kubernetes API simulator that kubectl and kube-rs drive"
)]
struct Cli {
    #[command(flatten)]
    args: kubesim::cli::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    Ok(kubesim::cli::run(Cli::parse().args).await?)
}
