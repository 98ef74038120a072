//! Scripts on blocking threads compute under `max_computing_scripts`: a script waiting in a
//! step holds no share of the CPU, and one that never stops computing lets the others take
//! their turns.

use std::time::Duration;

use firebreak_audit::RunStatus;
use firebreak_connector::Registry;
use firebreak_runtime::{CancellationToken, RunnerConfig};

use crate::{config, harness, plan, wait_for};

/// One share; sleeps hold their thread (no parking), as connector calls do.
fn one_share() -> RunnerConfig {
    RunnerConfig {
        max_computing_scripts: 1,
        park_after: None,
        ..config()
    }
}

/// Past its inline attempt (10,000 operations), so it computes on a thread.
const BUSY: &str = "let x = 0; for i in 0..50000 { x += i; } x";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_waiting_in_a_step_leaves_its_share_to_others() {
    let h = harness(Registry::new(), one_share());
    let cancel = CancellationToken::new();
    let mut sleeper = plan("sleeper", r#"log("in"); sleep(20000); 1"#);
    sleeper.cancel = cancel.clone();
    let sleeper = h.runner.start(sleeper).await.unwrap();
    wait_for(&h, "sleeper", "started 2 sleep").await;

    let busy = h.runner.start(plan("busy", BUSY)).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), busy.join())
        .await
        .expect("the busy run ends while the other sleeps");
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");

    cancel.cancel();
    let slept = tokio::time::timeout(Duration::from_secs(10), sleeper.join())
        .await
        .expect("the sleeper ends when cancelled");
    assert_eq!(slept.status, RunStatus::Cancelled, "{slept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_never_stops_computing_lets_others_take_their_turn() {
    let mut config = one_share();
    // No operation limit: it spins until cancelled.
    config.limits.max_operations = u64::MAX;
    let h = harness(Registry::new(), config);
    let cancel = CancellationToken::new();
    let mut spin = plan("spin", "loop {}");
    spin.cancel = cancel.clone();
    let spin = h.runner.start(spin).await.unwrap();
    // Journaled once the script is still running on its thread after the start's flush delay.
    wait_for(&h, "spin", "run_started").await;

    for i in 0..3 {
        let busy = h
            .runner
            .start(plan(&format!("busy-{i}"), BUSY))
            .await
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), busy.join())
            .await
            .expect("a busy run ends while the spinning one computes");
        assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    }

    cancel.cancel();
    let spun = tokio::time::timeout(Duration::from_secs(10), spin.join())
        .await
        .expect("the spinning run ends when cancelled");
    assert_eq!(spun.status, RunStatus::Cancelled, "{spun:?}");
}
