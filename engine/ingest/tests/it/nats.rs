//! Ingest in front of JetStream on a real nats-server: accepted alerts are on the stream, and
//! while nats-server is down ingest answers 503 (so Alertmanager retries) and loses nothing it
//! answered 2xx.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use firebreak_bus::testutil::NatsServer;
use firebreak_bus::{NatsBus, NatsOptions};
use serde_json::{Value, json};

use crate::harness::{FIXTURES, Server, accepted, code, drain, fixture};

/// A copy of the firing fixture for a distinct alert (its own fingerprint, so its own id).
fn alert(n: usize) -> String {
    let mut payload: Value = serde_json::from_slice(&fixture("webhook-firing.json")).unwrap();
    payload["alerts"][0]["fingerprint"] = json!(format!("{n:016x}"));
    payload["alerts"][0]["labels"]["pod"] = json!(format!("pod-{n}"));
    payload.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_answered_2xx_survive_a_nats_server_outage() {
    let mut nats = NatsServer::start().expect("nats-server");
    let bus = Arc::new(
        NatsBus::connect(&nats.url(), NatsOptions::default())
            .await
            .expect("connect"),
    );
    let server = Server::start(bus.clone(), None).await;

    let mut answered = BTreeSet::new();
    for name in FIXTURES {
        let (status, body) = server.post("/v1/alertmanager", None, fixture(name)).await;
        assert_eq!(status, 202, "{name}: {body}");
        answered.extend(accepted(&body));
    }
    for n in 0..20 {
        let (status, body) = server.post("/v1/alertmanager", None, alert(n)).await;
        assert_eq!(status, 202, "{body}");
        answered.extend(accepted(&body));
    }

    nats.kill();
    let mut refused = 0;
    let mut n = 100;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while refused < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest never answered 503"
        );
        let (status, body) = server.post("/v1/alertmanager", None, alert(n)).await;
        n += 1;
        match status {
            202 => answered.extend(accepted(&body)),
            503 => {
                assert_eq!(code(&body), "bus_unavailable");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(server.get("/readyz").await.status(), 503);
    server.assert_serving().await;

    nats.restart().expect("restart nats-server");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = server.post("/v1/alertmanager", None, alert(n)).await;
        n += 1;
        if status == 202 {
            answered.extend(accepted(&body));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest never recovered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.get("/readyz").await.status(), 200);
    let events = drain(&server.bus, &answered).await;
    assert!(events.len() >= answered.len());
}

/// One alert bigger than nats-server's message limit (1 MiB) is 413, not a 500, and the server
/// keeps serving.
#[tokio::test]
async fn an_alert_over_the_nats_message_limit_is_413() {
    let nats = NatsServer::start().expect("nats-server");
    let bus = Arc::new(
        NatsBus::connect(&nats.url(), NatsOptions::default())
            .await
            .expect("connect"),
    );
    let server = Server::start_with_limit(bus, None, 4 << 20).await;
    let mut payload: Value = serde_json::from_slice(&fixture("webhook-firing.json")).unwrap();
    payload["alerts"][0]["annotations"]["description"] = json!("x".repeat(2 << 20));
    let (status, body) = server
        .post("/v1/alertmanager", None, payload.to_string())
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body), "event_too_large");
    let (status, _) = server
        .post("/v1/alertmanager", None, fixture("webhook-firing.json"))
        .await;
    assert_eq!(status, 202);
}
