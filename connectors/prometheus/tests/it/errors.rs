//! Failures and their kinds: Prometheus's own errors, a Prometheus that is not there, one that
//! does not answer in time, HTTP statuses from something in front of it, and bad arguments.

use std::time::Duration;

use anyhow::Result;
use axum::http::StatusCode;
use firebreak_connector::ErrorKind;
use firebreak_prometheus::PrometheusConnector;
use serde_json::json;

use crate::harness::{Env, call, free_port, http};

#[tokio::test]
async fn prometheus_errors_keep_its_message() -> Result<()> {
    let env = Env::start(1.0).await?;
    let prom = env.prom.connector();

    let e = call(&prom, "query", json!({"promql": "sum(model_queue_depth"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(
        e.message
            .starts_with("prom::query `sum(model_queue_depth`: bad_data: "),
        "{}",
        e.message
    );
    assert!(e.message.contains("parse error"), "{}", e.message);

    let e = call(
        &prom,
        "query_range",
        json!({"promql": "rate(", "range": "5m", "step": "1m"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(
        e.message.contains("bad_data: ") && e.message.contains("parse error"),
        "{}",
        e.message
    );

    let e = call(
        &prom,
        "check",
        json!({"promql": "up{", "op": "<", "threshold": 1}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(e.message.contains("parse error"), "{}", e.message);

    // An expression that parses but cannot be evaluated: duplicate series on the one side.
    let e = call(
        &prom,
        "query",
        json!({"promql": "model_requests_total + on(model) group_left model_requests_total"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(e.message.contains(": execution: "), "{}", e.message);

    // An answer larger than the connector reads (streamed, and with a Content-Length).
    let small = env.prom.connector().with_max_body(300);
    let e = call(&small, "query", json!({"promql": "model_requests_total"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(e.message.contains("larger than 300 bytes"), "{}", e.message);
    let fits = call(&small, "query", json!({"promql": "1"})).await?;
    assert_eq!(fits["result"][0]["value"], json!(1.0));

    // A wrong path prefix: Prometheus answers 404, which retrying will not fix.
    let wrong = PrometheusConnector::new(&format!("{}/not-prometheus", env.prom.url), http())?;
    let e = call(&wrong, "query", json!({"promql": "up"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(e.message.contains("http status 404"), "{}", e.message);
    Ok(())
}

#[tokio::test]
async fn a_prometheus_that_is_not_running_is_transient() -> Result<()> {
    let port = free_port()?;
    let prom = PrometheusConnector::new(&format!("http://127.0.0.1:{port}"), http())?;
    for (action, args) in [
        ("query", json!({"promql": "up"})),
        (
            "query_range",
            json!({"promql": "up", "range": "5m", "step": "1m"}),
        ),
        ("check", json!({"promql": "up", "op": "<", "threshold": 1})),
        ("alerts", json!({})),
    ] {
        let e = call(&prom, action, args).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient, "{action}: {e:?}");
        assert!(
            e.message.starts_with(&format!("prom::{action}")),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains(&format!("request to http://127.0.0.1:{port}/ failed")),
            "{}",
            e.message
        );
        assert!(e.message.contains("Connection refused"), "{}", e.message);
    }
    Ok(())
}

#[tokio::test]
async fn a_prometheus_that_does_not_answer_times_out() -> Result<()> {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let prom = PrometheusConnector::new(&format!("http://{addr}"), http())?
        .with_timeout(Duration::from_millis(300));
    let e = call(&prom, "query", json!({"promql": "up"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:?}");
    assert!(e.message.contains("timed out"), "{}", e.message);
    silent.abort();
    Ok(())
}

#[tokio::test]
async fn http_statuses_from_a_proxy_are_classified() -> Result<()> {
    // Stands in for a reverse proxy in front of Prometheus: plain-text errors, no API body.
    let app = axum::Router::new()
        .route(
            "/busy/api/v1/query",
            axum::routing::get(|| async { (StatusCode::TOO_MANY_REQUESTS, "slow down") }),
        )
        .route(
            "/down/api/v1/query",
            axum::routing::get(|| async {
                (StatusCode::BAD_GATEWAY, "<html>\n502 Bad Gateway\n</html>")
            }),
        )
        .route(
            "/auth/api/v1/query",
            axum::routing::get(|| async { (StatusCode::FORBIDDEN, "forbidden") }),
        )
        .route(
            "/odd/api/v1/query",
            axum::routing::get(|| async { (StatusCode::OK, "not json") }),
        );
    // A chunked answer with no Content-Length, so only the streaming bound can stop it.
    let app = app.route(
        "/big/api/v1/query",
        axum::routing::get(|| async {
            let chunks = (0..100)
                .map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 1024])));
            axum::body::Body::from_stream(futures::stream::iter(chunks))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let big =
        PrometheusConnector::new(&format!("http://{addr}/big"), http())?.with_max_body(10_000);
    let e = call(&big, "query", json!({"promql": "up"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(
        e.message.contains("larger than 10000 bytes"),
        "{}",
        e.message
    );
    let cases = [
        ("busy", ErrorKind::Transient, "http status 429: slow down"),
        (
            "down",
            ErrorKind::Transient,
            "http status 502: <html> 502 Bad Gateway </html>",
        ),
        ("auth", ErrorKind::Denied, "http status 403: forbidden"),
        (
            "odd",
            ErrorKind::Permanent,
            "unexpected answer from prometheus",
        ),
    ];
    for (prefix, kind, message) in cases {
        let prom = PrometheusConnector::new(&format!("http://{addr}/{prefix}"), http())?;
        let e = call(&prom, "query", json!({"promql": "up"}))
            .await
            .unwrap_err();
        assert_eq!(e.kind, kind, "{prefix}: {e:?}");
        assert!(e.message.contains(message), "{prefix}: {}", e.message);
    }
    server.abort();
    Ok(())
}

#[tokio::test]
async fn bad_arguments_are_permanent_and_name_the_parameter() -> Result<()> {
    // Refused before any request: the URL points nowhere.
    let prom = PrometheusConnector::new(&format!("http://127.0.0.1:{}", free_port()?), http())?;
    let cases = [
        ("query", json!({}), "missing field `promql`"),
        (
            "query",
            json!({"promql": "up", "at": 1}),
            "unknown field `at`",
        ),
        (
            "query",
            json!({"promql": "up", "time": "yesterday"}),
            "invalid argument time for prom::query",
        ),
        (
            "query_range",
            json!({"promql": "up", "range": "ten minutes", "step": "1m"}),
            "invalid argument range",
        ),
        (
            "query_range",
            json!({"promql": "up", "range": "10m", "step": 0}),
            "invalid argument step",
        ),
        (
            "query_range",
            json!({"promql": "up", "range": "1d", "step": "1s"}),
            "use a larger step",
        ),
        (
            "query_range",
            json!({"promql": "up", "range": "1h", "step": "1m", "end": []}),
            "invalid argument end",
        ),
        (
            "alerts",
            json!({"state": "firing"}),
            "unknown field `state`",
        ),
        ("silence", json!({}), "unknown action prom::silence"),
    ];
    for (action, args, message) in cases {
        let e = call(&prom, action, args.clone()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{action} {args}: {e:?}");
        assert!(
            e.message.contains(message),
            "{action} {args}: {}",
            e.message
        );
    }
    for url in ["prometheus:9090", "file:///tmp/x", ""] {
        assert!(PrometheusConnector::new(url, http()).is_err(), "{url}");
    }
    Ok(())
}
