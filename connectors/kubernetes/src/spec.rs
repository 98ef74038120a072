//! The self-description of every `k8s::` action (parameters, effect, namespace parameter,
//! RBAC rules, example) and the least-privilege RBAC derived from it.
//!
//! Start at [`actions`]; [`rbac_rules`] merges the rules of all actions and [`rbac_yaml`]
//! renders them as a `Role` (namespaced resources) plus a `ClusterRole` (nodes).

use firebreak_connector::ErrorKind::{Conflict, Denied, NotFound, Permanent, Timeout};
use firebreak_connector::{
    ActionSpec, Effect, ErrorDoc, ErrorKind, ParamSpec, ParamType, RbacRule, WaitSpec,
};

const APPS: &[&str] = &["apps"];
const CORE: &[&str] = &[""];
const NETWORKING: &[&str] = &["networking.k8s.io"];

fn rule(
    api_groups: &'static [&'static str],
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
) -> RbacRule {
    RbacRule {
        api_groups,
        resources,
        verbs,
    }
}

const NO_DEPLOYMENT: ErrorDoc = e(NotFound, "the Deployment does not exist");
const NO_NODE: ErrorDoc = e(NotFound, "the node does not exist");
/// A write guarded by the resourceVersion it read met a 409 on every attempt, though each
/// re-read found the change harmless (see `deploy::CONFLICT_RETRIES`).
const KEPT_CHANGING: ErrorDoc = e(
    Conflict,
    "the Deployment kept changing: each re-read found a harmless change, and each write met a \
     409 again, up to the retry limit",
);

const fn e(kind: ErrorKind, when: &'static str) -> ErrorDoc {
    ErrorDoc::new(kind, when)
}

fn ns() -> ParamSpec {
    ParamSpec::required("ns", ParamType::String, "namespace of the object")
}

fn deploy() -> ParamSpec {
    ParamSpec::required("deploy", ParamType::String, "name of the Deployment")
}

/// Every action of the Kubernetes connector, in the order `firebreak connectors` lists them.
pub fn actions() -> Vec<ActionSpec> {
    use Effect::{Mutate, Observe};
    let deploy_get = || rule(APPS, &["deployments"], &["get"]);
    let deploy_patch = || rule(APPS, &["deployments"], &["get", "patch"]);
    let rs_list = || rule(APPS, &["replicasets"], &["list"]);
    let scale = || rule(APPS, &["deployments/scale"], &["get", "patch"]);
    vec![
        ActionSpec {
            name: "rollback",
            doc: "Roll a Deployment back to its previous revision (or the given one), exactly as \
                  `kubectl rollout undo`: the old ReplicaSet's template is written back with a \
                  resourceVersion precondition. A change that leaves the template alone (an \
                  autoscaler's replicas) is written through; a changed template is a conflict. \
                  With `from`, nothing happens unless the Deployment still runs what `from` \
                  names, so a second run for the same incident never rolls the rollback back.",
            effect: Mutate,
            params: vec![
                ns(),
                deploy(),
                ParamSpec::optional(
                    "revision",
                    ParamType::Int,
                    "revision to roll back to; 0 or absent = previous",
                ),
                ParamSpec::optional(
                    "from",
                    ParamType::String,
                    "what the incident blames: a pod-template-hash, revision number, image or \
                     image tag; roll back only while the Deployment runs it",
                ),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![rule(APPS, &["deployments"], &["get", "update"]), rs_list()],
            errors: vec![
                NO_DEPLOYMENT,
                e(
                    Permanent,
                    "no rollout history: the Deployment has no earlier revision to roll back to",
                ),
                e(
                    Permanent,
                    "`revision` is not in the Deployment's history (or is negative)",
                ),
                e(
                    Permanent,
                    "the Deployment is paused (`kubectl rollout undo` refuses it too; `resume` \
                     first)",
                ),
                e(
                    Conflict,
                    "the Deployment's template changed between plan and write (someone else's \
                     change is never overwritten)",
                ),
                e(
                    Conflict,
                    "the ReplicaSet to roll back to was deleted between plan and write",
                ),
                KEPT_CHANGING,
                e(
                    Permanent,
                    "the API server accepted the write but the Deployment does not carry the \
                     target template",
                ),
            ],
            example: r#"k8s::rollback("ml-serving", "fraud-model")"#,
        },
        ActionSpec {
            name: "set_image",
            doc: "Set one container's image, as `kubectl set image`.",
            effect: Mutate,
            params: vec![
                ns(),
                deploy(),
                ParamSpec::required("container", ParamType::String, "container name"),
                ParamSpec::required("image", ParamType::String, "new image reference"),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_patch()],
            errors: vec![
                e(Permanent, "`image` is empty"),
                NO_DEPLOYMENT,
                e(
                    Permanent,
                    "the Deployment has no container named `container`",
                ),
                e(
                    Permanent,
                    "the API server accepted the patch but the container does not run `image`",
                ),
            ],
            example: r#"k8s::set_image("ml-serving", "fraud-model", "model", "registry/fraud:v1")"#,
        },
        ActionSpec {
            name: "scale",
            doc: "Set the replica count through the scale subresource, as `kubectl scale`.",
            effect: Mutate,
            params: vec![
                ns(),
                deploy(),
                ParamSpec::required("replicas", ParamType::Int, "desired replicas (>= 0)"),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_get(), scale()],
            errors: vec![
                e(Permanent, "`replicas` is negative or above 2147483647"),
                NO_DEPLOYMENT,
                e(
                    Permanent,
                    "the API server accepted the patch but the scale subresource reads another \
                     count",
                ),
            ],
            example: r#"k8s::scale("ml-serving", "fraud-model", 5)"#,
        },
        ActionSpec {
            name: "pause",
            doc: "Pause a Deployment's rollout, as `kubectl rollout pause`.",
            effect: Mutate,
            params: vec![ns(), deploy()],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_patch()],
            errors: vec![
                NO_DEPLOYMENT,
                e(
                    Permanent,
                    "the Deployment is already paused (as `kubectl rollout pause` says)",
                ),
                e(
                    Permanent,
                    "the API server accepted the patch but the Deployment is not paused",
                ),
            ],
            example: r#"k8s::pause("ml-serving", "fraud-model")"#,
        },
        ActionSpec {
            name: "resume",
            doc: "Resume a paused Deployment, as `kubectl rollout resume`.",
            effect: Mutate,
            params: vec![ns(), deploy()],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_patch()],
            errors: vec![
                NO_DEPLOYMENT,
                e(
                    Permanent,
                    "the Deployment is not paused (as `kubectl rollout resume` says)",
                ),
                e(
                    Permanent,
                    "the API server accepted the patch but the Deployment is still paused",
                ),
            ],
            example: r#"k8s::resume("ml-serving", "fraud-model")"#,
        },
        ActionSpec {
            name: "restart",
            doc: "Restart a Deployment's pods by stamping the template, as `kubectl rollout restart`.",
            effect: Mutate,
            params: vec![ns(), deploy()],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_patch()],
            errors: vec![
                NO_DEPLOYMENT,
                e(
                    Permanent,
                    "the Deployment is paused (`resume` it first, as kubectl says)",
                ),
                e(
                    Permanent,
                    "the API server accepted the patch but the template carries no restart stamp",
                ),
            ],
            example: r#"k8s::restart("ml-serving", "fraud-model")"#,
        },
        ActionSpec {
            name: "rollout_history",
            doc: "The Deployment's revisions with change-cause and images, as `kubectl rollout history`.",
            effect: Observe,
            params: vec![ns(), deploy()],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_get(), rs_list()],
            errors: vec![NO_DEPLOYMENT],
            example: r#"k8s::rollout_history("ml-serving", "fraud-model")"#,
        },
        ActionSpec {
            name: "wait_rollout",
            doc: "Wait until the rollout finishes, as `kubectl rollout status`; fails when the \
                  progress deadline is exceeded or the timeout passes.",
            effect: Observe,
            params: vec![
                ns(),
                deploy(),
                ParamSpec::optional(
                    "timeout",
                    ParamType::Any,
                    "seconds (int) or a duration like \"90s\", \"5m\"; default 5m",
                ),
            ],
            namespace_param: Some("ns"),
            waits: Some(WaitSpec::by_param("timeout", crate::deploy::DEFAULT_WAIT)),
            rbac: vec![rule(APPS, &["deployments"], &["get", "list", "watch"])],
            errors: vec![
                e(
                    Permanent,
                    "`timeout` is not whole seconds or a duration like \"90s\", \"5m\", \"1h\", \
                     or is outside 1s..6h",
                ),
                e(
                    NotFound,
                    "the Deployment does not exist, or was deleted while waiting",
                ),
                e(
                    Permanent,
                    "the rollout exceeded its progress deadline (`ProgressDeadlineExceeded`)",
                ),
                e(
                    Timeout,
                    "the rollout did not finish within `timeout` (the message gives the last \
                     status line)",
                ),
            ],
            example: r#"k8s::wait_rollout("ml-serving", "fraud-model", "5m")"#,
        },
        ActionSpec {
            name: "snapshot",
            doc: "The Deployment's spec, revision, resourceVersion and images, for the run's \
                  evidence and for `restore`.",
            effect: Observe,
            params: vec![ns(), deploy()],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_get()],
            errors: vec![NO_DEPLOYMENT],
            example: r#"let snap = k8s::snapshot("ml-serving", "fraud-model");"#,
        },
        ActionSpec {
            name: "restore",
            doc: "Put a snapshot's spec back on the same Deployment (checked by uid and \
                  resourceVersion, so a concurrent change fails with a conflict).",
            effect: Mutate,
            params: vec![
                ns(),
                ParamSpec::required("snapshot", ParamType::Map, "the value `snapshot` returned"),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![rule(APPS, &["deployments"], &["get", "update"])],
            errors: vec![
                e(
                    Permanent,
                    "`snapshot` is not what `snapshot` returned: another kind, another namespace, \
                     or a spec that is not a Deployment spec",
                ),
                NO_DEPLOYMENT,
                e(
                    Conflict,
                    "the Deployment was deleted and recreated since the snapshot (another uid)",
                ),
                e(
                    Permanent,
                    "the snapshot was read back from the audit journal with redacted values (a \
                     resumed run) and the ReplicaSet of its revision, which holds them, is gone",
                ),
                e(
                    Conflict,
                    "the Deployment's spec changed between plan and write",
                ),
                KEPT_CHANGING,
                e(
                    Permanent,
                    "the API server accepted the write but the Deployment does not show the \
                     snapshot's spec",
                ),
            ],
            example: r#"k8s::restore("ml-serving", snap)"#,
        },
        ActionSpec {
            name: "promote",
            doc: "Promote a canary the way Flagger does: the canary Deployment's pod template \
                  (containers, volumes, annotations) is written onto the stable Deployment, \
                  keeping the stable template's labels so its selector still matches. The \
                  template is decided when planned; a stable template someone else changed \
                  since is a conflict, never overwritten.",
            effect: Mutate,
            params: vec![
                ns(),
                ParamSpec::required("canary", ParamType::String, "the canary Deployment"),
                ParamSpec::required("stable", ParamType::String, "the stable Deployment"),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![rule(APPS, &["deployments"], &["get", "update"])],
            errors: vec![
                e(Permanent, "`canary` and `stable` name the same Deployment"),
                e(
                    NotFound,
                    "the canary or the stable Deployment does not exist",
                ),
                e(
                    Conflict,
                    "the stable Deployment's template changed between plan and write",
                ),
                KEPT_CHANGING,
                e(
                    Permanent,
                    "the API server accepted the write but the stable Deployment does not show \
                     the canary's template",
                ),
            ],
            example: r#"k8s::promote("ml-serving", "fraud-model-v2", "fraud-model-v1")"#,
        },
        ActionSpec {
            name: "pods",
            doc: "Pods matching a label selector: name, phase, ready, restarts, node, image, reason, \
                  and the Deployment each belongs to.",
            effect: Observe,
            params: vec![
                ns(),
                ParamSpec::required(
                    "selector",
                    ParamType::String,
                    "label selector, e.g. app=web",
                ),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![rule(CORE, &["pods"], &["list"])],
            errors: vec![e(
                Permanent,
                "the API server rejects the selector (400: not a label selector)",
            )],
            example: r#"k8s::pods("ml-serving", "app=fraud-model")"#,
        },
        ActionSpec {
            name: "logs",
            doc: "The last lines of a pod's log (its default container).",
            effect: Observe,
            params: vec![
                ns(),
                ParamSpec::required("pod", ParamType::String, "pod name"),
                ParamSpec::optional(
                    "tail",
                    ParamType::Int,
                    "lines from the end; default 100, at most 10000",
                ),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![
                rule(CORE, &["pods"], &["get"]),
                rule(CORE, &["pods/log"], &["get"]),
            ],
            errors: vec![
                e(Permanent, "`tail` is outside 1..10000"),
                e(NotFound, "the pod does not exist"),
                e(
                    Permanent,
                    "the API server cannot give the log (400: e.g. the container has not started \
                     yet)",
                ),
            ],
            example: r#"k8s::logs("ml-serving", "fraud-model-7d9f-abcde", 50)"#,
        },
        ActionSpec {
            name: "events",
            doc: "Events about one object, oldest first (newest last).",
            effect: Observe,
            params: vec![
                ns(),
                ParamSpec::required(
                    "kind",
                    ParamType::String,
                    "kind of the object, e.g. Deployment or Pod",
                ),
                ParamSpec::required("name", ParamType::String, "name of the object"),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![rule(CORE, &["events"], &["list"])],
            errors: vec![],
            example: r#"k8s::events("ml-serving", "Deployment", "fraud-model")"#,
        },
        ActionSpec {
            name: "describe",
            doc: "A `kubectl describe deployment`-style summary: replicas, conditions, images, \
                  ReplicaSets with revisions, recent events.",
            effect: Observe,
            params: vec![ns(), deploy()],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_get(), rs_list(), rule(CORE, &["events"], &["list"])],
            errors: vec![NO_DEPLOYMENT],
            example: r#"k8s::describe("ml-serving", "fraud-model")"#,
        },
        ActionSpec {
            name: "quarantine_pod",
            doc: "Cut one pod off the network: label it `firebreak.dev/quarantine=<pod>` and \
                  create a deny-all (ingress and egress) NetworkPolicy selecting that label. \
                  Reported only once the policy selects exactly that pod.",
            effect: Mutate,
            params: vec![
                ns(),
                ParamSpec::required("pod", ParamType::String, "name of the pod"),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![
                rule(CORE, &["pods"], &["get", "list", "patch"]),
                rule(NETWORKING, &["networkpolicies"], &["get", "create"]),
            ],
            errors: vec![
                e(NotFound, "the pod does not exist"),
                e(
                    Conflict,
                    "a NetworkPolicy by the quarantine's name exists and was not created by \
                     firebreak",
                ),
                e(
                    Conflict,
                    "the pod was replaced (another uid) between plan and write; a different pod \
                     is never isolated",
                ),
                e(
                    Permanent,
                    "isolation is not in effect after the write: the policy is missing, is not \
                     the deny-all policy for the label, or selects other pods than that one",
                ),
            ],
            example: r#"let q = k8s::quarantine_pod("ml-serving", "fraud-model-7d9c-x2x");"#,
        },
        ActionSpec {
            name: "quarantine",
            doc: "Cut the pods a selector picks off the network with a deny-all (ingress and \
                  egress) NetworkPolicy labelled with the run id. A selector that picks no pod \
                  is refused. Idempotent.",
            effect: Mutate,
            params: vec![
                ns(),
                ParamSpec::required(
                    "pod_selector",
                    ParamType::String,
                    "label selector of the pods; must not be empty",
                ),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![
                rule(CORE, &["pods"], &["list"]),
                rule(NETWORKING, &["networkpolicies"], &["get", "create"]),
            ],
            errors: vec![
                e(
                    Permanent,
                    "`pod_selector` is empty (it would select every pod) or not a label selector \
                     (a bad key or value, a label given twice)",
                ),
                e(
                    Permanent,
                    "the selector picks no pod in the namespace: the quarantine would isolate \
                     nothing",
                ),
                e(
                    Conflict,
                    "a NetworkPolicy by the derived name exists and was not created by firebreak",
                ),
                e(
                    Permanent,
                    "isolation is not in effect after the write: the policy selects no pod, or is \
                     not the deny-all policy",
                ),
            ],
            example: r#"let q = k8s::quarantine("ml-serving", "app=fraud-model,pod=bad");"#,
        },
        ActionSpec {
            name: "release",
            doc: "Delete a quarantine NetworkPolicy firebreak created (others are refused).",
            effect: Mutate,
            params: vec![
                ns(),
                ParamSpec::required(
                    "name",
                    ParamType::String,
                    "the NetworkPolicy name quarantine returned",
                ),
            ],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![
                rule(NETWORKING, &["networkpolicies"], &["get", "delete"]),
                rule(CORE, &["pods"], &["patch"]),
            ],
            errors: vec![
                e(
                    Denied,
                    "the NetworkPolicy was not created by firebreak (a policy already gone is no \
                     error: nothing to release)",
                ),
                e(
                    Permanent,
                    "the NetworkPolicy is still there after the delete",
                ),
            ],
            example: r#"k8s::release("ml-serving", q.name)"#,
        },
        ActionSpec {
            name: "cordon",
            doc: "Mark a node unschedulable, as `kubectl cordon` (cluster-scoped).",
            effect: Mutate,
            params: vec![ParamSpec::required("node", ParamType::String, "node name")],
            namespace_param: None,
            waits: None,
            rbac: vec![rule(CORE, &["nodes"], &["get", "patch"])],
            errors: vec![
                NO_NODE,
                e(
                    Permanent,
                    "the API server accepted the patch but the node is not unschedulable",
                ),
            ],
            example: r#"k8s::cordon("node-3")"#,
        },
        ActionSpec {
            name: "uncordon",
            doc: "Mark a node schedulable again, as `kubectl uncordon` (cluster-scoped).",
            effect: Mutate,
            params: vec![ParamSpec::required("node", ParamType::String, "node name")],
            namespace_param: None,
            waits: None,
            rbac: vec![rule(CORE, &["nodes"], &["get", "patch"])],
            errors: vec![
                NO_NODE,
                e(
                    Permanent,
                    "the API server accepted the patch but the node is still unschedulable",
                ),
            ],
            example: r#"k8s::uncordon("node-3")"#,
        },
        ActionSpec {
            name: "scale_to_zero",
            doc: "Scale a Deployment to 0 replicas and return the previous count (journaled, so \
                  a later `scale` can put it back).",
            effect: Mutate,
            params: vec![ns(), deploy()],
            namespace_param: Some("ns"),
            waits: None,
            rbac: vec![deploy_get(), scale()],
            errors: vec![
                NO_DEPLOYMENT,
                e(
                    Permanent,
                    "the API server accepted the patch but the scale subresource reads another \
                     count",
                ),
            ],
            example: r#"let before = k8s::scale_to_zero("ml-serving", "fraud-model");"#,
        },
    ]
}

/// The rules of every action, merged: one rule per (API group, verb set) listing its
/// resources, sorted, so the output is stable.
pub fn rbac_rules() -> Vec<RbacRule> {
    firebreak_connector::rbac::merge_rules(actions().iter().flat_map(|a| a.rbac.iter().cloned()))
}

/// What the event watcher ([`crate::watcher`]) needs in each namespace it watches (or in a
/// ClusterRole when it watches all of them).
pub fn watcher_rules() -> Vec<RbacRule> {
    vec![
        rule(CORE, &["events", "pods"], &["list", "watch"]),
        rule(APPS, &["deployments"], &["list", "watch"]),
    ]
}

/// Renders the least-privilege RBAC for the connector and the event watcher as YAML: a
/// `Role` named `name` in `namespace` for namespaced resources (bind one per namespace
/// runbooks act on or the watcher watches) and a `ClusterRole` named `name` for
/// cluster-scoped ones (nodes).
pub fn rbac_yaml(name: &str, namespace: &str) -> String {
    firebreak_connector::rbac::render(
        "the k8s connector's action specs",
        name,
        namespace,
        actions()
            .iter()
            .flat_map(|a| a.rbac.clone())
            .chain(watcher_rules()),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_unique_and_optionals_come_last() {
        let specs = actions();
        let names: BTreeSet<_> = specs.iter().map(|a| a.name).collect();
        assert_eq!(names.len(), specs.len());
        for a in &specs {
            let first_optional = a.params.iter().position(|p| !p.required);
            if let Some(i) = first_optional {
                assert!(a.params[i..].iter().all(|p| !p.required), "{}", a.name);
            }
            assert!(!a.rbac.is_empty(), "{} declares no RBAC", a.name);
            assert!(
                a.errors.iter().all(|e| e.kind != ErrorKind::Transient),
                "{}: transient errors are common to every action",
                a.name
            );
            assert!(
                a.example.contains(&format!("k8s::{}(", a.name)),
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn namespace_param_names_a_string_param_except_for_nodes() {
        for a in actions() {
            match a.namespace_param {
                Some(ns) => {
                    let param = a.params.iter().find(|p| p.name == ns).expect(a.name);
                    assert_eq!(param.ty, ParamType::String, "{}", a.name);
                    assert!(param.required, "{}", a.name);
                }
                None => assert!(
                    a.rbac.iter().all(|r| r.resources == ["nodes"]),
                    "{} is cluster-scoped but touches namespaced resources",
                    a.name
                ),
            }
        }
    }

    /// The engine reads how long `wait_rollout` waits from its spec: it must read the
    /// `timeout` the way the connector does, default included.
    #[test]
    fn wait_rollout_declares_the_wait_it_does() {
        use serde_json::{Value, json};
        let specs = actions();
        let waits: Vec<_> = specs.iter().filter(|a| a.waits.is_some()).collect();
        assert_eq!(waits.len(), 1, "only wait_rollout waits");
        let spec = waits[0].waits.unwrap();
        assert_eq!(waits[0].name, "wait_rollout");
        let param = spec.param.expect("the wait is a parameter");
        assert!(waits[0].params.iter().any(|p| p.name == param));
        for timeout in [
            Value::Null,
            json!(30),
            json!("90s"),
            json!("5m"),
            json!("2h"),
            json!("45"),
        ] {
            let args = json!({"ns": "a", "deploy": "b", param: timeout});
            assert_eq!(
                spec.wait(args.as_object().unwrap()).ok(),
                crate::deploy::parse_timeout(Some(&timeout)).ok(),
                "{timeout}"
            );
        }
        assert_eq!(
            spec.wait(&serde_json::Map::new()),
            Ok(crate::deploy::DEFAULT_WAIT)
        );
    }

    #[test]
    fn merged_rules_are_least_privilege() {
        let rules = rbac_rules();
        let verbs_of = |group: &str, resource: &str| -> Vec<&str> {
            rules
                .iter()
                .filter(|r| r.api_groups.contains(&group) && r.resources.contains(&resource))
                .flat_map(|r| r.verbs.iter().copied())
                .collect()
        };
        assert_eq!(
            verbs_of("apps", "deployments"),
            ["get", "list", "patch", "update", "watch"]
        );
        assert_eq!(verbs_of("apps", "replicasets"), ["list"]);
        assert_eq!(verbs_of("apps", "deployments/scale"), ["get", "patch"]);
        assert_eq!(verbs_of("", "pods"), ["get", "list", "patch"]);
        assert_eq!(verbs_of("", "nodes"), ["get", "patch"]);
        assert_eq!(
            verbs_of("networking.k8s.io", "networkpolicies"),
            ["create", "delete", "get"]
        );
        // Nothing asks for delete on workloads or for secrets.
        assert!(rules.iter().all(|r| !r.resources.contains(&"secrets")));
        assert!(
            verbs_of("apps", "deployments")
                .iter()
                .all(|v| *v != "delete")
        );
    }

    #[test]
    fn yaml_puts_nodes_in_the_cluster_role_only() {
        let y = rbac_yaml("firebreak", "ml-serving");
        let (role, cluster) = y.split_once("---\n").unwrap();
        assert!(role.contains("kind: Role\n") && role.contains("namespace: ml-serving"));
        assert!(!role.contains("\"nodes\""));
        assert!(role.contains("resources: [\"deployments/scale\"]"));
        assert!(cluster.contains("kind: ClusterRole\n"));
        assert!(cluster.contains("resources: [\"nodes\"]\n    verbs: [\"get\", \"patch\"]"));
        assert!(!cluster.contains("deployments"));
    }

    #[test]
    fn readme_shows_the_current_rbac() {
        let readme = include_str!("../README.md");
        let yaml = rbac_yaml("firebreak", "NAMESPACE");
        assert!(
            readme.contains(&yaml),
            "connectors/kubernetes/README.md is stale; the RBAC block should be:\n{yaml}"
        );
        for a in actions() {
            assert!(
                readme.contains(&format!("`{}(", a.name)),
                "README does not list {}",
                a.name
            );
        }
    }
}
