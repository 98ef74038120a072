//! `firebreak demo`, the README's first command, runs to completion: scenario 1 ends with
//! fraud-model back on v1 as revision 3; scenario 2 (with the real Prometheus and
//! Alertmanager) ends with the bad canary shifted back, at zero, and its alert resolved.

use crate::harness::firebreak;

#[tokio::test(flavor = "multi_thread")]
async fn demo_rolls_fraud_model_back_to_v1_as_revision_3() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("demo");
    let out = firebreak(
        &[
            "demo",
            "--scenario",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    )
    .await;
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

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_demo_runs_every_scenario_and_the_canary_is_shifted_back() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("demo");
    let out = firebreak(&["demo", "--data-dir", data.to_str().unwrap()], &[]).await;
    assert!(out.success(), "firebreak demo failed: {out}");
    let (one, rest) = out
        .stdout
        .split_once("━━ scenario 2")
        .unwrap_or_else(|| panic!("no scenario 2 in the demo: {out}"));
    let (two, three) = rest
        .split_once("━━ scenario 3")
        .unwrap_or_else(|| panic!("no scenario 3 in the demo: {out}"));
    // Scenario 3: the chat exchange, the refusal, the approvals, each team's audit.
    for said in [
        "ann (Slack) ▸ /firebreak run a-model-deploy",
        "refused: bob (team team-b) may not start runbook a-model-deploy",
        "not taken: cat started this run and may not approve it",
        "is counted (1 of 2)",
        "approved by dan, eve",
        "the gate failed (error rate 0.",
        "── team-a",
        "── team-c",
        "audit chain verified",
    ] {
        assert!(three.contains(said), "scenario 3 says {said:?}: {three}");
    }
    // Team A's v2 answers half its requests with errors: the rate Prometheus computes over a
    // window is about 0.5 (0.4949 when the window holds 99 requests), far above 0.05.
    let rate: f64 = three
        .split("the gate failed (error rate ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|rate| rate.parse().ok())
        .unwrap_or_else(|| panic!("no failed gate's error rate: {three}"));
    assert!((0.4..=0.6).contains(&rate), "error rate {rate}: {three}");
    assert!(one.contains("━━ scenario 1"), "{out}");
    assert!(one.contains("current revision 3"), "{one}");
    // The weights stepped up through passing gates, then a gate failed at 50%.
    let gates: Vec<&str> = two
        .lines()
        .filter(|l| l.contains("│ canary ") && l.contains("% │"))
        .collect();
    assert!(gates.len() >= 3, "{two}");
    assert!(
        gates[0].contains(" 10% ") && gates[0].ends_with("pass"),
        "{gates:?}"
    );
    assert!(
        gates
            .iter()
            .any(|g| g.contains(" 50% ") && g.ends_with("fail")),
        "{gates:?}"
    );
    assert!(
        !gates.iter().any(|g| g.contains(" 100% ")),
        "never promoted: {gates:?}"
    );
    assert!(
        two.contains("recommender-primary 100, recommender-canary 0"),
        "{two}"
    );
    assert!(
        two.contains("the breach, the shift back, the recovery"),
        "{two}"
    );
    assert!(two.contains("canary-rollback: Succeeded"), "{two}");
    assert!(two.contains("audit chain verified"), "{two}");
    let verify = firebreak(
        &["audit", "verify"],
        &[(
            "FIREBREAK_DATA_DIR",
            data.join("scenario2/data").display().to_string(),
        )],
    )
    .await;
    assert!(verify.success(), "{verify}");
}
