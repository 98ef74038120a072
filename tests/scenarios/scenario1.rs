//! Scenario 1 with the real parts: kubesim (in process) with `ml-serving/fraud-model` rolled
//! from v1 to v2 by the real `kubectl`, `firebreak serve` with the shipped runbooks, and the
//! real Alertmanager posting ModelLatencyHigh. Afterwards kubectl must see exactly what
//! `kubectl rollout undo` leaves behind, and the audit must show every step with its evidence.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Alertmanager, Cluster, Serve, ServeOpts, at, copy_shipped_runbooks, crate_dir,
};

const NS: &str = "ml-serving";
const V1: &str = "registry.example.invalid/ml/fraud-model:v1";
const V2: &str = "registry.example.invalid/ml/fraud-model:v2";

/// `(name, revision, spec.replicas, image)` of every ReplicaSet, by `kubectl get rs -o json`.
async fn replica_sets(cluster: &Cluster) -> Vec<(String, String, i64, String)> {
    let out = cluster
        .kubectl(&["-n", NS, "get", "rs", "-o", "json"])
        .await
        .ok("kubectl get rs");
    let list: Value = serde_json::from_str(&out.stdout).expect("kubectl get rs -o json");
    let mut rows: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            (
                rs["metadata"]["name"].as_str().unwrap().to_owned(),
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                rs["spec"]["replicas"].as_i64().unwrap_or(-1),
                rs["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The REVISION column of `kubectl rollout history`.
async fn revisions(cluster: &Cluster) -> Vec<u32> {
    let out = cluster
        .kubectl(&["-n", NS, "rollout", "history", "deployment/fraud-model"])
        .await
        .ok("kubectl rollout history");
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

async fn service_selector(cluster: &Cluster) -> String {
    cluster
        .kubectl(&[
            "-n",
            NS,
            "get",
            "svc",
            "fraud-model",
            "-o",
            "jsonpath={.spec.selector}",
        ])
        .await
        .ok("kubectl get svc")
        .stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn model_latency_alert_rolls_fraud_model_back_to_the_v1_replicaset() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    let manifest = crate_dir().join("demo/fraud-model.yaml");
    cluster
        .kubectl(&["apply", "-f", manifest.to_str().unwrap()])
        .await
        .ok("kubectl apply fraud-model v1");
    let rollout_status = [
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/fraud-model",
        "--timeout=60s",
    ];
    cluster
        .kubectl(&rollout_status)
        .await
        .ok("rollout status v1");
    cluster
        .kubectl(&[
            "-n",
            NS,
            "set",
            "image",
            "deployment/fraud-model",
            &format!("model-server={V2}"),
        ])
        .await
        .ok("kubectl set image v2");
    cluster
        .kubectl(&[
            "-n",
            NS,
            "annotate",
            "deployment/fraud-model",
            "kubernetes.io/change-cause=deploy fraud-model v2",
            "--overwrite",
        ])
        .await
        .ok("kubectl annotate change-cause");
    cluster
        .kubectl(&rollout_status)
        .await
        .ok("rollout status v2");
    let before = replica_sets(&cluster).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let v1_rs = before
        .iter()
        .find(|r| r.3 == V1)
        .expect("the v1 ReplicaSet")
        .0
        .clone();
    assert_eq!(revisions(&cluster).await, vec![1, 2]);
    let selector = service_selector(&cluster).await;

    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    copy_shipped_runbooks(&runbooks);
    let serve = Serve::start(
        &runbooks,
        ServeOpts {
            env: vec![(
                "FIREBREAK_KUBECONFIG",
                cluster.kubeconfig.display().to_string(),
            )],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await;
    let am = Alertmanager::start(&serve.url("/v1/alertmanager"), "1h", None).await;
    // The labels and annotations of the captured ModelLatencyHigh notification.
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(crate_dir().join("fixtures/alertmanager-model-latency-high.json"))
            .unwrap(),
    )
    .unwrap();
    let captured = &fixture["alerts"][0];
    am.post_alerts(&json!([{
        "labels": captured["labels"], "annotations": captured["annotations"],
        "startsAt": at(-100), "generatorURL": captured["generatorURL"],
    }]))
    .await;

    let journal = serve
        .wait_journal(
            "model-latency-rollback to finish",
            Duration::from_secs(90),
            |j| !j.finished("model-latency-rollback").is_empty(),
        )
        .await;
    let runs = journal.finished("model-latency-rollback");
    assert_eq!(runs.len(), 1, "{}", journal.summary());
    let run = &runs[0];
    assert_eq!(
        run.status(),
        Some("succeeded"),
        "{}\n{}",
        journal.summary(),
        serve.log_tail()
    );
    let started = &run.started().unwrap()["body"];
    assert_eq!(
        started["event"]["data"]["receiver"], "firebreak",
        "posted by Alertmanager"
    );
    assert_eq!(started["params"]["deployment"], "fraud-model");

    // What kubectl sees: exactly the state `kubectl rollout undo` leaves.
    assert_eq!(
        revisions(&cluster).await,
        vec![2, 3],
        "v1's revision 1 became revision 3"
    );
    let after = replica_sets(&cluster).await;
    assert_eq!(after.len(), 2, "no new ReplicaSet: {after:?}");
    let v1_after = after.iter().find(|r| r.3 == V1).expect("the v1 ReplicaSet");
    assert_eq!(v1_after.0, v1_rs, "the v1 ReplicaSet is reused");
    assert_eq!((v1_after.1.as_str(), v1_after.2), ("3", 3), "{after:?}");
    let v2_after = after.iter().find(|r| r.3 == V2).expect("the v2 ReplicaSet");
    assert_eq!((v2_after.1.as_str(), v2_after.2), ("2", 0), "{after:?}");
    let status = cluster
        .kubectl(&rollout_status)
        .await
        .ok("rollout status after the run");
    assert!(
        status.stdout.contains("successfully rolled out"),
        "{status}"
    );
    assert_eq!(
        service_selector(&cluster).await,
        selector,
        "the Service selector is unchanged"
    );

    // The audit shows every step with its evidence.
    let show = serve
        .cli(&["audit", "show", &run.run_id])
        .await
        .ok("audit show");
    let steps: Vec<&str> = run
        .records
        .iter()
        .filter(|r| r["body"]["type"] == "step_finished")
        .map(|r| {
            assert_eq!(r["body"]["status"], "ok", "{r}");
            r["body"]["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        [
            "log",
            "k8s::snapshot",
            "once:blamed",
            "k8s::rollback",
            "k8s::describe",
            "k8s::rollout_history",
            "k8s::events",
            "k8s::pods",
            "k8s::logs",
            "k8s::wait_rollout",
            "k8s::snapshot",
            "evidence",
            "log",
        ],
        "{}",
        show.stdout
    );
    for (n, name) in steps.iter().enumerate() {
        let line = format!("✓ #{} {name} ", n + 1);
        assert!(
            show.stdout.contains(&line),
            "audit show lacks {line:?}:\n{}",
            show.stdout
        );
    }
    // Every observing action attached its evidence; the script added the images.
    for name in [
        "k8s::snapshot",
        "k8s::describe",
        "k8s::rollout_history",
        "k8s::events",
        "k8s::pods",
        "k8s::logs",
        "k8s::wait_rollout",
    ] {
        let line = format!("evidence {name}: ");
        assert!(
            show.stdout.contains(&line),
            "audit show lacks {line:?}:\n{}",
            show.stdout
        );
    }
    assert!(
        show.stdout.contains("successfully rolled out"),
        "wait progress:\n{}",
        show.stdout
    );
    let images = run
        .records
        .iter()
        .find(|r| r["body"]["type"] == "evidence" && r["body"]["name"] == "images")
        .expect("the images evidence");
    assert_eq!(
        images["body"]["data"]["before"],
        json!([format!("model-server={V2}")])
    );
    assert_eq!(
        images["body"]["data"]["after"],
        json!([format!("model-server={V1}")])
    );
    assert!(show.stdout.contains("run succeeded"), "{}", show.stdout);
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
    drop(am);
}
