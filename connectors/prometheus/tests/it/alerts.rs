//! `prom::alerts` against a real Prometheus evaluating rules every second.

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;

use crate::harness::{Env, call};

#[tokio::test]
async fn alerts_lists_firing_alerts_only() -> Result<()> {
    let env = Env::start(7.0).await?;
    let prom = env.prom.connector();
    // One rule group, evaluated in order every second: once ModelQueueSlowBurn (second rule,
    // `for: 1h`) is pending, ModelQueueDeep (first rule, no `for`) is firing, and
    // ModelQueueHuge never fires.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let raw = prom.api().alerts("raw alerts").await?;
        if raw
            .iter()
            .any(|a| a.labels["alertname"] == "ModelQueueSlowBurn" && a.state == "pending")
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "ModelQueueSlowBurn never became pending: {raw:?}\n{}",
                env.prom.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = call(&prom, "alerts", json!({})).await?;
    assert_eq!(out["count"], json!(1), "{out}");
    assert_eq!(out["alerts"].as_array().unwrap().len(), 1, "{out}");
    let alert = &out["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "ModelQueueDeep");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["value"], json!(7.0));
    assert_eq!(alert["annotations"]["summary"], "queue depth is 7");
    assert!(
        alert["activeAt"].as_str().unwrap().starts_with("20"),
        "{alert}"
    );
    Ok(())
}
