//! Isolation actions: `quarantine_pod` (one pod, by name), `quarantine` (the pods a selector
//! picks) and `release` (a deny-all NetworkPolicy and its label), and `cordon`/`uncordon` (a
//! node's `spec.unschedulable`, as kubectl does it).
//!
//! Start at [`plan_quarantine_pod`]: a pod carries no label of its own, so the action labels
//! it `firebreak.dev/quarantine=<pod>` and creates the policy selecting that label. Every
//! isolation is checked before it is reported: the policy exists, is ours, and selects the
//! intended pods (at least one) — a quarantine that isolates nothing is an error, not a
//! success. The policy's shape is built by the pure [`quarantine_policy`] from a selector
//! parsed by [`parse_selector`]; its name is derived from the selector so that quarantining
//! the same pods twice finds the existing policy.

use std::collections::BTreeMap;

use firebreak_connector::{ActionContext, ErrorKind, Intent};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::Error;

/// Label marking objects firebreak created.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label carrying the run that created an object.
pub const RUN_ID: &str = "firebreak.dev/run-id";
/// Annotation keeping the selector as the script gave it.
pub const SELECTOR_ANNOTATION: &str = "firebreak.dev/pod-selector";
/// Annotation naming the pod a `quarantine_pod` policy isolates.
pub const POD_ANNOTATION: &str = "firebreak.dev/quarantined-pod";
/// The label `quarantine_pod` puts on the pod its policy selects.
pub const QUARANTINE_LABEL: &str = "firebreak.dev/quarantine";

/// `quarantine_pod(ns, pod)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantinePodArgs {
    pub ns: String,
    pub pod: String,
}

/// `quarantine(ns, pod_selector)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineArgs {
    pub ns: String,
    pub pod_selector: String,
}

/// `release(ns, name)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseArgs {
    pub ns: String,
    pub name: String,
}

/// `cordon(node)` / `uncordon(node)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeArgs {
    pub node: String,
}

fn bad_selector(reason: String) -> Error {
    Error::InvalidValue {
        action: "quarantine",
        param: "pod_selector",
        reason,
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Parses a label selector string (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
/// `a`, `!a`, comma-separated) into a `LabelSelector`. An empty selector is refused: it
/// would select every pod in the namespace.
pub fn parse_selector(s: &str) -> Result<LabelSelector, Error> {
    if s.trim().is_empty() {
        return Err(bad_selector(
            "the selector is empty; it would select every pod in the namespace".into(),
        ));
    }
    let mut labels = BTreeMap::new();
    let mut exprs = Vec::new();
    for term in split_terms(s) {
        let term = term.trim();
        let req = |key: &str, op: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
            key: key.trim().to_owned(),
            operator: op.to_owned(),
            values,
        };
        let set_values = |rest: &str| -> Result<Vec<String>, Error> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad_selector(format!("{term:?}: expected a (list) of values")))?;
            let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
            if vals.iter().any(|v| v.is_empty() || !valid_value(v)) {
                return Err(bad_selector(format!("{term:?}: invalid value in the list")));
            }
            Ok(vals)
        };
        let (key, r) = if let Some((k, v)) = term.split_once("!=") {
            (k, Some(req(k, "NotIn", Some(vec![v.trim().to_owned()]))))
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            let v = v.trim();
            if !valid_value(v) {
                return Err(bad_selector(format!("{term:?}: invalid label value {v:?}")));
            }
            if labels.insert(k.trim().to_owned(), v.to_owned()).is_some() {
                return Err(bad_selector(format!("{term:?}: label {k:?} given twice")));
            }
            // Equality terms go to matchLabels, not to an expression.
            (k, None)
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            (k, Some(req(k, "NotIn", Some(set_values(rest)?))))
        } else if let Some((k, rest)) = term.split_once(" in ") {
            (k, Some(req(k, "In", Some(set_values(rest)?))))
        } else if let Some(k) = term.strip_prefix('!') {
            (k, Some(req(k, "DoesNotExist", None)))
        } else {
            (term, Some(req(term, "Exists", None)))
        };
        if !valid_key(key.trim()) {
            return Err(bad_selector(format!("{term:?}: invalid label key {key:?}")));
        }
        exprs.extend(r);
    }
    Ok(LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    })
}

/// The policy name for a selector: `firebreak-quarantine-` and 10 hex digits of its hash,
/// so the same pods always get the same policy.
pub fn policy_name(selector: &LabelSelector) -> String {
    let canonical = serde_json::to_string(selector).unwrap_or_default();
    let digest = Sha256::digest(canonical.as_bytes());
    let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("firebreak-quarantine-{hex}")
}

/// The deny-all NetworkPolicy: it selects only the given pods, lists both policy types and
/// no rules, so no traffic goes in or out of them.
pub fn quarantine_policy(
    ns: &str,
    selector_text: &str,
    selector: LabelSelector,
    run_id: &str,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(policy_name(&selector)),
            namespace: Some(ns.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.to_owned(), "firebreak".to_owned()),
                (RUN_ID.to_owned(), run_id.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                SELECTOR_ANNOTATION.to_owned(),
                selector_text.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: None,
            egress: None,
        }),
    }
}

fn is_ours(np: &NetworkPolicy) -> bool {
    np.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == "firebreak")
}

fn pods_api(client: &kube::Client, ns: &str) -> Api<Pod> {
    Api::namespaced(client.clone(), ns)
}

fn policies_api(client: &kube::Client, ns: &str) -> Api<NetworkPolicy> {
    Api::namespaced(client.clone(), ns)
}

/// The names of the pods `selector` picks, sorted.
async fn selected_pods(
    client: &kube::Client,
    ns: &str,
    selector: &LabelSelector,
) -> Result<Vec<String>, Error> {
    let text = crate::deploy::selector_string(selector);
    let list = pods_api(client, ns)
        .list(&kube::api::ListParams::default().labels(&text))
        .await
        .map_err(Error::api(format!("listing pods {ns}/{text}")))?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// The label value marking one pod: its name, or a digest when the name is longer than a
/// label value may be.
pub fn quarantine_value(pod: &str) -> String {
    if pod.len() <= 63
        && pod
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return pod.to_owned();
    }
    let digest = Sha256::digest(pod.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Creates the policy unless it exists (ours). Returns whether it was created now.
async fn ensure_policy(
    client: &kube::Client,
    ns: &str,
    policy: &NetworkPolicy,
) -> Result<bool, Error> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let api = policies_api(client, ns);
    let get = |api: Api<NetworkPolicy>, name: String| async move {
        api.get_opt(&name)
            .await
            .map_err(Error::api(format!("getting networkpolicy {ns}/{name}")))
    };
    if let Some(np) = get(api.clone(), name.clone()).await? {
        existing_policy(&np, ns, &name)?;
        return Ok(false);
    }
    let pp = PostParams {
        field_manager: Some(crate::FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.create(&pp, policy).await {
        Ok(_) => Ok(true),
        // Created by a concurrent run between our get and create: that one is ours as well.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let np = get(api, name.clone()).await?.ok_or_else(|| {
                Error::refused(
                    ErrorKind::Transient,
                    format!("networkpolicy {ns}/{name} vanished"),
                )
            })?;
            existing_policy(&np, ns, &name)?;
            Ok(false)
        }
        Err(e) => Err(Error::api(format!("creating networkpolicy {ns}/{name}"))(e)),
    }
}

/// The isolation check: the policy exists, is ours, selects with `selector`, and the pods it
/// selects are exactly `expected` (when given) and at least one.
async fn check_isolation(
    client: &kube::Client,
    ns: &str,
    name: &str,
    selector: &LabelSelector,
    expected: Option<&[String]>,
) -> Result<Vec<String>, Error> {
    let np = policies_api(client, ns)
        .get_opt(name)
        .await
        .map_err(Error::api(format!("getting networkpolicy {ns}/{name}")))?
        .ok_or_else(|| {
            Error::refused(
                ErrorKind::Permanent,
                format!("isolation not in effect: networkpolicy {ns}/{name} does not exist"),
            )
        })?;
    existing_policy(&np, ns, name)?;
    let spec = np.spec.unwrap_or_default();
    let denies_all = spec
        .policy_types
        .as_ref()
        .is_some_and(|t| t.iter().any(|x| x == "Ingress") && t.iter().any(|x| x == "Egress"))
        && spec.ingress.as_ref().is_none_or(Vec::is_empty)
        && spec.egress.as_ref().is_none_or(Vec::is_empty);
    if spec.pod_selector.as_ref() != Some(selector) || !denies_all {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "isolation not in effect: networkpolicy {ns}/{name} is not the deny-all policy for {}",
                crate::deploy::selector_string(selector)
            ),
        ));
    }
    let pods = selected_pods(client, ns, selector).await?;
    if pods.is_empty() {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "isolation not in effect: networkpolicy {ns}/{name} selects no pod ({})",
                crate::deploy::selector_string(selector)
            ),
        ));
    }
    if let Some(expected) = expected
        && pods != expected
    {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "isolation not as intended: networkpolicy {ns}/{name} selects [{}], not [{}]",
                pods.join(", "),
                expected.join(", ")
            ),
        ));
    }
    Ok(pods)
}

/// `quarantine_pod(ns, pod)`, first half: which pod (by uid), the label it will carry and
/// the policy that will select exactly it.
pub async fn plan_quarantine_pod(
    client: &kube::Client,
    args: &QuarantinePodArgs,
    cx: &ActionContext,
) -> Result<Intent, Error> {
    let pod = pods_api(client, &args.ns)
        .get(&args.pod)
        .await
        .map_err(Error::api(format!("getting pod {}/{}", args.ns, args.pod)))?;
    let value = quarantine_value(&args.pod);
    let selector_text = format!("{QUARANTINE_LABEL}={value}");
    let selector = parse_selector(&selector_text)?;
    let name = policy_name(&selector);
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(QUARANTINE_LABEL))
        .is_some_and(|v| *v == value);
    let exists = policies_api(client, &args.ns)
        .get_opt(&name)
        .await
        .map_err(Error::api(format!(
            "getting networkpolicy {}/{name}",
            args.ns
        )))?;
    if let Some(np) = &exists {
        existing_policy(np, &args.ns, &name)?;
    }
    let intent = Intent::new(
        format!(
            "cut pod {}/{} off the network: label it {selector_text} and deny all its traffic with networkpolicy {name}",
            args.ns, args.pod
        ),
        json!({
            "name": name,
            "namespace": args.ns,
            "pod": args.pod,
            "pod_uid": pod.metadata.uid,
            "pod_selector": selector_text,
            "isolated_pods": [args.pod],
            "run_id": cx.run_id,
        }),
    );
    Ok(if labelled && exists.is_some() {
        intent.noop()
    } else {
        intent
    })
}

/// `quarantine_pod`, second half: labels the pod (the same pod: checked by uid), creates the
/// policy, and answers only once the policy selects exactly that pod.
pub async fn apply_quarantine_pod(
    client: &kube::Client,
    args: &QuarantinePodArgs,
    intent: &Intent,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    let uid: Option<String> = intent.field("pod_uid").map_err(Error::from_action)?;
    let selector_text: String = intent.field("pod_selector").map_err(Error::from_action)?;
    let selector = parse_selector(&selector_text)?;
    let value = quarantine_value(&args.pod);
    let pods = pods_api(client, &args.ns);
    let pod = pods
        .get(&args.pod)
        .await
        .map_err(Error::api(format!("getting pod {}/{}", args.ns, args.pod)))?;
    if pod.metadata.uid != uid {
        return Err(Error::refused(
            ErrorKind::Conflict,
            format!(
                "pod {}/{} was replaced since the quarantine was planned (uid {:?}, planned {:?}); not isolating a different pod",
                args.ns, args.pod, pod.metadata.uid, uid
            ),
        ));
    }
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(QUARANTINE_LABEL))
        .is_some_and(|v| *v == value);
    if !labelled {
        let pp = PatchParams {
            field_manager: Some(crate::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        pods.patch(
            &args.pod,
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {QUARANTINE_LABEL: value}}})),
        )
        .await
        .map_err(Error::api(format!(
            "labelling pod {}/{}",
            args.ns, args.pod
        )))?;
    }
    let mut policy = quarantine_policy(&args.ns, &selector_text, selector.clone(), &cx.run_id);
    policy
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(POD_ANNOTATION.to_owned(), args.pod.clone());
    let name = policy.metadata.name.clone().unwrap_or_default();
    let created = ensure_policy(client, &args.ns, &policy).await?;
    let isolated = check_isolation(
        client,
        &args.ns,
        &name,
        &selector,
        Some(std::slice::from_ref(&args.pod)),
    )
    .await?;
    info!(run_id = %cx.run_id, namespace = %args.ns, pod = %args.pod, policy = %name, "pod quarantined");
    answer["created"] = json!(created);
    answer["isolated_pods"] = json!(isolated);
    answer["changed"] = json!(created || !labelled);
    Ok(answer)
}

/// `quarantine(ns, pod_selector)`, first half: the pods the selector picks now (a selector
/// that picks none is refused: it would isolate nothing) and the policy's name.
pub async fn plan_quarantine(
    client: &kube::Client,
    args: &QuarantineArgs,
    cx: &ActionContext,
) -> Result<Intent, Error> {
    let selector = parse_selector(&args.pod_selector)?;
    let name = policy_name(&selector);
    let pods = selected_pods(client, &args.ns, &selector).await?;
    if pods.is_empty() {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "selector {:?} picks no pod in namespace {}; a quarantine would isolate nothing",
                args.pod_selector, args.ns
            ),
        ));
    }
    let exists = policies_api(client, &args.ns)
        .get_opt(&name)
        .await
        .map_err(Error::api(format!(
            "getting networkpolicy {}/{name}",
            args.ns
        )))?;
    if let Some(np) = &exists {
        existing_policy(np, &args.ns, &name)?;
    }
    let intent = Intent::new(
        format!(
            "deny all traffic of {} pod(s) in {} ({}) with networkpolicy {name}",
            pods.len(),
            args.ns,
            pods.join(", ")
        ),
        json!({
            "name": name,
            "namespace": args.ns,
            "pod_selector": args.pod_selector,
            "isolated_pods": pods,
            "run_id": cx.run_id,
        }),
    );
    Ok(if exists.is_some() {
        intent.noop()
    } else {
        intent
    })
}

/// `quarantine`, second half: creates the deny-all policy (or finds ours) and answers only
/// once it selects at least one pod.
pub async fn apply_quarantine(
    client: &kube::Client,
    args: &QuarantineArgs,
    intent: &Intent,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    let selector = parse_selector(&args.pod_selector)?;
    let policy = quarantine_policy(&args.ns, &args.pod_selector, selector.clone(), &cx.run_id);
    let name = policy.metadata.name.clone().unwrap_or_default();
    let created = ensure_policy(client, &args.ns, &policy).await?;
    let isolated = check_isolation(client, &args.ns, &name, &selector, None).await?;
    if created {
        info!(run_id = %cx.run_id, namespace = %args.ns, policy = %name, selector = %args.pod_selector, "pods quarantined");
    }
    answer["created"] = json!(created);
    answer["isolated_pods"] = json!(isolated);
    answer["changed"] = json!(created);
    Ok(answer)
}

/// The run id of an existing quarantine policy, or a refusal when someone else owns the name.
fn existing_policy(np: &NetworkPolicy, ns: &str, name: &str) -> Result<String, Error> {
    if !is_ours(np) {
        return Err(Error::refused(
            ErrorKind::Conflict,
            format!("networkpolicy {ns}/{name} exists and was not created by firebreak"),
        ));
    }
    Ok(np
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(RUN_ID))
        .cloned()
        .unwrap_or_default())
}

/// `release(ns, name)`, first half: a policy already gone is a no-op (cleanup steps may run
/// twice); one firebreak did not create is refused.
pub async fn plan_release(client: &kube::Client, args: &ReleaseArgs) -> Result<Intent, Error> {
    let what = format!("networkpolicy {}/{}", args.ns, args.name);
    let np = policies_api(client, &args.ns)
        .get_opt(&args.name)
        .await
        .map_err(Error::api(format!("getting {what}")))?;
    let Some(np) = np else {
        return Ok(Intent::new(
            format!("nothing to release: {what} does not exist"),
            json!({"name": args.name, "namespace": args.ns, "released": false, "reason": "not found"}),
        )
        .noop());
    };
    if !is_ours(&np) {
        return Err(Error::refused(
            ErrorKind::Denied,
            format!("{what} was not created by firebreak; not deleting it"),
        ));
    }
    let pod = np
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_ANNOTATION))
        .cloned();
    Ok(Intent::new(
        format!(
            "delete {what}{}",
            pod.as_deref()
                .map(|p| format!(" and the quarantine label of pod {p}"))
                .unwrap_or_default()
        ),
        json!({"name": args.name, "namespace": args.ns, "released": true, "pod": pod}),
    ))
}

/// `release`, second half: deletes the policy (gone already is fine) and takes the quarantine
/// label off the pod it isolated; answers once the policy is gone.
pub async fn apply_release(
    client: &kube::Client,
    args: &ReleaseArgs,
    intent: &Intent,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    if intent.noop {
        answer["changed"] = json!(false);
        return Ok(answer);
    }
    let what = format!("networkpolicy {}/{}", args.ns, args.name);
    let api = policies_api(client, &args.ns);
    let deleted = match api.delete(&args.name, &DeleteParams::background()).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(e) => return Err(Error::api(format!("deleting {what}"))(e)),
    };
    let pod: Option<String> = intent.field("pod").map_err(Error::from_action)?;
    if let Some(pod) = pod {
        let pp = PatchParams {
            field_manager: Some(crate::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match pods_api(client, &args.ns)
            .patch(
                &pod,
                &pp,
                &Patch::Merge(json!({"metadata": {"labels": {QUARANTINE_LABEL: null}}})),
            )
            .await
        {
            Ok(_) => {}
            // The pod is gone: nothing left to unlabel.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::api(format!("unlabelling pod {}/{pod}", args.ns))(e)),
        }
    }
    if api
        .get_opt(&args.name)
        .await
        .map_err(Error::api(format!("getting {what}")))?
        .is_some_and(|np| np.metadata.deletion_timestamp.is_none())
    {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!("{what} was deleted but is still there"),
        ));
    }
    info!(run_id = %cx.run_id, policy = %what, "quarantine released");
    answer["changed"] = json!(deleted);
    Ok(answer)
}

/// `cordon(node)` / `uncordon(node)`, first half.
pub async fn plan_cordon(
    client: &kube::Client,
    args: &NodeArgs,
    cordon: bool,
) -> Result<Intent, Error> {
    let node = Api::<Node>::all(client.clone())
        .get(&args.node)
        .await
        .map_err(Error::api(format!("getting node {}", args.node)))?;
    let current = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let verb = if cordon { "cordoned" } else { "uncordoned" };
    let intent = Intent::new(
        if current == cordon {
            format!("node/{} already {verb}", args.node)
        } else {
            format!(
                "mark node/{} {}",
                args.node,
                if cordon {
                    "unschedulable"
                } else {
                    "schedulable"
                }
            )
        },
        json!({
            "node": args.node,
            "unschedulable": cordon,
            "message": if current == cordon {
                format!("node/{} already {verb}", args.node)
            } else {
                format!("node/{} {verb}", args.node)
            },
        }),
    );
    Ok(if current == cordon {
        intent.noop()
    } else {
        intent
    })
}

/// `cordon`/`uncordon`, second half: as kubectl, patches `spec.unschedulable` only when it
/// differs (`true`, or `null` to uncordon).
pub async fn apply_cordon(
    client: &kube::Client,
    args: &NodeArgs,
    intent: &Intent,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let mut answer = Value::Object(intent.detail.clone());
    let cordon: bool = intent.field("unschedulable").map_err(Error::from_action)?;
    let api: Api<Node> = Api::all(client.clone());
    let node = api
        .get(&args.node)
        .await
        .map_err(Error::api(format!("getting node {}", args.node)))?;
    let unschedulable = |n: &Node| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if unschedulable(&node) == cordon {
        answer["changed"] = json!(false);
        return Ok(answer);
    }
    let value = if cordon { json!(true) } else { Value::Null };
    let pp = PatchParams {
        field_manager: Some(crate::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let written = api
        .patch(
            &args.node,
            &pp,
            &Patch::Strategic(json!({"spec": {"unschedulable": value}})),
        )
        .await
        .map_err(Error::api(format!("patching node {}", args.node)))?;
    if unschedulable(&written) != cordon {
        return Err(Error::refused(
            ErrorKind::Permanent,
            format!(
                "the patch was accepted but node/{} is not {}",
                args.node,
                if cordon { "cordoned" } else { "uncordoned" }
            ),
        ));
    }
    info!(run_id = %cx.run_id, node = %args.node, cordon, "node schedulability changed");
    answer["changed"] = json!(true);
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_equality_and_set_terms() {
        let s = parse_selector("app=web, tier==api,env in (a, b),x notin (c),y,!z,k!=v").unwrap();
        let labels = s.match_labels.unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["app"], "web");
        assert_eq!(labels["tier"], "api");
        let ex = s.match_expressions.unwrap();
        let shape: Vec<(String, String, Option<Vec<String>>)> = ex
            .into_iter()
            .map(|r| (r.key, r.operator, r.values))
            .collect();
        assert_eq!(
            shape,
            vec![
                (
                    "env".into(),
                    "In".into(),
                    Some(vec!["a".into(), "b".into()])
                ),
                ("x".into(), "NotIn".into(), Some(vec!["c".into()])),
                ("y".into(), "Exists".into(), None),
                ("z".into(), "DoesNotExist".into(), None),
                ("k".into(), "NotIn".into(), Some(vec!["v".into()])),
            ]
        );
    }

    #[test]
    fn bad_selectors_are_refused() {
        for bad in [
            "",
            "   ",
            "app=we b",
            "=web",
            "env in a,b",
            "a b c",
            "app=x,app=y",
            "env in (a,,b)",
        ] {
            let e = parse_selector(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Permanent, "{bad:?}");
            assert!(e.to_string().contains("pod_selector"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn policy_denies_all_traffic_for_the_selected_pods_only() {
        let sel = parse_selector("app=web,pod=bad").unwrap();
        let np = quarantine_policy("prod", "app=web,pod=bad", sel.clone(), "run-1");
        let v = serde_json::to_value(&np).unwrap();
        assert_eq!(v["metadata"]["namespace"], "prod");
        assert_eq!(v["metadata"]["labels"][MANAGED_BY], "firebreak");
        assert_eq!(v["metadata"]["labels"][RUN_ID], "run-1");
        assert_eq!(
            v["spec"]["podSelector"],
            json!({"matchLabels": {"app": "web", "pod": "bad"}})
        );
        assert_eq!(v["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert!(v["spec"].get("ingress").is_none() && v["spec"].get("egress").is_none());
        // Same pods, same name, whatever the run; different pods, different name.
        let again = quarantine_policy("prod", "pod=bad,app=web", sel, "run-2");
        assert_eq!(np.metadata.name, again.metadata.name);
        let other = parse_selector("app=web").unwrap();
        assert_ne!(np.metadata.name, Some(policy_name(&other)));
        assert!(
            np.metadata
                .name
                .unwrap()
                .starts_with("firebreak-quarantine-")
        );
    }
}
