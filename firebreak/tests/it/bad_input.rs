//! Bad input over HTTP against the real binary: each kind gets its status and a JSON error
//! naming the problem, and the engine keeps serving (a good alert afterwards still runs).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Serve, ServeOpts, write_runbooks};

const TOKEN: &str = "am-token-5f2c";
const LIMIT: usize = 2048;

fn webhook(version: &str, instance: &str) -> Value {
    json!({
        "version": version, "status": "firing", "receiver": "firebreak", "groupKey": "{}:{alertname=\"Ping\"}",
        "groupLabels": {"alertname": "Ping"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am.invalid", "truncatedAlerts": 0,
        "alerts": [{"status": "firing",
            "labels": {"alertname": "Ping", "namespace": "shop", "instance": instance},
            "annotations": {}, "startsAt": "2026-11-27T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": format!("{:0>16}", instance.len())}],
    })
}

/// Asserts the `{"error": {"code", "message"}}` shape, the code, and words in the message.
fn assert_error(what: &str, got: (u16, Value), status: u16, code: &str, words: &[&str]) {
    let (got_status, body) = got;
    assert_eq!(got_status, status, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    for word in words {
        assert!(
            message.contains(word),
            "{what}: the message should name {word:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_request_gets_its_json_error_and_the_engine_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "ping.yaml",
                "name: ping\nteam: sre\ndescription: answers Ping\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"Ping\"']\n\
                 params:\n  instance: { from: label, key: instance, type: string, required: true }\n\
                 concurrency: \"{{params.instance}}\"\ntimeout: 30s\n",
            ),
            ("ping.rhai", "log(`pong ${ctx.params.instance}`);\n"),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_ALERTMANAGER_TOKEN", TOKEN.into())],
            config: Some(format!("limits:\n  max_body_bytes: {LIMIT}\n")),
            ..ServeOpts::default()
        },
    )
    .await;
    let am = "/v1/alertmanager";
    let good = webhook("4", "web-1").to_string();

    assert_error(
        "no token",
        serve.post(am, None, good.clone()).await,
        401,
        "unauthorized",
        &["authorization"],
    );
    assert_error(
        "wrong token",
        serve.post(am, Some("not-the-token"), good.clone()).await,
        401,
        "unauthorized",
        &["token"],
    );
    assert_error(
        "malformed json",
        serve
            .post(am, Some(TOKEN), r#"{"version": "4", "alerts": ["#)
            .await,
        400,
        "malformed_json",
        &["json"],
    );
    assert_error(
        "wrong version",
        serve
            .post(am, Some(TOKEN), webhook("3", "web-1").to_string())
            .await,
        422,
        "unsupported_version",
        &["version", "3"],
    );
    assert_error(
        "not a webhook",
        serve
            .post(
                am,
                Some(TOKEN),
                json!({"version": "4", "alerts": "none"}).to_string(),
            )
            .await,
        400,
        "invalid_request",
        &["invalid", "expected a sequence"],
    );
    let mut big = webhook("4", "web-1");
    big["commonAnnotations"]["padding"] = json!("x".repeat(LIMIT));
    assert_error(
        "body over the limit",
        serve.post(am, Some(TOKEN), big.to_string()).await,
        413,
        "body_too_large",
        &[&LIMIT.to_string()],
    );
    assert_error(
        "unknown runbook",
        serve
            .post(
                "/v1/trigger",
                None,
                json!({"runbook": "no-such-runbook", "params": {}}).to_string(),
            )
            .await,
        404,
        "unknown_runbook",
        &["no-such-runbook"],
    );
    assert_error(
        "malformed trigger",
        serve.post("/v1/trigger", None, "{\"runbook\": ").await,
        400,
        "malformed_json",
        &["json"],
    );

    // Nothing of that reached the dispatcher; the engine still serves a good alert.
    assert!(
        serve.journal().runs().is_empty(),
        "{}",
        serve.journal().summary()
    );
    let (status, body) = serve.post(am, Some(TOKEN), good).await;
    assert_eq!(status, 202, "{body}");
    let journal = serve
        .wait_journal(
            "the good alert's run to finish",
            Duration::from_secs(30),
            |j| j.finished("ping").len() == 1,
        )
        .await;
    let run = &journal.finished("ping")[0];
    assert_eq!(run.status(), Some("succeeded"));
    assert_eq!(
        run.started().unwrap()["body"]["params"]["instance"],
        "web-1"
    );
    assert_eq!(journal.runs().len(), 1, "{}", journal.summary());
}
