//! `prom::query` and `prom::query_range` against a real Prometheus.

use anyhow::Result;
use serde_json::json;

use crate::harness::{Env, call, exposition};

#[tokio::test]
async fn query_returns_what_the_exporter_exposes() -> Result<()> {
    let env = Env::start(7.0).await?;
    let prom = env.prom.connector();

    let out = call(&prom, "query", json!({"promql": "model_queue_depth"})).await?;
    assert_eq!(out["resultType"], "vector");
    assert_eq!(out["result"].as_array().unwrap().len(), 1);
    let sample = &out["result"][0];
    assert_eq!(sample["value"], json!(7.0));
    assert_eq!(sample["metric"]["__name__"], "model_queue_depth");
    assert_eq!(sample["metric"]["model"], "fraud");
    assert_eq!(sample["metric"]["job"], "model");
    assert!(sample["time"].as_f64().unwrap() > 1.7e9, "{sample}");
    assert_eq!(out["warnings"], json!([]));

    // p99 from the raw buckets: 99 of 100 requests are at or under 0.5 s.
    let p99 = call(
        &prom,
        "query",
        json!({"promql": "histogram_quantile(0.99, sum by (le) (model_request_duration_seconds_bucket{model=\"fraud\"}))"}),
    )
    .await?;
    let p99 = p99["result"][0]["value"].as_f64().unwrap();
    assert!((p99 - 0.5).abs() < 1e-9, "p99 {p99}");

    // The value follows the exporter.
    env.exporter.set(exposition(42.0));
    env.prom
        .wait_for(
            "the new queue depth",
            "query",
            json!({"promql": "model_queue_depth"}),
            |v| v["result"][0]["value"] == json!(42.0),
        )
        .await?;

    // Scalars, NaN and +Inf.
    let scalar = call(&prom, "query", json!({"promql": "1 + 1"})).await?;
    assert_eq!(scalar["resultType"], "scalar");
    assert_eq!(scalar["result"][0]["value"], json!(2.0));
    let nan = call(&prom, "query", json!({"promql": "vector(0) / 0"})).await?;
    assert_eq!(nan["result"][0]["value"], "NaN");
    let inf = call(&prom, "query", json!({"promql": "vector(1) / 0"})).await?;
    assert_eq!(inf["result"][0]["value"], "+Inf");
    let text = call(&prom, "query", json!({"promql": "\"hello\""})).await?;
    assert_eq!(text["resultType"], "string");
    assert_eq!(text["result"][0]["value"], "hello");
    Ok(())
}

#[tokio::test]
async fn query_at_a_time() -> Result<()> {
    let env = Env::start(3.0).await?;
    let prom = env.prom.connector();

    // An hour ago Prometheus did not exist: no data, not an error.
    for time in [json!("now-1h"), json!("-1h")] {
        let before = call(
            &prom,
            "query",
            json!({"promql": "model_queue_depth", "time": time}),
        )
        .await?;
        assert_eq!(before["result"], json!([]), "{time}");
    }
    // Now, as Unix seconds and as RFC 3339, the sample is there and stamped at that time.
    let now = jiff::Timestamp::now();
    let unix = now.as_millisecond() as f64 / 1000.0;
    let at_unix = call(
        &prom,
        "query",
        json!({"promql": "model_queue_depth", "time": unix}),
    )
    .await?;
    assert_eq!(at_unix["result"][0]["value"], json!(3.0));
    assert_eq!(at_unix["result"][0]["time"], json!(unix));
    let at_text = call(
        &prom,
        "query",
        json!({"promql": "model_queue_depth", "time": now.to_string()}),
    )
    .await?;
    assert_eq!(at_text["result"][0]["value"], json!(3.0));
    assert_eq!(at_text["result"][0]["time"], json!(unix));
    Ok(())
}

#[tokio::test]
async fn query_range_returns_points_and_a_summary() -> Result<()> {
    let env = Env::start(5.0).await?;
    // A few seconds at 5, then 9.
    let args = json!({"promql": "model_queue_depth{model=\"fraud\"}", "range": "2m", "step": "1s"});
    env.prom
        .wait_for(
            "three seconds of samples",
            "query_range",
            args.clone(),
            |v| {
                v["result"][0]["values"]
                    .as_array()
                    .is_some_and(|a| a.len() >= 3)
            },
        )
        .await?;
    env.exporter.set(exposition(9.0));
    let out = env
        .prom
        .wait_for("the new value in the range", "query_range", args, |v| {
            v["result"][0]["summary"]["last"] == json!(9.0)
        })
        .await?;

    assert_eq!(out["resultType"], "matrix");
    let series = &out["result"][0];
    assert_eq!(series["metric"]["model"], "fraud");
    let values = series["values"].as_array().unwrap();
    assert!(values.len() >= 4, "{values:?}");
    for pair in values.windows(2) {
        let step = pair[1][0].as_f64().unwrap() - pair[0][0].as_f64().unwrap();
        assert!(
            (step - 1.0).abs() < 1e-6,
            "points are one step apart: {pair:?}"
        );
    }
    assert!(
        values
            .iter()
            .all(|p| p[1] == json!(5.0) || p[1] == json!(9.0)),
        "{values:?}"
    );
    let summary = &series["summary"];
    assert_eq!(summary["count"], json!(values.len()));
    assert_eq!(summary["min"], json!(5.0));
    assert_eq!(summary["max"], json!(9.0));
    assert_eq!(summary["last"], json!(9.0));
    let avg = summary["avg"].as_f64().unwrap();
    assert!(avg > 5.0 && avg < 9.0, "avg {avg}");

    // Whole seconds work as durations too, and a past end gives no points.
    let prom = env.prom.connector();
    let seconds = call(
        &prom,
        "query_range",
        json!({"promql": "model_queue_depth", "range": 60, "step": 5}),
    )
    .await?;
    assert!(
        !seconds["result"][0]["values"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let past = call(
        &prom,
        "query_range",
        json!({"promql": "model_queue_depth", "range": "10m", "step": "1m", "end": "now-2h"}),
    )
    .await?;
    assert_eq!(past["result"], json!([]));
    Ok(())
}
