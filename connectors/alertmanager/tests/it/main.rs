//! The Alertmanager connector against the real Alertmanager 0.25: a silence mutes the alert
//! it selects and is lifted again; a replayed silence finds the one it made; bad input and an
//! unknown silence are clear errors.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firebreak_alertmanager::AlertmanagerConnector;
use firebreak_connector::{ActionContext, Connector, ErrorKind};
use serde_json::{Value, json};

struct Am {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Am {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn start() -> Am {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("am.yml"),
        "route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("prometheus-alertmanager")
        .arg(format!(
            "--config.file={}",
            dir.path().join("am.yml").display()
        ))
        .arg(format!("--storage.path={}", dir.path().display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("am.log")).unwrap())
        .spawn()
        .expect("prometheus-alertmanager is installed");
    let am = Am {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http().get(format!("{}/-/ready", am.base)).send().await
            && r.status().is_success()
        {
            return am;
        }
        assert!(
            Instant::now() < deadline,
            "alertmanager not ready in 30 s: {}",
            std::fs::read_to_string(am._dir.path().join("am.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cx() -> ActionContext {
    ActionContext {
        run_id: "run-7".into(),
        runbook: "canary-rollback".into(),
        team: "ml".into(),
        namespaces: vec![],
        progress: Arc::new(|_: &str| {}),
    }
}

fn map(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// The alert's state in Alertmanager (`active` or `suppressed`).
async fn state(am: &Am) -> String {
    let alerts: Value = http()
        .get(format!("{}/api/v2/alerts", am.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    alerts[0]["status"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_mutes_its_alert_is_found_again_on_replay_and_is_lifted() {
    let am = start().await;
    let resp = http()
        .post(format!("{}/api/v2/alerts", am.base))
        .json(&json!([{"labels": {"alertname": "CanaryErrorRate", "namespace": "shop"}}]))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let c = AlertmanagerConnector::new(&am.base, http()).unwrap();
    let cx = cx();

    let alerts = c
        .call(
            "alerts",
            map(json!({"filter": ["alertname=\"CanaryErrorRate\""]})),
            &cx,
        )
        .await
        .unwrap();
    assert_eq!(alerts["count"], 1, "{alerts}");
    assert_eq!(state(&am).await, "active");

    let args = map(json!({
        "matchers": {"alertname": "CanaryErrorRate", "namespace": "shop"},
        "duration": "30m", "comment": "rolling the canary back"
    }));
    let intent = c.plan("silence", args.clone(), &cx).await.unwrap();
    assert!(!intent.noop);
    let silence = c
        .apply("silence", args.clone(), &intent, &cx)
        .await
        .unwrap();
    let id = silence["id"].as_str().unwrap().to_owned();
    assert_eq!(silence["changed"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&am).await != "suppressed" {
        assert!(Instant::now() < deadline, "the alert was never silenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A retry or resume applies the journaled intent again, and a fresh plan for the same
    // run finds it: one silence, not two.
    let again = c
        .apply("silence", args.clone(), &intent, &cx)
        .await
        .unwrap();
    assert_eq!(
        (again["id"].as_str(), again["changed"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    assert!(c.plan("silence", args, &cx).await.unwrap().noop);
    let all: Value = http()
        .get(format!("{}/api/v2/silences", am.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert!(
        all[0]["comment"]
            .as_str()
            .unwrap()
            .contains("[firebreak run run-7")
    );

    let expire = map(json!({"id": id}));
    let intent = c.plan("expire", expire.clone(), &cx).await.unwrap();
    let out = c
        .apply("expire", expire.clone(), &intent, &cx)
        .await
        .unwrap();
    assert_eq!(out["changed"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&am).await != "active" {
        assert!(Instant::now() < deadline, "the silence was never lifted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.plan("expire", expire, &cx).await.unwrap().noop,
        "already expired"
    );

    let err = c
        .plan(
            "expire",
            map(json!({"id": "00000000-0000-0000-0000-000000000000"})),
            &cx,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{}", err.message);
    let err = c
        .plan(
            "silence",
            map(json!({"matchers": [], "duration": "1m"})),
            &cx,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    let err = c
        .plan(
            "silence",
            map(json!({"matchers": {"a": "b"}, "duration": "200h"})),
            &cx,
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("out of range"), "{}", err.message);
}

#[tokio::test]
async fn an_alertmanager_that_is_not_running_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = AlertmanagerConnector::new(&format!("http://127.0.0.1:{port}"), http()).unwrap();
    let err = c.call("alerts", map(json!({})), &cx()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transient, "{}", err.message);
}
