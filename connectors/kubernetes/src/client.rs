//! Building the kube-rs client the connector and the watcher use: from a kubeconfig the way
//! kubectl finds one (explicit path, `KUBECONFIG`, `~/.kube/config`, in-cluster service
//! account), or straight from a URL (kubesim on loopback).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no usable Kubernetes configuration (kubeconfig or in-cluster)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("invalid Kubernetes API URL {url}")]
    Url { url: String, message: String },
    #[error("cannot build the Kubernetes client")]
    Build(#[source] kube::Error),
}

/// A client from `kubeconfig` if given, else inferred as kubectl would.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(ClientError::Infer)?,
    };
    kube::Client::try_from(config).map_err(ClientError::Build)
}

/// A client for a plain-HTTP API server at `url` with no credentials (kubesim).
pub fn for_url(url: &str) -> Result<kube::Client, ClientError> {
    let uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::Url {
            url: url.to_string(),
            message: e.to_string(),
        })?;
    kube::Client::try_from(kube::Config::new(uri)).map_err(ClientError::Build)
}
