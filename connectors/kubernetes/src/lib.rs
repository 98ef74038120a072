//! firebreak's Kubernetes connector (`k8s::` in runbooks) and the Kubernetes event watcher.
//!
//! Start at [`KubernetesConnector`]: [`spec::actions`] describes every action, and
//! [`KubernetesConnector::call`](firebreak_connector::Connector::call) parses the arguments
//! and dispatches to the module that does the work:
//! - [`deploy`]: rollback, set_image, scale, pause/resume/restart, history, wait, snapshot,
//!   restore, scale_to_zero, each doing on the wire what the matching `kubectl` command does;
//! - [`evidence`]: pods, logs, events, describe;
//! - [`isolation`]: quarantine/release NetworkPolicies, cordon/uncordon.
//!
//! [`rollout`] holds the pure kubectl logic (revision selection, template comparison, rollout
//! status), [`error`] the mapping from API failures to [`ErrorKind`](firebreak_connector::ErrorKind),
//! and [`watcher`] the loop that turns Warning events and stalled rollouts into bus events.

pub mod client;
pub mod deploy;
pub mod error;
pub mod evidence;
pub mod isolation;
pub mod rollout;
pub mod spec;
pub mod watcher;

use firebreak_connector::{ActionContext, ActionError, ActionSpec, Connector};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::Error;
pub use kube::Client;
pub use spec::{rbac_rules, rbac_yaml};

/// The field manager firebreak's writes are recorded under.
pub const FIELD_MANAGER: &str = "firebreak";

/// The Kubernetes connector: every `k8s::` action, backed by one kube-rs client.
#[derive(Clone)]
pub struct KubernetesConnector {
    client: kube::Client,
}

impl KubernetesConnector {
    /// A connector that talks to the cluster `client` points at.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// The kube-rs client (for the watcher and tests).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    async fn dispatch(
        &self,
        action: &str,
        args: serde_json::Map<String, Value>,
        cx: &ActionContext,
    ) -> Result<Value, Error> {
        let c = &self.client;
        let args = Value::Object(args);
        match action {
            "rollback" => deploy::rollback(c, parse(action, args)?, cx).await,
            "set_image" => deploy::set_image(c, parse(action, args)?, cx).await,
            "scale" => deploy::scale(c, parse(action, args)?, cx).await,
            "pause" => deploy::pause(c, parse(action, args)?, cx).await,
            "resume" => deploy::resume(c, parse(action, args)?, cx).await,
            "restart" => deploy::restart(c, parse(action, args)?, cx).await,
            "rollout_history" => deploy::rollout_history(c, parse(action, args)?).await,
            "wait_rollout" => deploy::wait_rollout(c, parse(action, args)?, cx).await,
            "snapshot" => deploy::snapshot(c, parse(action, args)?).await,
            "restore" => deploy::restore(c, parse(action, args)?, cx).await,
            "scale_to_zero" => deploy::scale_to_zero(c, parse(action, args)?, cx).await,
            "pods" => evidence::pods(c, parse(action, args)?).await,
            "logs" => evidence::logs(c, parse(action, args)?).await,
            "events" => evidence::events(c, parse(action, args)?).await,
            "describe" => evidence::describe(c, parse(action, args)?).await,
            "quarantine" => isolation::quarantine(c, parse(action, args)?, cx).await,
            "release" => isolation::release(c, parse(action, args)?, cx).await,
            "cordon" => isolation::cordon(c, parse(action, args)?, cx, true).await,
            "uncordon" => isolation::cordon(c, parse(action, args)?, cx, false).await,
            other => Err(Error::UnknownAction(other.to_owned())),
        }
    }
}

impl std::fmt::Debug for KubernetesConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesConnector")
            .finish_non_exhaustive()
    }
}

/// Parses an action's named arguments into its typed argument struct.
fn parse<T: DeserializeOwned>(action: &str, args: Value) -> Result<T, Error> {
    serde_json::from_value(args).map_err(|source| Error::InvalidArgs {
        action: action.to_owned(),
        source,
    })
}

impl Connector for KubernetesConnector {
    fn name(&self) -> &'static str {
        "k8s"
    }

    fn actions(&self) -> Vec<ActionSpec> {
        spec::actions()
    }

    fn call<'a>(
        &'a self,
        action: &'a str,
        args: serde_json::Map<String, Value>,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        async move {
            let result = self.dispatch(action, args, cx).await;
            if let Err(e) = &result {
                tracing::warn!(run_id = %cx.run_id, action, kind = ?e.kind(), error = %e.message(), "k8s action failed");
            }
            result.map_err(Error::into_action_error)
        }
        .boxed()
    }
}
