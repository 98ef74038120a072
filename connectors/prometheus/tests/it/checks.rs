//! `prom::check` against a real Prometheus: pass and fail on the right side of the threshold,
//! inconclusive for no data, NaN, several series and too little traffic.

use anyhow::Result;
use firebreak_connector::ErrorKind;
use serde_json::{Value, json};

use crate::harness::{Env, call};

const DEPTH: &str = "model_queue_depth{model=\"fraud\"}";
const P99: &str = "histogram_quantile(0.99, sum by (le) (model_request_duration_seconds_bucket{model=\"fraud\"}))";

async fn check(env: &Env, args: Value) -> Result<Value> {
    Ok(call(&env.prom.connector(), "check", args).await?)
}

#[tokio::test]
async fn checks_pass_fail_and_say_inconclusive() -> Result<()> {
    let env = Env::start(7.0).await?;

    for (op, threshold, verdict) in [
        ("<", 10.0, "pass"),
        (">", 10.0, "fail"),
        ("<=", 7.0, "pass"),
        ("<", 7.0, "fail"),
        (">=", 7.0, "pass"),
        (">=", 7.5, "fail"),
    ] {
        let out = check(
            &env,
            json!({"promql": DEPTH, "op": op, "threshold": threshold}),
        )
        .await?;
        assert_eq!(out["verdict"], verdict, "7 {op} {threshold}: {out}");
        assert_eq!(out["value"], json!(7.0));
        assert_eq!(out["threshold"], json!(threshold));
        assert_eq!(out["op"], op);
        assert!(!out["reason"].as_str().unwrap().is_empty());
        assert_eq!(out["metric"]["model"], "fraud");
    }

    // The canary question: p99 latency (exactly 0.5 s here) against an SLO.
    let ok = check(&env, json!({"promql": P99, "op": "<", "threshold": 0.6})).await?;
    assert_eq!(ok["verdict"], "pass", "{ok}");
    let slow = check(&env, json!({"promql": P99, "op": "<", "threshold": 0.4})).await?;
    assert_eq!(slow["verdict"], "fail", "{slow}");
    assert_eq!(slow["reason"], "0.5 is not < 0.4");

    // No data.
    let none = check(
        &env,
        json!({"promql": "model_queue_depth{model=\"nope\"}", "op": "<", "threshold": 1}),
    )
    .await?;
    assert_eq!(none["verdict"], "inconclusive", "{none}");
    assert_eq!(none["value"], Value::Null);
    assert!(
        none["reason"].as_str().unwrap().contains("no data"),
        "{none}"
    );

    // NaN (0/0, as an error ratio with no requests gives).
    let nan = check(
        &env,
        json!({"promql": "vector(0) / 0", "op": "<", "threshold": 0.01}),
    )
    .await?;
    assert_eq!(nan["verdict"], "inconclusive", "{nan}");
    assert_eq!(nan["value"], "NaN");

    // Several series: which one would the verdict be about?
    let many = check(
        &env,
        json!({"promql": "model_requests_total", "op": ">", "threshold": 0}),
    )
    .await?;
    assert_eq!(many["verdict"], "inconclusive", "{many}");
    assert!(
        many["reason"].as_str().unwrap().contains("3 series"),
        "{many}"
    );
    Ok(())
}

#[tokio::test]
async fn min_samples_query_gates_the_verdict() -> Result<()> {
    let env = Env::start(7.0).await?;

    // A model with no traffic: the value would pass, but nothing was served.
    let idle = check(
        &env,
        json!({"promql": DEPTH, "op": "<", "threshold": 10, "min_samples_query": "sum(model_requests_total{model=\"idle\"})"}),
    )
    .await?;
    assert_eq!(idle["verdict"], "inconclusive", "{idle}");
    assert_eq!(idle["samples"], json!(0.0));
    assert_eq!(idle["value"], json!(7.0), "the value is still evidence");
    assert!(
        idle["reason"]
            .as_str()
            .unwrap()
            .starts_with("too little traffic"),
        "{idle}"
    );

    // No traffic series at all.
    let absent = check(
        &env,
        json!({"promql": DEPTH, "op": "<", "threshold": 10, "min_samples_query": "sum(model_requests_total{model=\"nope\"})"}),
    )
    .await?;
    assert_eq!(absent["verdict"], "inconclusive", "{absent}");
    assert!(
        absent["reason"].as_str().unwrap().contains("no data"),
        "{absent}"
    );

    // 103 requests: enough for the default of 1 and for 100, not for 200.
    let traffic = "sum(model_requests_total{model=\"fraud\"})";
    let enough = check(
        &env,
        json!({"promql": DEPTH, "op": "<", "threshold": 10, "min_samples_query": traffic}),
    )
    .await?;
    assert_eq!(enough["verdict"], "pass", "{enough}");
    assert_eq!(enough["samples"], json!(103.0));
    assert_eq!(enough["min_samples"], json!(1.0));
    let failing = check(
        &env,
        json!({"promql": DEPTH, "op": ">", "threshold": 10, "min_samples_query": traffic, "min_samples": 100}),
    )
    .await?;
    assert_eq!(failing["verdict"], "fail", "{failing}");
    let short = check(
        &env,
        json!({"promql": DEPTH, "op": "<", "threshold": 10, "min_samples_query": traffic, "min_samples": 200}),
    )
    .await?;
    assert_eq!(short["verdict"], "inconclusive", "{short}");
    assert!(
        short["reason"]
            .as_str()
            .unwrap()
            .contains("103, fewer than 200"),
        "{short}"
    );
    Ok(())
}

#[tokio::test]
async fn checks_refuse_what_they_cannot_compare() -> Result<()> {
    let env = Env::start(7.0).await?;
    let prom = env.prom.connector();
    let cases = [
        (
            json!({"promql": "model_queue_depth[1m]", "op": "<", "threshold": 1}),
            "range vector",
        ),
        (
            json!({"promql": "\"text\"", "op": "<", "threshold": 1}),
            "returns a string",
        ),
        (
            json!({"promql": DEPTH, "op": "<", "threshold": 1, "min_samples_query": "model_requests_total[1m]"}),
            "min_samples_query: a check needs an instant vector",
        ),
        (
            json!({"promql": DEPTH, "op": "==", "threshold": 1}),
            "invalid argument op",
        ),
        (
            json!({"promql": DEPTH, "op": "<", "threshold": 1, "min_samples": -1}),
            "invalid argument min_samples",
        ),
        (
            json!({"promql": " ", "op": "<", "threshold": 1}),
            "the query is empty",
        ),
        (
            json!({"promql": DEPTH, "op": "<", "threshold": "high"}),
            "invalid arguments for prom::check",
        ),
        (
            json!({"promql": DEPTH, "op": "<"}),
            "missing field `threshold`",
        ),
    ];
    for (args, message) in cases {
        let e = call(&prom, "check", args.clone()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{args}: {e:?}");
        assert!(e.message.contains(message), "{args}: {}", e.message);
    }
    Ok(())
}

/// When both of a check's queries fail, the error is the main query's, whichever answer comes
/// first: the two go out together, and the first error used to win, so the same failure read
/// one way or the other from run to run (a `firebreak test` golden trail, which records the
/// error, flaked on it). A stand-in for the query API answers the main query late and the
/// traffic query at once, both with Prometheus's `bad_data` error.
#[tokio::test]
async fn a_check_whose_two_queries_fail_names_the_main_querys_error() -> Result<()> {
    use std::collections::HashMap;
    const TRAFFIC: &str = "sum(model_requests_total{model=\"fraud\"})";
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(
            |axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| async move {
                let query = q.get("query").cloned().unwrap_or_default();
                if query == DEPTH {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                let error = json!({"status": "error", "errorType": "bad_data",
                    "error": format!("no answer for {query}")});
                (axum::http::StatusCode::BAD_REQUEST, axum::Json(error))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let prom = firebreak_prometheus::PrometheusConnector::new(&url, crate::harness::http())?;
    let e = call(
        &prom,
        "check",
        json!({"promql": DEPTH, "op": "<", "threshold": 10, "min_samples_query": TRAFFIC}),
    )
    .await
    .unwrap_err();
    server.abort();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(
        e.message.contains(&format!("no answer for {DEPTH}")),
        "{}",
        e.message
    );
    Ok(())
}
