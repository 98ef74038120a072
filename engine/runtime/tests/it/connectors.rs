//! Connector actions as journaled steps: type checks, namespace refusals, dry runs, evidence,
//! progress, retries, timeouts.

use std::sync::Arc;
use std::time::Duration;

use firebreak_audit::{RecordBody, RunStatus};
use firebreak_connector::Registry;
use serde_json::json;

use crate::fake::Fake;
use crate::{Harness, collecting_sink, config, harness, kinds, plan, run};

fn with_fake() -> (Harness, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let mut registry = Registry::new();
    registry.register(fake.clone());
    (harness(registry, config()), fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutating_action_outside_the_runbooks_namespaces_is_refused_and_audited() {
    let (h, fake) = with_fake();
    let (outcome, records) = run(
        &h,
        plan("r1", r#"fake::scale("kube-system", "coredns", 0)"#),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.contains(
            "(denied): namespace `kube-system` is outside runbook test-runbook's namespaces [shop]"
        ),
        "{error}"
    );
    assert_eq!(fake.count("scale"), 0, "the connector was never called");
    assert_eq!(fake.count("plan:scale"), 0, "not even to plan");
    assert_eq!(
        kinds(&records),
        vec![
            "run_started",
            "started 1 fake::scale",
            "refusal",
            "finished 1 fake::scale error",
            "run_finished"
        ]
    );
    match &records[2].body {
        RecordBody::Refusal {
            step,
            action,
            reason,
        } => {
            assert_eq!((*step, action.as_str()), (Some(1), "fake::scale"));
            assert!(reason.contains("kube-system"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_calls_pass_named_args_and_optional_params_may_be_omitted() {
    let (h, fake) = with_fake();
    let (outcome, records) = run(
        &h,
        plan(
            "r1",
            r#"let r = fake::scale("shop", "api"); if r.scaled != "api" { fail("bad") }"#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!((fake.count("plan:scale"), fake.count("scale")), (1, 1));
    match &records[1].body {
        RecordBody::StepStarted { inputs, intent, .. } => {
            assert_eq!(inputs, &json!({"namespace": "shop", "name": "api"}));
            let intent = intent.as_ref().expect("a mutation journals its intent");
            assert_eq!(intent["summary"], "scale api from 1 to 1");
            assert_eq!(intent["replicas"], 1);
        }
        other => panic!("{other:?}"),
    }
    match &records[2].body {
        RecordBody::StepFinished {
            outputs, attempts, ..
        } => {
            assert_eq!(
                outputs,
                &json!({"scaled": "api", "replicas": 1, "changed": true})
            );
            assert_eq!(*attempts, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_of_the_wrong_type_or_count_are_errors_and_the_connector_is_not_called() {
    let (h, fake) = with_fake();
    let (outcome, _) = run(&h, plan("r1", r#"fake::scale("shop", 42)"#)).await;
    let error = outcome.error.unwrap();
    assert!(
        error.contains("fake::scale: parameter `name` (#2) must be a string, got an int (42)"),
        "{error}"
    );
    let (outcome, _) = run(&h, plan("r2", r#"fake::scale("shop")"#)).await;
    let error = outcome.error.unwrap();
    assert!(error.contains("Function not found: fake::scale"), "{error}");
    let (outcome, _) = run(&h, plan("r3", r#"fake::nope()"#)).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(fake.count("scale"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_tell_mutating_actions_and_mark_them_skipped() {
    let (h, fake) = with_fake();
    let mut p = plan("r1", r#"fake::scale("shop", "api", 5)"#);
    p.dry_run = true;
    let (outcome, records) = run(&h, p).await;
    assert_eq!(outcome.status, RunStatus::Succeeded);
    // The engine plans and never applies: no connector can write in a dry run.
    assert_eq!((fake.count("plan:scale"), fake.count("scale")), (1, 0));
    assert_eq!(fake.writes(), 0);
    assert!(fake.world.lock().unwrap().is_empty());
    assert_eq!(kinds(&records)[2], "finished 1 fake::scale skipped");
    match &records[2].body {
        RecordBody::StepFinished { outputs, .. } => {
            assert_eq!(outputs["dry_run"], true);
            assert_eq!(outputs["changed"], false);
            assert_eq!(outputs["would"], "scale api from 1 to 5");
            assert_eq!(
                outputs["replicas"], 5,
                "the answer has the real answer's fields"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// The answer to a write is lost (a connection reset after the cluster took it): the retry
/// applies the same journaled intent, finds it done and writes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_mutation_applies_its_intent_once() {
    let (h, fake) = with_fake();
    *fake.lose_answers.lock().unwrap() = 1;
    let (outcome, records) = run(&h, plan("r1", r#"fake::scale("shop", "api", 3)"#)).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(fake.count("plan:scale"), 1, "planned once");
    assert_eq!(fake.count("scale"), 2, "applied twice");
    assert_eq!(fake.writes(), 1, "written once");
    match &records[2].body {
        RecordBody::StepFinished {
            outputs, attempts, ..
        } => {
            assert_eq!(*attempts, 2);
            assert_eq!(outputs["changed"], false, "the retry found it done");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observing_actions_journal_evidence_and_progress_reaches_journal_and_sink() {
    let (h, _fake) = with_fake();
    let (sink, lines) = collecting_sink();
    let mut p = plan("r1", r#"let pods = fake::pods("shop"); pods.len()"#);
    p.progress = Some(sink);
    let (outcome, records) = run(&h, p).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(
        kinds(&records),
        vec![
            "run_started",
            "started 1 fake::pods",
            "progress",
            "progress",
            "evidence",
            "finished 1 fake::pods ok",
            "run_finished"
        ]
    );
    assert_eq!(
        *lines.lock().unwrap(),
        vec!["listing pods".to_owned(), "found 2 pods".to_owned()]
    );
    match &records[4].body {
        RecordBody::Evidence { data, .. } => assert_eq!(data.as_array().unwrap().len(), 2),
        other => panic!("{other:?}"),
    }
}

/// Reading is tenancy too: another team's pods, logs and events are refused like its writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observing_action_outside_the_runbooks_namespaces_is_refused_and_audited() {
    let (h, fake) = with_fake();
    let (outcome, records) = run(&h, plan("r1", r#"fake::pods("kube-system")"#)).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    assert!(
        outcome.error.as_deref().is_some_and(|e| e.contains(
            "namespace `kube-system` is outside runbook test-runbook's namespaces [shop]"
        )),
        "{outcome:?}"
    );
    assert_eq!(fake.count("pods"), 0, "the connector was never called");
    assert!(
        records.iter().any(
            |r| matches!(&r.body, RecordBody::Refusal { action, .. } if action == "fake::pods")
        ),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_retry_with_backoff_and_others_fail_at_once() {
    let (h, fake) = with_fake();
    *fake.flaky_failures.lock().unwrap() = 2;
    let (outcome, records) = run(&h, plan("r1", "fake::flaky()")).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(fake.count("flaky"), 3);
    match &records[3].body {
        RecordBody::StepFinished {
            attempts, outputs, ..
        } => assert_eq!((*attempts, outputs), (3, &json!("finally"))),
        other => panic!("{other:?}"),
    }

    *fake.flaky_failures.lock().unwrap() = 5;
    let (outcome, _) = run(&h, plan("r2", "fake::flaky()")).await;
    let error = outcome.error.unwrap();
    assert!(
        error.contains("(transient): connection reset (after 3 attempts)"),
        "{error}"
    );

    let (outcome, records) = run(&h, plan("r3", "fake::broken()")).await;
    assert_eq!((fake.count("plan:broken"), fake.count("broken")), (1, 0));
    assert!(
        outcome
            .error
            .unwrap()
            .contains("(permanent): nothing to roll back to")
    );
    match &records[2].body {
        RecordBody::StepFinished {
            attempts, error, ..
        } => {
            assert_eq!(*attempts, 1);
            assert_eq!(error.as_ref().unwrap().kind, "permanent");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_action_ends_with_the_run_timeout_or_a_cancel() {
    let (h, _fake) = with_fake();
    let mut p = plan("r1", "fake::hang()");
    p.timeout = Duration::from_millis(200);
    let (outcome, records) = run(&h, p).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(kinds(&records)[2], "finished 1 fake::hang error");

    let handle = h.runner.start(plan("r2", "fake::hang()")).await.unwrap();
    crate::wait_for(&h, "r2", "started 1 fake::hang").await;
    handle.cancel();
    let outcome = handle.join().await;
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_action_can_be_caught_by_the_script() {
    let (h, _fake) = with_fake();
    let (outcome, records) = run(
        &h,
        plan(
            "r1",
            r#"try { fake::broken() } catch (e) { log(`broken: ${e}`) } 1"#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(kinds(&records)[3], "finished 2 log ok");
}

/// A mirror that refuses the `step_started` of one action, like an audit stream going away.
struct RefuseStepStarted(&'static str);

impl firebreak_audit::AuditMirror for RefuseStepStarted {
    fn publish<'a>(
        &'a self,
        records: &'a [firebreak_audit::Record],
        _lines: bytes::Bytes,
    ) -> futures::future::BoxFuture<'a, Result<firebreak_audit::MirrorStored, (u64, String)>> {
        let refused = records
            .iter()
            .find(|r| matches!(&r.body, RecordBody::StepStarted { name, .. } if name == self.0));
        let result = match refused {
            Some(r) => Err((r.seq, "audit stream unavailable".to_owned())),
            None => Ok(Box::pin(async { Ok(()) }) as firebreak_audit::MirrorStored),
        };
        Box::pin(async move { result })
    }
}

fn refusing_runner(
    action: &'static str,
) -> (firebreak_runtime::Runner, Arc<Fake>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(
        firebreak_audit::Journal::open(dir.path().join("audit.jsonl"))
            .unwrap()
            .with_mirror(Arc::new(RefuseStepStarted(action))),
    );
    let fake = Arc::new(Fake::default());
    let mut registry = Registry::new();
    registry.register(fake.clone());
    let runner = firebreak_runtime::Runner::new(&registry, journal, config());
    (runner, fake, dir)
}

/// A mirror that holds every `progress` record's publish until the test opens its gate, and
/// keeps the seqs it published.
#[derive(Default)]
struct HoldProgress {
    gate: tokio::sync::Notify,
    open: std::sync::atomic::AtomicBool,
    seen: std::sync::Mutex<Vec<u64>>,
}

impl firebreak_audit::AuditMirror for HoldProgress {
    fn publish<'a>(
        &'a self,
        records: &'a [firebreak_audit::Record],
        _lines: bytes::Bytes,
    ) -> futures::future::BoxFuture<'a, Result<firebreak_audit::MirrorStored, (u64, String)>> {
        Box::pin(async move {
            let progress = records
                .iter()
                .any(|r| matches!(r.body, RecordBody::Progress { .. }));
            while progress && !self.open.load(std::sync::atomic::Ordering::SeqCst) {
                let opened = self.gate.notified();
                if self.open.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                opened.await;
            }
            self.seen
                .lock()
                .unwrap()
                .extend(records.iter().map(|r| r.seq));
            Ok(Box::pin(async { Ok(()) }) as firebreak_audit::MirrorStored)
        })
    }
}

/// A run suspended while a record it journaled is still on its way to the audit stream (its
/// step was dropped mid-append) reports its suspension only once the stream has everything
/// the journal holds of it: another replica takes it over from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_runs_records_all_reach_the_mirror_before_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = Arc::new(HoldProgress::default());
    let journal = Arc::new(
        firebreak_audit::Journal::open(dir.path().join("audit.jsonl"))
            .unwrap()
            .with_mirror(mirror.clone()),
    );
    let fake = Arc::new(Fake::default());
    let mut registry = Registry::new();
    registry.register(fake.clone());
    let runner = firebreak_runtime::Runner::new(&registry, journal.clone(), config());
    let handle = runner
        .start(plan("r1", r#"fake::one(); fake::report_then_hang()"#))
        .await
        .unwrap();
    // The progress line is durable in the journal; its publish is held.
    let has_progress = || {
        journal
            .records_for_run("r1")
            .unwrap()
            .iter()
            .any(|r| matches!(r.body, RecordBody::Progress { .. }))
    };
    for _ in 0..500 {
        if has_progress() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(has_progress(), "the run reported progress");
    runner.suspend();
    let opener = tokio::spawn({
        let mirror = mirror.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            mirror.open.store(true, std::sync::atomic::Ordering::SeqCst);
            mirror.gate.notify_waiters();
        }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), handle.join())
        .await
        .expect("the suspended run reports");
    assert!(outcome.suspended, "{outcome:?}");
    let published = mirror.seen.lock().unwrap().clone();
    let journaled: Vec<u64> = journal
        .records_for_run("r1")
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert!(
        journaled.iter().all(|seq| published.contains(seq)),
        "reported before the mirror had all of it: journaled {journaled:?}, published {published:?}"
    );
    opener.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_write_fails_the_step_before_the_action_runs() {
    let (runner, fake, _dir) = refusing_runner("fake::scale");
    // `fake::one` makes the start durable; the write before `fake::scale` then fails.
    let outcome = runner
        .start(plan(
            "r1",
            r#"fake::one(); log("before"); fake::scale("shop", "api", 2)"#,
        ))
        .await
        .unwrap()
        .join()
        .await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.contains("audit journal write failed, step aborted"),
        "{error}"
    );
    assert!(error.contains("audit stream unavailable"), "{error}");
    assert_eq!(fake.count("one"), 1);
    assert_eq!(fake.count("scale"), 0, "no action without its audit record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_start_cannot_be_journaled_does_not_start_and_acts_on_nothing() {
    let (runner, fake, _dir) = refusing_runner("fake::scale");
    // The first durable write carries run_started with the action's step_started.
    let error = match runner
        .start(plan(
            "r1",
            r#"log("before"); fake::scale("shop", "api", 2)"#,
        ))
        .await
    {
        Ok(_) => panic!("the run started although its start was not journaled"),
        Err(e) => e,
    };
    assert!(
        matches!(error, firebreak_runtime::RuntimeError::Journal { ref run_id, .. } if run_id == "r1"),
        "{error:?}"
    );
    let chain = format!("{:?}", std::error::Error::source(&error));
    assert!(chain.contains("audit stream unavailable"), "{chain}");
    assert_eq!(fake.count("scale"), 0, "no action without its audit record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_steps_before_an_action_are_logged_and_journaled_once() {
    let (h, fake) = with_fake();
    let (sink, lines) = collecting_sink();
    let mut p = plan("r1", r#"log("before"); fake::one(); log("after")"#);
    p.progress = Some(sink);
    let (outcome, records) = run(&h, p).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(*lines.lock().unwrap(), vec!["before", "after"]);
    assert_eq!(fake.count("one"), 1);
    assert_eq!(
        kinds(&records),
        vec![
            "run_started",
            "finished 1 log ok",
            "started 2 fake::one",
            "evidence",
            "finished 2 fake::one ok",
            "finished 3 log ok",
            "run_finished"
        ]
    );
}

/// `canary()` on an engine without the traffic and prom connectors fails the run with what to
/// configure, before it shifts or sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_without_its_connectors_fails_saying_what_to_configure() {
    let (h, _fake) = with_fake();
    let (outcome, _) = run(
        &h,
        plan(
            "r1",
            r#"canary(#{namespace: "shop", route: "httproute/web", stable: "v1", canary: "v2",
                        steps: [10], interval: "1s", metrics: []})"#,
        ),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    assert!(
        outcome
            .error
            .as_deref()
            .is_some_and(|e| e.contains("canary() needs the traffic and prom connectors")),
        "{outcome:?}"
    );
}

/// With a teams file, a mutation of the whole cluster (an action without a namespace, like
/// cordoning a node) runs only with the team's grant; observing is not a mutation, and
/// without a teams file (single tenant) there is nothing to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_wide_mutation_needs_the_teams_grant() {
    let (h, fake) = with_fake();
    let script = r#"fake::one(); fake::two(7)"#;

    let mut ungranted = plan("no-grant", script);
    ungranted.cluster_actions = Some(vec!["fake::three".into()]);
    let (outcome, records) = run(&h, ungranted).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.contains("`fake::two` acts on the whole cluster and team payments has no grant"),
        "{error}"
    );
    assert_eq!(fake.count("plan:two"), 0, "never planned");
    assert!(
        records.iter().any(|r| matches!(&r.body,
            RecordBody::Refusal { action, .. } if action == "fake::two")),
        "{:?}",
        kinds(&records)
    );
    // The grant is journaled with the run, so a resumed run keeps the same limits.
    match &records[0].body {
        RecordBody::RunStarted {
            cluster_actions, ..
        } => assert_eq!(cluster_actions, &Some(vec!["fake::three".to_owned()])),
        other => panic!("{other:?}"),
    }

    let mut granted = plan("grant", script);
    granted.cluster_actions = Some(vec!["fake::two".into()]);
    let (outcome, _) = run(&h, granted).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");

    let (outcome, _) = run(&h, plan("single-tenant", script)).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(fake.count("plan:two"), 2);
}

/// A runner whose limit per connector call is 200 ms, so the waits below outlast it.
fn with_fake_and_short_calls() -> (Harness, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let mut registry = Registry::new();
    registry.register(fake.clone());
    let config = firebreak_runtime::RunnerConfig {
        action_timeout: Duration::from_millis(200),
        ..config()
    };
    (harness(registry, config), fake)
}

/// An action that waits by design (`k8s::wait_rollout(ns, d, "5m")`) gets the wait the script
/// asked for, or its default, not the engine's shorter limit per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_that_waits_gets_its_wait_beyond_the_limit_per_call() {
    let (h, fake) = with_fake_and_short_calls();
    for (run_id, call) in [
        ("r1", r#"fake::wait_ready(600, "1s")"#),
        ("r2", "fake::wait_ready(600, 1)"),
        // The declared default, 1 s.
        ("r3", "fake::wait_ready(600)"),
    ] {
        let (outcome, records) = run(&h, plan(run_id, call)).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{call}: {outcome:?}");
        match &records[3].body {
            RecordBody::StepFinished {
                outputs, attempts, ..
            } => assert_eq!((*attempts, &outputs["ready"]), (1, &json!(true)), "{call}"),
            other => panic!("{call}: {other:?}"),
        }
    }
    assert_eq!(fake.count("wait_ready"), 3);
}

/// Only a declared wait lengthens the limit: any other action is cut at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_that_does_not_wait_is_still_cut_at_the_limit_per_call() {
    let (h, fake) = with_fake_and_short_calls();
    let (outcome, records) = run(&h, plan("r1", "fake::slow(600)")).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(
        error.contains("(timeout): no answer within 200 ms"),
        "{error}"
    );
    assert_eq!(fake.count("slow"), 1, "a timeout is not retried");
    assert_eq!(kinds(&records)[2], "finished 1 fake::slow error");
}

/// A declared wait longer than what is left of the run ends with the run's `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_deadline_still_bounds_an_action_that_waits() {
    let (h, _fake) = with_fake_and_short_calls();
    let mut p = plan("r1", r#"fake::wait_ready(5000, "10s")"#);
    p.timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let (outcome, records) = run(&h, p).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ended after {:?}, not at the run's deadline",
        started.elapsed()
    );
    assert_eq!(kinds(&records)[2], "finished 1 fake::wait_ready error");
}
