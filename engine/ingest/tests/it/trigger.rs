//! `POST /v1/trigger`: a member of the owner team triggers a runbook; everyone else is refused
//! with the right status.

use serde_json::{Value, json};

use crate::harness::{LIMIT, accepted, assert_bus_quiet, code, drain, embedded};

fn request(runbook: &str) -> String {
    json!({"runbook": runbook, "params": {"namespace": "team-a", "replicas": 3}}).to_string()
}

#[tokio::test]
async fn a_member_of_the_owner_team_triggers_a_run() {
    let (server, _bus, _dir) = embedded(None).await;
    let (status, body) = server
        .post("/v1/trigger", Some("tok-ann"), request("model-error-rate"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["actor"], "ann");
    let ids = accepted(&body);
    let events = drain(&server.bus, &ids.iter().cloned().collect()).await;
    let event = &events[0];
    assert_eq!(
        (event.source.as_str(), event.kind.as_str()),
        ("manual", "trigger")
    );
    assert_eq!(event.data["runbook"], "model-error-rate");
    assert_eq!(
        event.data["actor"], "ann",
        "the actor is the token's member"
    );
    assert_eq!(event.data["params"]["replicas"], 3);
    assert_eq!(event.namespace.as_deref(), Some("team-a"));
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_the_same_event() {
    let (server, _bus, _dir) = embedded(None).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = server
            .http
            .post(server.url("/v1/trigger"))
            .header("content-type", "application/json")
            .bearer_auth("tok-ann")
            .header("idempotency-key", "page-4711")
            .body(request("model-error-rate"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        ids.push(accepted(&response.json::<Value>().await.unwrap()));
    }
    assert_eq!(ids[0], ids[1]);
    drain(&server.bus, &ids[0].iter().cloned().collect()).await;
    assert_bus_quiet(&server.bus).await;

    let response = server
        .http
        .post(server.url("/v1/trigger"))
        .header("content-type", "application/json")
        .bearer_auth("tok-ann")
        .header("idempotency-key", "has space")
        .body(request("model-error-rate"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn an_unknown_runbook_is_404() {
    let (server, _bus, _dir) = embedded(None).await;
    let (status, body) = server
        .post("/v1/trigger", Some("tok-ann"), request("no-such-runbook"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(code(&body), "unknown_runbook");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-runbook")
    );
    server.assert_serving().await;
}

#[tokio::test]
async fn a_missing_or_unknown_token_is_401() {
    let (server, _bus, _dir) = embedded(None).await;
    for token in [None, Some("tok-nobody")] {
        let (status, body) = server
            .post("/v1/trigger", token, request("model-error-rate"))
            .await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(code(&body), "unauthorized");
    }
    server.assert_serving().await;
    assert_bus_quiet(&server.bus).await;
}

#[tokio::test]
async fn a_member_of_another_team_is_403() {
    let (server, _bus, _dir) = embedded(None).await;
    let (status, body) = server
        .post("/v1/trigger", Some("tok-bob"), request("model-error-rate"))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(code(&body), "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ml-platform"),
        "{body}"
    );
    server.assert_serving().await;
    assert_bus_quiet(&server.bus).await;
}

#[tokio::test]
async fn bad_bodies_are_400_or_413() {
    let (server, _bus, _dir) = embedded(None).await;
    let cases = [
        ("{\"runbook\": ", 400, "malformed_json"),
        (
            "{\"runbook\": \"model-error-rate\", \"parms\": {}}",
            400,
            "invalid_request",
        ),
        ("{\"params\": {}}", 400, "invalid_request"),
        ("{\"runbook\": \"\"}", 400, "invalid_request"),
        ("[1, 2]", 400, "invalid_request"),
    ];
    for (body, want_status, want_code) in cases {
        let (status, reply) = server.post("/v1/trigger", Some("tok-ann"), body).await;
        assert_eq!(
            (status, code(&reply)),
            (want_status, want_code),
            "{body}: {reply}"
        );
    }
    let huge = json!({"runbook": "model-error-rate", "params": {"blob": "x".repeat(LIMIT)}});
    let (status, reply) = server
        .post("/v1/trigger", Some("tok-ann"), huge.to_string())
        .await;
    assert_eq!((status, code(&reply)), (413, "body_too_large"));
    server.assert_serving().await;
    assert_bus_quiet(&server.bus).await;
}

/// Params are checked against the manifest before the trigger is accepted: a param of the
/// wrong type or an unknown one is 422 naming it, and nothing reaches the bus.
#[tokio::test]
async fn params_that_do_not_fit_the_manifest_are_422_naming_the_field() {
    let (server, _bus, _dir) = embedded(None).await;
    for (params, field) in [
        (json!({"replicas": "three"}), "replicas"),
        (json!({"replicaz": 3}), "replicaz"),
    ] {
        let (status, body) = server
            .post(
                "/v1/trigger",
                Some("tok-ann"),
                json!({"runbook": "model-error-rate", "params": params}).to_string(),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(code(&body), "invalid_params");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{message}");
    }
    assert_bus_quiet(&server.bus).await;
}

/// A dry run asked for over HTTP travels with the event to whichever engine runs it.
#[tokio::test]
async fn a_dry_run_travels_with_the_trigger() {
    let (server, _bus, _dir) = embedded(None).await;
    let (status, body) = server
        .post(
            "/v1/trigger",
            Some("tok-ann"),
            json!({"runbook": "model-error-rate", "params": {"replicas": 3}, "dry_run": true})
                .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["dry_run"], true);
    let ids = accepted(&body);
    let events = drain(&server.bus, &ids.iter().cloned().collect()).await;
    assert!(events[0].dry_run(), "{:?}", events[0].data);
}

/// While the engine is not ready (its audit journal cannot write), triggers and alerts are
/// answered 503 with Retry-After and nothing is accepted.
#[tokio::test]
async fn an_engine_that_cannot_journal_takes_nothing() {
    let (server, _bus, _dir) = embedded(None).await;
    server
        .engine_ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = server
        .post("/v1/trigger", Some("tok-ann"), request("model-error-rate"))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(code(&body), "not_ready");
    let alert = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/it/fixtures/alertmanager/webhook-firing.json"),
    )
    .unwrap();
    let (status, body) = server.post("/v1/alertmanager", None, alert).await;
    assert_eq!(status, 503, "{body}");
    assert_bus_quiet(&server.bus).await;
}

/// Runbook names cannot be probed without a token: authentication comes before the lookup.
#[tokio::test]
async fn an_unknown_runbook_without_a_token_is_401_not_404() {
    let (server, _bus, _dir) = embedded(None).await;
    for token in [None, Some("tok-nobody")] {
        let (status, body) = server
            .post("/v1/trigger", token, request("no-such-runbook"))
            .await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(code(&body), "unauthorized");
    }
}

/// The actor is whoever the token belongs to; an `actor` in the body is not believed.
#[tokio::test]
async fn a_forged_actor_in_the_body_is_ignored() {
    let (server, _bus, _dir) = embedded(None).await;
    let body = serde_json::json!({
        "runbook": "model-error-rate", "params": {}, "actor": "mallory",
    })
    .to_string();
    let (status, answer) = server.post("/v1/trigger", Some("tok-ann"), body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["actor"], "ann");
    let want = accepted(&answer).into_iter().collect();
    let events = drain(&server.bus, &want).await;
    assert_eq!(events[0].data["actor"], "ann");
}
