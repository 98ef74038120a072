//! `prom::alerts` against a real Prometheus evaluating rules every second.

use anyhow::Result;
use serde_json::json;

use crate::harness::Env;

#[tokio::test]
async fn alerts_lists_firing_alerts_only() -> Result<()> {
    let env = Env::start(7.0).await?;
    // ModelQueueDeep fires at once; ModelQueueSlowBurn stays pending for an hour;
    // ModelQueueHuge never fires.
    let out = env
        .prom
        .wait_for("ModelQueueDeep to fire", "alerts", json!({}), |v| {
            v["count"] == json!(1)
        })
        .await?;
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

    // The pending one exists in Prometheus but is not reported as firing.
    let raw = env.prom.connector().api().alerts("raw").await?;
    assert!(
        raw.iter()
            .any(|a| a.labels["alertname"] == "ModelQueueSlowBurn" && a.state == "pending"),
        "{raw:?}"
    );
    assert_eq!(out["alerts"].as_array().unwrap().len(), 1);
    Ok(())
}
