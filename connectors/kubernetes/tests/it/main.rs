//! Integration tests of the Kubernetes connector against kubesim, cross-checked with the
//! real kubectl. One binary; start at `harness`.

mod actions;
mod harness;
mod isolation;
mod rollback;
mod watcher;
