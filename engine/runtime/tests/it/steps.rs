//! Built-in steps and `step(name, || ...)` are journaled by Rust around the script.

use std::sync::Arc;
use std::time::Duration;

use firebreak_audit::{RecordBody, RunStatus, StepStatus, verify};
use firebreak_connector::Registry;
use firebreak_runtime::{JoinError, JoinedEvent};
use serde_json::json;

use crate::{collecting_sink, config, harness, kinds, plan, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_and_closure_steps_are_journaled_with_inputs_outputs_and_status() {
    let h = harness(Registry::new(), config());
    let (sink, lines) = collecting_sink();
    let mut p = plan(
        "r1",
        r#"
        log(`alert ${ctx.labels.alertname} in ${ctx.event.namespace}, ${ctx.params.replicas} replicas`);
        let t = now();
        let factor = 2;
        let r = step("compute", || { factor * 21 });
        let explicit = step("explicit", #{ target: "api" }, || "ok");
        evidence("numbers", [1, 2, 3]);
        if ctx.dry_run || ctx.run_id != "r1" || ctx.team != "payments" { fail("wrong ctx") }
        r
        "#,
    );
    p.progress = Some(sink);
    let (outcome, records) = run(&h, p).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.steps, 5);
    assert_eq!(
        kinds(&records),
        vec![
            "run_started",
            "finished 1 log ok",
            "finished 2 now ok",
            "started 3 compute",
            "finished 3 compute ok",
            "started 4 explicit",
            "finished 4 explicit ok",
            "started 5 evidence",
            "evidence",
            "finished 5 evidence ok",
            "run_finished",
        ]
    );
    assert_eq!(
        *lines.lock().unwrap(),
        vec!["alert HighLatency in shop, 3 replicas".to_owned()]
    );
    // A local step that ended at once is one record, with its inputs.
    match &records[1].body {
        RecordBody::StepFinished { inputs, .. } => {
            assert_eq!(
                inputs.as_ref(),
                Some(&json!({"message": "alert HighLatency in shop, 3 replicas"}))
            )
        }
        other => panic!("{other:?}"),
    }
    match &records[2].body {
        RecordBody::StepFinished {
            inputs, outputs, ..
        } => {
            assert_eq!(inputs.as_ref(), Some(&json!({})));
            let text = outputs.as_str().unwrap();
            assert!(text.parse::<jiff::Timestamp>().is_ok(), "{text}")
        }
        other => panic!("{other:?}"),
    }
    match (&records[3].body, &records[4].body) {
        (
            RecordBody::StepStarted { inputs, .. },
            RecordBody::StepFinished {
                outputs, status, ..
            },
        ) => {
            assert_eq!(inputs, &json!({"captured": {"factor": 2}}));
            assert_eq!(outputs, &json!(42));
            assert_eq!(*status, StepStatus::Ok);
        }
        other => panic!("{other:?}"),
    }
    match &records[5].body {
        RecordBody::StepStarted { inputs, .. } => assert_eq!(inputs, &json!({"target": "api"})),
        other => panic!("{other:?}"),
    }
    match &records[8].body {
        RecordBody::Evidence { step, name, data } => {
            assert_eq!(
                (*step, name.as_str(), data),
                (5, "numbers", &json!([1, 2, 3]))
            )
        }
        other => panic!("{other:?}"),
    }
    match &records[0].body {
        RecordBody::RunStarted {
            event,
            params,
            namespaces,
            ..
        } => {
            assert_eq!(event.value()["subject"], "HighLatency");
            assert_eq!(params, &json!({"replicas": 3}));
            assert_eq!(namespaces, &vec!["shop".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
    let path = h.journal.path().to_owned();
    drop(h.runner);
    drop(h.journal);
    verify(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_and_script_errors_fail_the_run_and_the_step_that_raised_them() {
    let h = harness(Registry::new(), config());
    let (outcome, records) = run(
        &h,
        plan(
            "r1",
            r#"step("check", || { fail("replicas are not ready") })"#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.contains("step 2 `fail` failed (fail): replicas are not ready"),
        "{error}"
    );
    assert_eq!(
        kinds(&records),
        vec![
            "run_started",
            "started 1 check",
            "finished 2 fail error",
            "finished 1 check error",
            "run_finished"
        ]
    );
    match &records.last().unwrap().body {
        RecordBody::RunFinished { status, error } => {
            assert_eq!(*status, RunStatus::Failed);
            assert!(error.as_deref().unwrap().contains("replicas are not ready"));
        }
        other => panic!("{other:?}"),
    }

    let (outcome, _) = run(&h, plan("r2", "let x = 1; x.no_such_method()")).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert!(outcome.error.unwrap().contains("no_such_method"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_returns_once_run_started_is_durable() {
    let h = harness(Registry::new(), config());
    let handle = h.runner.start(plan("r1", "sleep(200); 1")).await.unwrap();
    let records = h.journal.records_for_run("r1").unwrap();
    assert!(matches!(records[0].body, RecordBody::RunStarted { .. }));
    assert_eq!(handle.join().await.status, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closures_may_capture_ctx_and_script_functions_may_take_steps() {
    let h = harness(Registry::new(), config());
    let (outcome, records) = run(
        &h,
        plan(
            "r1",
            r#"
            fn announce(ctx, what) { log(`${ctx.runbook}: ${what}`); what }
            let replicas = step("read params", || ctx.params.replicas);
            announce(ctx, `replicas ${replicas}`);
            if replicas != 3 { fail("ctx not captured") }
            "#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    match (&records[1].body, &records[2].body) {
        (RecordBody::StepStarted { inputs, .. }, RecordBody::StepFinished { outputs, .. }) => {
            assert_eq!(inputs, &json!({}), "ctx is left out of captured inputs");
            assert_eq!(outputs, &json!(3));
        }
        other => panic!("{other:?}"),
    }
    match &records[3].body {
        RecordBody::StepFinished { inputs, .. } => {
            assert_eq!(
                inputs.as_ref(),
                Some(&json!({"message": "test-runbook: replicas 3"}))
            )
        }
        other => panic!("{other:?}"),
    }
}

/// Short scripts of local steps run inline on the async worker; one that outgrows that attempt
/// starts over on a blocking thread, and nothing of the first attempt shows twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_outgrows_the_inline_attempt_starts_over_without_doubling_anything() {
    let h = harness(Registry::new(), config());
    let (sink, lines) = collecting_sink();
    let mut p = plan(
        "r1",
        r#"
        log("first");
        let n = step("count", || { let n = 0; for i in 0..20000 { n += 1 } n });
        log(`counted ${n}`);
        "#,
    );
    p.progress = Some(sink);
    let (outcome, records) = run(&h, p).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(*lines.lock().unwrap(), vec!["first", "counted 20000"]);
    assert_eq!(
        kinds(&records),
        vec![
            "run_started",
            "finished 1 log ok",
            "started 2 count",
            "finished 2 count ok",
            "finished 3 log ok",
            "run_finished"
        ]
    );
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// An event handed to a running run is journaled in the run's trail before `join` returns,
/// wakes `wait_resolved`, and shows in `resolved()`; after the run ends, a join is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_resolved_event_wakes_wait_resolved_and_is_journaled_in_the_run() {
    let h = harness(Registry::new(), config());
    let handle = h
        .runner
        .start(plan(
            "j1",
            r#"let before = resolved(); let r = wait_resolved("20s"); log(`resolved ${r}`); [before, r, resolved()]"#,
        ))
        .await
        .unwrap();
    let link = handle.link();
    crate::wait_for(&h, "j1", "started 2 wait_resolved").await;
    let joined = JoinedEvent {
        event_id: "ev-2".into(),
        status: "resolved".into(),
        summary: "alertmanager/resolved HighLatency".into(),
    };
    link.join(joined.clone()).await.expect("joined");
    let outcome = handle.join().await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let records = h.journal.records_for_run("j1").unwrap();
    let all = kinds(&records);
    let joined_at = all.iter().position(|k| k == "event_joined").unwrap();
    let woke_at = all
        .iter()
        .position(|k| k == "finished 2 wait_resolved ok")
        .unwrap();
    assert!(joined_at < woke_at, "{all:?}");
    match &records[woke_at].body {
        RecordBody::StepFinished { outputs, .. } => assert_eq!(outputs, &json!(true)),
        other => panic!("{other:?}"),
    }
    match &records[joined_at].body {
        RecordBody::EventJoined {
            event_id, status, ..
        } => assert_eq!((event_id.as_str(), status.as_str()), ("ev-2", "resolved")),
        other => panic!("{other:?}"),
    }
    assert_eq!(link.join(joined).await, Err(JoinError::Finished));
}

/// A run whose script ended on the async worker (no thread hand-off) refuses a late join as
/// finished, at once: the join must not wait for a flush that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_after_an_inline_run_ended_is_refused_as_finished() {
    let h = harness(Registry::new(), config());
    let handle = h.runner.start(plan("j4", r#"log("quick")"#)).await.unwrap();
    let link = handle.link();
    let outcome = handle.join().await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let joined = JoinedEvent {
        event_id: "ev-9".into(),
        status: "firing".into(),
        summary: "alertmanager/firing QueueBacklog".into(),
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), link.join(joined))
        .await
        .expect("a join after the run's end is answered");
    assert_eq!(answer, Err(JoinError::Finished));
}

/// `sleep` takes its wait as text too (`sleep("20s")` used to fail with Rhai's bare "Function
/// not found"); text that is no wait is a clear step error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_takes_text_and_refuses_text_that_is_no_wait() {
    let h = harness(Registry::new(), config());
    let started = std::time::Instant::now();
    let (outcome, records) = run(&h, plan("s1", r#"sleep("300ms"); 1"#)).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        kinds(&records).contains(&"finished 1 sleep ok".to_owned()),
        "{records:?}"
    );
    let (outcome, _) = run(&h, plan("s2", r#"sleep("soon")"#)).await;
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("invalid_argument") && error.contains("\"soon\" is not a wait like"),
        "{error}"
    );
}

/// `wait_resolved` without a resolution returns false after its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_resolved_times_out_false() {
    let h = harness(Registry::new(), config());
    let (outcome, records) = run(&h, plan("j2", r#"wait_resolved(50)"#)).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    match &records[2].body {
        RecordBody::StepFinished { outputs, name, .. } => {
            assert_eq!((name.as_str(), outputs), ("wait_resolved", &json!(false)))
        }
        other => panic!("{other:?}"),
    }
    let (outcome, _) = run(&h, plan("j3", r#"wait_resolved("1x")"#)).await;
    assert!(
        outcome.error.unwrap().contains("unknown unit"),
        "a bad wait is a clear error"
    );
}

/// The inputs journaled with the `once:blamed` step.
fn once_inputs(records: &[firebreak_audit::Record]) -> serde_json::Value {
    records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::StepFinished {
                name,
                inputs: Some(inputs),
                ..
            } if name == "once:blamed" => Some(inputs.clone()),
            _ => None,
        })
        .expect("once:blamed step")
}

/// `once(name, ..)` decides a value once per incident: a later run of the same runbook for the
/// same event gets the first run's value without evaluating the closure; another event
/// decides afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_decides_a_value_once_per_incident() {
    let fake = Arc::new(crate::fake::Fake::default());
    let mut registry = Registry::new();
    registry.register(fake.clone());
    let h = harness(registry, config());
    const SCRIPT: &str = r#"once("blamed", || fake::one().n + 41)"#;
    let (first, _) = run(&h, plan("o1", SCRIPT)).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}");
    assert_eq!(fake.count("one"), 1);

    let (second, records) = run(&h, plan("o2", SCRIPT)).await;
    assert_eq!(second.status, RunStatus::Succeeded, "{second:?}");
    assert_eq!(fake.count("one"), 1, "the closure did not run again");
    assert_eq!(once_inputs(&records), json!({"decided_by_run": "o1"}));
    let out = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::StepFinished { name, outputs, .. } if name == "once:blamed" => {
                Some(outputs.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(out, json!(42));

    let mut other = plan("o3", SCRIPT);
    let mut event = crate::event();
    event.id = "ev-other".into();
    other.event = Arc::new(event);
    let (third, _) = run(&h, other).await;
    assert_eq!(third.status, RunStatus::Succeeded, "{third:?}");
    assert_eq!(fake.count("one"), 2, "a new incident decides afresh");
}

/// An [`firebreak_runtime::IncidentMemory`] in memory; `fail` makes every call fail.
#[derive(Default)]
struct Memory {
    decided: std::sync::Mutex<std::collections::HashMap<String, (String, serde_json::Value)>>,
    fail: bool,
}

impl firebreak_runtime::IncidentMemory for Memory {
    fn recall(
        &self,
        key: &str,
    ) -> firebreak_runtime::memory::BoxFuture<'_, Result<Option<(String, serde_json::Value)>, String>>
    {
        let found = self.decided.lock().unwrap().get(key).cloned();
        let fail = self.fail;
        Box::pin(async move {
            if fail {
                return Err("state store unreachable".into());
            }
            Ok(found)
        })
    }

    fn remember(
        &self,
        key: &str,
        run_id: &str,
        value: serde_json::Value,
    ) -> firebreak_runtime::memory::BoxFuture<'_, Result<(String, serde_json::Value), String>> {
        let stored = self
            .decided
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_insert((run_id.to_owned(), value))
            .clone();
        Box::pin(async move { Ok(stored) })
    }
}

/// Two replicas (two runners with their own journals) sharing an incident memory: the second
/// replica's run for the same incident gets the first one's decision, which its own journal
/// never held. A memory that cannot be read fails the step before the closure acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_shares_its_decision_with_another_replica_through_the_memory() {
    let fake = Arc::new(crate::fake::Fake::default());
    let memory = Arc::new(Memory::default());
    let replica = |memory: Arc<Memory>| {
        let mut registry = Registry::new();
        registry.register(fake.clone());
        let mut h = harness(registry, config());
        h.runner = h.runner.with_memory(memory);
        h
    };
    let (a, b) = (replica(memory.clone()), replica(memory.clone()));
    const SCRIPT: &str = r#"once("blamed", || fake::one().n + 41)"#;
    let (first, _) = run(&a, plan("o1", SCRIPT)).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}");
    let (second, records) = run(&b, plan("o2", SCRIPT)).await;
    assert_eq!(second.status, RunStatus::Succeeded, "{second:?}");
    assert_eq!(fake.count("one"), 1, "the closure did not run again");
    assert_eq!(once_inputs(&records), json!({"decided_by_run": "o1"}));

    let down = replica(Arc::new(Memory {
        fail: true,
        ..Memory::default()
    }));
    let (failed, _) = run(&down, plan("o3", SCRIPT)).await;
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    let error = failed.error.unwrap();
    assert!(
        error.contains("cannot read the incident's decision: state store unreachable"),
        "{error}"
    );
    assert_eq!(fake.count("one"), 1, "nothing ran after the failed read");
}

/// A closure's captures are journaled by name, so a captured secret is redacted by its name;
/// a secret-shaped value in an error is redacted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_secrets_and_secrets_in_errors_are_redacted() {
    let h = harness(Registry::new(), config());
    let (outcome, records) = run(
        &h,
        plan(
            "r1",
            r#"
            let db_password = "hunter2";
            let replicas = 3;
            step("connect", || { db_password.len() + replicas });
            fail("could not reach postgres://svc:hunter2@db:5432");
            "#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let text = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    let inputs = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::StepStarted { name, inputs, .. } if name == "connect" => Some(inputs),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        inputs,
        &json!({"captured": {"db_password": "[redacted]", "replicas": 3}})
    );
}
