//! Deployment actions: rollback, set_image, scale, pause, resume, restart, rollout_history,
//! wait_rollout, snapshot, restore and scale_to_zero.
//!
//! Each one sends what the matching `kubectl` command sends (see KUBESIM-NOTES §1); the
//! decisions come from [`crate::rollout`]. Start at [`rollback`]: it is split into
//! [`prepare_rollback`] (read and plan) and [`apply_rollback`] (one write with a
//! resourceVersion precondition), so a concurrent change in between is a Conflict, never an
//! overwrite. Mutating actions honour `cx.dry_run` by reading, planning and not writing.

use std::time::Duration;

use firebreak_connector::{ActionContext, ErrorKind};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use crate::Error;
use crate::rollout::{self, RollbackPlan};

/// `(ns, deploy)`: the arguments of most Deployment actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployArgs {
    pub ns: String,
    pub deploy: String,
}

/// `rollback(ns, deploy[, revision])`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackArgs {
    pub ns: String,
    pub deploy: String,
    /// 0 or absent: the previous revision.
    #[serde(default)]
    pub revision: Option<i64>,
}

/// `set_image(ns, deploy, container, image)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetImageArgs {
    pub ns: String,
    pub deploy: String,
    pub container: String,
    pub image: String,
}

/// `scale(ns, deploy, replicas)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleArgs {
    pub ns: String,
    pub deploy: String,
    pub replicas: i64,
}

/// `wait_rollout(ns, deploy[, timeout])`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    pub ns: String,
    pub deploy: String,
    /// Seconds, or a string like `"90s"`, `"5m"`, `"1h"`; absent: 5 minutes.
    #[serde(default)]
    pub timeout: Option<Value>,
}

/// `restore(ns, snapshot)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreArgs {
    pub ns: String,
    pub snapshot: Snapshot,
}

/// What `snapshot` returns and `restore` takes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always `Deployment`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Identifies the object: restore refuses a Deployment that was deleted and recreated.
    pub uid: String,
    pub resource_version: String,
    /// `deployment.kubernetes.io/revision` at the time of the snapshot.
    pub revision: i64,
    /// `container=image`, in order.
    pub images: Vec<String>,
    pub replicas: Option<i32>,
    /// The whole spec, as the API server returned it.
    pub spec: Value,
}

/// The default `wait_rollout` timeout.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The longest `wait_rollout` accepts.
pub const MAX_WAIT: Duration = Duration::from_secs(6 * 3600);

fn api(client: &kube::Client, ns: &str) -> Api<Deployment> {
    Api::namespaced(client.clone(), ns)
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// `ns/name`, how outputs and messages name a Deployment.
fn id(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Reads a Deployment.
pub async fn get(client: &kube::Client, ns: &str, name: &str) -> Result<Deployment, Error> {
    api(client, ns)
        .get(name)
        .await
        .map_err(Error::api(format!("getting deployment {}", id(ns, name))))
}

/// Renders a LabelSelector as a selector string (`a=b,c in (d,e),!f`).
pub fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// The ReplicaSets this Deployment controls, listed the way kubectl does (selector, then
/// controller ownerReference uid).
pub async fn owned_replicasets(
    client: &kube::Client,
    d: &Deployment,
) -> Result<Vec<ReplicaSet>, Error> {
    let ns = d.metadata.namespace.as_deref().unwrap_or_default();
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let Some(selector) = d.spec.as_ref().map(|s| selector_string(&s.selector)) else {
        return Ok(Vec::new());
    };
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let list = rs
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api(format!(
            "listing replicasets of deployment {}",
            id(ns, name)
        )))?;
    Ok(rollout::owned_replicasets(d, list.items))
}

/// A planned rollback: the Deployment as read (its resourceVersion is the precondition) and
/// what will be written.
#[derive(Debug, Clone)]
pub struct PreparedRollback {
    pub deployment: Deployment,
    pub plan: RollbackPlan,
}

impl PreparedRollback {
    fn name(&self) -> &str {
        self.deployment.metadata.name.as_deref().unwrap_or_default()
    }

    fn ns(&self) -> &str {
        self.deployment
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
    }

    /// The step output, before or after the write.
    pub fn describe(&self, dry_run: bool) -> Value {
        let from_images = rollout::deployment_images(&self.deployment);
        let mut out = json!({
            "deployment": id(self.ns(), self.name()),
            "from_revision": rollout::deployment_revision(&self.deployment),
            "from_images": from_images,
            "dry_run": dry_run,
        });
        match &self.plan {
            RollbackPlan::Skip { revision } => {
                out["rolled_back"] = json!(false);
                out["to_revision"] = json!(revision);
                out["to_images"] = out["from_images"].clone();
                out["message"] = json!(format!(
                    "deployment.apps/{} skipped rollback (current template already matches revision {revision})",
                    self.name()
                ));
            }
            RollbackPlan::Apply {
                revision, template, ..
            } => {
                out["rolled_back"] = json!(!dry_run);
                out["to_revision"] = json!(revision);
                out["to_images"] = json!(rollout::images(Some(&**template)));
                out["message"] = json!(if dry_run {
                    format!(
                        "deployment.apps/{} would roll back to revision {revision}",
                        self.name()
                    )
                } else {
                    format!("deployment.apps/{} rolled back", self.name())
                });
            }
        }
        out
    }
}

/// Reads the Deployment and its ReplicaSets and plans `kubectl rollout undo
/// [--to-revision=N]` (0 = previous). Nothing is written.
pub async fn prepare_rollback(
    client: &kube::Client,
    ns: &str,
    name: &str,
    to_revision: i64,
) -> Result<PreparedRollback, Error> {
    let deployment = get(client, ns, name).await?;
    let owned = owned_replicasets(client, &deployment).await?;
    let plan = rollout::plan_rollback(&deployment, &owned, to_revision)
        .map_err(|e| Error::refused(ErrorKind::Permanent, e.to_string()))?;
    Ok(PreparedRollback { deployment, plan })
}

/// Writes a prepared rollback: the template and annotations, with the resourceVersion that
/// was read as precondition. A Deployment changed since then is a Conflict and is left as
/// it is.
pub async fn apply_rollback(
    client: &kube::Client,
    prepared: PreparedRollback,
) -> Result<Value, Error> {
    let RollbackPlan::Apply {
        template,
        annotations,
        revision,
    } = &prepared.plan
    else {
        return Ok(prepared.describe(false));
    };
    let (ns, name) = (prepared.ns().to_owned(), prepared.name().to_owned());
    let mut d = prepared.deployment.clone();
    let read_version = d.metadata.resource_version.clone().unwrap_or_default();
    d.metadata.annotations = Some(annotations.clone());
    if let Some(spec) = d.spec.as_mut() {
        spec.template = (**template).clone();
    }
    replace_checked(client, &prepared.deployment, d, "rolling back").await?;
    info!(deployment = %id(&ns, &name), revision, read_version = %read_version, "rolled back");
    Ok(prepared.describe(false))
}

/// The fields a write by someone else would have changed: everything but status and the
/// bookkeeping metadata (resourceVersion, managedFields).
fn user_fields(d: &Deployment) -> Value {
    json!({
        "uid": d.metadata.uid,
        "labels": d.metadata.labels,
        "annotations": d.metadata.annotations,
        "deletionTimestamp": d.metadata.deletion_timestamp,
        "spec": d.spec,
    })
}

/// Replaces the Deployment with `desired`, which carries the resourceVersion of `read`.
///
/// On 409 the object is read again: if only its status moved (the controller's own
/// bookkeeping, which a replace of the main resource does not touch), the write is retried
/// with the new resourceVersion (a few times: the controller may answer our own status-only
/// change with another one); if anything a person or another tool writes changed
/// (spec, labels, annotations, uid), the result is a Conflict and nothing is written.
async fn replace_checked(
    client: &kube::Client,
    read: &Deployment,
    mut desired: Deployment,
    doing: &str,
) -> Result<(), Error> {
    let ns = read.metadata.namespace.clone().unwrap_or_default();
    let name = read.metadata.name.clone().unwrap_or_default();
    // managedFields left out: the API server keeps the stored ones.
    desired.metadata.managed_fields = None;
    desired.status = None;
    let pp = PostParams {
        field_manager: Some(crate::FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    // A controller busy with the object moves its status a few times in a row.
    const STATUS_ONLY_RETRIES: u32 = 5;
    let mut retries = 0;
    loop {
        match api(client, &ns).replace(&name, &pp, &desired).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let now = get(client, &ns, &name).await?;
                let only_status_moved = rollout::same_json(&user_fields(read), &user_fields(&now));
                if only_status_moved && retries < STATUS_ONLY_RETRIES {
                    retries += 1;
                    desired.metadata.resource_version = now.metadata.resource_version.clone();
                    continue;
                }
                return Err(Error::refused(
                    ErrorKind::Conflict,
                    format!(
                        "deployment {} changed since it was read (resourceVersion {} is now {}); \
                         not overwriting someone else's change",
                        id(&ns, &name),
                        read.metadata
                            .resource_version
                            .as_deref()
                            .unwrap_or_default(),
                        now.metadata.resource_version.as_deref().unwrap_or_default(),
                    ),
                ));
            }
            Err(e) => {
                return Err(Error::api(format!("{doing} deployment {}", id(&ns, &name)))(e));
            }
        }
    }
}

/// `rollback(ns, deploy[, revision])`: `kubectl rollout undo`.
pub async fn rollback(
    client: &kube::Client,
    args: RollbackArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let prepared =
        prepare_rollback(client, &args.ns, &args.deploy, args.revision.unwrap_or(0)).await?;
    if cx.dry_run {
        return Ok(prepared.describe(true));
    }
    apply_rollback(client, prepared).await
}

/// `set_image(ns, deploy, container, image)`: `kubectl set image` (strategic merge patch).
pub async fn set_image(
    client: &kube::Client,
    args: SetImageArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    if args.image.trim().is_empty() {
        return Err(Error::InvalidValue {
            action: "set_image",
            param: "image",
            reason: "the image must not be empty".into(),
        });
    }
    let d = get(client, &args.ns, &args.deploy).await?;
    let containers = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let Some(current) = containers.iter().find(|c| c.name == args.container) else {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!("unable to find container named \"{}\"", args.container),
        ));
    };
    let from = current.image.clone().unwrap_or_default();
    let changed = from != args.image;
    let out = json!({
        "deployment": id(&args.ns, &args.deploy),
        "container": args.container,
        "from_image": from,
        "to_image": args.image,
        "changed": changed && !cx.dry_run,
        "dry_run": cx.dry_run,
    });
    if cx.dry_run || !changed {
        return Ok(out);
    }
    let order: Vec<Value> = containers.iter().map(|c| json!({"name": c.name})).collect();
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": order,
        "containers": [{"image": args.image, "name": args.container}],
    }}}});
    api(client, &args.ns)
        .patch(&args.deploy, &params(), &Patch::Strategic(&patch))
        .await
        .map_err(Error::api(format!(
            "setting image on deployment {}",
            id(&args.ns, &args.deploy)
        )))?;
    info!(deployment = %id(&args.ns, &args.deploy), container = %args.container, image = %args.image, "image set");
    Ok(out)
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

async fn patch_replicas(
    client: &kube::Client,
    ns: &str,
    name: &str,
    replicas: i32,
) -> Result<(), Error> {
    api(client, ns)
        .patch_scale(
            name,
            &params(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .map_err(Error::api(format!("scaling deployment {}", id(ns, name))))?;
    Ok(())
}

/// `scale(ns, deploy, replicas)`: `kubectl scale` (merge patch on the scale subresource).
pub async fn scale(
    client: &kube::Client,
    args: ScaleArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let replicas = i32::try_from(args.replicas)
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| Error::InvalidValue {
            action: "scale",
            param: "replicas",
            reason: format!("{} is not a replica count (0..=2147483647)", args.replicas),
        })?;
    let d = get(client, &args.ns, &args.deploy).await?;
    let from = replicas_of(&d);
    if !cx.dry_run {
        patch_replicas(client, &args.ns, &args.deploy, replicas).await?;
        info!(deployment = %id(&args.ns, &args.deploy), from, to = replicas, "scaled");
    }
    Ok(json!({
        "deployment": id(&args.ns, &args.deploy),
        "from_replicas": from,
        "to_replicas": replicas,
        "dry_run": cx.dry_run,
    }))
}

/// `scale_to_zero(ns, deploy)`: scale to 0, returning the previous count.
pub async fn scale_to_zero(
    client: &kube::Client,
    args: DeployArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let d = get(client, &args.ns, &args.deploy).await?;
    let previous = replicas_of(&d);
    if !cx.dry_run && previous != 0 {
        patch_replicas(client, &args.ns, &args.deploy, 0).await?;
        info!(deployment = %id(&args.ns, &args.deploy), previous, "scaled to zero");
    }
    Ok(json!({
        "deployment": id(&args.ns, &args.deploy),
        "previous_replicas": previous,
        "replicas": 0,
        "dry_run": cx.dry_run,
    }))
}

async fn set_paused(
    client: &kube::Client,
    args: DeployArgs,
    cx: &ActionContext,
    pause: bool,
) -> Result<Value, Error> {
    let d = get(client, &args.ns, &args.deploy).await?;
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    if paused == pause {
        let state = if pause {
            "already paused"
        } else {
            "not paused"
        };
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!("deployments.apps \"{}\" is {state}", args.deploy),
        ));
    }
    if !cx.dry_run {
        // kubectl sends `null` to resume: the field is removed, not set to false.
        let value = if pause { json!(true) } else { Value::Null };
        api(client, &args.ns)
            .patch(
                &args.deploy,
                &params(),
                &Patch::Strategic(json!({"spec": {"paused": value}})),
            )
            .await
            .map_err(Error::api(format!(
                "{} deployment {}",
                if pause { "pausing" } else { "resuming" },
                id(&args.ns, &args.deploy)
            )))?;
        info!(deployment = %id(&args.ns, &args.deploy), paused = pause, "pause changed");
    }
    Ok(json!({
        "deployment": id(&args.ns, &args.deploy),
        "paused": pause,
        "dry_run": cx.dry_run,
    }))
}

/// `pause(ns, deploy)`: `kubectl rollout pause`.
pub async fn pause(
    client: &kube::Client,
    args: DeployArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    set_paused(client, args, cx, true).await
}

/// `resume(ns, deploy)`: `kubectl rollout resume`.
pub async fn resume(
    client: &kube::Client,
    args: DeployArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    set_paused(client, args, cx, false).await
}

/// RFC 3339 in UTC with seconds precision, as kubectl stamps `restartedAt`.
fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `restart(ns, deploy)`: `kubectl rollout restart` (stamps the template's
/// `kubectl.kubernetes.io/restartedAt`, so the controller rolls out new pods).
pub async fn restart(
    client: &kube::Client,
    args: DeployArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let d = get(client, &args.ns, &args.deploy).await?;
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        return Err(Error::refused(
            ErrorKind::Permanent,
            "can't restart paused deployment (run rollout resume first)",
        ));
    }
    let at = now_rfc3339();
    if !cx.dry_run {
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {
            rollout::RESTARTED_AT: at,
        }}}}});
        api(client, &args.ns)
            .patch(&args.deploy, &params(), &Patch::Strategic(&patch))
            .await
            .map_err(Error::api(format!(
                "restarting deployment {}",
                id(&args.ns, &args.deploy)
            )))?;
        info!(deployment = %id(&args.ns, &args.deploy), "restarted");
    }
    Ok(json!({
        "deployment": id(&args.ns, &args.deploy),
        "restarted_at": at,
        "dry_run": cx.dry_run,
    }))
}

/// `rollout_history(ns, deploy)`: `kubectl rollout history`.
pub async fn rollout_history(client: &kube::Client, args: DeployArgs) -> Result<Value, Error> {
    let d = get(client, &args.ns, &args.deploy).await?;
    let owned = owned_replicasets(client, &d).await?;
    Ok(json!({
        "deployment": id(&args.ns, &args.deploy),
        "current_revision": rollout::deployment_revision(&d),
        "current_images": rollout::deployment_images(&d),
        "revisions": rollout::history(&owned),
    }))
}

/// Parses a `wait_rollout` timeout: whole seconds, or a number with an `s`, `m` or `h` suffix.
pub fn parse_timeout(v: Option<&Value>) -> Result<Duration, Error> {
    let bad = |reason: String| Error::InvalidValue {
        action: "wait_rollout",
        param: "timeout",
        reason,
    };
    let d = match v {
        None | Some(Value::Null) => DEFAULT_WAIT,
        Some(Value::Number(n)) => {
            let secs = n
                .as_u64()
                .ok_or_else(|| bad(format!("{n} is not a whole number of seconds")))?;
            Duration::from_secs(secs)
        }
        Some(Value::String(s)) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: u64 = num
                .parse()
                .map_err(|_| bad(format!("{s:?} is not a duration like \"90s\" or \"5m\"")))?;
            let mult = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => return Err(bad(format!("{s:?} has an unknown unit (use s, m or h)"))),
            };
            Duration::from_secs(n.saturating_mul(mult))
        }
        Some(other) => return Err(bad(format!("{other} is not a duration"))),
    };
    if d.is_zero() || d > MAX_WAIT {
        return Err(bad(format!(
            "{}s is out of range (1s..={}s)",
            d.as_secs(),
            MAX_WAIT.as_secs()
        )));
    }
    Ok(d)
}

/// `wait_rollout(ns, deploy[, timeout])`: `kubectl rollout status`. Watches the Deployment,
/// reports each new status line through `cx.progress`, and ends when the rollout completes
/// (Ok), exceeds its progress deadline (Permanent), is deleted (NotFound) or times out
/// (Timeout).
pub async fn wait_rollout(
    client: &kube::Client,
    args: WaitArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let timeout = parse_timeout(args.timeout.as_ref())?;
    let (ns, name) = (args.ns.as_str(), args.deploy.as_str());
    // Fails fast with NotFound instead of waiting for a Deployment that is not there.
    get(client, ns, name).await?;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api(client, ns), config).default_backoff();
    let mut last_line = String::new();
    let waited = tokio::time::timeout(timeout, async {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let d = match item {
                Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => d,
                Ok(watcher::Event::Delete(_)) => {
                    return Err(Error::refused(
                        ErrorKind::NotFound,
                        format!("deployment {} was deleted while waiting", id(ns, name)),
                    ));
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
                Err(source) => {
                    let e = Error::Watch {
                        what: format!("deployment {}", id(ns, name)),
                        source,
                    };
                    if e.kind().is_retryable() {
                        // The backoff delays the next attempt; the overall timeout bounds it.
                        tracing::warn!(deployment = %id(ns, name), error = %e.message(), "watch failed; retrying");
                        continue;
                    }
                    return Err(e);
                }
            };
            match rollout::status(&d) {
                rollout::Status::Waiting(line) => {
                    if line != last_line {
                        (cx.progress)(&line);
                        last_line = line;
                    }
                }
                rollout::Status::Done(line) => {
                    (cx.progress)(&line);
                    return Ok(json!({
                        "deployment": id(ns, name),
                        "status": "complete",
                        "message": line,
                        "revision": rollout::deployment_revision(&d),
                        "images": rollout::deployment_images(&d),
                    }));
                }
                rollout::Status::DeadlineExceeded(message) => {
                    return Err(Error::refused(ErrorKind::Permanent, message));
                }
            }
        }
        Err(Error::refused(
            ErrorKind::Transient,
            format!("the watch on deployment {} ended", id(ns, name)),
        ))
    })
    .await;
    match waited {
        Ok(result) => result,
        Err(_elapsed) => Err(Error::Timeout {
            what: format!(
                "the condition: deployment {} rollout to finish within {}s (last status: {})",
                id(ns, name),
                timeout.as_secs(),
                if last_line.is_empty() {
                    "none"
                } else {
                    &last_line
                }
            ),
        }),
    }
}

/// `snapshot(ns, deploy)`: the Deployment's spec, revision, resourceVersion and images.
pub async fn snapshot(client: &kube::Client, args: DeployArgs) -> Result<Value, Error> {
    let d = get(client, &args.ns, &args.deploy).await?;
    let snap = Snapshot {
        kind: "Deployment".into(),
        namespace: args.ns.clone(),
        name: args.deploy.clone(),
        uid: d.metadata.uid.clone().unwrap_or_default(),
        resource_version: d.metadata.resource_version.clone().unwrap_or_default(),
        revision: rollout::deployment_revision(&d),
        images: rollout::deployment_images(&d),
        replicas: d.spec.as_ref().and_then(|s| s.replicas),
        spec: serde_json::to_value(&d.spec).unwrap_or(Value::Null),
    };
    Ok(serde_json::to_value(snap).unwrap_or(Value::Null))
}

/// `restore(ns, snapshot)`: writes the snapshot's spec back onto the same Deployment. The
/// write carries the resourceVersion just read, so a change made in between is a Conflict;
/// a Deployment recreated since the snapshot (other uid) is a Conflict too.
pub async fn restore(
    client: &kube::Client,
    args: RestoreArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let snap = args.snapshot;
    if snap.kind != "Deployment" {
        return Err(Error::InvalidValue {
            action: "restore",
            param: "snapshot",
            reason: format!("kind {:?} cannot be restored (only Deployment)", snap.kind),
        });
    }
    if snap.namespace != args.ns {
        return Err(Error::InvalidValue {
            action: "restore",
            param: "snapshot",
            reason: format!(
                "the snapshot is of namespace {:?}, not {:?}",
                snap.namespace, args.ns
            ),
        });
    }
    let spec: DeploymentSpec =
        serde_json::from_value(snap.spec.clone()).map_err(|e| Error::InvalidValue {
            action: "restore",
            param: "snapshot",
            reason: format!("spec is not a Deployment spec: {e}"),
        })?;
    let mut d = get(client, &args.ns, &snap.name).await?;
    let uid = d.metadata.uid.clone().unwrap_or_default();
    if uid != snap.uid {
        return Err(Error::refused(
            ErrorKind::Conflict,
            format!(
                "deployment {} was recreated since the snapshot (uid {uid}, snapshot {}); not restoring",
                id(&args.ns, &snap.name),
                snap.uid
            ),
        ));
    }
    let from_images = rollout::deployment_images(&d);
    let unchanged = rollout::same_json(
        &serde_json::to_value(&d.spec).unwrap_or_default(),
        &snap.spec,
    );
    let out = |restored: bool| {
        json!({
            "deployment": id(&args.ns, &snap.name),
            "from_images": from_images,
            "to_images": snap.images,
            "to_replicas": snap.replicas,
            "restored": restored,
            "unchanged": unchanged,
            "dry_run": cx.dry_run,
        })
    };
    if cx.dry_run || unchanged {
        return Ok(out(false));
    }
    let read = d.clone();
    d.spec = Some(spec);
    replace_checked(client, &read, d, "restoring").await?;
    info!(deployment = %id(&args.ns, &snap.name), "restored from snapshot");
    Ok(out(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_timeout(None).unwrap(), DEFAULT_WAIT);
        assert_eq!(
            parse_timeout(Some(&json!(30))).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            parse_timeout(Some(&json!("90s"))).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_timeout(Some(&json!("5m"))).unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            parse_timeout(Some(&json!("2h"))).unwrap(),
            Duration::from_secs(7200)
        );
        assert_eq!(
            parse_timeout(Some(&json!("45"))).unwrap(),
            Duration::from_secs(45)
        );
        for bad in [
            json!(-1),
            json!(1.5),
            json!("5d"),
            json!("m"),
            json!(0),
            json!("100h"),
            json!([1]),
        ] {
            let e = parse_timeout(Some(&bad)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Permanent, "{bad}");
            assert!(e.to_string().contains("timeout"), "{bad}: {e}");
        }
    }

    #[test]
    fn selectors_render_like_kubectl() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web", "tier": "api"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["a", "b"]},
                {"key": "x", "operator": "NotIn", "values": ["c"]},
                {"key": "y", "operator": "Exists"},
                {"key": "z", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap();
        assert_eq!(
            selector_string(&sel),
            "app=web,tier=api,env in (a,b),x notin (c),y,!z"
        );
    }

    #[test]
    fn args_reject_unknown_fields_and_wrong_types() {
        let e = crate::parse::<RollbackArgs>(
            "rollback",
            json!({"ns": "a", "deploy": "b", "revison": 2}),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert!(
            e.message().contains("unknown field `revison`"),
            "{}",
            e.message()
        );
        let e =
            crate::parse::<ScaleArgs>("scale", json!({"ns": "a", "deploy": "b", "replicas": "x"}))
                .unwrap_err();
        assert!(e.message().starts_with("invalid arguments for k8s::scale"));
        let ok = crate::parse::<RollbackArgs>(
            "rollback",
            json!({"ns": "a", "deploy": "b", "revision": null}),
        )
        .unwrap();
        assert_eq!(ok.revision, None);
    }
}
