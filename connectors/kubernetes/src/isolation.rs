//! Isolation actions: `quarantine`/`release` (a deny-all NetworkPolicy for selected pods)
//! and `cordon`/`uncordon` (a node's `spec.unschedulable`, as kubectl does it).
//!
//! Start at [`quarantine`]. The policy's shape is built by the pure [`quarantine_policy`]
//! from a selector parsed by [`parse_selector`]; its name is derived from the selector so
//! that quarantining the same pods twice finds the existing policy.

use std::collections::BTreeMap;

use firebreak_connector::{ActionContext, ErrorKind};
use k8s_openapi::api::core::v1::Node;
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

/// `quarantine(ns, pod_selector)`: creates the deny-all policy, or finds the one already
/// there. Returns its name, whether it was created now, and the run that created it.
pub async fn quarantine(
    client: &kube::Client,
    args: QuarantineArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let selector = parse_selector(&args.pod_selector)?;
    let policy = quarantine_policy(&args.ns, &args.pod_selector, selector, &cx.run_id);
    let name = policy.metadata.name.clone().unwrap_or_default();
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &args.ns);
    let out = |created: bool, run_id: &str, dry_run: bool| {
        json!({
            "name": name,
            "namespace": args.ns,
            "pod_selector": args.pod_selector,
            "created": created,
            "run_id": run_id,
            "dry_run": dry_run,
        })
    };
    let existing = api.get_opt(&name).await.map_err(Error::api(format!(
        "getting networkpolicy {}/{name}",
        args.ns
    )))?;
    if let Some(np) = existing {
        return existing_policy(&np, &args.ns, &name).map(|run| out(false, &run, cx.dry_run));
    }
    if cx.dry_run {
        return Ok(out(false, &cx.run_id, true));
    }
    let pp = PostParams {
        field_manager: Some(crate::FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.create(&pp, &policy).await {
        Ok(_) => {
            info!(run_id = %cx.run_id, namespace = %args.ns, policy = %name, selector = %args.pod_selector, "pods quarantined");
            Ok(out(true, &cx.run_id, false))
        }
        // Created by a concurrent run between our get and create: that one is ours as well.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let np = api.get(&name).await.map_err(Error::api(format!(
                "getting networkpolicy {}/{name}",
                args.ns
            )))?;
            existing_policy(&np, &args.ns, &name).map(|run| out(false, &run, false))
        }
        Err(e) => Err(Error::api(format!(
            "creating networkpolicy {}/{name}",
            args.ns
        ))(e)),
    }
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

/// `release(ns, name)`: deletes a quarantine policy firebreak created. A policy that is
/// already gone is reported, not an error, so cleanup steps can run twice; a policy
/// firebreak did not create is refused.
pub async fn release(
    client: &kube::Client,
    args: ReleaseArgs,
    cx: &ActionContext,
) -> Result<Value, Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &args.ns);
    let what = format!("networkpolicy {}/{}", args.ns, args.name);
    let Some(np) = api
        .get_opt(&args.name)
        .await
        .map_err(Error::api(format!("getting {what}")))?
    else {
        return Ok(
            json!({"name": args.name, "namespace": args.ns, "released": false,
                         "reason": "not found", "dry_run": cx.dry_run}),
        );
    };
    if !is_ours(&np) {
        return Err(Error::refused(
            ErrorKind::Denied,
            format!("{what} was not created by firebreak; not deleting it"),
        ));
    }
    if !cx.dry_run {
        match api.delete(&args.name, &DeleteParams::background()).await {
            Ok(_) => info!(run_id = %cx.run_id, policy = %what, "quarantine released"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::api(format!("deleting {what}"))(e)),
        }
    }
    Ok(
        json!({"name": args.name, "namespace": args.ns, "released": !cx.dry_run,
              "dry_run": cx.dry_run}),
    )
}

/// `cordon(node)` (`cordon = true`) / `uncordon(node)`: as kubectl, reads the node and
/// patches `spec.unschedulable` only when it differs (`true`, or `null` to uncordon).
pub async fn cordon(
    client: &kube::Client,
    args: NodeArgs,
    cx: &ActionContext,
    cordon: bool,
) -> Result<Value, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let node = api
        .get(&args.node)
        .await
        .map_err(Error::api(format!("getting node {}", args.node)))?;
    let current = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let verb = if cordon { "cordoned" } else { "uncordoned" };
    let changed = current != cordon;
    if changed && !cx.dry_run {
        let value = if cordon { json!(true) } else { Value::Null };
        let pp = PatchParams {
            field_manager: Some(crate::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        api.patch(
            &args.node,
            &pp,
            &Patch::Strategic(json!({"spec": {"unschedulable": value}})),
        )
        .await
        .map_err(Error::api(format!("patching node {}", args.node)))?;
        info!(run_id = %cx.run_id, node = %args.node, verb, "node schedulability changed");
    }
    let message = if changed {
        format!("node/{} {verb}", args.node)
    } else {
        format!("node/{} already {verb}", args.node)
    };
    Ok(json!({
        "node": args.node,
        "unschedulable": if cx.dry_run { current } else { cordon },
        "changed": changed && !cx.dry_run,
        "message": message,
        "dry_run": cx.dry_run,
    }))
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
