//! `/healthz`, `/readyz`, `/metrics`, and unknown routes.

use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::harness::{code, embedded, fixture};

#[tokio::test]
async fn healthz_and_readyz_follow_the_engine() {
    let (server, _bus, _dir) = embedded(None).await;
    let health = server.get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    assert_eq!(server.get("/readyz").await.status(), 200);
    server.engine_ready.store(false, Ordering::SeqCst);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(code(&body), "not_ready");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine")
    );
    server.assert_serving().await;
}

#[tokio::test]
async fn metrics_count_alerts_and_errors_in_prometheus_text() {
    let (server, _bus, _dir) = embedded(None).await;
    assert_eq!(
        server
            .post(
                "/v1/alertmanager",
                None,
                fixture("webhook-grouped-firing.json")
            )
            .await
            .0,
        202
    );
    assert_eq!(server.post("/v1/alertmanager", None, "nope").await.0, 400);
    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for metric in [
        "firebreak_ingest_alerts_received_total",
        "firebreak_ingest_events_published_total{source=\"alertmanager\"}",
        "firebreak_ingest_errors_total{code=\"malformed_json\"}",
        "firebreak_ingest_publish_seconds",
    ] {
        assert!(text.contains(metric), "{metric} missing from:\n{text}");
    }
    // The counters move with every notification (their handles are registered once, at the
    // first request of a router): other tests share the recorder, so at least by as much.
    let before = (
        sample(&text, "firebreak_ingest_alerts_received_total"),
        sample(
            &text,
            "firebreak_ingest_events_published_total{source=\"alertmanager\"}",
        ),
    );
    for _ in 0..3 {
        let body = fixture("webhook-grouped-firing.json");
        assert_eq!(server.post("/v1/alertmanager", None, body).await.0, 202);
    }
    let text = server.get("/metrics").await.text().await.unwrap();
    let alerts =
        serde_json::from_slice::<Value>(&fixture("webhook-grouped-firing.json")).unwrap()["alerts"]
            .as_array()
            .unwrap()
            .len() as f64;
    assert!(sample(&text, "firebreak_ingest_alerts_received_total") >= before.0 + 3.0 * alerts);
    assert!(
        sample(
            &text,
            "firebreak_ingest_events_published_total{source=\"alertmanager\"}"
        ) >= before.1 + 3.0 * alerts
    );
}

/// The value of the sample named `name` (with its labels) in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let (server, _bus, _dir) = embedded(None).await;
    let response = server.get("/v1/nope").await;
    assert_eq!(response.status(), 404);
    assert_eq!(code(&response.json::<Value>().await.unwrap()), "not_found");
    let response = server.get("/v1/alertmanager").await;
    assert_eq!(response.status(), 405);
    assert_eq!(
        code(&response.json::<Value>().await.unwrap()),
        "method_not_allowed"
    );
}
