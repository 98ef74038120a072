//! A canary decision as a runbook makes it: p99 latency from `rate()` over live request
//! histograms, per model version, gated on traffic. v1 is fast, v2 is slow, v3 gets no
//! requests (its rate is 0, so `histogram_quantile` is NaN and its traffic is 0).

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::harness::{Env, call};

/// The exposition after `n` ticks of traffic. Every counter of a version grows in
/// proportion to `n`, so rates keep the same ratios whatever the scrape timing:
/// - v1: all 10 requests per tick under 0.1 s → p99 = 0.099;
/// - v2: 1 under 0.1 s, 1 more under 0.5 s, 8 more under 1 s → p99 = 0.5 + 0.5 × 7.9/8;
/// - v3: a constant 50 requests, none new.
fn traffic(n: u64) -> String {
    let mut text = String::from(
        "# TYPE model_requests_total counter\n# TYPE model_request_duration_seconds histogram\n",
    );
    let versions = [
        ("v1", [10 * n, 10 * n, 10 * n, 10 * n]),
        ("v2", [n, 2 * n, 10 * n, 10 * n]),
        ("v3", [50, 50, 50, 50]),
    ];
    for (version, buckets) in versions {
        let total = buckets[3];
        text.push_str(&format!(
            "model_requests_total{{version=\"{version}\",code=\"200\"}} {total}\n"
        ));
        for (le, count) in ["0.1", "0.5", "1", "+Inf"].iter().zip(buckets) {
            text.push_str(&format!(
                "model_request_duration_seconds_bucket{{version=\"{version}\",le=\"{le}\"}} {count}\n"
            ));
        }
        text.push_str(&format!(
            "model_request_duration_seconds_count{{version=\"{version}\"}} {total}\n"
        ));
    }
    text
}

fn p99(version: &str) -> String {
    format!(
        "histogram_quantile(0.99, sum by (le) (rate(model_request_duration_seconds_bucket{{version=\"{version}\"}}[10s])))"
    )
}

fn requests(version: &str) -> String {
    format!("sum(increase(model_requests_total{{version=\"{version}\"}}[10s]))")
}

fn slo(version: &str) -> Value {
    json!({"promql": p99(version), "op": "<", "threshold": 0.5, "min_samples_query": requests(version), "min_samples": 1})
}

#[tokio::test]
async fn canary_p99_per_version_gated_on_traffic() -> Result<()> {
    let env = Env::start_exposing(
        traffic(1),
        "model_requests_total{version=\"v3\"}",
        json!(50.0),
    )
    .await?;
    let set = env.exporter.setter();
    let ticker = tokio::spawn(async move {
        for n in 2.. {
            set(traffic(n));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // Until two scrapes with traffic are in the window, even v1 has no rate: inconclusive.
    let v1 = env
        .prom
        .wait_for("a rate over two scrapes for v1", "check", slo("v1"), |v| {
            v["verdict"] != "inconclusive"
        })
        .await?;
    assert_eq!(v1["verdict"], "pass", "{v1}");
    let value = v1["value"].as_f64().unwrap();
    assert!((value - 0.099).abs() < 1e-9, "v1 p99 {value}");
    assert!(v1["samples"].as_f64().unwrap() > 0.0, "{v1}");

    let prom = env.prom.connector();
    let v2 = call(&prom, "check", slo("v2")).await?;
    assert_eq!(v2["verdict"], "fail", "{v2}");
    let value = v2["value"].as_f64().unwrap();
    assert!(
        (value - (0.5 + 0.5 * 7.9 / 8.0)).abs() < 1e-9,
        "v2 p99 {value}"
    );
    assert!(
        v2["reason"].as_str().unwrap().ends_with("is not < 0.5"),
        "{v2}"
    );

    // v3 served nothing: neither a pass nor a fail, whichever way it is asked.
    let v3 = call(&prom, "check", slo("v3")).await?;
    assert_eq!(v3["verdict"], "inconclusive", "{v3}");
    assert_eq!(v3["samples"], json!(0.0));
    assert_eq!(v3["value"], "NaN");
    assert!(
        v3["reason"]
            .as_str()
            .unwrap()
            .starts_with("too little traffic"),
        "{v3}"
    );
    let v3_alone = call(
        &prom,
        "check",
        json!({"promql": p99("v3"), "op": "<", "threshold": 0.5}),
    )
    .await?;
    assert_eq!(v3_alone["verdict"], "inconclusive", "{v3_alone}");
    assert!(
        v3_alone["reason"].as_str().unwrap().contains("NaN"),
        "{v3_alone}"
    );

    // The same p99 over time, as evidence: every point of v2 above the SLO.
    let range = call(
        &prom,
        "query_range",
        json!({"promql": p99("v2"), "range": "30s", "step": "1s"}),
    )
    .await?;
    let summary = &range["result"][0]["summary"];
    assert!(summary["count"].as_u64().unwrap() >= 1, "{range}");
    assert!(summary["min"].as_f64().unwrap() > 0.5, "{range}");

    ticker.abort();
    Ok(())
}
