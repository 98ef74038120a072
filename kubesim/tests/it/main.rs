//! kubesim's integration tests: one binary, one module per client.
//!
//! `harness` starts kubesim in-process on 127.0.0.1:0 and runs the real kubectl against it;
//! `kubectl` checks kubectl's output and exit codes; `kube_client` drives it with kube-rs;
//! `crds` covers CustomResourceDefinitions.

mod bad_input;
mod binary;
mod crds;
mod harness;
mod kube_client;
mod kubectl;
mod rollout;
mod tokens;
mod traffic;
