//! quarantine/release and cordon/uncordon against kubesim, checked through kubectl.

use anyhow::Result;
use firebreak_connector::ErrorKind;
use serde_json::{Value, json};

use crate::harness::{Cluster, context};

#[tokio::test]
async fn quarantine_is_idempotent_and_release_removes_only_ours() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    c.create_namespace("app").await?;
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
