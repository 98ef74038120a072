//! quarantine/release and cordon/uncordon against kubesim, checked through kubectl.

use anyhow::Result;
use firebreak_connector::ErrorKind;
use serde_json::{Value, json};

use crate::harness::{Cluster, context};

#[tokio::test]
async fn quarantine_is_idempotent_and_release_removes_only_ours() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    c.deploy_web("app", "web:1").await?;
    // A selector that picks no pod would isolate nothing: refused, nothing created.
    let err = c
        .call(
            &cx,
            "quarantine",
            json!({"ns": "app", "pod_selector": "app=nothing-here"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(err.message.contains("picks no pod"), "{}", err.message);
    let q = c
        .call(
            &cx,
            "quarantine",
            json!({"ns": "app", "pod_selector": "app=web"}),
        )
        .await?;
    assert_eq!(q["created"], true);
    let name = q["name"].as_str().unwrap().to_owned();
    let again = c
        .call(
            &cx,
            "quarantine",
            json!({"ns": "app", "pod_selector": "app=web"}),
        )
        .await?;
    assert_eq!(again["created"], false);
    assert_eq!(again["name"], q["name"]);
    assert_eq!(again["run_id"], "run-1");

    let np: Value = serde_json::from_str(
        &c.kubectl(&["get", "networkpolicy", &name, "-n", "app", "-o=json"])
            .await?,
    )?;
    assert_eq!(
        np["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "firebreak"
    );
    assert_eq!(np["metadata"]["labels"]["firebreak.dev/run-id"], "run-1");
    assert_eq!(
        np["spec"]["podSelector"],
        json!({"matchLabels": {"app": "web"}})
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let all = c
        .kubectl(&["get", "networkpolicy", "-n", "app", "-o=name"])
        .await?;
    assert_eq!(all.lines().count(), 1, "{all}");

    let err = c
        .call(&cx, "quarantine", json!({"ns": "app", "pod_selector": ""}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);

    let r = c
        .call(&cx, "release", json!({"ns": "app", "name": name}))
        .await?;
    assert_eq!(r["released"], true);
    let (ok, _, _) = c
        .kubectl_raw(&["get", "networkpolicy", &name, "-n", "app"])
        .await?;
    assert!(!ok, "the policy is still there");
    let r = c
        .call(&cx, "release", json!({"ns": "app", "name": name}))
        .await?;
    assert_eq!(r["released"], false);

    // A policy someone else made is not ours to delete.
    let foreign: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "allow-web", "namespace": "app"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    }))?;
    kube::Api::namespaced(c.client.clone(), "app")
        .create(&Default::default(), &foreign)
        .await?;
    let err = c
        .call(&cx, "release", json!({"ns": "app", "name": "allow-web"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Denied);
    c.kubectl(&["get", "networkpolicy", "allow-web", "-n", "app"])
        .await?;
    Ok(())
}

async fn unschedulable(c: &Cluster, node: &str) -> Result<String> {
    c.kubectl(&["get", "node", node, "-o=jsonpath={.spec.unschedulable}"])
        .await
}

#[tokio::test]
async fn cordon_and_uncordon_match_kubectl() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    let node = "node-a".to_owned();
    let obj: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
        "spec": {}
    }))?;
    kube::Api::all(c.client.clone())
        .create(&Default::default(), &obj)
        .await?;
    let out = c.call(&cx, "cordon", json!({"node": node})).await?;
    assert_eq!(out["changed"], true);
    assert_eq!(unschedulable(&c, &node).await?, "true");
    let out = c.call(&cx, "cordon", json!({"node": node})).await?;
    assert_eq!(out["changed"], false);
    assert_eq!(out["message"], format!("node/{node} already cordoned"));
    let kubectl = c.kubectl(&["cordon", &node]).await?;
    assert!(kubectl.contains("already cordoned"), "{kubectl}");
    c.call(&cx, "uncordon", json!({"node": node})).await?;
    assert_eq!(unschedulable(&c, &node).await?, "");
    let err = c
        .call(&cx, "cordon", json!({"node": "no-such-node"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    Ok(())
}

/// `quarantine_pod` isolates exactly one pod: kubectl sees the pod labelled, the policy's
/// selector picks that pod and no other, and `release` undoes both. Applying the journaled
/// intent again (a resume after the write) finds it done.
#[tokio::test]
async fn quarantine_pod_isolates_exactly_that_pod() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    c.deploy_web("app", "web:1").await?;
    let pods = c
        .kubectl(&["get", "pods", "-n", "app", "-l", "app=web", "-o=name"])
        .await?;
    let pods: Vec<&str> = pods.lines().map(|l| l.trim_start_matches("pod/")).collect();
    assert_eq!(pods.len(), 3, "{pods:?}");
    let target = pods[1];
    let args = json!({"ns": "app", "pod": target});
    let intent = c.plan(&cx, "quarantine_pod", args.clone()).await?;
    let q = c
        .apply(&cx, "quarantine_pod", args.clone(), &intent)
        .await?;
    assert_eq!(q["isolated_pods"], json!([target]), "{q}");
    let name = q["name"].as_str().unwrap().to_owned();

    let np: Value = serde_json::from_str(
        &c.kubectl(&["get", "networkpolicy", &name, "-n", "app", "-o=json"])
            .await?,
    )?;
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert!(np["spec"].get("ingress").is_none() && np["spec"].get("egress").is_none());
    let labels = np["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    let selector: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    let selected = c
        .kubectl(&[
            "get",
            "pods",
            "-n",
            "app",
            "-l",
            &selector.join(","),
            "-o=name",
        ])
        .await?;
    assert_eq!(
        selected.trim(),
        format!("pod/{target}"),
        "the policy selects exactly the pod"
    );

    // A resume after the write applies the intent again: nothing new is written.
    let writes = |c: &Cluster| {
        c.sim
            .sim()
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count()
    };
    let before = writes(&c);
    let again = c.apply(&cx, "quarantine_pod", args, &intent).await?;
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(writes(&c), before);

    c.call(&cx, "release", json!({"ns": "app", "name": name}))
        .await?;
    let left = c
        .kubectl(&[
            "get",
            "pods",
            "-n",
            "app",
            "-l",
            &selector.join(","),
            "-o=name",
        ])
        .await?;
    assert!(left.trim().is_empty(), "label removed: {left}");
    let all = c
        .kubectl(&["get", "networkpolicy", "-n", "app", "-o=name"])
        .await?;
    assert!(all.trim().is_empty(), "{all}");

    let err = c
        .call(
            &cx,
            "quarantine_pod",
            json!({"ns": "app", "pod": "no-such-pod"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{}", err.message);
    Ok(())
}
