//! `deploy/kustomize`: its generated parts have not drifted (the RBAC rules are what
//! `firebreak connectors --rbac` prints, the runbooks ConfigMap holds the shipped runbooks), and
//! each overlay renders with the real `kubectl kustomize` and applies with `kubectl apply
//! --dry-run=server` against kubesim, with the properties an SRE checks before installing it.

use serde_json::Value;

use crate::harness::{Cluster, firebreak, repo_root};

fn base() -> std::path::PathBuf {
    repo_root().join("deploy/kustomize/base")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rbac_is_what_the_connectors_declare() {
    let out = firebreak(&["connectors", "--rbac", "--namespace", "ml-serving"], &[])
        .await
        .ok("firebreak connectors --rbac");
    let shipped = std::fs::read_to_string(base().join("rbac.yaml")).unwrap();
    assert_eq!(
        shipped, out.stdout,
        "deploy/kustomize/base/rbac.yaml drifted: regenerate it with \
         `firebreak connectors --rbac --namespace ml-serving > deploy/kustomize/base/rbac.yaml`"
    );
}

#[test]
fn the_runbooks_configmap_holds_the_shipped_runbooks() {
    let names = |dir: std::path::PathBuf| {
        // The runbooks themselves; their fixtures (tests/) stay in the repository.
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let shipped = names(repo_root().join("runbooks"));
    assert_eq!(
        names(base().join("runbooks")),
        shipped,
        "copy runbooks/ to deploy/kustomize/base/runbooks/"
    );
    let kustomization = std::fs::read_to_string(base().join("kustomization.yaml")).unwrap();
    for name in &shipped {
        let ours = std::fs::read_to_string(base().join("runbooks").join(name)).unwrap();
        let theirs = std::fs::read_to_string(repo_root().join("runbooks").join(name)).unwrap();
        assert_eq!(
            ours, theirs,
            "deploy/kustomize/base/runbooks/{name} drifted from runbooks/{name}"
        );
        assert!(
            kustomization.contains(&format!("- runbooks/{name}\n")),
            "kustomization.yaml does not list runbooks/{name}"
        );
    }
}

/// `kubectl kustomize OVERLAY` as JSON objects (through `kubectl create --dry-run=client`).
async fn render(cluster: &Cluster, overlay: &str) -> (std::path::PathBuf, Vec<Value>) {
    let dir = repo_root().join("deploy/kustomize/overlays").join(overlay);
    let rendered = cluster
        .kubectl(&["kustomize", dir.to_str().unwrap()])
        .await
        .ok("kubectl kustomize");
    let file =
        std::env::temp_dir().join(format!("firebreak-{overlay}-{}.yaml", std::process::id()));
    std::fs::write(&file, &rendered.stdout).unwrap();
    let json = cluster
        .kubectl(&[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            file.to_str().unwrap(),
        ])
        .await
        .ok("kubectl create --dry-run=client -o json");
    // One JSON object after another.
    let objects: Vec<Value> = serde_json::Deserializer::from_str(&json.stdout)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    (file, objects)
}

/// kubesim with the namespaces the manifests name.
async fn cluster_with_namespaces() -> Cluster {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    cluster
        .sim
        .apply_yaml(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: firebreak}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: ml-serving}\n",
        )
        .unwrap();
    cluster
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[tokio::test(flavor = "multi_thread")]
async fn both_overlays_render_and_apply_to_a_cluster() {
    let cluster = cluster_with_namespaces().await;
    for (overlay, replicas) in [("single", 1), ("jetstream", 3)] {
        let (file, objects) = render(&cluster, overlay).await;
        let applied = cluster
            .kubectl(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()])
            .await
            .ok("kubectl apply --dry-run=server");
        for kind in [
            "serviceaccount/firebreak",
            "role.rbac.authorization.k8s.io/firebreak",
            "clusterrole.rbac.authorization.k8s.io/firebreak",
            "rolebinding.rbac.authorization.k8s.io/firebreak",
            "deployment.apps/firebreak",
            "poddisruptionbudget.policy/firebreak",
            "networkpolicy.networking.k8s.io/firebreak",
        ] {
            assert!(
                applied
                    .stdout
                    .contains(&format!("{kind} created (server dry run)")),
                "{overlay}: {kind} in {applied}"
            );
        }
        let _ = std::fs::remove_file(&file);

        let deployment = find(&objects, "Deployment");
        assert_eq!(deployment["spec"]["replicas"], replicas, "{overlay}");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "firebreak");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let container = &pod["containers"][0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        let volume = |name: &str| {
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{overlay}: no volume {name}"))
        };
        // The ConfigMaps it mounts are the ones rendered (kustomize's hashed names). Runbooks
        // reach the pod as a ConfigMap (single) or from Git through git-sync (jetstream).
        let mounted: &[(&str, &str)] = match overlay {
            "single" => &[
                ("config", "firebreak-config-"),
                ("runbooks", "firebreak-runbooks-"),
            ],
            _ => &[("config", "firebreak-config-")],
        };
        for &(volume_name, prefix) in mounted {
            let name = volume(volume_name)["configMap"]["name"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(name.starts_with(prefix), "{name}");
            assert!(
                objects
                    .iter()
                    .any(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name.as_str()),
                "{overlay}: {name} is mounted but not rendered"
            );
        }
        let env: Vec<&str> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        let pdb = find(&objects, "PodDisruptionBudget");
        match overlay {
            "single" => {
                assert_eq!(
                    volume("data")["persistentVolumeClaim"]["claimName"],
                    "firebreak-data"
                );
                assert_eq!(
                    find(&objects, "PersistentVolumeClaim")["metadata"]["name"],
                    "firebreak-data"
                );
                assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
                assert!(!env.contains(&"FIREBREAK_NATS_URL"), "{env:?}");
                assert_eq!(pdb["spec"]["maxUnavailable"], 1);
            }
            _ => {
                // git-sync checks the repository out into the runbooks volume; firebreak reads
                // runbooks/ through the link it swaps, and nothing else mounts a ConfigMap of
                // runbooks.
                assert_eq!(volume("runbooks")["emptyDir"], serde_json::json!({}));
                assert!(volume("runbooks").get("configMap").is_none());
                let sync = pod["initContainers"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["name"] == "git-sync"))
                    .expect("a git-sync sidecar");
                assert_eq!(sync["restartPolicy"], "Always", "a native sidecar");
                assert_eq!(sync["volumeMounts"][0]["name"], "runbooks");
                assert_eq!(sync["securityContext"]["readOnlyRootFilesystem"], true);
                let runbooks_env = container["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == "FIREBREAK_RUNBOOKS")
                    .expect("FIREBREAK_RUNBOOKS");
                assert_eq!(
                    runbooks_env["value"],
                    "/etc/firebreak/runbooks/current/runbooks"
                );
                let repo = sync["envFrom"][0]["configMapRef"]["name"].as_str().unwrap();
                assert!(
                    objects.iter().any(|o| o["kind"] == "ConfigMap"
                        && o["metadata"]["name"] == repo
                        && o["data"]["GITSYNC_REPO"].is_string()),
                    "the git-sync settings are rendered"
                );
                assert!(
                    !objects.iter().any(|o| o["kind"] == "ConfigMap"
                        && o["metadata"]["name"]
                            .as_str()
                            .unwrap()
                            .starts_with("firebreak-runbooks-")),
                    "no unused runbooks ConfigMap"
                );
                assert!(
                    env.contains(&"FIREBREAK_NATS_URL") && env.contains(&"FIREBREAK_NATS_CREDS"),
                    "{env:?}"
                );
                assert_eq!(volume("nats")["secret"]["secretName"], "firebreak-nats");
                assert_eq!(pdb["spec"]["minAvailable"], 2);
            }
        }
    }
}

/// `kubectl auth can-i ARGS --as=firebreak's service account`: whether kubectl says yes.
async fn can_i(cluster: &Cluster, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.push("--as=system:serviceaccount:firebreak:firebreak");
    let out = cluster.kubectl(&all).await;
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {}: {out}", args.join(" ")),
    }
}

/// Installed from the single overlay, firebreak's service account may do what the connectors
/// declare they need (every verb of every rule of the generated Role and ClusterRole), and
/// nothing around it, as `kubectl auth can-i --as=…` reads kubesim's RBAC objects.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_account_may_do_what_the_runbooks_need_and_no_more() {
    let cluster = cluster_with_namespaces().await;
    let (file, objects) = render(&cluster, "single").await;
    cluster
        .kubectl(&["apply", "-f", file.to_str().unwrap()])
        .await
        .ok("kubectl apply the single overlay");
    let _ = std::fs::remove_file(&file);

    let mut asked = 0;
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        let ns = role["metadata"]["namespace"].as_str();
        for rule in role["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        let (resource, sub) = resource
                            .as_str()
                            .unwrap()
                            .split_once('/')
                            .map_or((resource.as_str().unwrap(), None), |(r, s)| (r, Some(s)));
                        let group = group.as_str().unwrap();
                        let qualified = if group.is_empty() {
                            resource.to_owned()
                        } else {
                            format!("{resource}.{group}")
                        };
                        let mut args = vec![verb.as_str().unwrap(), qualified.as_str()];
                        let sub_arg = sub.map(|s| format!("--subresource={s}"));
                        if let Some(s) = &sub_arg {
                            args.push(s);
                        }
                        if let Some(ns) = ns {
                            args.extend(["-n", ns]);
                        }
                        assert!(can_i(&cluster, &args).await, "may not {args:?}");
                        asked += 1;
                    }
                }
            }
        }
    }
    assert!(asked >= 20, "every declared permission was asked: {asked}");

    for args in [
        &["delete", "deployments.apps", "-n", "ml-serving"][..],
        &["create", "pods", "-n", "ml-serving"],
        &["delete", "pods", "-n", "ml-serving"],
        &["get", "secrets", "-n", "ml-serving"],
        &["list", "secrets", "-n", "firebreak"],
        &["get", "deployments.apps", "-n", "default"],
        &["patch", "deployments.apps", "-n", "kube-system"],
        &[
            "create",
            "roles.rbac.authorization.k8s.io",
            "-n",
            "ml-serving",
        ],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["delete", "nodes"],
    ] {
        assert!(!can_i(&cluster, args).await, "may {args:?}, and should not");
    }
}

/// A kubeconfig for the cluster that authenticates as firebreak's ServiceAccount, with a
/// token from `kubectl create token` (kubesim then authorizes every request by RBAC).
async fn service_account_kubeconfig(
    cluster: &Cluster,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let token = cluster
        .kubectl(&[
            "create",
            "token",
            "firebreak",
            "-n",
            "firebreak",
            "--duration=1h",
        ])
        .await
        .ok("kubectl create token");
    let admin = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let config = admin.replace(
        "  user: {}",
        &format!("  user:\n    token: {}", token.stdout.trim()),
    );
    assert_ne!(config, admin, "the kubeconfig's user is replaced");
    let path = dir.join("firebreak-sa.kubeconfig");
    std::fs::write(&path, config).unwrap();
    path
}

/// Installed from the single overlay and running with its ServiceAccount's token (not as the
/// admin), firebreak does scenario 1 end to end: the permissions `deploy/` grants are enough.
/// Without the RoleBinding in the runbook's namespace, the same run is refused by the API
/// server, and the audit trail says so.
#[tokio::test(flavor = "multi_thread")]
async fn firebreak_runs_scenario_1_with_only_the_permissions_deploy_grants() {
    let cluster = cluster_with_namespaces().await;
    let (file, _) = render(&cluster, "single").await;
    cluster
        .kubectl(&["apply", "-f", file.to_str().unwrap()])
        .await
        .ok("kubectl apply the single overlay");
    let _ = std::fs::remove_file(&file);
    let case = repo_root().join("runbooks/tests/model-latency-rollback");
    for step in ["cluster.yaml", "update.yaml"] {
        cluster
            .kubectl(&["apply", "-f", case.join(step).to_str().unwrap()])
            .await
            .ok(&format!("kubectl apply {step}"));
        cluster
            .kubectl(&[
                "-n",
                "ml-serving",
                "rollout",
                "status",
                "deploy/fraud-model",
                "--timeout=60s",
            ])
            .await
            .ok("rollout status");
    }
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = service_account_kubeconfig(&cluster, tmp.path()).await;
    let run = |data: std::path::PathBuf| {
        let env = vec![
            (
                "FIREBREAK_RUNBOOKS",
                repo_root().join("runbooks").display().to_string(),
            ),
            ("FIREBREAK_DATA_DIR", data.display().to_string()),
            ("FIREBREAK_KUBECONFIG", kubeconfig.display().to_string()),
        ];
        let event = case.join("event.json");
        async move {
            let out = firebreak(
                &["run", "--event", event.to_str().unwrap(), "--actor", "sre"],
                &env,
            )
            .await;
            (
                out,
                crate::harness::Journal::read(&data.join("audit.jsonl")),
            )
        }
    };
    let (out, journal) = run(tmp.path().join("allowed")).await;
    assert!(out.success(), "{out}");
    let records = &journal.runs()[0].records;
    assert!(
        records.iter().any(|r| r["body"]["type"] == "step_finished"
            && r["body"]["name"] == "k8s::rollback"
            && r["body"]["status"] == "ok"),
        "the rollback ran: {out}"
    );
    let image = cluster
        .kubectl(&[
            "-n",
            "ml-serving",
            "get",
            "deploy",
            "fraud-model",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert!(image.stdout.ends_with(":v1"), "rolled back: {image}");
    // Every request was the ServiceAccount's: kubesim logs none refused.
    let refused: Vec<Value> = cluster
        .sim
        .sim()
        .requests()
        .into_iter()
        .filter(|r| r.code == 403)
        .map(|r| serde_json::json!({"method": r.method, "path": r.path}))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");

    // Take the namespace's RoleBinding away: the API server refuses, the run fails, denied.
    cluster
        .kubectl(&["-n", "ml-serving", "delete", "rolebinding", "firebreak"])
        .await
        .ok("delete the RoleBinding");
    let (out, journal) = run(tmp.path().join("refused")).await;
    assert!(!out.success(), "{out}");
    let errors: Vec<&Value> = journal.runs()[0]
        .records
        .iter()
        .filter(|r| r["body"]["type"] == "step_finished" && r["body"]["status"] == "error")
        .map(|r| &r["body"]["error"])
        .collect();
    assert!(
        errors.iter().any(|e| e["kind"] == "denied"
            && e["message"].as_str().unwrap().contains(
                r#"User "system:serviceaccount:firebreak:firebreak" cannot get resource "deployments" in API group "apps" in the namespace "ml-serving""#
            )),
        "{errors:?}"
    );
}
