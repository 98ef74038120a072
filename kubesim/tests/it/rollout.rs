//! The real kubectl driving Deployment rollouts through kubesim's controllers: `set image`,
//! `rollout status|history|undo|pause|resume|restart`, `scale`, and a crash-looping image that
//! makes `rollout status` fail with the real progress-deadline message and exit code.

use std::time::Duration;

use kubesim::{ControllerConfig, SimConfig};
use serde_json::Value;

use crate::harness::Kube;

fn web(image: &str, progress_deadline_seconds: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  progressDeadlineSeconds: {progress_deadline_seconds}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: app
        image: {image}
"#
    )
}

/// A simulator whose pods take a second to become Ready, so rollouts take a few seconds.
async fn with_web(image: &str, progress_deadline_seconds: u32) -> Kube {
    let cfg = SimConfig {
        controllers: ControllerConfig {
            pod_ready_delay: Duration::from_millis(500),
            ..ControllerConfig::default()
        },
        ..SimConfig::default()
    };
    let kube = Kube::start_with(cfg).await;
    kube.kubectl_stdin(
        &["apply", "-f", "-"],
        &web(image, progress_deadline_seconds),
    )
    .await
    .ok();
    kube
}

async fn json(kube: &Kube, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    serde_json::from_str(kube.kubectl(&full).await.ok()).expect("kubectl printed JSON")
}

/// `(name, revision, revision-history, spec.replicas)` of every ReplicaSet, by revision.
async fn replica_sets(kube: &Kube) -> Vec<(String, String, String, i64)> {
    let list = json(kube, &["get", "rs", "-l", "app=web"]).await;
    let mut out: Vec<_> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|rs| {
            let a = &rs["metadata"]["annotations"];
            let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
            (
                rs["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                s("deployment.kubernetes.io/revision"),
                s("deployment.kubernetes.io/revision-history"),
                rs["spec"]["replicas"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    out.sort_by_key(|(_, rev, _, _)| rev.parse::<u32>().unwrap_or(0));
    out
}

async fn rollout_succeeds(kube: &Kube) -> String {
    let out = kube
        .kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
        .await;
    let stdout = out.ok().to_owned();
    assert!(
        stdout
            .trim_end()
            .ends_with("deployment \"web\" successfully rolled out"),
        "{stdout}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_image_history_undo_and_undo_to_revision() {
    let kube = with_web("nginx:1.0", 600).await;
    rollout_succeeds(&kube).await;
    let v1 = replica_sets(&kube).await;
    assert_eq!(v1.len(), 1);
    let (v1_name, v1_rev, _, v1_replicas) = v1[0].clone();
    assert_eq!((v1_rev.as_str(), v1_replicas), ("1", 3));
    assert!(v1_name.starts_with("web-"), "{v1_name}");

    let out = kube
        .kubectl(&["set", "image", "deploy/web", "app=nginx:2.0", "--record"])
        .await;
    assert_eq!(out.ok(), "deployment.apps/web image updated\n");
    let status = rollout_succeeds(&kube).await;
    assert!(
        status.contains("Waiting for deployment \"web\" rollout to finish:"),
        "rollout status waited: {status}"
    );

    let history = kube.kubectl(&["rollout", "history", "deploy/web"]).await;
    let history = history.ok();
    assert!(
        history.starts_with("deployment.apps/web \nREVISION  CHANGE-CAUSE\n"),
        "{history}"
    );
    assert!(history.contains("1         <none>\n"), "{history}");
    assert!(
        history.contains("2         kubectl set image deploy/web app=nginx:2.0 --record=true\n"),
        "{history}"
    );

    let out = kube.kubectl(&["rollout", "undo", "deploy/web"]).await;
    assert_eq!(out.ok(), "deployment.apps/web rolled back\n");
    rollout_succeeds(&kube).await;
    let rses = replica_sets(&kube).await;
    assert_eq!(
        rses.len(),
        2,
        "the rollback re-used the v1 ReplicaSet: {rses:?}"
    );
    assert_eq!(rses[1], (v1_name.clone(), "3".into(), "1".into(), 3));
    assert_eq!(rses[0].3, 0);
    let image = kube
        .kubectl(&[
            "get",
            "deploy/web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(image.ok(), "nginx:1.0");
    let get_rs = kube.kubectl(&["get", "rs"]).await;
    let get_rs = get_rs.ok();
    let v1_row = get_rs
        .lines()
        .find(|l| l.starts_with(&v1_name))
        .unwrap_or_else(|| panic!("no row for {v1_name}: {get_rs}"));
    let cells: Vec<&str> = v1_row.split_whitespace().collect();
    assert_eq!(
        &cells[1..4],
        ["3", "3", "3"],
        "DESIRED CURRENT READY: {get_rs}"
    );

    let history = kube.kubectl(&["rollout", "history", "deploy/web"]).await;
    let history = history.ok().to_owned();
    assert!(!history.contains("\n1 "), "revision 1 became 3: {history}");
    assert!(history.contains("3         <none>\n"), "{history}");

    let out = kube
        .kubectl(&["rollout", "undo", "deploy/web", "--to-revision=2"])
        .await;
    assert_eq!(out.ok(), "deployment.apps/web rolled back\n");
    rollout_succeeds(&kube).await;
    let rses = replica_sets(&kube).await;
    assert_eq!(rses.len(), 2);
    assert_eq!(
        (rses[1].1.as_str(), rses[1].2.as_str(), rses[1].3),
        ("4", "2", 3)
    );
    let revision = kube
        .kubectl(&[
            "get",
            "deploy/web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
        ])
        .await;
    assert_eq!(revision.ok(), "4");

    let out = kube
        .kubectl(&["rollout", "undo", "deploy/web", "--to-revision=9"])
        .await;
    assert!(
        out.failed()
            .contains("unable to find specified revision 9 in history"),
        "{out:?}"
    );

    let describe = kube.kubectl(&["describe", "deploy/web"]).await;
    let describe = describe.ok();
    assert!(describe.contains("ScalingReplicaSet"), "{describe}");
    assert!(
        describe.contains(&format!("Scaled up replica set {v1_name} from 0 to 1")),
        "{describe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_restart_and_scale() {
    let kube = with_web("nginx:1.0", 600).await;
    rollout_succeeds(&kube).await;

    let out = kube.kubectl(&["rollout", "pause", "deploy/web"]).await;
    assert_eq!(out.ok(), "deployment.apps/web paused\n");
    kube.kubectl(&["set", "image", "deploy/web", "app=nginx:2.0"])
        .await
        .ok();
    let status = kube
        .kubectl(&["rollout", "status", "deploy/web", "--watch=false"])
        .await;
    assert_eq!(
        status.ok(),
        "Waiting for deployment \"web\" rollout to finish: 0 out of 3 new replicas have been updated...\n"
    );
    assert_eq!(
        replica_sets(&kube).await.len(),
        1,
        "no new ReplicaSet while paused"
    );
    let reason = kube
        .kubectl(&[
            "get",
            "deploy/web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
        ])
        .await;
    assert_eq!(reason.ok(), "DeploymentPaused");

    let out = kube.kubectl(&["rollout", "resume", "deploy/web"]).await;
    assert_eq!(out.ok(), "deployment.apps/web resumed\n");
    rollout_succeeds(&kube).await;
    assert_eq!(replica_sets(&kube).await.len(), 2);
    kube.kubectl(&["rollout", "pause", "deploy/web"]).await.ok();
    let undo = kube.kubectl(&["rollout", "undo", "deploy/web"]).await;
    assert!(
        undo.failed()
            .contains("you cannot rollback a paused deployment"),
        "{undo:?}"
    );
    kube.kubectl(&["rollout", "resume", "deploy/web"])
        .await
        .ok();

    let out = kube.kubectl(&["rollout", "restart", "deploy/web"]).await;
    assert_eq!(out.ok(), "deployment.apps/web restarted\n");
    rollout_succeeds(&kube).await;
    let rses = replica_sets(&kube).await;
    assert_eq!(rses.len(), 3);
    assert_eq!(rses.iter().map(|r| r.3).collect::<Vec<_>>(), [0, 0, 3]);

    let out = kube.kubectl(&["scale", "deploy/web", "--replicas=5"]).await;
    assert_eq!(out.ok(), "deployment.apps/web scaled\n");
    rollout_succeeds(&kube).await;
    let ready = kube
        .kubectl(&["get", "deploy/web", "-o", "jsonpath={.status.readyReplicas}/{.status.updatedReplicas}/{.status.availableReplicas}"])
        .await;
    assert_eq!(ready.ok(), "5/5/5");
    let newest = &replica_sets(&kube).await[2].0;
    let events = kube
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "reason=ScalingReplicaSet",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await;
    assert!(
        events
            .ok()
            .contains(&format!("Scaled up replica set {newest} from 3 to 5")),
        "{events:?}"
    );
    let pods = json(&kube, &["get", "pods", "-l", "app=web"]).await;
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_image_exceeds_the_progress_deadline() {
    let kube = with_web("model:v1", 3).await;
    rollout_succeeds(&kube).await;
    kube.kubectl(&["set", "image", "deploy/web", "app=model:v2-crashloop"])
        .await
        .ok();
    let out = kube
        .kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "error: deployment \"web\" exceeded its progress deadline\n"
    );
    assert!(
        out.stdout.contains("Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."),
        "{out:?}"
    );
    let message = kube
        .kubectl(&[
            "get",
            "deploy/web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].message}",
        ])
        .await;
    let rses = replica_sets(&kube).await;
    assert_eq!(
        message.ok(),
        format!("ReplicaSet \"{}\" has timed out progressing.", rses[1].0)
    );
    assert_eq!(rses[0].3, 3, "the old pods keep serving");

    // The new pod crash-loops: poll (bounded) until the kubelet reports a back-off.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reasons = kube
            .kubectl(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].status.containerStatuses[0].state.waiting.reason}",
            ])
            .await;
        if reasons.ok().contains("CrashLoopBackOff") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pod in CrashLoopBackOff within 30s: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let backoff = kube
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "reason=BackOff,type=Warning",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await;
    assert!(
        backoff
            .ok()
            .contains("Back-off restarting failed container app in pod web-"),
        "{backoff:?}"
    );
}
