//! `POST /v1/alertmanager`: real Alertmanager 0.25 payloads in, events on the bus; every bad
//! input gets its status and code and leaves the server serving.

use std::collections::BTreeSet;
use std::sync::Arc;

use firebreak_bus::Bus;
use serde_json::{Value, json};

use crate::harness::{
    AM_TOKEN, FIXTURES, LIMIT, accepted, assert_bus_quiet, code, drain, embedded, fixture,
};

#[tokio::test]
async fn every_fixture_is_accepted_and_its_events_are_on_the_bus() {
    let (server, _bus, _dir) = embedded(None).await;
    let mut want = BTreeSet::new();
    let mut alerts = 0;
    for name in FIXTURES {
        let body = fixture(name);
        let payload: Value = serde_json::from_slice(&body).unwrap();
        let count = payload["alerts"].as_array().unwrap().len();
        alerts += count;
        let (status, reply) = server.post("/v1/alertmanager", None, body).await;
        assert_eq!(status, 202, "{name}: {reply}");
        let ids = accepted(&reply);
        assert_eq!(ids.len(), count, "{name}: one event per alert");
        want.extend(ids);
    }
    let events = drain(&server.bus, &want).await;
    assert_eq!(events.len(), want.len());
    assert!(alerts >= want.len());
    for event in &events {
        assert_eq!(event.source, "alertmanager");
        assert!(
            ["firing", "resolved"].contains(&event.kind.as_str()),
            "{}",
            event.kind
        );
        assert!(event.fingerprint.is_some());
        assert!(event.data["labels"]["alertname"].is_string());
    }
    let resolved = events.iter().filter(|e| e.kind == "resolved").count();
    assert!(
        resolved >= 2,
        "the resolved fixtures arrive as resolved events"
    );
}

#[tokio::test]
async fn a_repeated_notification_is_one_event() {
    let (server, _bus, _dir) = embedded(None).await;
    let (s1, r1) = server
        .post("/v1/alertmanager", None, fixture("webhook-firing.json"))
        .await;
    let (s2, r2) = server
        .post("/v1/alertmanager", None, fixture("webhook-firing.json"))
        .await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(accepted(&r1), accepted(&r2), "same alert, same id");
    drain(&server.bus, &accepted(&r1).into_iter().collect()).await;
    assert_bus_quiet(&server.bus).await;
}

#[tokio::test]
async fn malformed_json_is_400_and_names_the_position() {
    let (server, _bus, _dir) = embedded(None).await;
    let (status, body) = server
        .post("/v1/alertmanager", None, "{\"version\": \"4\",")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body), "malformed_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{body}"
    );
    server.assert_serving().await;
    let (status, _) = server.post("/v1/alertmanager", None, "").await;
    assert_eq!(status, 400, "an empty body is malformed too");
}

#[tokio::test]
async fn a_wrong_version_is_422() {
    let (server, _bus, _dir) = embedded(None).await;
    let mut payload: Value = serde_json::from_slice(&fixture("webhook-firing.json")).unwrap();
    payload["version"] = json!("3");
    let (status, body) = server
        .post("/v1/alertmanager", None, payload.to_string())
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "unsupported_version");
    assert!(
        body["error"]["message"].as_str().unwrap().contains('3'),
        "{body}"
    );
    server.assert_serving().await;
    assert_bus_quiet(&server.bus).await;
}

#[tokio::test]
async fn json_that_is_not_a_webhook_is_400_naming_the_field() {
    let (server, _bus, _dir) = embedded(None).await;
    let (status, body) = server
        .post(
            "/v1/alertmanager",
            None,
            json!({"version": "4", "status": "firing"}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body), "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alerts"),
        "{body}"
    );
    server.assert_serving().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let (server, _bus, _dir) = embedded(None).await;
    let mut payload: Value = serde_json::from_slice(&fixture("webhook-firing.json")).unwrap();
    payload["alerts"][0]["annotations"]["description"] = json!("x".repeat(LIMIT));
    let (status, body) = server
        .post("/v1/alertmanager", None, payload.to_string())
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body), "body_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&LIMIT.to_string())
    );
    server.assert_serving().await;
    let (status, _) = server
        .post("/v1/alertmanager", None, fixture("webhook-firing.json"))
        .await;
    assert_eq!(status, 202, "a good body right after is accepted");
}

#[tokio::test]
async fn with_a_token_configured_only_the_right_bearer_gets_in() {
    let (server, _bus, _dir) = embedded(Some(AM_TOKEN)).await;
    for token in [None, Some("wrong"), Some("am-s3cre")] {
        let (status, body) = server
            .post("/v1/alertmanager", token, fixture("webhook-firing.json"))
            .await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(code(&body), "unauthorized");
    }
    let response = server
        .http
        .post(server.url("/v1/alertmanager"))
        .header("content-type", "application/json")
        .body(fixture("webhook-firing.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_bus_quiet(&server.bus).await;
    let (status, body) = server
        .post(
            "/v1/alertmanager",
            Some(AM_TOKEN),
            fixture("webhook-firing.json"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn a_closed_bus_is_503_with_retry_after_and_readyz_says_so() {
    let (server, bus, _dir) = embedded(None).await;
    bus.close().await;
    let response = server
        .http
        .post(server.url("/v1/alertmanager"))
        .header("content-type", "application/json")
        .body(fixture("webhook-firing.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "bus_unavailable");
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    server.assert_serving().await;
    let _: Arc<dyn Bus> = bus;
}

/// 16 concurrent senders (as the load generator runs): every alert answered 202 is on the bus,
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_lose_and_duplicate_nothing() {
    let (server, _bus, _dir) = embedded(None).await;
    let server = Arc::new(server);
    let template: Value = serde_json::from_slice(&fixture("webhook-firing.json")).unwrap();
    let mut senders = Vec::new();
    for s in 0..16 {
        let server = Arc::clone(&server);
        let template = template.clone();
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let mut payload = template.clone();
                payload["alerts"][0]["fingerprint"] = json!(format!("{s:08x}{i:08x}"));
                let (status, body) = server
                    .post("/v1/alertmanager", None, payload.to_string())
                    .await;
                assert_eq!(status, 202, "{body}");
                ids.extend(accepted(&body));
            }
            ids
        }));
    }
    let mut want = BTreeSet::new();
    for sender in senders {
        want.extend(sender.await.unwrap());
    }
    assert_eq!(want.len(), 400, "distinct alerts, distinct ids");
    let events = drain(&server.bus, &want).await;
    assert_eq!(events.len(), 400, "each event delivered once");
    assert_bus_quiet(&server.bus).await;
}

/// A browser page elsewhere cannot post alerts or triggers: a JSON endpoint takes only
/// `application/json` (a form or text/plain post, which needs no CORS preflight, is 415), and
/// a request a browser marks as cross-site (`Sec-Fetch-Site`, or an `Origin` that is not this
/// server) is 403, before anything is read or published.
#[tokio::test]
async fn cross_site_and_non_json_posts_are_refused() {
    let (server, _bus, _dir) = embedded(None).await;
    let alert = fixture("webhook-firing.json");
    for path in ["/v1/alertmanager", "/v1/trigger"] {
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let response = server
                .http
                .post(server.url(path))
                .bearer_auth("tok-ann")
                .header("content-type", content_type)
                .body(alert.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 415, "{path} {content_type}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(code(&body), "unsupported_media_type", "{body}");
        }
        let no_type = server
            .http
            .post(server.url(path))
            .body(alert.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(no_type.status(), 415, "{path} without a content type");
        for (header, value) in [
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
            ("origin", "https://evil.example"),
            ("origin", "null"),
        ] {
            let response = server
                .http
                .post(server.url(path))
                .bearer_auth("tok-ann")
                .header("content-type", "application/json")
                .header(header, value)
                .body(alert.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 403, "{path} {header}: {value}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(code(&body), "cross_site", "{body}");
        }
    }
    // Nothing refused reached the bus.
    assert_bus_quiet(&server.bus).await;
    // application/json with a charset, and a same-origin request, are fine.
    let response = server
        .http
        .post(server.url("/v1/alertmanager"))
        .header("content-type", "application/json; charset=utf-8")
        .header("sec-fetch-site", "same-origin")
        .body(alert)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}
