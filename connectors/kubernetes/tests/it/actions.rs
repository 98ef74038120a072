//! The other Deployment actions and the evidence actions against kubesim, checked through
//! kubectl.

use anyhow::Result;
use firebreak_connector::{Connector, ErrorKind};
use serde_json::{Value, json};

use crate::harness::{Cluster, context};

async fn jsonpath(c: &Cluster, ns: &str, obj: &str, path: &str) -> Result<String> {
    c.kubectl(&["get", obj, "-n", ns, &format!("-o=jsonpath={path}")])
        .await
}

#[tokio::test]
async fn set_image_scale_pause_resume_restart_behave_like_kubectl() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, progress) = context(false);
    c.deploy_web("app", "web:1").await?;

    let out = c
        .call(
            &cx,
            "set_image",
            json!({"ns": "app", "deploy": "web", "container": "app", "image": "web:2"}),
        )
        .await?;
    assert_eq!(out["from_image"], "web:1");
    assert_eq!(out["changed"], true);
    let waited = c
        .call(&cx, "wait_rollout", json!({"ns": "app", "deploy": "web"}))
        .await?;
    assert_eq!(waited["images"], json!(["app=web:2"]));
    assert_eq!(waited["revision"], 2);
    let lines = progress.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Waiting for deployment")),
        "{lines:?}"
    );
    let history = c
        .kubectl(&["rollout", "history", "deploy/web", "-n", "app"])
        .await?;
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    let err = c
        .call(
            &cx,
            "set_image",
            json!({"ns": "app", "deploy": "web", "container": "nope", "image": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert_eq!(err.message, "unable to find container named \"nope\"");

    let out = c
        .call(
            &cx,
            "scale",
            json!({"ns": "app", "deploy": "web", "replicas": 5}),
        )
        .await?;
    assert_eq!(
        (out["from_replicas"].clone(), out["to_replicas"].clone()),
        (json!(3), json!(5))
    );
    assert_eq!(
        jsonpath(&c, "app", "deploy/web", "{.spec.replicas}").await?,
        "5"
    );
    let err = c
        .call(
            &cx,
            "scale",
            json!({"ns": "app", "deploy": "web", "replicas": -1}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);

    c.call(&cx, "pause", json!({"ns": "app", "deploy": "web"}))
        .await?;
    assert_eq!(
        jsonpath(&c, "app", "deploy/web", "{.spec.paused}").await?,
        "true"
    );
    let err = c
        .call(&cx, "pause", json!({"ns": "app", "deploy": "web"}))
        .await
        .unwrap_err();
    let (_, _, stderr) = c
        .kubectl_raw(&["rollout", "pause", "deploy/web", "-n", "app"])
        .await?;
    assert!(
        stderr.contains(&err.message),
        "kubectl: {stderr} / ours: {}",
        err.message
    );
    let err = c
        .call(&cx, "restart", json!({"ns": "app", "deploy": "web"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    c.call(&cx, "resume", json!({"ns": "app", "deploy": "web"}))
        .await?;
    assert_eq!(
        jsonpath(&c, "app", "deploy/web", "{.spec.paused}").await?,
        ""
    );
    let err = c
        .call(&cx, "resume", json!({"ns": "app", "deploy": "web"}))
        .await
        .unwrap_err();
    let (_, _, stderr) = c
        .kubectl_raw(&["rollout", "resume", "deploy/web", "-n", "app"])
        .await?;
    assert!(
        stderr.contains(&err.message),
        "kubectl: {stderr} / ours: {}",
        err.message
    );

    let out = c
        .call(&cx, "restart", json!({"ns": "app", "deploy": "web"}))
        .await?;
    let stamped = jsonpath(
        &c,
        "app",
        "deploy/web",
        "{.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
    )
    .await?;
    assert_eq!(stamped, out["restarted_at"].as_str().unwrap());
    c.rollout_status("app").await?;
    assert_eq!(
        jsonpath(
            &c,
            "app",
            "deploy/web",
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        )
        .await?,
        "3"
    );

    let out = c
        .call(&cx, "scale_to_zero", json!({"ns": "app", "deploy": "web"}))
        .await?;
    assert_eq!(out["previous_replicas"], 5);
    assert_eq!(
        jsonpath(&c, "app", "deploy/web", "{.spec.replicas}").await?,
        "0"
    );
    Ok(())
}

#[tokio::test]
async fn dry_runs_change_nothing() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(true);
    c.deploy_web("app", "web:1").await?;
    let node: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(json!({"metadata": {"name": "node-a"}}))?;
    kube::Api::all(c.client.clone())
        .create(&Default::default(), &node)
        .await?;
    let (real, _) = context(false);
    let snap = c
        .call(&real, "snapshot", json!({"ns": "app", "deploy": "web"}))
        .await?;
    let q = c
        .call(
            &real,
            "quarantine",
            json!({"ns": "app", "pod_selector": "app=web"}),
        )
        .await?;
    c.kubectl(&["set", "image", "deploy/web", "app=web:2", "-n", "app"])
        .await?;
    c.rollout_status("app").await?;
    let writes = |c: &Cluster| {
        c.sim
            .sim()
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count()
    };
    let before = writes(&c);
    let rv = jsonpath(&c, "app", "deploy/web", "{.metadata.resourceVersion}").await?;
    for (action, args) in [
        ("rollback", json!({"ns": "app", "deploy": "web"})),
        (
            "set_image",
            json!({"ns": "app", "deploy": "web", "container": "app", "image": "web:9"}),
        ),
        (
            "scale",
            json!({"ns": "app", "deploy": "web", "replicas": 7}),
        ),
        ("scale_to_zero", json!({"ns": "app", "deploy": "web"})),
        ("pause", json!({"ns": "app", "deploy": "web"})),
        ("restart", json!({"ns": "app", "deploy": "web"})),
        ("restore", json!({"ns": "app", "snapshot": snap})),
        (
            "quarantine",
            json!({"ns": "app", "pod_selector": "app=web,pod-template-hash"}),
        ),
        ("release", json!({"ns": "app", "name": q["name"]})),
        ("cordon", json!({"node": "node-a"})),
    ] {
        let out = c.call(&cx, action, args).await?;
        assert_eq!(out["dry_run"], true, "{action}: {out}");
    }
    // Not a single write request reached the API server.
    assert_eq!(writes(&c), before, "a dry run wrote to the API server");
    assert_eq!(
        jsonpath(&c, "app", "deploy/web", "{.metadata.resourceVersion}").await?,
        rv
    );
    Ok(())
}

#[tokio::test]
async fn snapshot_and_restore_put_the_spec_back() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    c.deploy_web("app", "web:1").await?;
    let snap = c
        .call(&cx, "snapshot", json!({"ns": "app", "deploy": "web"}))
        .await?;
    assert_eq!(snap["images"], json!(["app=web:1"]));
    assert_eq!(snap["revision"], 1);
    assert_eq!(snap["replicas"], 3);
    assert!(
        snap["resource_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );

    c.kubectl(&["set", "image", "deploy/web", "app=web:2", "-n", "app"])
        .await?;
    c.kubectl(&["scale", "deploy/web", "--replicas=1", "-n", "app"])
        .await?;
    c.rollout_status("app").await?;
    let out = c
        .call(&cx, "restore", json!({"ns": "app", "snapshot": snap}))
        .await?;
    assert_eq!(out["restored"], true, "{out}");
    c.rollout_status("app").await?;
    assert_eq!(
        jsonpath(
            &c,
            "app",
            "deploy/web",
            "{.spec.template.spec.containers[0].image}"
        )
        .await?,
        "web:1"
    );
    assert_eq!(
        jsonpath(&c, "app", "deploy/web", "{.spec.replicas}").await?,
        "3"
    );
    // Restoring again changes nothing.
    let again = c
        .call(&cx, "restore", json!({"ns": "app", "snapshot": snap}))
        .await?;
    assert_eq!(again["unchanged"], true, "{again}");

    // A snapshot is only restored into its own namespace and onto the same object.
    let err = c
        .call(&cx, "restore", json!({"ns": "other", "snapshot": snap}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(err.message.contains("namespace"), "{}", err.message);
    c.kubectl(&["delete", "deploy/web", "-n", "app"]).await?;
    let recreated: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "app"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": "web:5"}]}}}
    }))?;
    kube::Api::namespaced(c.client.clone(), "app")
        .create(&Default::default(), &recreated)
        .await?;
    let err = c
        .call(&cx, "restore", json!({"ns": "app", "snapshot": snap}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{}", err.message);
    assert_eq!(
        jsonpath(
            &c,
            "app",
            "deploy/web",
            "{.spec.template.spec.containers[0].image}"
        )
        .await?,
        "web:5"
    );
    let mut bad = snap.clone();
    bad["spec"] = json!("not a spec");
    let err = c
        .call(&cx, "restore", json!({"ns": "app", "snapshot": bad}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    Ok(())
}

#[tokio::test]
async fn actions_touch_only_the_namespace_in_their_namespace_param() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    c.deploy_web("team-a", "web:1").await?;
    c.deploy_web("team-b", "web:1").await?;
    for spec in c.k8s.actions() {
        if let Some(p) = spec.namespace_param {
            assert_eq!(p, "ns", "{}", spec.name);
        }
    }
    c.call(
        &cx,
        "scale",
        json!({"ns": "team-a", "deploy": "web", "replicas": 1}),
    )
    .await?;
    assert_eq!(
        jsonpath(&c, "team-a", "deploy/web", "{.spec.replicas}").await?,
        "1"
    );
    assert_eq!(
        jsonpath(&c, "team-b", "deploy/web", "{.spec.replicas}").await?,
        "3"
    );
    Ok(())
}

#[tokio::test]
async fn evidence_reads_pods_logs_events_and_describe() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    c.deploy_web("app", "web:1").await?;
    let pods = c
        .call(&cx, "pods", json!({"ns": "app", "selector": "app=web"}))
        .await?;
    let list = pods["pods"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{pods}");
    for p in list {
        assert_eq!(p["phase"], "Running", "{p}");
        assert_eq!(p["ready"], true, "{p}");
        assert_eq!(p["image"], "web:1");
        assert!(p["node"].is_string(), "{p}");
    }
    let none = c
        .call(&cx, "pods", json!({"ns": "app", "selector": "app=other"}))
        .await?;
    assert_eq!(none["pods"], json!([]));

    let pod = list[0]["name"].as_str().unwrap();
    let logs = c
        .call(&cx, "logs", json!({"ns": "app", "pod": pod, "tail": 2}))
        .await?;
    let ours: Vec<String> = serde_json::from_value(logs["lines"].clone())?;
    let theirs = c.kubectl(&["logs", pod, "-n", "app", "--tail=2"]).await?;
    assert_eq!(ours, theirs.lines().collect::<Vec<_>>());
    assert!(ours.len() <= 2);
    assert_eq!(logs["truncated"], false);
    // The read is bounded by the API server too, whatever the tail.
    let asked = c
        .sim
        .sim()
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/log") && r.kubectl_command.is_empty())
        .expect("the connector's log request");
    assert!(asked.query.contains("limitBytes=262144"), "{}", asked.query);
    // kubesim cuts where kubectl's --limit-bytes asks, as the kubelet does.
    let cut = c
        .kubectl(&["logs", pod, "-n", "app", "--limit-bytes=7"])
        .await?;
    assert_eq!(cut.len(), 7, "{cut:?}");
    let err = c
        .call(&cx, "logs", json!({"ns": "app", "pod": pod, "tail": 0}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);

    let events = c
        .call(
            &cx,
            "events",
            json!({"ns": "app", "kind": "Deployment", "name": "web"}),
        )
        .await?;
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"ScalingReplicaSet"), "{events}");

    let d = c
        .call(&cx, "describe", json!({"ns": "app", "deploy": "web"}))
        .await?;
    assert_eq!(d["images"], json!(["app=web:1"]));
    assert_eq!(d["replicasets"].as_array().unwrap().len(), 1);
    assert_eq!(d["replicasets"][0]["revision"], 1);
    assert_eq!(d["replicasets"][0]["new"], true);
    let types: Vec<&str> = d["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert!(
        types.contains(&"Available") && types.contains(&"Progressing"),
        "{d}"
    );
    assert!(
        d["replicas"]
            .as_str()
            .unwrap()
            .starts_with("3 desired | 3 updated"),
        "{d}"
    );
    Ok(())
}

#[tokio::test]
async fn wait_rollout_times_out_on_a_stuck_rollout() -> Result<()> {
    let mut config = kubesim::SimConfig::default();
    config
        .controllers
        .image_faults
        .insert("web:stuck".into(), kubesim::Fault::NeverReady);
    let c = Cluster::start_with(config).await?;
    let (cx, progress) = context(false);
    c.deploy_web("app", "web:1").await?;
    c.kubectl(&["set", "image", "deploy/web", "app=web:stuck", "-n", "app"])
        .await?;
    let err = c
        .call(
            &cx,
            "wait_rollout",
            json!({"ns": "app", "deploy": "web", "timeout": 2}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
    assert!(
        err.message.contains("timed out waiting for the condition"),
        "{}",
        err.message
    );
    let lines: Vec<String> = progress.lock().unwrap().clone();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("Waiting for deployment")),
        "{lines:?}"
    );
    let _: Value = json!(lines);
    Ok(())
}

/// A snapshot read back from the audit journal has its secrets redacted (a resumed run
/// replays its `snapshot` step from there): restore fills them from the ReplicaSet of the
/// snapshot's revision, never writes the marker, and refuses when the cluster lost them.
#[tokio::test]
async fn a_snapshot_with_redacted_secrets_restores_the_real_values() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    c.deploy_web("app", "web:1").await?;
    c.kubectl(&[
        "set",
        "env",
        "deploy/web",
        "DB_PASSWORD=hunter2",
        "MODEL=fraud",
        "-n",
        "app",
    ])
    .await?;
    c.rollout_status("app").await?;
    let mut snap = c
        .call(&cx, "snapshot", json!({"ns": "app", "deploy": "web"}))
        .await?;
    firebreak_audit::redact_value(&mut snap);
    let env = &snap["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env[0],
        json!({"name": "DB_PASSWORD", "value": "[redacted]"}),
        "{env}"
    );

    c.kubectl(&["set", "image", "deploy/web", "app=web:3", "-n", "app"])
        .await?;
    c.rollout_status("app").await?;
    let out = c
        .call(&cx, "restore", json!({"ns": "app", "snapshot": snap}))
        .await?;
    assert_eq!(out["restored"], true, "{out}");
    c.rollout_status("app").await?;
    let env = jsonpath(
        &c,
        "app",
        "deploy/web",
        "{.spec.template.spec.containers[0].env[*].value}",
    )
    .await?;
    assert_eq!(env, "hunter2 fraud");
    assert_eq!(
        jsonpath(
            &c,
            "app",
            "deploy/web",
            "{.spec.template.spec.containers[0].image}"
        )
        .await?,
        "web:1"
    );

    let mut lost = snap.clone();
    lost["revision"] = json!(99);
    let err = c
        .call(&cx, "restore", json!({"ns": "app", "snapshot": lost}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(err.message.contains("redacted"), "{}", err.message);
    Ok(())
}
