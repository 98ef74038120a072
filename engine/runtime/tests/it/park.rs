//! Long sleeps park their run: the script gives its blocking thread back, the run waits on a
//! timer, then replays its finished steps (quietly) up to the sleep and goes on.

use std::time::{Duration, Instant};

use firebreak_audit::{RecordBody, RunStatus, verify};
use firebreak_connector::Registry;
use firebreak_runtime::{CancellationToken, RunnerConfig};

use crate::{config, harness, kinds, plan, run, wait_for};

fn parking() -> RunnerConfig {
    RunnerConfig {
        park_after: Some(Duration::from_millis(500)),
        ..config()
    }
}

/// A parked run's trail reads as if it had slept on its thread: each step once, no replayed
/// records, the sleep finished after its full time, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_sleep_leaves_the_same_trail_as_a_slept_one() {
    let h = harness(Registry::new(), parking());
    let started = Instant::now();
    let (outcome, records) = run(
        &h,
        plan(
            "p1",
            r#"log("before"); let t = now(); sleep(1200); log(`after ${t.len() > 0}`); 7"#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert_eq!(
        kinds(&records),
        [
            "run_started",
            "finished 1 log ok",
            "finished 2 now ok",
            "started 3 sleep",
            "finished 3 sleep ok",
            "finished 4 log ok",
            "run_finished"
        ]
    );
    verify(h.journal.path()).expect("the chain verifies");
}

/// Twenty runs sleeping at once on a runtime with two blocking threads and two run slots:
/// parked, they hold neither and all wait together (on their threads they would wait two at a
/// time, ten rounds of the sleep).
#[test]
fn parked_runs_wait_together_without_a_thread_each() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = harness(
            Registry::new(),
            RunnerConfig {
                max_concurrent_runs: 2,
                ..parking()
            },
        );
        let mut handles = Vec::new();
        for i in 0..20 {
            handles.push(
                h.runner
                    .start(plan(&format!("w{i}"), "log(`waiting`); sleep(3000); 1"))
                    .await
                    .unwrap(),
            );
        }
        let mut outcomes = Vec::new();
        for handle in handles {
            outcomes.push(
                tokio::time::timeout(Duration::from_secs(20), handle.join())
                    .await
                    .expect("every run ends within 20 s"),
            );
        }
        assert!(
            outcomes.iter().all(|o| o.status == RunStatus::Succeeded),
            "{outcomes:?}"
        );
        // Every sleep began before the first one ended: all twenty waited at once.
        let mut began = Vec::new();
        let mut ended = Vec::new();
        for i in 0..20 {
            for r in h.journal.records_for_run(&format!("w{i}")).unwrap() {
                match &r.body {
                    RecordBody::StepStarted { name, .. } if name == "sleep" => began.push(r.time),
                    RecordBody::StepFinished { name, .. } if name == "sleep" => ended.push(r.time),
                    _ => {}
                }
            }
        }
        assert_eq!((began.len(), ended.len()), (20, 20));
        let last_began = began.iter().max().unwrap();
        let first_ended = ended.iter().min().unwrap();
        assert!(
            last_began < first_ended,
            "the last sleep began at {last_began}, after the first ended at {first_ended}"
        );
    });
}

/// A parked run cancelled in its sleep ends cancelled at once, its sleep journaled as stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_cancelled_in_its_sleep_ends_at_once() {
    let h = harness(Registry::new(), parking());
    let cancel = CancellationToken::new();
    let mut p = plan("p2", r#"sleep(30000); log("never")"#);
    p.cancel = cancel.clone();
    let handle = h.runner.start(p).await.unwrap();
    wait_for(&h, "p2", "started 1 sleep").await;
    let cancelled = Instant::now();
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), handle.join())
        .await
        .expect("ends within 5 s of the cancel");
    assert!(cancelled.elapsed() < Duration::from_secs(2));
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    let records = h.journal.records_for_run("p2").unwrap();
    assert_eq!(
        kinds(&records),
        [
            "run_started",
            "started 1 sleep",
            "finished 1 sleep error",
            "run_finished"
        ]
    );
}

/// A parked run suspended (the engine stops) leaves its sleep open; resumed, it waits only what
/// was left of the sleep's first start, however often it parks again meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_suspended_resumes_with_what_was_left() {
    let h = harness(Registry::new(), parking());
    let source = r#"log("a"); sleep(4000); log("b")"#;
    let p = plan("p3", source);
    let ast = p.ast.clone();
    let handle = h.runner.start(p).await.unwrap();
    wait_for(&h, "p3", "started 2 sleep").await;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    h.runner.suspend();
    let outcome = tokio::time::timeout(Duration::from_secs(5), handle.join())
        .await
        .expect("suspends at once");
    assert!(outcome.suspended, "{outcome:?}");
    let runner = firebreak_runtime::Runner::new(&Registry::new(), h.journal.clone(), parking());
    let handle = crate::resume(&runner, "p3", ast).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), handle.join())
        .await
        .expect("the resumed run ends");
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let total = began.elapsed();
    assert!(
        total >= Duration::from_millis(3900) && total < Duration::from_millis(4700),
        "slept {total:?} in all, not the 4 s of the sleep"
    );
    let kinds = kinds(&h.journal.records_for_run("p3").unwrap());
    assert_eq!(
        kinds.iter().filter(|k| *k == "finished 2 sleep ok").count(),
        1,
        "{kinds:?}"
    );
}

/// A run that goes straight to a long sleep parks on the async worker: its start and its
/// sleep are journaled while every blocking thread is busy, and it needs a thread only when
/// woken.
#[test]
fn a_run_parks_without_ever_taking_a_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = harness(Registry::new(), parking());
        // The only blocking thread is busy until the test lets it go.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::task::spawn_blocking(move || held.recv());
        let handle = tokio::time::timeout(
            Duration::from_secs(5),
            h.runner.start(plan(
                "p4",
                r#"log("going to sleep"); sleep(1500); log("woke"); 2"#,
            )),
        )
        .await
        .expect("the run starts with no blocking thread free")
        .unwrap();
        wait_for(&h, "p4", "started 2 sleep").await;
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), handle.join())
            .await
            .expect("the run ends");
        assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
        assert_eq!(
            kinds(&h.journal.records_for_run("p4").unwrap()),
            [
                "run_started",
                "finished 1 log ok",
                "started 2 sleep",
                "finished 2 sleep ok",
                "finished 3 log ok",
                "run_finished"
            ]
        );
    });
}

/// A long `wait_resolved` parks too, and a joined event saying the incident resolved wakes
/// the run at once: it returns `true`, the event in the trail before the wait's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_wait_resolved_wakes_when_its_incident_resolves() {
    let h = harness(Registry::new(), parking());
    let handle = h
        .runner
        .start(plan(
            "p5",
            r#"let r = wait_resolved("20s"); log(`resolved ${r}`); r"#,
        ))
        .await
        .unwrap();
    let link = handle.link();
    wait_for(&h, "p5", "started 1 wait_resolved").await;
    let joined_at = Instant::now();
    link.join(firebreak_runtime::JoinedEvent {
        event_id: "ev-r".into(),
        status: "resolved".into(),
        summary: "alertmanager/resolved HighLatency".into(),
    })
    .await
    .expect("joined");
    let outcome = tokio::time::timeout(Duration::from_secs(5), handle.join())
        .await
        .expect("woken by the resolution");
    assert!(joined_at.elapsed() < Duration::from_secs(3));
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let records = h.journal.records_for_run("p5").unwrap();
    assert_eq!(
        kinds(&records),
        [
            "run_started",
            "started 1 wait_resolved",
            "event_joined",
            "finished 1 wait_resolved ok",
            "finished 2 log ok",
            "run_finished"
        ]
    );
    match &records[3].body {
        RecordBody::StepFinished { outputs, .. } => assert_eq!(outputs, &serde_json::json!(true)),
        other => panic!("{other:?}"),
    }
}

/// A parked `wait_resolved` whose incident stays open returns `false` after its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_wait_resolved_times_out_false() {
    let h = harness(Registry::new(), parking());
    let started = Instant::now();
    let (outcome, records) = run(&h, plan("p6", r#"wait_resolved(900)"#)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(
        kinds(&records),
        [
            "run_started",
            "started 1 wait_resolved",
            "finished 1 wait_resolved ok",
            "run_finished"
        ]
    );
    match &records[2].body {
        RecordBody::StepFinished { outputs, .. } => assert_eq!(outputs, &serde_json::json!(false)),
        other => panic!("{other:?}"),
    }
}
