//! Deployment actions: rollback, set_image, scale, pause, resume, restart, rollout_history,
//! wait_rollout, snapshot, restore, promote and scale_to_zero.
//!
//! Each one sends what the matching `kubectl` command sends (see KUBESIM-NOTES §1); the
//! decisions come from [`crate::rollout`]. Every mutation comes in two halves (see
//! `firebreak_connector`): `plan_*` reads and resolves an [`Intent`] (for a rollback: the
//! target ReplicaSet's revision and pod-template-hash, and a digest of the template it rolls
//! back from), and `apply_*` brings the Deployment to that intent: if it is already there it
//! writes nothing; otherwise it writes with a resourceVersion precondition, re-reads on a
//! conflict and writes again only while the change in between leaves the intent valid (an
//! autoscaler moved the replicas, the controller moved the status), and confirms the effect
//! before it answers. Start at [`plan_rollback`] and [`apply_rollback`].

use std::time::Duration;

use firebreak_connector::{ActionContext, ErrorKind, Intent};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use crate::Error;
use crate::rollout;

/// `(ns, deploy)`: the arguments of most Deployment actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployArgs {
    pub ns: String,
    pub deploy: String,
}

/// `rollback(ns, deploy[, revision[, from]])`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackArgs {
    pub ns: String,
    pub deploy: String,
    /// 0 or absent: the previous revision.
    #[serde(default)]
    pub revision: Option<i64>,
    /// What the incident blames: roll back only while the Deployment still runs it (its
    /// pod-template-hash, revision number, an image, or an image tag). Absent: whatever runs.
    #[serde(default)]
    pub from: Option<String>,
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

/// `promote(ns, canary, stable)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteArgs {
    pub ns: String,
    pub canary: String,
    pub stable: String,
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

/// How many times an apply re-reads and writes again after a 409 whose change left the
/// intent valid (a controller busy with the object moves its status a few times in a row).
const CONFLICT_RETRIES: u32 = 6;

/// The ReplicaSet of the Deployment whose template is the Deployment's current one.
fn current_replicaset<'a>(d: &Deployment, owned: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let template = &d.spec.as_ref()?.template;
    owned.iter().find(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| rollout::equal_ignore_hash(t, template))
    })
}

/// A ReplicaSet's `pod-template-hash` label.
fn template_hash(rs: &ReplicaSet) -> Option<String> {
    rs.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(rollout::POD_TEMPLATE_HASH))
        .cloned()
}

/// The Deployment's pod template.
fn template_of(d: &Deployment) -> Option<&k8s_openapi::api::core::v1::PodTemplateSpec> {
    d.spec.as_ref().map(|s| &s.template)
}

/// Whether the Deployment runs what `blame` names: its current ReplicaSet's
/// pod-template-hash, its revision number, one of its images, or one of its image tags.
pub fn runs_blamed(d: &Deployment, current: Option<&ReplicaSet>, blame: &str) -> bool {
    let blame = blame.trim();
    if blame.is_empty() {
        return true;
    }
    if current.and_then(template_hash).as_deref() == Some(blame) {
        return true;
    }
    if rollout::deployment_revision(d).to_string() == blame {
        return true;
    }
    rollout::deployment_images(d).iter().any(|pair| {
        let image = pair.split_once('=').map_or(pair.as_str(), |(_, i)| i);
        image == blame || image.rsplit_once(':').is_some_and(|(_, tag)| tag == blame)
    })
}

/// `rollback(ns, deploy[, revision[, from]])`, first half: `kubectl rollout undo
/// [--to-revision=N]` decided, not done. The intent names the target by its ReplicaSet's
/// pod-template-hash (its revision number changes when it is rolled back to) and the
/// template it rolls back from by a digest. Refuses what kubectl refuses (no history, a
/// paused Deployment, an unknown revision). With `from`, a Deployment that no longer runs the
/// blamed version gets a no-op intent: a second run for the same incident does not roll back
/// the rollback.
pub async fn plan_rollback(client: &kube::Client, args: &RollbackArgs) -> Result<Intent, Error> {
    let (ns, name) = (args.ns.as_str(), args.deploy.as_str());
    let d = get(client, ns, name).await?;
    let owned = owned_replicasets(client, &d).await?;
    let current = current_replicaset(&d, &owned);
    let from_revision = rollout::deployment_revision(&d);
    let from_images = rollout::deployment_images(&d);
    let mut detail = json!({
        "deployment": id(ns, name),
        "from_revision": from_revision,
        "from_images": from_images,
        "from_hash": current.and_then(template_hash),
        "from_template": rollout::template_digest(template_of(&d)),
    });
    if let Some(blame) = args.from.as_deref()
        && !runs_blamed(&d, current, blame)
    {
        let reason = format!(
            "deployment {} no longer runs {blame:?} (it runs revision {from_revision}: {}); nothing to roll back",
            id(ns, name),
            from_images.join(", ")
        );
        detail["rolled_back"] = json!(false);
        detail["blamed"] = json!(blame);
        detail["to_revision"] = json!(from_revision);
        detail["to_images"] = json!(from_images);
        detail["message"] = json!(reason);
        return Ok(Intent::new(format!("do nothing: {reason}"), detail).noop());
    }
    let plan = rollout::plan_rollback(&d, &owned, args.revision.unwrap_or(0))
        .map_err(|e| Error::refused(ErrorKind::Permanent, e.to_string()))?;
    match plan {
        rollout::RollbackPlan::Skip { revision } => {
            let message = format!(
                "deployment.apps/{name} skipped rollback (current template already matches revision {revision})"
            );
            detail["rolled_back"] = json!(false);
            detail["to_revision"] = json!(revision);
            detail["to_images"] = json!(from_images);
            detail["message"] = json!(message);
            Ok(Intent::new(message, detail).noop())
        }
        rollout::RollbackPlan::Apply {
            revision, template, ..
        } => {
            let target = rollout::select_target(name, &owned, revision)
                .map_err(|e| Error::refused(ErrorKind::Permanent, e.to_string()))?;
            let to_images = rollout::images(Some(&template));
            let summary = format!(
                "roll {} back from revision {from_revision} ({}) to the template of revision {revision} ({})",
                id(ns, name),
                from_images.join(", "),
                to_images.join(", ")
            );
            detail["rolled_back"] = json!(true);
            detail["to_revision"] = json!(revision);
            detail["to_hash"] = json!(template_hash(target));
            detail["to_images"] = json!(to_images);
            detail["message"] = json!(format!("deployment.apps/{name} rolled back"));
            Ok(Intent::new(summary, detail))
        }
    }
}

/// `rollback`, second half: brings the Deployment to the intent's target template. Already
/// there: answers at once, writing nothing (a retry or a resume after the write). Still on the
/// template it rolls back from: writes the target's template and annotations (what `kubectl
/// rollout undo` writes) with the resourceVersion just read; on a 409 it reads again and
/// writes again while the template is unchanged (replicas, status or unrelated annotations
/// moved, as an autoscaler does), and refuses with a Conflict once someone changed the
/// template. The answer is given only when the written Deployment carries the target template.
pub async fn apply_rollback(
    client: &kube::Client,
    args: &RollbackArgs,
    intent: &Intent,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    if intent.noop {
        answer["changed"] = json!(false);
        return Ok(answer);
    }
    let (ns, name) = (args.ns.as_str(), args.deploy.as_str());
    let to_hash: String = intent.field("to_hash").map_err(Error::from_action)?;
    let from_template: String = intent.field("from_template").map_err(Error::from_action)?;
    for _ in 0..=CONFLICT_RETRIES {
        let d = get(client, ns, name).await?;
        let owned = owned_replicasets(client, &d).await?;
        let Some(target) = owned
            .iter()
            .find(|rs| template_hash(rs).as_deref() == Some(to_hash.as_str()))
        else {
            return Err(Error::refused(
                ErrorKind::Conflict,
                format!(
                    "the ReplicaSet to roll {} back to (pod-template-hash {to_hash}) is gone; not rolling back",
                    id(ns, name)
                ),
            ));
        };
        let target_template = target.spec.as_ref().and_then(|s| s.template.clone());
        let current = template_of(&d);
        if let (Some(t), Some(c)) = (&target_template, current)
            && rollout::equal_ignore_hash(t, c)
        {
            answer["changed"] = json!(false);
            answer["revision"] = json!(rollout::deployment_revision(&d));
            return Ok(answer);
        }
        if rollout::template_digest(current) != from_template {
            return Err(Error::refused(
                ErrorKind::Conflict,
                format!(
                    "deployment {} changed since the rollback was planned: it now runs revision {} ({}), neither the template it rolls back from nor the target; not overwriting someone else's change",
                    id(ns, name),
                    rollout::deployment_revision(&d),
                    rollout::deployment_images(&d).join(", ")
                ),
            ));
        }
        let revision = rollout::revision_of(target.metadata.annotations.as_ref()).unwrap_or(0);
        let rollout::RollbackPlan::Apply {
            template,
            annotations,
            ..
        } = rollout::plan_rollback(&d, &owned, revision)
            .map_err(|e| Error::refused(ErrorKind::Permanent, e.to_string()))?
        else {
            continue;
        };
        let mut desired = d.clone();
        desired.metadata.annotations = Some(annotations);
        if let Some(spec) = desired.spec.as_mut() {
            spec.template = *template;
        }
        match replace_once(client, ns, name, desired).await? {
            Some(written) => {
                let ok = target_template
                    .as_ref()
                    .zip(template_of(&written))
                    .is_some_and(|(t, w)| rollout::equal_ignore_hash(t, w));
                if !ok {
                    return Err(Error::refused(
                        ErrorKind::Permanent,
                        format!(
                            "the API server accepted the rollback of {} but the Deployment does not carry the target template",
                            id(ns, name)
                        ),
                    ));
                }
                info!(deployment = %id(ns, name), revision, "rolled back");
                answer["changed"] = json!(true);
                answer["revision"] = json!(rollout::deployment_revision(&written));
                return Ok(answer);
            }
            // 409: read again; the checks above decide whether to write again.
            None => continue,
        }
    }
    Err(Error::refused(
        ErrorKind::Conflict,
        format!(
            "deployment {} kept changing; gave up after {CONFLICT_RETRIES} attempts",
            id(ns, name)
        ),
    ))
}

/// PUTs `desired` (carrying the resourceVersion it was read at). `Ok(None)` on 409.
async fn replace_once(
    client: &kube::Client,
    ns: &str,
    name: &str,
    mut desired: Deployment,
) -> Result<Option<Deployment>, Error> {
    // managedFields left out: the API server keeps the stored ones.
    desired.metadata.managed_fields = None;
    desired.status = None;
    let pp = PostParams {
        field_manager: Some(crate::FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api(client, ns).replace(name, &pp, &desired).await {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(e) => Err(Error::api(format!("writing deployment {}", id(ns, name)))(
            e,
        )),
    }
}

/// The container's image in the Deployment's template.
fn container_image(d: &Deployment, container: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)
        .map(|c| c.image.clone().unwrap_or_default())
}

/// What the Deployment's pods will run once `container` runs `image`: per container its
/// image, whether it has a readiness probe and resource requests and limits. The engine checks
/// a team's deployment policies on it before the write (the way an admission controller
/// would).
fn workload(d: &Deployment, container: &str, image: &str) -> Value {
    let containers = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let list: Vec<Value> = containers
        .iter()
        .map(|c| {
            let resources = c.resources.as_ref();
            let has = |m: Option<&std::collections::BTreeMap<String, _>>| {
                m.is_some_and(|m| m.contains_key("cpu") && m.contains_key("memory"))
            };
            json!({
                "name": c.name,
                "image": if c.name == container { image.to_owned() } else { c.image.clone().unwrap_or_default() },
                "readiness_probe": c.readiness_probe.is_some(),
                "requests": has(resources.and_then(|r| r.requests.as_ref())),
                "limits": has(resources.and_then(|r| r.limits.as_ref())),
            })
        })
        .collect();
    json!({ "containers": list })
}

/// `set_image(ns, deploy, container, image)`, first half.
pub async fn plan_set_image(client: &kube::Client, args: &SetImageArgs) -> Result<Intent, Error> {
    if args.image.trim().is_empty() {
        return Err(Error::InvalidValue {
            action: "set_image",
            param: "image",
            reason: "the image must not be empty".into(),
        });
    }
    let d = get(client, &args.ns, &args.deploy).await?;
    let Some(from) = container_image(&d, &args.container) else {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!("unable to find container named \"{}\"", args.container),
        ));
    };
    let detail = json!({
        "deployment": id(&args.ns, &args.deploy),
        "container": args.container,
        "from_image": from,
        "to_image": args.image,
        "workload": workload(&d, &args.container, &args.image),
    });
    let intent = Intent::new(
        format!(
            "set {} container {} from {from} to {}",
            id(&args.ns, &args.deploy),
            args.container,
            args.image
        ),
        detail,
    );
    Ok(if from == args.image {
        intent.noop()
    } else {
        intent
    })
}

/// `set_image`, second half: `kubectl set image` (strategic merge patch), unless the container
/// already runs the image.
pub async fn apply_set_image(
    client: &kube::Client,
    args: &SetImageArgs,
    intent: &Intent,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    let d = get(client, &args.ns, &args.deploy).await?;
    let containers = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    if container_image(&d, &args.container).as_deref() == Some(args.image.as_str()) {
        answer["changed"] = json!(false);
        return Ok(answer);
    }
    let order: Vec<Value> = containers.iter().map(|c| json!({"name": c.name})).collect();
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": order,
        "containers": [{"image": args.image, "name": args.container}],
    }}}});
    let written = api(client, &args.ns)
        .patch(&args.deploy, &params(), &Patch::Strategic(&patch))
        .await
        .map_err(Error::api(format!(
            "setting image on deployment {}",
            id(&args.ns, &args.deploy)
        )))?;
    if container_image(&written, &args.container).as_deref() != Some(args.image.as_str()) {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "the patch was accepted but container {} of {} does not run {}",
                args.container,
                id(&args.ns, &args.deploy),
                args.image
            ),
        ));
    }
    info!(deployment = %id(&args.ns, &args.deploy), container = %args.container, image = %args.image, "image set");
    answer["changed"] = json!(true);
    Ok(answer)
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// A replica count from a script, refused unless it fits.
fn replica_count(replicas: i64) -> Result<i32, Error> {
    i32::try_from(replicas)
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| Error::InvalidValue {
            action: "scale",
            param: "replicas",
            reason: format!("{replicas} is not a replica count (0..=2147483647)"),
        })
}

/// `scale(ns, deploy, replicas)` / `scale_to_zero(ns, deploy)`, first half.
pub async fn plan_scale(
    client: &kube::Client,
    ns: &str,
    name: &str,
    to: i32,
) -> Result<Intent, Error> {
    let d = get(client, ns, name).await?;
    let from = replicas_of(&d);
    let intent = Intent::new(
        format!("scale {} from {from} to {to} replicas", id(ns, name)),
        json!({
            "deployment": id(ns, name),
            "from_replicas": from,
            "to_replicas": to,
            // scale_to_zero's names, so its answer keeps its shape
            "previous_replicas": from,
            "replicas": to,
        }),
    );
    Ok(if from == to { intent.noop() } else { intent })
}

/// `scale`, second half: `kubectl scale` (merge patch on the scale subresource) unless the
/// count is already set; confirmed by the scale subresource's answer.
pub async fn apply_scale(
    client: &kube::Client,
    ns: &str,
    name: &str,
    intent: &Intent,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    let to: i32 = intent.field("to_replicas").map_err(Error::from_action)?;
    let d = get(client, ns, name).await?;
    if replicas_of(&d) == to {
        answer["changed"] = json!(false);
        return Ok(answer);
    }
    let scale = api(client, ns)
        .patch_scale(
            name,
            &params(),
            &Patch::Merge(json!({"spec": {"replicas": to}})),
        )
        .await
        .map_err(Error::api(format!("scaling deployment {}", id(ns, name))))?;
    let now = scale.spec.and_then(|s| s.replicas);
    if now != Some(to) {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "scaled {} to {to}, but its scale reads {now:?}",
                id(ns, name)
            ),
        ));
    }
    info!(deployment = %id(ns, name), to, "scaled");
    answer["changed"] = json!(true);
    Ok(answer)
}

/// `scale`'s replica count from its arguments.
pub fn scale_target(args: &ScaleArgs) -> Result<i32, Error> {
    replica_count(args.replicas)
}

/// `pause`/`resume`, first half: kubectl refuses to pause a paused Deployment (and to resume
/// one that is not paused), and so does a fresh plan.
pub async fn plan_paused(
    client: &kube::Client,
    args: &DeployArgs,
    pause: bool,
) -> Result<Intent, Error> {
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
    Ok(Intent::new(
        format!(
            "{} {}",
            if pause { "pause" } else { "resume" },
            id(&args.ns, &args.deploy)
        ),
        json!({"deployment": id(&args.ns, &args.deploy), "paused": pause}),
    ))
}

/// `pause`/`resume`, second half; a Deployment already in that state is done.
pub async fn apply_paused(
    client: &kube::Client,
    args: &DeployArgs,
    intent: &Intent,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    let pause: bool = intent.field("paused").map_err(Error::from_action)?;
    let d = get(client, &args.ns, &args.deploy).await?;
    if (d.spec.as_ref().and_then(|s| s.paused) == Some(true)) == pause {
        answer["changed"] = json!(false);
        return Ok(answer);
    }
    // kubectl sends `null` to resume: the field is removed, not set to false.
    let value = if pause { json!(true) } else { Value::Null };
    let written = api(client, &args.ns)
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
    if (written.spec.as_ref().and_then(|s| s.paused) == Some(true)) != pause {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "the patch was accepted but {} is not {}",
                id(&args.ns, &args.deploy),
                if pause { "paused" } else { "resumed" }
            ),
        ));
    }
    info!(deployment = %id(&args.ns, &args.deploy), paused = pause, "pause changed");
    answer["changed"] = json!(true);
    Ok(answer)
}

/// RFC 3339 in UTC with seconds precision, as kubectl stamps `restartedAt`.
fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The template's `restartedAt` annotation.
fn restarted_at(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(rollout::RESTARTED_AT)
        .cloned()
}

/// `restart(ns, deploy)`, first half: the stamp is decided here, once, so a retry or a resume
/// finds its own stamp and does not restart the pods a second time.
pub async fn plan_restart(client: &kube::Client, args: &DeployArgs) -> Result<Intent, Error> {
    let d = get(client, &args.ns, &args.deploy).await?;
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        return Err(Error::refused(
            ErrorKind::Permanent,
            "can't restart paused deployment (run rollout resume first)",
        ));
    }
    let at = now_rfc3339();
    Ok(Intent::new(
        format!(
            "restart the pods of {} (restartedAt {at})",
            id(&args.ns, &args.deploy)
        ),
        json!({"deployment": id(&args.ns, &args.deploy), "restarted_at": at}),
    ))
}

/// `restart`, second half: `kubectl rollout restart` stamps the template's `restartedAt`,
/// unless it already carries this intent's stamp.
pub async fn apply_restart(
    client: &kube::Client,
    args: &DeployArgs,
    intent: &Intent,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    let at: String = intent.field("restarted_at").map_err(Error::from_action)?;
    let d = get(client, &args.ns, &args.deploy).await?;
    if restarted_at(&d).as_deref() == Some(at.as_str()) {
        answer["changed"] = json!(false);
        return Ok(answer);
    }
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        rollout::RESTARTED_AT: at,
    }}}}});
    let written = api(client, &args.ns)
        .patch(&args.deploy, &params(), &Patch::Strategic(&patch))
        .await
        .map_err(Error::api(format!(
            "restarting deployment {}",
            id(&args.ns, &args.deploy)
        )))?;
    if restarted_at(&written).as_deref() != Some(at.as_str()) {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "the patch was accepted but {} carries no restart stamp {at}",
                id(&args.ns, &args.deploy)
            ),
        ));
    }
    info!(deployment = %id(&args.ns, &args.deploy), "restarted");
    answer["changed"] = json!(true);
    Ok(answer)
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

/// Parses a `wait_rollout` timeout as the engine reads it from the action's
/// [`WaitSpec`](firebreak_connector::WaitSpec) ([`firebreak_connector::parse_duration`]:
/// whole seconds, or a number with an `s`, `m` or `h` suffix), [`DEFAULT_WAIT`] when absent;
/// 1 s to [`MAX_WAIT`].
pub fn parse_timeout(v: Option<&Value>) -> Result<Duration, Error> {
    let bad = |reason: String| Error::InvalidValue {
        action: "wait_rollout",
        param: "timeout",
        reason,
    };
    let d = match v {
        None | Some(Value::Null) => DEFAULT_WAIT,
        Some(v) => firebreak_connector::parse_duration(v).map_err(bad)?,
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

/// The snapshot's spec, after the checks every restore makes.
fn restorable(args: &RestoreArgs) -> Result<DeploymentSpec, Error> {
    let snap = &args.snapshot;
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
    serde_json::from_value(snap.spec.clone()).map_err(|e| Error::InvalidValue {
        action: "restore",
        param: "snapshot",
        reason: format!("spec is not a Deployment spec: {e}"),
    })
}

/// Whether any string in `v` is the audit journal's redaction marker.
fn holds_redacted(v: &Value) -> bool {
    match v {
        Value::String(s) => s == firebreak_audit::REDACTED,
        Value::Array(items) => items.iter().any(holds_redacted),
        Value::Object(map) => map.values().any(holds_redacted),
        _ => false,
    }
}

/// Puts back, at the same place, every redacted value of `target` from `source`; `false` if
/// one has no counterpart.
fn fill_redacted(target: &mut Value, source: &Value) -> bool {
    match target {
        Value::String(s) if s == firebreak_audit::REDACTED => match source {
            Value::Null => false,
            value => {
                *target = value.clone();
                true
            }
        },
        Value::Array(items) => items.iter_mut().enumerate().all(|(i, item)| {
            !holds_redacted(item) || source.get(i).is_some_and(|s| fill_redacted(item, s))
        }),
        Value::Object(map) => map.iter_mut().all(|(key, item)| {
            !holds_redacted(item) || source.get(key).is_some_and(|s| fill_redacted(item, s))
        }),
        _ => true,
    }
}

/// A snapshot read back from the audit journal (a resumed run replays its `snapshot` step)
/// has its secret values redacted. The cluster still holds them, in the ReplicaSet of the
/// snapshot's revision: they are filled from there, never from the journal. Refused when that
/// ReplicaSet is gone or a redacted value lies outside the pod template.
async fn unredacted(
    client: &kube::Client,
    args: &RestoreArgs,
    d: &Deployment,
) -> Result<RestoreArgs, Error> {
    let snap = &args.snapshot;
    if !holds_redacted(&snap.spec) {
        return Ok(args.clone());
    }
    let owned = owned_replicasets(client, d).await?;
    let template = owned
        .iter()
        .find(|rs| rollout::revision_of(rs.metadata.annotations.as_ref()) == Some(snap.revision))
        .and_then(|rs| rs.spec.as_ref()?.template.as_ref())
        .and_then(|t| serde_json::to_value(t).ok());
    let mut spec = snap.spec.clone();
    let filled = match (&template, spec.get_mut("template")) {
        (Some(source), Some(target)) => fill_redacted(target, source) && !holds_redacted(&spec),
        _ => false,
    };
    if !filled {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "the snapshot of {} holds values the audit journal redacted, and the cluster no                  longer has them (the ReplicaSet of revision {} is gone); not restoring",
                id(&args.ns, &snap.name),
                snap.revision
            ),
        ));
    }
    let mut args = args.clone();
    args.snapshot.spec = spec;
    Ok(args)
}

/// The Deployment the snapshot was taken of, refused when it was recreated since.
async fn snapshot_target(client: &kube::Client, args: &RestoreArgs) -> Result<Deployment, Error> {
    let snap = &args.snapshot;
    let d = get(client, &args.ns, &snap.name).await?;
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
    Ok(d)
}

/// A digest of a Deployment's spec, to tell whether someone changed it.
fn spec_digest(d: &Deployment) -> String {
    rollout::json_digest(&serde_json::to_value(&d.spec).unwrap_or_default())
}

/// `restore(ns, snapshot)`, first half: the snapshot's spec goes back onto the same
/// Deployment; the intent remembers the spec it replaces (by digest).
pub async fn plan_restore(client: &kube::Client, args: &RestoreArgs) -> Result<Intent, Error> {
    restorable(args)?;
    let d = snapshot_target(client, args).await?;
    let args = &unredacted(client, args, &d).await?;
    let snap = &args.snapshot;
    let unchanged = rollout::same_json(
        &serde_json::to_value(&d.spec).unwrap_or_default(),
        &snap.spec,
    );
    let intent = Intent::new(
        format!(
            "restore {} to its snapshot (revision {}: {})",
            id(&args.ns, &snap.name),
            snap.revision,
            snap.images.join(", ")
        ),
        json!({
            "deployment": id(&args.ns, &snap.name),
            "from_images": rollout::deployment_images(&d),
            "to_images": snap.images,
            "to_replicas": snap.replicas,
            "from_spec": spec_digest(&d),
            "unchanged": unchanged,
            "restored": !unchanged,
        }),
    );
    Ok(if unchanged { intent.noop() } else { intent })
}

/// The write half shared by `restore` and `promote`: brings Deployment `ns/name` to a state
/// `holds` accepts by applying `change` to what was just read, with its resourceVersion.
/// Already there: no write (`Ok(false)`). A Deployment that `untouched` says someone changed
/// since the plan is a Conflict, never overwritten; a 409 from a harmless change (the
/// controller moved the status) reads again and retries. The written object must satisfy
/// `holds`, or the write did not take effect. `what` names the change in errors.
async fn write_unless_changed(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    holds: impl Fn(&Deployment) -> bool,
    untouched: impl Fn(&Deployment) -> bool,
    change: impl Fn(&mut Deployment),
) -> Result<bool, Error> {
    for _ in 0..=CONFLICT_RETRIES {
        let d = get(client, ns, name).await?;
        if holds(&d) {
            return Ok(false);
        }
        if !untouched(&d) {
            return Err(Error::refused(
                ErrorKind::Conflict,
                format!(
                    "deployment {} changed since the {what} was planned; not overwriting someone \
                     else's change",
                    id(ns, name)
                ),
            ));
        }
        let mut desired = d;
        change(&mut desired);
        if let Some(written) = replace_once(client, ns, name, desired).await? {
            if !holds(&written) {
                return Err(Error::refused(
                    ErrorKind::Permanent,
                    format!(
                        "the API server accepted the {what} of {} but does not show it",
                        id(ns, name)
                    ),
                ));
            }
            return Ok(true);
        }
    }
    Err(Error::refused(
        ErrorKind::Conflict,
        format!(
            "deployment {} kept changing; gave up after {CONFLICT_RETRIES} attempts",
            id(ns, name)
        ),
    ))
}

/// `restore`, second half: writes the snapshot's spec with the resourceVersion just read,
/// unless the Deployment already has it. On a 409, reads again and writes again only if its
/// spec is still the one the plan saw (the controller moved the status); a spec someone
/// changed meanwhile is a Conflict.
pub async fn apply_restore(
    client: &kube::Client,
    args: &RestoreArgs,
    intent: &Intent,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    if intent.noop {
        answer["changed"] = json!(false);
        return Ok(answer);
    }
    // A recreated Deployment is not the one the snapshot was taken of: refused by name first,
    // then on every read inside the write.
    let d = snapshot_target(client, args).await?;
    let args = &unredacted(client, args, &d).await?;
    let spec = restorable(args)?;
    let from_spec: String = intent.field("from_spec").map_err(Error::from_action)?;
    let (snap, uid) = (&args.snapshot.spec, &args.snapshot.uid);
    let changed = write_unless_changed(
        client,
        &args.ns,
        &args.snapshot.name,
        "restore",
        |d| rollout::same_json(&serde_json::to_value(&d.spec).unwrap_or_default(), snap),
        |d| d.metadata.uid.as_ref() == Some(uid) && spec_digest(d) == from_spec,
        |d| d.spec = Some(spec.clone()),
    )
    .await?;
    if changed {
        info!(deployment = %id(&args.ns, &args.snapshot.name), "restored from snapshot");
    }
    answer["changed"] = json!(changed);
    Ok(answer)
}

/// The stable Deployment's template once the canary is promoted: the canary's template (its
/// containers, volumes, annotations) under the stable template's labels, so the stable
/// selector still matches (what Flagger copies on promotion).
fn promoted_template(
    canary: &Deployment,
    stable: &Deployment,
) -> Result<k8s_openapi::api::core::v1::PodTemplateSpec, Error> {
    let (Some(from), Some(into)) = (template_of(canary), template_of(stable)) else {
        return Err(Error::refused(
            ErrorKind::Permanent,
            "a Deployment without a pod template cannot be promoted",
        ));
    };
    let mut desired = from.clone();
    let labels = into.metadata.as_ref().and_then(|m| m.labels.clone());
    desired.metadata.get_or_insert_with(Default::default).labels = labels;
    Ok(desired)
}

fn template_json(t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> Value {
    serde_json::to_value(t).unwrap_or_default()
}

/// `promote(ns, canary, stable)`, first half: the template the stable Deployment will run
/// (decided here, once, and journaled: a resume applies this template even if the canary
/// changed since), and a digest of the one it replaces.
pub async fn plan_promote(client: &kube::Client, args: &PromoteArgs) -> Result<Intent, Error> {
    if args.canary == args.stable {
        return Err(Error::InvalidValue {
            action: "promote",
            param: "stable",
            reason: "the canary and the stable Deployment are the same".into(),
        });
    }
    let canary = get(client, &args.ns, &args.canary).await?;
    let stable = get(client, &args.ns, &args.stable).await?;
    let desired = promoted_template(&canary, &stable)?;
    let current = template_json(template_of(&stable));
    let to = template_json(Some(&desired));
    let unchanged = rollout::same_json(&current, &to);
    let intent = Intent::new(
        format!(
            "promote {} onto {}: {} -> {}",
            id(&args.ns, &args.canary),
            id(&args.ns, &args.stable),
            rollout::deployment_images(&stable).join(", "),
            rollout::deployment_images(&canary).join(", ")
        ),
        json!({
            "deployment": id(&args.ns, &args.stable),
            "canary": id(&args.ns, &args.canary),
            "from_images": rollout::deployment_images(&stable),
            "to_images": rollout::deployment_images(&canary),
            "from_template": rollout::json_digest(&current),
            "template": to,
        }),
    );
    Ok(if unchanged { intent.noop() } else { intent })
}

/// `promote`, second half: writes the planned template onto the stable Deployment with the
/// resourceVersion just read, unless it already runs it; a template someone else changed since
/// the plan is a Conflict (never overwritten).
pub async fn apply_promote(
    client: &kube::Client,
    args: &PromoteArgs,
    intent: &Intent,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    answer.as_object_mut().map(|a| a.remove("template"));
    let to: Value = intent.field("template").map_err(Error::from_action)?;
    let template: k8s_openapi::api::core::v1::PodTemplateSpec = serde_json::from_value(to.clone())
        .map_err(|e| Error::refused(ErrorKind::Permanent, format!("the planned template: {e}")))?;
    let from: String = intent.field("from_template").map_err(Error::from_action)?;
    let changed = write_unless_changed(
        client,
        &args.ns,
        &args.stable,
        "promotion",
        |d| rollout::same_json(&template_json(template_of(d)), &to),
        |d| rollout::json_digest(&template_json(template_of(d))) == from,
        |d| {
            if let Some(spec) = d.spec.as_mut() {
                spec.template = template.clone();
            }
        },
    )
    .await?;
    if changed {
        info!(deployment = %id(&args.ns, &args.stable), canary = %args.canary, "canary promoted");
    }
    answer["changed"] = json!(changed);
    Ok(answer)
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
