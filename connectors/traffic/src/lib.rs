//! firebreak's traffic connector (`traffic::` in runbooks): the canary's share of traffic, read
//! and moved on a Gateway API `HTTPRoute`, an Istio `VirtualService`, or, without a mesh, by
//! the replica counts of two Deployments behind one `Service`.
//!
//! Start at [`TrafficConnector`] and [`spec::actions`]:
//! - `traffic::split(ns, route)`: the backends and their weights, the route's generation and
//!   whether its status accepts them;
//! - `traffic::shift(ns, route, #{"model-v1": 90, "model-v2": 10})`: new weights, written with
//!   the resourceVersion just read, as percentages summing to 100; an HTTPRoute is done only
//!   once every parent reports `Accepted` and `ResolvedRefs` at the new generation (a backend
//!   that does not resolve fails the step, naming it);
//! - `traffic::reset(ns, route, stable)`: everything to the stable backend in one write.
//!
//! Both mutations plan an intent (the weights from and to) and apply it idempotently: a retry
//! or a resume finds the weights already there and writes nothing. See [`route`] for the
//! objects and [`replicas`] for the mesh-less canary.

pub mod replicas;
pub mod route;
pub mod spec;

use std::collections::BTreeMap;
use std::time::Duration;

use firebreak_connector::{ActionContext, ActionError, ActionSpec, Connector, ErrorKind, Intent};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tracing::info;

use crate::replicas::{ReplicaSplit, replica_counts};
use crate::route::{Route, RouteKind, RouteRef, normalize};

/// How long a shift waits for the route's status (or the replicas) to follow.
pub const SETTLE_WAIT: Duration = Duration::from_secs(60);

/// How many times an apply reads again after a 409 whose change left the backends alone.
const CONFLICT_RETRIES: u32 = 5;

/// The traffic connector, backed by one kube-rs client.
#[derive(Clone)]
pub struct TrafficConnector {
    client: kube::Client,
}

impl TrafficConnector {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl std::fmt::Debug for TrafficConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficConnector").finish_non_exhaustive()
    }
}

fn text(args: &Map<String, Value>, key: &str) -> Result<String, ActionError> {
    args.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ActionError::new(ErrorKind::Permanent, format!("`{key}` must be a string")))
}

/// The weights a script gave, as whole numbers.
fn given_weights(args: &Map<String, Value>) -> Result<BTreeMap<String, i64>, ActionError> {
    let map = args
        .get("weights")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ActionError::new(
                ErrorKind::Permanent,
                "`weights` must be a map of backend name to weight",
            )
        })?;
    map.iter()
        .map(|(k, v)| {
            let w = v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(|| {
                    ActionError::new(
                        ErrorKind::Permanent,
                        format!("weight of {k:?} must be a whole number, got {v}"),
                    )
                })?;
            Ok((k.clone(), w))
        })
        .collect()
}

/// What a route or a Service splits now, as the answer of `split`.
async fn read_split(
    client: &kube::Client,
    ns: &str,
    reference: &RouteRef,
) -> Result<(Split, Value), ActionError> {
    let route = Route::read(client, ns, reference).await?;
    if route.kind == RouteKind::Service {
        let split = ReplicaSplit::read(client, ns, route.name()).await?;
        let answer = json!({
            "kind": "Service",
            "name": split.service,
            "namespace": ns,
            "weights": split.weights(),
            "replicas": split.replicas(),
            "backends": split.deployments.iter().map(|(name, (replicas, ready))| json!({
                "name": name, "replicas": replicas, "ready": ready,
            })).collect::<Vec<_>>(),
        });
        return Ok((Split::Replicas(split), answer));
    }
    let status = route.status();
    let answer = json!({
        "kind": route.kind.as_str(),
        "name": route.name(),
        "namespace": ns,
        "generation": route.generation(),
        "weights": route.weights(),
        "accepted": status.as_ref().map(|s| s.accepted && s.current),
        "resolved": status.as_ref().map(|s| s.resolved && s.current),
        "problems": status.map(|s| s.problems).unwrap_or_default(),
    });
    Ok((Split::Route(Box::new(route)), answer))
}

enum Split {
    Route(Box<Route>),
    Replicas(ReplicaSplit),
}

impl TrafficConnector {
    /// `shift` and `reset`, first half: the weights from and to.
    async fn plan_weights(
        &self,
        ns: &str,
        reference: &RouteRef,
        target: Target,
    ) -> Result<Intent, ActionError> {
        let (split, _) = read_split(&self.client, ns, reference).await?;
        let (kind, name, from) = match &split {
            Split::Route(r) => (r.kind, r.name().to_owned(), r.weights()),
            Split::Replicas(s) => (RouteKind::Service, s.service.clone(), s.weights()),
        };
        let to = target.resolve(&from)?;
        let unknown: Vec<&String> = to.keys().filter(|k| !from.contains_key(*k)).collect();
        if !unknown.is_empty() {
            return Err(ActionError::new(
                ErrorKind::Permanent,
                format!(
                    "{} {ns}/{name} has no backend {unknown:?} (its backends: {:?})",
                    kind.as_str(),
                    from.keys().collect::<Vec<_>>()
                ),
            ));
        }
        // Every backend of the route, the ones not named at 0.
        let to: BTreeMap<String, i64> = from
            .keys()
            .map(|k| (k.clone(), to.get(k).copied().unwrap_or(0)))
            .collect();
        let mut detail = json!({
            "kind": kind.as_str(),
            "name": name,
            "namespace": ns,
            "from": from,
            "weights": to,
        });
        let noop = match &split {
            Split::Route(route) => {
                from == to
                    && route
                        .status()
                        .is_none_or(|s| s.accepted && s.resolved && s.current)
            }
            Split::Replicas(s) => {
                let counts = replica_counts(s.total(), &to)?;
                detail["replicas"] = json!(counts);
                detail["from_replicas"] = json!(s.replicas());
                counts == s.replicas() && from == to
            }
        };
        let summary = format!(
            "shift {} {ns}/{name} from {} to {}",
            kind.as_str(),
            show(&from),
            show(&to)
        );
        let intent = Intent::new(summary, detail);
        Ok(if noop { intent.noop() } else { intent })
    }

    /// `shift` and `reset`, second half.
    async fn apply_weights(
        &self,
        ns: &str,
        reference: &RouteRef,
        intent: &Intent,
        cx: &ActionContext,
    ) -> Result<Value, ActionError> {
        let mut answer = Value::Object(intent.detail.clone());
        let to: BTreeMap<String, i64> = intent.field("weights")?;
        let (split, _) = read_split(&self.client, ns, reference).await?;
        match split {
            Split::Replicas(s) => {
                let counts: BTreeMap<String, i32> = intent.field("replicas")?;
                let changed = counts != s.replicas();
                replicas::scale_to(
                    &self.client,
                    ns,
                    &counts,
                    &s.replicas(),
                    SETTLE_WAIT,
                    &*cx.progress,
                )
                .await?;
                let after = ReplicaSplit::read(&self.client, ns, &s.service).await?;
                answer["changed"] = json!(changed);
                answer["weights_now"] = json!(after.weights());
                info!(run_id = %cx.run_id, service = %s.service, ?counts, "replica split shifted");
                Ok(answer)
            }
            Split::Route(mut route) => {
                let mut changed = false;
                for attempt in 0..=CONFLICT_RETRIES {
                    if route.weights() == to {
                        break;
                    }
                    let backends: Vec<&String> = to.keys().collect();
                    let now: Vec<String> = route.weights().into_keys().collect();
                    if now.iter().collect::<Vec<_>>() != backends {
                        return Err(ActionError::new(
                            ErrorKind::Conflict,
                            format!(
                                "{} changed its backends since the shift was planned (now {now:?}); not overwriting",
                                route.reference()
                            ),
                        ));
                    }
                    let desired = route.with_weights(&to);
                    if route.replace(&self.client, &desired).await?.is_some() {
                        changed = true;
                        break;
                    }
                    if attempt == CONFLICT_RETRIES {
                        return Err(ActionError::new(
                            ErrorKind::Conflict,
                            format!("{} kept changing; gave up", route.reference()),
                        ));
                    }
                    *route = Route::read(&self.client, ns, reference).await?;
                }
                let route = wait_accepted(&self.client, ns, reference, &to, cx).await?;
                if route.weights() != to {
                    return Err(ActionError::new(
                        ErrorKind::Permanent,
                        format!(
                            "{} was written but carries {} instead of {}",
                            route.reference(),
                            show(&route.weights()),
                            show(&to)
                        ),
                    ));
                }
                info!(run_id = %cx.run_id, route = %route.reference(), weights = %show(&to), "traffic shifted");
                answer["changed"] = json!(changed);
                answer["generation"] = json!(route.generation());
                answer["accepted"] = json!(route.status().map(|s| s.accepted && s.resolved));
                Ok(answer)
            }
        }
    }
}

/// Waits until every parent of an HTTPRoute reports `Accepted` and `ResolvedRefs` at its
/// current generation (other kinds: returns at once). A backend that does not resolve fails
/// at once, with the parent's reason.
async fn wait_accepted(
    client: &kube::Client,
    ns: &str,
    reference: &RouteRef,
    to: &BTreeMap<String, i64>,
    cx: &ActionContext,
) -> Result<Route, ActionError> {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    let mut reported = false;
    loop {
        let route = Route::read(client, ns, reference).await?;
        let Some(status) = route.status() else {
            return Ok(route);
        };
        if status.current && status.accepted && status.resolved {
            return Ok(route);
        }
        if status.current && !status.resolved {
            return Err(ActionError::new(
                ErrorKind::Permanent,
                format!(
                    "{} does not resolve its backends at generation {}: {}",
                    route.reference(),
                    route.generation(),
                    status.problems.join("; ")
                ),
            ));
        }
        if !reported {
            (cx.progress)(&format!(
                "waiting for {} to be accepted at generation {} with {}",
                route.reference(),
                route.generation(),
                show(to)
            ));
            reported = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ActionError::new(
                ErrorKind::Timeout,
                format!(
                    "{} was not accepted at generation {} within {}s: {}",
                    route.reference(),
                    route.generation(),
                    SETTLE_WAIT.as_secs(),
                    status.problems.join("; ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `a=90 b=10`.
fn show(weights: &BTreeMap<String, i64>) -> String {
    weights
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where a shift goes.
enum Target {
    Weights(BTreeMap<String, i64>),
    AllTo(String),
}

impl Target {
    fn resolve(&self, from: &BTreeMap<String, i64>) -> Result<BTreeMap<String, i64>, ActionError> {
        match self {
            Target::Weights(w) => normalize(w),
            Target::AllTo(stable) => {
                if !from.contains_key(stable) {
                    return Err(ActionError::new(
                        ErrorKind::Permanent,
                        format!(
                            "no backend {stable:?} to reset to (backends: {:?})",
                            from.keys().collect::<Vec<_>>()
                        ),
                    ));
                }
                Ok(from
                    .keys()
                    .map(|k| (k.clone(), if k == stable { 100 } else { 0 }))
                    .collect())
            }
        }
    }
}

impl Connector for TrafficConnector {
    fn name(&self) -> &'static str {
        "traffic"
    }

    fn actions(&self) -> Vec<ActionSpec> {
        spec::actions()
    }

    fn call<'a>(
        &'a self,
        action: &'a str,
        args: Map<String, Value>,
        _cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        async move {
            match action {
                "split" => {
                    let ns = text(&args, "ns")?;
                    let reference = RouteRef::parse(&text(&args, "route")?)?;
                    read_split(&self.client, &ns, &reference)
                        .await
                        .map(|(_, a)| a)
                }
                other => Err(ActionError::new(
                    ErrorKind::Permanent,
                    format!("traffic::{other} is not an observing action"),
                )),
            }
        }
        .boxed()
    }

    fn plan<'a>(
        &'a self,
        action: &'a str,
        args: Map<String, Value>,
        _cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Intent, ActionError>> {
        async move {
            let ns = text(&args, "ns")?;
            let reference = RouteRef::parse(&text(&args, "route")?)?;
            let target = match action {
                "shift" => Target::Weights(given_weights(&args)?),
                "reset" => Target::AllTo(text(&args, "stable")?),
                other => {
                    return Err(ActionError::new(
                        ErrorKind::Permanent,
                        format!("traffic::{other} is not a mutating action"),
                    ));
                }
            };
            self.plan_weights(&ns, &reference, target).await
        }
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        _action: &'a str,
        args: Map<String, Value>,
        intent: &'a Intent,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        async move {
            let ns = text(&args, "ns")?;
            let reference = RouteRef::parse(&text(&args, "route")?)?;
            self.apply_weights(&ns, &reference, intent, cx).await
        }
        .boxed()
    }
}

/// The connector's entry point for the binary: `traffic::` on the cluster the engine connected
/// to (no cluster, no connector).
pub struct Plugin;

impl firebreak_connector::plugin::Plugin for Plugin {
    fn module(&self) -> &'static str {
        "traffic"
    }

    fn section(&self) -> &'static str {
        "traffic"
    }

    fn doc(&self) -> &'static str {
        "Canary traffic weights on a Gateway API HTTPRoute, an Istio VirtualService, or the \
         replica counts of two Deployments behind one Service. On with the Kubernetes \
         connector (the same cluster)."
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
            .map(|c| std::sync::Arc::new(TrafficConnector::new(c.clone())) as _);
        Box::pin(std::future::ready(Ok(connector)))
    }
}
