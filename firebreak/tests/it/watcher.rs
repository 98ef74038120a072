//! The Kubernetes event watcher wired by `serve`: a Deployment whose pod crash-loops in
//! kubesim starts `crashloop-triage` on its own (no alert); the run knows which pod or
//! Deployment it triages and collects the failing pod's logs; no two runs share an incident.

use std::time::Duration;

use crate::harness::{Cluster, Serve, ServeOpts, copy_shipped_runbooks, repo_root};

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_deployment_starts_crashloop_triage() {
    let mut controllers = kubesim::ControllerConfig::default();
    controllers.image_faults.insert(
        "registry.example.invalid/ml/fraud-model:v3-crashloop".to_owned(),
        kubesim::Fault::CrashLoop,
    );
    let cluster = Cluster::start(controllers).await;
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    copy_shipped_runbooks(&runbooks);
    let f = runbooks.join("crashloop-triage.yaml");
    std::fs::write(
        &f,
        std::fs::read_to_string(&f)
            .unwrap()
            .replace("key: pod,", "key: name,"),
    )
    .unwrap();
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
    // One replica of fraud-model on an image that crash-loops.
    let manifest =
        std::fs::read_to_string(repo_root().join("runbooks/tests/crashloop-triage/cluster.yaml"))
            .unwrap()
            .replace("replicas: 2", "replicas: 1");
    let file = tmp.path().join("crashloop.yaml");
    std::fs::write(&file, manifest).unwrap();
    cluster
        .kubectl(&["apply", "-f", file.to_str().unwrap()])
        .await
        .ok("kubectl apply the crash-looping fraud-model");

    let journal = serve
        .wait_journal(
            "crashloop-triage started by the watcher to finish",
            Duration::from_secs(60),
            |j| !j.finished("crashloop-triage").is_empty(),
        )
        .await;
    let run = &journal.finished("crashloop-triage")[0];
    assert_eq!(
        run.status(),
        Some("succeeded"),
        "{}\n{}",
        journal.summary(),
        serve.log_tail()
    );
    let event = &run.started().unwrap()["body"]["event"];
    assert_eq!(event["source"], "k8s", "{event}");
    assert_eq!(run.records[0]["actor"], "k8s");
    // The triage must know what it triages: the failing pod or its Deployment.
    let params = &run.started().unwrap()["body"]["params"];
    assert_eq!(params["namespace"], "ml-serving");
    assert!(
        params["deployment"] == "fraud-model"
            || params["pod"]
                .as_str()
                .is_some_and(|p| p.starts_with("fraud-model-")),
        "crashloop-triage started without a pod or deployment to look at: params {params}, event {event}"
    );
    let steps: Vec<&str> = run
        .records
        .iter()
        .filter(|r| r["body"]["type"] == "step_finished")
        .filter_map(|r| r["body"]["name"].as_str())
        .collect();
    assert!(
        steps.contains(&"k8s::logs"),
        "the failing pod's logs were collected: {steps:?}"
    );

    // At most one run per concurrency key (namespace/deployment/pod).
    let journal = serve.journal();
    let mut keys: Vec<String> = journal
        .runs_of("crashloop-triage")
        .iter()
        .map(|r| {
            let p = &r.started().unwrap()["body"]["params"];
            format!("{}/{}/{}", p["namespace"], p["deployment"], p["pod"])
        })
        .collect();
    let runs = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        runs,
        "one triage per incident\n{}",
        journal.summary()
    );
}
