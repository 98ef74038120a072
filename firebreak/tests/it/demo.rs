//! `firebreak demo`, the README's first command, runs to completion and ends with fraud-model
//! back on v1 as revision 3.

use crate::harness::firebreak;

#[tokio::test(flavor = "multi_thread")]
async fn demo_rolls_fraud_model_back_to_v1_as_revision_3() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("demo");
    let out = firebreak(&["demo", "--data-dir", data.to_str().unwrap()], &[]).await;
    assert!(out.success(), "firebreak demo failed: {out}");
    let history = out
        .stdout
        .split("rollout history after the run")
        .nth(1)
        .unwrap_or_else(|| panic!("no rollout history after the run: {out}"));
    let rows: Vec<Vec<&str>> = history
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.first().is_some_and(|c| c.parse::<u32>().is_ok()))
        .collect();
    let revisions: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    let current = &rows[1];
    assert!(
        current
            .last()
            .is_some_and(|img| img.ends_with("/ml/fraud-model:v1")),
        "revision 3 runs the v1 image: {history}"
    );
    assert!(history.contains("current revision 3"), "{history}");
    assert!(out.stdout.contains("run succeeded"), "{out}");
    assert!(out.stdout.contains("audit chain verified"), "{out}");
    // The demo's journal is left where asked and verifies on its own.
    let verify = firebreak(
        &["audit", "verify"],
        &[(
            "FIREBREAK_DATA_DIR",
            data.join("data").display().to_string(),
        )],
    )
    .await;
    assert!(verify.success(), "{verify}");
}
