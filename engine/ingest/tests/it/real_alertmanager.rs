//! The real Alertmanager 0.25 (Debian's `prometheus-alertmanager`) notifies our ingest through a
//! webhook receiver with bearer auth; a firing and then a resolved alert land on the bus.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::harness::{AM_TOKEN, client, embedded};

/// A running Alertmanager, killed on drop.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    firebreak_bus::port::free_loopback_port().unwrap()
}

fn binary() -> String {
    std::env::var("ALERTMANAGER_BIN").unwrap_or_else(|_| "/usr/bin/prometheus-alertmanager".into())
}

impl Alertmanager {
    /// Starts Alertmanager with one webhook receiver pointing at `webhook`, sending `token`,
    /// grouping by alertname with no waiting; waits (bounded) until `/-/ready` answers 200.
    async fn start(webhook: &str, token: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "route:
  receiver: firebreak
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: firebreak
    webhook_configs:
      - url: {webhook}
        send_resolved: true
        http_config:
          authorization:
            credentials: {token}
"
        );
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary()));
        let am = Alertmanager {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let http = client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = http.get(format!("{}/-/ready", am.url)).send().await
                && r.status() == 200
            {
                return am;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "alertmanager on {} not ready within 15s",
                am.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Posts one alert through Alertmanager's v2 API (`ends_at` in the past resolves it).
    async fn post_alert(&self, ends_at: Option<&str>) {
        let mut alert = json!({
            "labels": {"alertname": "ModelErrorRateHigh", "namespace": "team-a",
                       "deployment": "fraud-model", "severity": "critical"},
            "annotations": {"summary": "5xx ratio of fraud-model is 22%"},
            "generatorURL": "http://prometheus.invalid/graph",
        });
        if let Some(ends_at) = ends_at {
            alert["endsAt"] = json!(ends_at);
        }
        let response = client()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&json!([alert]))
            .send()
            .await
            .expect("post alert to alertmanager");
        assert_eq!(response.status(), 200, "alertmanager refused the alert");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_0_25_fires_and_resolves_through_ingest() {
    let (server, _bus, _dir) = embedded(Some(AM_TOKEN)).await;
    let am = Alertmanager::start(&server.url("/v1/alertmanager"), AM_TOKEN).await;
    let mut stream = server.bus.consume().await.expect("consume");

    am.post_alert(None).await;
    let firing = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("alertmanager's firing notification reached the bus")
        .unwrap()
        .unwrap();
    assert_eq!(firing.event.source, "alertmanager");
    assert_eq!(firing.event.kind, "firing");
    assert_eq!(firing.event.subject, "ModelErrorRateHigh");
    assert_eq!(firing.event.namespace.as_deref(), Some("team-a"));
    let fingerprint = firing.event.fingerprint.clone().expect("fingerprint");
    firing.ack().await.unwrap();

    am.post_alert(Some("2020-01-01T00:00:00Z")).await;
    // Alertmanager may repeat the firing notification before the resolved one; both share the
    // alert's fingerprint and the repeat is deduplicated by id.
    let mut kinds = BTreeSet::new();
    while !kinds.contains("resolved") {
        let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("alertmanager's resolved notification reached the bus")
            .unwrap()
            .unwrap();
        assert_eq!(d.event.fingerprint.as_deref(), Some(fingerprint.as_str()));
        kinds.insert(d.event.kind.clone());
        d.ack().await.unwrap();
    }
}
