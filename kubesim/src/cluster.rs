//! The contract between kubesim's API server (the store) and its controllers.
//!
//! Controllers (Deployment, ReplicaSet, simulated kubelet, garbage collector) see the cluster
//! only through [`Cluster`]: untyped JSON objects as the API server stores them (already
//! defaulted and normalised), addressed by [`Kind`]. The store implements it; tests of the
//! controllers may implement it on a plain map. Every write goes through the same admission and
//! resourceVersion bookkeeping as an API request, and produces watch events.
//!
//! Note for the controllers (from the API-server side): `crate::store::Store` implements this
//! trait; its own HTTP-facing verbs are named `*_resource`, so `store.create(Kind::…, obj)` on a
//! `Store` resolves to this trait. Deleting through [`Cluster::delete`] cascades to dependents by
//! `ownerReferences` (background propagation) right away, as the API's DELETE does.

use serde_json::Value;

/// The object kinds the controllers read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Deployment,
    ReplicaSet,
    Pod,
    Event,
    Node,
    Namespace,
    Service,
    Endpoints,
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoute,
    /// networking.istio.io/v1 VirtualService.
    VirtualService,
}

/// A write the store refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("conflict on {0}: the object has been modified")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
}

/// What controllers may do to the cluster.
pub trait Cluster {
    /// All objects of `kind`, in `namespace` (or every namespace for `None`).
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value>;
    /// All objects of `kind` in every namespace, for reading only: a store shares them
    /// instead of copying.
    fn list_shared(&self, kind: Kind) -> Vec<std::sync::Arc<Value>> {
        self.list(kind, None)
            .into_iter()
            .map(std::sync::Arc::new)
            .collect()
    }
    fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value>;
    /// Creates an object (metadata.generateName honoured); returns it as stored.
    fn create(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError>;
    /// Replaces the main resource (spec/metadata), with a resourceVersion precondition when the
    /// object carries one.
    fn update(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError>;
    /// Replaces the status subresource (and, as the real apiserver allows for Deployments,
    /// annotations); does not bump metadata.generation.
    fn update_status(&mut self, kind: Kind, obj: Value) -> Result<Value, ClusterError>;
    fn delete(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ClusterError>;
    /// The simulator's clock (controllable in tests), RFC 3339 with seconds precision.
    fn now(&self) -> jiff::Timestamp;
}
