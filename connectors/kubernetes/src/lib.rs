//! firebreak's Kubernetes connector (`k8s::` in runbooks) and the Kubernetes event watcher.
//!
//! Start at [`KubernetesConnector`]: [`spec::actions`] describes every action, and
//! [`KubernetesConnector::call`](firebreak_connector::Connector::call) parses the arguments
//! and dispatches to the module that does the work:
//! - [`deploy`]: rollback, set_image, scale, pause/resume/restart, history, wait, snapshot,
//!   restore, scale_to_zero, each doing on the wire what the matching `kubectl` command does;
//! - [`evidence`]: pods, logs, events, describe;
//! - [`isolation`]: quarantine_pod/quarantine/release NetworkPolicies, cordon/uncordon.
//!
//! Mutating actions come in two halves (`plan_*` resolves an intent, `apply_*` brings the
//! cluster to it, checking first whether it already holds and confirming the effect after);
//! the runtime journals the intent between them and never applies in a dry run.
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

use firebreak_connector::{ActionContext, ActionError, ActionSpec, Connector, Intent};
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

    /// Runs an observing action.
    async fn observe(
        &self,
        action: &str,
        args: serde_json::Map<String, Value>,
        cx: &ActionContext,
    ) -> Result<Value, Error> {
        let c = &self.client;
        let args = Value::Object(args);
        match action {
            "rollout_history" => deploy::rollout_history(c, parse(action, args)?).await,
            "wait_rollout" => deploy::wait_rollout(c, parse(action, args)?, cx).await,
            "snapshot" => deploy::snapshot(c, parse(action, args)?).await,
            "pods" => evidence::pods(c, parse(action, args)?).await,
            "logs" => evidence::logs(c, parse(action, args)?).await,
            "events" => evidence::events(c, parse(action, args)?).await,
            "describe" => evidence::describe(c, parse(action, args)?).await,
            other => Err(Error::UnknownAction(other.to_owned())),
        }
    }

    /// A mutating action's first half: what it will do.
    async fn plan_action(
        &self,
        action: &str,
        args: serde_json::Map<String, Value>,
        cx: &ActionContext,
    ) -> Result<Intent, Error> {
        let c = &self.client;
        let args = Value::Object(args);
        match action {
            "rollback" => deploy::plan_rollback(c, &parse(action, args)?).await,
            "set_image" => deploy::plan_set_image(c, &parse(action, args)?).await,
            "scale" => {
                let a: deploy::ScaleArgs = parse(action, args)?;
                deploy::plan_scale(c, &a.ns, &a.deploy, deploy::scale_target(&a)?).await
            }
            "scale_to_zero" => {
                let a: deploy::DeployArgs = parse(action, args)?;
                deploy::plan_scale(c, &a.ns, &a.deploy, 0).await
            }
            "pause" => deploy::plan_paused(c, &parse(action, args)?, true).await,
            "resume" => deploy::plan_paused(c, &parse(action, args)?, false).await,
            "restart" => deploy::plan_restart(c, &parse(action, args)?).await,
            "restore" => deploy::plan_restore(c, &parse(action, args)?).await,
            "promote" => deploy::plan_promote(c, &parse(action, args)?).await,
            "quarantine_pod" => isolation::plan_quarantine_pod(c, &parse(action, args)?, cx).await,
            "quarantine" => isolation::plan_quarantine(c, &parse(action, args)?, cx).await,
            "release" => isolation::plan_release(c, &parse(action, args)?).await,
            "cordon" => isolation::plan_cordon(c, &parse(action, args)?, true).await,
            "uncordon" => isolation::plan_cordon(c, &parse(action, args)?, false).await,
            other => Err(Error::UnknownAction(other.to_owned())),
        }
    }

    /// A mutating action's second half: brings the cluster to the intent.
    async fn apply_action(
        &self,
        action: &str,
        args: serde_json::Map<String, Value>,
        intent: &Intent,
        cx: &ActionContext,
    ) -> Result<Value, Error> {
        let c = &self.client;
        let args = Value::Object(args);
        match action {
            "rollback" => deploy::apply_rollback(c, &parse(action, args)?, intent).await,
            "set_image" => deploy::apply_set_image(c, &parse(action, args)?, intent).await,
            "scale" => {
                let a: deploy::ScaleArgs = parse(action, args)?;
                deploy::apply_scale(c, &a.ns, &a.deploy, intent).await
            }
            "scale_to_zero" => {
                let a: deploy::DeployArgs = parse(action, args)?;
                deploy::apply_scale(c, &a.ns, &a.deploy, intent).await
            }
            "pause" | "resume" => deploy::apply_paused(c, &parse(action, args)?, intent).await,
            "restart" => deploy::apply_restart(c, &parse(action, args)?, intent).await,
            "restore" => deploy::apply_restore(c, &parse(action, args)?, intent).await,
            "promote" => deploy::apply_promote(c, &parse(action, args)?, intent).await,
            "quarantine_pod" => {
                isolation::apply_quarantine_pod(c, &parse(action, args)?, intent, cx).await
            }
            "quarantine" => isolation::apply_quarantine(c, &parse(action, args)?, intent, cx).await,
            "release" => isolation::apply_release(c, &parse(action, args)?, intent, cx).await,
            "cordon" | "uncordon" => {
                isolation::apply_cordon(c, &parse(action, args)?, intent, cx).await
            }
            other => Err(Error::UnknownAction(other.to_owned())),
        }
    }
}

/// Logs a failed action and converts its error for the runtime.
fn reported<T>(
    result: Result<T, Error>,
    action: &str,
    cx: &ActionContext,
) -> Result<T, ActionError> {
    if let Err(e) = &result {
        tracing::warn!(run_id = %cx.run_id, action, kind = ?e.kind(), error = %e.message(), "k8s action failed");
    }
    result.map_err(Error::into_action_error)
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
        async move { reported(self.observe(action, args, cx).await, action, cx) }.boxed()
    }

    fn plan<'a>(
        &'a self,
        action: &'a str,
        args: serde_json::Map<String, Value>,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Intent, ActionError>> {
        async move { reported(self.plan_action(action, args, cx).await, action, cx) }.boxed()
    }

    fn apply<'a>(
        &'a self,
        action: &'a str,
        args: serde_json::Map<String, Value>,
        intent: &'a Intent,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        async move {
            reported(
                self.apply_action(action, args, intent, cx).await,
                action,
                cx,
            )
        }
        .boxed()
    }
}

/// The connector's entry point for the binary: `k8s::` on the cluster the engine connected to
/// (the `kubernetes` section of firebreak.yaml says how; no cluster, no connector).
pub struct Plugin;

impl firebreak_connector::plugin::Plugin for Plugin {
    fn module(&self) -> &'static str {
        "k8s"
    }

    fn section(&self) -> &'static str {
        "kubernetes"
    }

    fn doc(&self) -> &'static str {
        "Deployments (rollback, image, scale, pause/resume/restart, history, rollout wait, \
         snapshot/restore, canary promotion), evidence (pods, logs, events, describe) and \
         isolation (quarantine NetworkPolicies, cordon). On when the engine reaches a cluster: \
         the top-level `kubernetes` section of firebreak.yaml (`kubeconfig`, else `KUBECONFIG`, \
         `~/.kube/config` or in-cluster; `disabled: true` turns it off)."
    }

    fn actions(&self) -> Vec<ActionSpec> {
        spec::actions()
    }

    fn build<'a>(
        &'a self,
        cx: firebreak_connector::plugin::BuildContext<'a>,
    ) -> BoxFuture<'a, Result<Option<std::sync::Arc<dyn Connector>>, String>> {
        let connector = cx
            .shared
            .get::<kube::Client>()
            .map(|c| std::sync::Arc::new(KubernetesConnector::new(c.clone())) as _);
        Box::pin(std::future::ready(Ok(connector)))
    }
}
