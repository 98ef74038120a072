//! Resume: a run interrupted after some steps picks up from the journal without calling a
//! connector again for any step that finished.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use firebreak_audit::{Journal, RecordBody, RunStatus};
use firebreak_connector::Registry;
use firebreak_runtime::{Runner, RuntimeError, compile};

use crate::fake::Fake;
use crate::{config, kinds, plan, resume};

const SCRIPT: &str = r#"
    let a = fake::one();
    let b = step("double", || fake::two(a.n * 2));
    let c = fake::three(b.n);
    log(`done ${c.n}`);
    c.n
"#;

/// The fake connector, and a registry holding it.
fn fake_registry() -> (Arc<Fake>, Registry) {
    let fake = Arc::new(Fake::default());
    let mut registry = Registry::new();
    registry.register(fake.clone());
    (fake, registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_replays_finished_steps_and_calls_each_action_once_overall() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (fake, registry) = fake_registry();

    // First attempt: the engine stops right after `two` (steps 1-3 finished).
    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config());
    let p = plan("r1", SCRIPT);
    *fake.cancel_on_two.lock().unwrap() = Some(p.cancel.clone());
    let outcome = runner.start(p).await.unwrap().join().await;
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert_eq!(
        (fake.count("one"), fake.count("two"), fake.count("three")),
        (1, 1, 0)
    );
    *fake.cancel_on_two.lock().unwrap() = None;
    drop(runner);
    drop(journal);

    // Make it a crash: the process died before it could journal anything after step 3.
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.last().unwrap().contains("\"type\":\"run_finished\""));
    let mut file = std::fs::File::create(&path).unwrap();
    for line in &lines[..lines.len() - 1] {
        writeln!(file, "{line}").unwrap();
    }
    drop(file);

    // Restart: a new journal and runner find the unfinished run and resume it.
    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config());
    let unfinished: Vec<String> = journal
        .unfinished_runs()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(unfinished, vec!["r1".to_owned()]);
    let ast = compile(std::path::Path::new("test.rhai"), SCRIPT).unwrap();
    let outcome = resume(&runner, "r1", ast.clone())
        .await
        .unwrap()
        .join()
        .await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.steps, 5);
    assert_eq!(
        (fake.count("one"), fake.count("two"), fake.count("three")),
        (1, 1, 1)
    );

    let records = journal.records_for_run("r1").unwrap();
    let all = kinds(&records);
    let resumed_at = all.iter().position(|k| k == "run_resumed").unwrap();
    assert_eq!(
        all[resumed_at..].to_vec(),
        vec![
            "run_resumed",
            "finished 1 fake::one replayed",
            "finished 3 fake::two replayed",
            "finished 2 double replayed",
            "started 4 fake::three",
            "finished 4 fake::three ok",
            "finished 5 log ok",
            "run_finished",
        ]
    );
    // `three` got the value computed from the replayed outputs: ((1 * 2) + 10) + 100.
    match &records[resumed_at + 4].body {
        RecordBody::StepStarted { inputs, .. } => assert_eq!(inputs["x"], 12),
        other => panic!("{other:?}"),
    }
    match &records.last().unwrap().body {
        RecordBody::RunFinished { status, .. } => assert_eq!(*status, RunStatus::Succeeded),
        other => panic!("{other:?}"),
    }

    // A finished run, or one never started, cannot be resumed.
    assert!(matches!(
        resume(&runner, "r1", ast.clone()).await,
        Err(RuntimeError::AlreadyFinished { .. })
    ));
    assert!(matches!(
        resume(&runner, "nope", ast).await,
        Err(RuntimeError::UnknownRun { .. })
    ));
    drop(runner);
    drop(journal);
    firebreak_audit::verify(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_script_that_diverges_from_the_journal_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (fake, registry) = fake_registry();
    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config());
    let p = plan("r1", SCRIPT);
    *fake.cancel_on_two.lock().unwrap() = Some(p.cancel.clone());
    runner.start(p).await.unwrap().join().await;
    drop(runner);
    drop(journal);
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"type\":\"run_finished\""))
        .collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();

    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config());
    let changed = compile(
        std::path::Path::new("test.rhai"),
        r#"log("hello"); fake::one()"#,
    )
    .unwrap();
    let outcome = resume(&runner, "r1", changed).await.unwrap().join().await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.contains("resume diverged at step 1: the journal has `fake::one` there, the script now calls `log`"), "{error}");
    assert_eq!(fake.count("one"), 1);
}

/// A stop (SIGTERM) suspends a run at once, even inside a wait: the `sleep` step is left
/// without an end, nothing journals the run's end, and the resumed run sleeps only for what
/// was left of the wait (here nothing: the restart came after the wait would have ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_run_stops_inside_its_wait_and_resumes_with_the_time_left() {
    const SLOW: &str = r#"
        let a = fake::one();
        sleep(3000);
        let c = fake::three(a.n);
        c.n
    "#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (fake, registry) = fake_registry();

    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config());
    let handle = runner.start(plan("s1", SLOW)).await.unwrap();
    // Suspend while the run is inside its `sleep` step.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !kinds(&journal.records_for_run("s1").unwrap()).contains(&"started 2 sleep".to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "run never reached its sleep step"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    runner.suspend();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(2), handle.join())
        .await
        .expect("a stop does not wait for the sleep to end");
    assert!(outcome.suspended, "{outcome:?}");
    assert_eq!((fake.count("one"), fake.count("three")), (1, 0));
    let first = kinds(&journal.records_for_run("s1").unwrap());
    assert!(
        !first.iter().any(|k| k.starts_with("finished 2")),
        "the interrupted wait has no end: {first:?}"
    );
    assert!(!first.iter().any(|k| k == "run_finished"), "{first:?}");
    drop(runner);
    drop(journal);

    // Come back after the wait would have ended.
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config());
    let ast = compile(std::path::Path::new("slow.rhai"), SLOW).unwrap();
    let outcome = resume(&runner, "s1", ast).await.unwrap().join().await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert!(!outcome.suspended);
    assert_eq!((fake.count("one"), fake.count("three")), (1, 1));
    let resumed_sleep = journal
        .records_for_run("s1")
        .unwrap()
        .into_iter()
        .find_map(|r| match r.body {
            RecordBody::StepFinished {
                step: 2,
                duration_ms,
                ..
            } => Some(duration_ms),
            _ => None,
        })
        .expect("the sleep finished after the resume");
    assert!(
        resumed_sleep < 1000,
        "the resumed sleep waited only for what was left, not 3 s again: {resumed_sleep} ms"
    );
}

/// A crash between a mutation's write and its journaled end (here: the journal is cut right
/// after the step's write-ahead record, once the write happened). The resumed run applies the
/// journaled intent again: it finds the world already there, writes nothing and does not plan
/// again; the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_interrupted_after_its_write_is_not_repeated_on_resume() {
    const SCRIPT: &str = r#"fake::scale("shop", "api", 3); log("scaled")"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (fake, registry) = fake_registry();

    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config());
    let outcome = runner.start(plan("m1", SCRIPT)).await.unwrap().join().await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(fake.writes(), 1);
    drop(runner);
    drop(journal);

    // Keep everything up to the write-ahead record of step 1: the crash came after the write.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut kept = Vec::new();
    for line in text.lines() {
        kept.push(line);
        if line.contains("\"type\":\"step_started\"") && line.contains("fake::scale") {
            assert!(line.contains("\"intent\":"), "{line}");
            break;
        }
    }
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();

    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config());
    let ast = compile(std::path::Path::new("m.rhai"), SCRIPT).unwrap();
    let outcome = resume(&runner, "m1", ast).await.unwrap().join().await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(fake.writes(), 1, "the write was not repeated");
    assert_eq!(
        fake.count("plan:scale"),
        1,
        "the intent was not decided again"
    );
    assert_eq!(fake.count("scale"), 2, "applied again, found done");
    let records = journal.records_for_run("m1").unwrap();
    let all = kinds(&records);
    let resumed_at = all.iter().position(|k| k == "run_resumed").unwrap();
    assert_eq!(
        all[resumed_at..].to_vec(),
        vec![
            "run_resumed",
            "finished 1 fake::scale ok",
            "finished 2 log ok",
            "run_finished"
        ]
    );
    match &records[resumed_at + 1].body {
        RecordBody::StepFinished { outputs, .. } => assert_eq!(outputs["changed"], false),
        other => panic!("{other:?}"),
    }
    drop(runner);
    drop(journal);
    firebreak_audit::verify(&path).unwrap();
}

/// A replica cut off from NATS for most of a run's lease may find the mutation's write-ahead
/// record journaled only once NATS is back, when another replica may have taken the run over:
/// it must not write then. The run suspends with the intent journaled and no write; whoever
/// resumes it applies that very intent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_whose_lease_is_not_known_to_hold_is_not_applied_and_the_run_suspends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const SCRIPT: &str = r#"fake::scale("shop", "api", 3); log("scaled")"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (fake, registry) = fake_registry();
    let holds = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    // The lease holds when the run starts (it is asked then), and is no longer known to hold
    // by the mutation.
    let fence: firebreak_runtime::Fence = {
        let (holds, asked) = (holds.clone(), asked.clone());
        Arc::new(move |key: &str, run_id: &str| {
            let mut asked = asked.lock().unwrap();
            asked.push(format!("{key} {run_id}"));
            asked.len() == 1 || holds.load(Ordering::SeqCst)
        })
    };

    let journal = Arc::new(Journal::open(&path).unwrap());
    let runner = Runner::new(&registry, journal.clone(), config()).with_fence(fence.clone());
    let mut first = plan("m1", SCRIPT);
    first.lock_key = Some("test-runbook/api".into());
    let outcome = runner.start(first).await.unwrap().join().await;
    assert!(outcome.suspended, "{outcome:?}");
    assert_eq!(fake.writes(), 0, "no write without the lease");
    assert_eq!(fake.count("plan:scale"), 1);
    assert_eq!(
        *asked.lock().unwrap(),
        vec!["test-runbook/api m1", "test-runbook/api m1"],
        "at the start, and before the mutation"
    );
    let records = journal.records_for_run("m1").unwrap();
    assert_eq!(
        kinds(&records),
        vec!["run_started", "started 1 fake::scale"]
    );
    match &records[1].body {
        RecordBody::StepStarted { intent, .. } => assert!(intent.is_some(), "{intent:?}"),
        other => panic!("{other:?}"),
    }

    // A run without a lock has no lease to lose; one resumed with its lease applies the
    // journaled intent.
    let other = r#"fake::scale("shop", "web", 3); log("scaled")"#;
    let unlocked = runner.start(plan("m2", other)).await.unwrap().join().await;
    assert_eq!(unlocked.status, RunStatus::Succeeded, "{unlocked:?}");
    assert_eq!(fake.writes(), 1);
    holds.store(true, Ordering::SeqCst);
    let ast = compile(std::path::Path::new("m.rhai"), SCRIPT).unwrap();
    let outcome = resume(&runner, "m1", ast).await.unwrap().join().await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(fake.writes(), 2, "m1's write, once");
    assert_eq!(fake.count("scale"), 2, "m2's and m1's, each applied once");
    assert_eq!(
        fake.count("plan:scale"),
        2,
        "m1's intent was not decided again"
    );
    drop(runner);
    drop(journal);
    firebreak_audit::verify(&path).unwrap();
}

/// A start that waited for its run slot may have lost its lease meanwhile (the replica was cut
/// off from NATS longer than a lease; another took the lock over and, finding nothing started,
/// let it go). It is not started: started, it would act without its lock and be stopped at its
/// first renewal with no lock left to resume it by. Its slot is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_lease_no_longer_holds_is_refused_and_journals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (_fake, registry) = fake_registry();
    let fence: firebreak_runtime::Fence = Arc::new(|_: &str, _: &str| false);
    let journal = Arc::new(Journal::open(&path).unwrap());
    let mut config = config();
    config.max_concurrent_runs = 1;
    let runner = Runner::new(&registry, journal.clone(), config).with_fence(fence);
    let mut locked = plan("l1", r#"log("ran")"#);
    locked.lock_key = Some("test-runbook/api".into());
    match runner.start(locked).await {
        Err(RuntimeError::LeaseLost { run_id }) => assert_eq!(run_id, "l1"),
        Ok(_) => panic!("a run started without its lease"),
        Err(other) => panic!("{other}"),
    }
    assert!(
        !journal
            .records_for_run("l1")
            .is_ok_and(|records| !records.is_empty()),
        "nothing journaled for it"
    );
    assert!(journal.unfinished_runs().is_empty());
    // The one slot is free again: a run without a lock starts and ends.
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        runner
            .start(plan("u1", r#"log("ran")"#))
            .await
            .unwrap()
            .join()
            .await
    })
    .await
    .expect("the refused start gave its slot back");
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
}

/// The same for a resume (after a restart, or a takeover) that waited for its run slot: its
/// lease no longer holding, it is not resumed, and journals nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_whose_lease_no_longer_holds_is_refused_and_journals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (_fake, registry) = fake_registry();
    const WAITS: &str = r#"sleep(5000); log("ran")"#;
    // A run stopped in its sleep, with its lock.
    let journal = Arc::new(Journal::open(&path).unwrap());
    let holds: firebreak_runtime::Fence = Arc::new(|_: &str, _: &str| true);
    let runner = Runner::new(&registry, journal.clone(), config()).with_fence(holds);
    let mut locked = plan("w1", WAITS);
    locked.lock_key = Some("test-runbook/api".into());
    let handle = runner.start(locked).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !kinds(&journal.records_for_run("w1").unwrap()).contains(&"started 1 sleep".to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached its sleep"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runner.suspend();
    assert!(handle.join().await.suspended);
    drop(runner);
    let before = journal.records_for_run("w1").unwrap().len();

    let lost: firebreak_runtime::Fence = Arc::new(|_: &str, _: &str| false);
    let runner = Runner::new(&registry, journal.clone(), config()).with_fence(lost);
    let ast = compile(std::path::Path::new("w.rhai"), WAITS).unwrap();
    match resume(&runner, "w1", ast).await {
        Err(RuntimeError::LeaseLost { run_id }) => assert_eq!(run_id, "w1"),
        Ok(_) => panic!("a run resumed without its lease"),
        Err(other) => panic!("{other}"),
    }
    assert_eq!(
        journal.records_for_run("w1").unwrap().len(),
        before,
        "nothing journaled"
    );
}
