//! The dispatcher's guarantees, each on the embedded state store and on JetStream KV.

use std::sync::Arc;
use std::time::Duration;

use firebreak_audit::RecordBody;
use firebreak_bus::testutil::Settled;
use serde_json::json;

use crate::{Backend, H, alert, all_records, finished, started, summary};

const QUICK: &[(&str, &str)] = &[
    (
        "quick.yaml",
        "name: quick\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
         triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"Slow\"']\n\
         params:\n  target: { from: label, key: target, type: string, required: true }\n\
         concurrency: \"{{params.target}}\"\ntimeout: 30s\n",
    ),
    ("quick.rhai", "log(`handled ${ctx.params.target}`);\n"),
];

/// One message delivered twice at once (a redelivery racing the first delivery, as after a
/// NATS reconnect), many times over, with a runbook that finishes at once: exactly one run per
/// message. A third delivery after the run finished starts none either: the lock is taken
/// before the journal is asked, so either the lock is held by the run or the run is in the
/// journal.
async fn one_message_starts_one_run(backend: Backend) {
    let h = H::new(backend, QUICK).await;
    const ROUNDS: usize = 40;
    for i in 0..ROUNDS {
        let event = alert(
            &format!("ev-{i}"),
            "firing",
            &format!("{i:016x}"),
            json!({"target": format!("t{i}")}),
        );
        let published = jiff::Timestamp::now();
        let (a, b) = tokio::join!(h.deliver(&event, published), h.deliver(&event, published));
        assert_eq!(a, vec![Settled::Ack]);
        assert_eq!(b, vec![Settled::Ack]);
    }
    let records = h
        .wait("every run to finish", |r| finished(r, "quick") == ROUNDS)
        .await;
    for i in 0..ROUNDS {
        let event = alert(
            &format!("ev-{i}"),
            "firing",
            &format!("{i:016x}"),
            json!({"target": format!("t{i}")}),
        );
        // Redelivered long after: the bus accepted it before the run started.
        let published = records
            .iter()
            .find(|r| r.event_id == event.id)
            .map(|r| r.time - jiff::SignedDuration::from_millis(1))
            .unwrap();
        assert_eq!(h.deliver(&event, published).await, vec![Settled::Ack]);
    }
    let records = all_records(&h.journal);
    let runs = started(&records, "quick");
    assert_eq!(
        runs.len(),
        ROUNDS,
        "one run per message:\n{}",
        summary(&records)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_starts_one_run_embedded() {
    one_message_starts_one_run(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_starts_one_run_nats() {
    one_message_starts_one_run(Backend::Nats).await;
}

const WAITS: &[(&str, &str)] = &[
    (
        "waits.yaml",
        "name: waits\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
         triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"Slow\"']\n\
         params:\n  target: { from: label, key: target, type: string, required: true }\n\
         concurrency: \"{{params.target}}\"\ncooldown: 10m\ntimeout: 60s\n",
    ),
    (
        "waits.rhai",
        "log(\"acting\");\nlet r = wait_resolved(\"30s\");\nlog(`resolved: ${r}`);\n",
    ),
];

/// A run stopped mid-way (SIGTERM) is resumed by the next engine, which takes its lock again
/// first: a repeat of its incident, and another alert for the same target, start no second run
/// (they are joined to it). When it ends its cooldown is set: a later alert is skipped, and
/// the skip is journaled.
async fn a_resumed_run_holds_its_lock_and_sets_its_cooldown(backend: Backend) {
    let h = H::new(backend, WAITS).await;
    let first = alert(
        "ev-1",
        "firing",
        "00000000000000f1",
        json!({"target": "api"}),
    );
    assert_eq!(
        h.deliver(&first, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    h.wait("the run to wait for its resolution", |r| {
        r.iter().any(
            |r| matches!(&r.body, RecordBody::StepStarted { name, .. } if name == "wait_resolved"),
        )
    })
    .await;
    let (dir, nats) = h.stop().await;

    let h = H::open(dir, nats).await;
    assert_eq!(h.dispatcher.resume_unfinished().await, 1);
    // The same incident again, and another alert for the same target.
    let again = alert(
        "ev-1",
        "firing",
        "00000000000000f1",
        json!({"target": "api"}),
    );
    let other = alert(
        "ev-2",
        "firing",
        "00000000000000f2",
        json!({"target": "api"}),
    );
    assert_eq!(
        h.deliver(&again, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    assert_eq!(
        h.deliver(&other, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let records = all_records(&h.journal);
    assert_eq!(
        started(&records, "waits").len(),
        1,
        "one run for the target:\n{}",
        summary(&records)
    );
    assert!(
        records.iter().any(
            |r| matches!(&r.body, RecordBody::EventJoined { event_id, .. } if event_id == "ev-2")
        ),
        "the other alert joined the resumed run:\n{}",
        summary(&records)
    );
    // The incident resolves: the resumed run hears it and ends.
    let resolved = alert(
        "ev-3",
        "resolved",
        "00000000000000f1",
        json!({"target": "api"}),
    );
    assert_eq!(
        h.deliver(&resolved, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let records = h
        .wait("the run to end", |r| finished(r, "waits") == 1)
        .await;
    let run = &started(&records, "waits")[0];
    let logs: Vec<String> = records
        .iter()
        .filter(|r| &r.run_id == run)
        .filter_map(|r| match &r.body {
            RecordBody::StepFinished { name, outputs, .. } if name == "wait_resolved" => {
                Some(outputs.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(logs, vec!["true"], "{}", summary(&records));
    // Its cooldown holds after the resume.
    let later = alert(
        "ev-4",
        "firing",
        "00000000000000f4",
        json!({"target": "api"}),
    );
    for _ in 0..100 {
        if h.state.cooldown("waits/api").await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.deliver(&later, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let records = all_records(&h.journal);
    assert_eq!(started(&records, "waits").len(), 1, "{}", summary(&records));
    assert!(
        records.iter().any(
            |r| matches!(&r.body, RecordBody::Skipped { reason, .. } if reason.contains("cooldown"))
        ),
        "the skip is journaled:\n{}",
        summary(&records)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_holds_its_lock_and_sets_its_cooldown_embedded() {
    a_resumed_run_holds_its_lock_and_sets_its_cooldown(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_holds_its_lock_and_sets_its_cooldown_nats() {
    a_resumed_run_holds_its_lock_and_sets_its_cooldown(Backend::Nats).await;
}

const BY_INCIDENT: &[(&str, &str)] = &[
    (
        "triage.yaml",
        "name: triage\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
         triggers:\n  - source: alertmanager\n    status: any\n    match: ['alertname=\"Slow\"']\n\
         timeout: 60s\n",
    ),
    (
        "triage.rhai",
        "if ctx.event.type == \"firing\" { wait_resolved(\"30s\"); }\n",
    ),
];

/// Without a `concurrency` key the key is the incident: alerts with other fingerprints run
/// side by side (they used to be skipped while any run of the runbook was active), and the
/// resolved notification of a `status: any` runbook's incident is joined to its run instead
/// of being dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_key_is_the_incident_and_its_resolution_reaches_its_run() {
    let h = H::new(Backend::Embedded, BY_INCIDENT).await;
    for (id, fp) in [("a", "000000000000000a"), ("b", "000000000000000b")] {
        let event = alert(id, "firing", fp, json!({}));
        assert_eq!(
            h.deliver(&event, jiff::Timestamp::now()).await,
            vec![Settled::Ack]
        );
    }
    h.wait("two runs waiting", |r| {
        r.iter()
            .filter(|r| matches!(&r.body, RecordBody::StepStarted { name, .. } if name == "wait_resolved"))
            .count()
            == 2
    })
    .await;
    let resolved = alert("a-resolved", "resolved", "000000000000000a", json!({}));
    assert_eq!(
        h.deliver(&resolved, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let records = h
        .wait("incident a's run to end", |r| finished(r, "triage") == 1)
        .await;
    let joined: Vec<_> = records
        .iter()
        .filter(|r| matches!(&r.body, RecordBody::EventJoined { .. }))
        .collect();
    assert_eq!(joined.len(), 1, "joined once:\n{}", summary(&records));
    assert_eq!(joined[0].event_id, "a", "joined to incident a's run");
    assert_eq!(
        started(&records, "triage").len(),
        2,
        "the resolution started no run of its own"
    );
}

/// A run started from a terminal (`firebreak run`) that was left unfinished is closed as
/// abandoned by the next engine, never resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_run_left_unfinished_is_abandoned_not_resumed() {
    use std::sync::Arc;

    use firebreak_audit::{RecordDraft, RunMeta};
    let h = H::new(Backend::Embedded, WAITS).await;
    let meta = Arc::new(RunMeta {
        run_id: "cli-1".into(),
        runbook: "waits".into(),
        team: "sre".into(),
        actor: "ann".into(),
        event_id: "manual-1".into(),
    });
    h.journal
        .append(RecordDraft::new(
            meta,
            RecordBody::RunStarted {
                event: json!({"id": "manual-1", "source": "manual", "type": "trigger", "subject": "waits",
                              "time": "2026-12-01T00:00:00Z", "data": {}})
                .into(),
                params: json!({"target": "api"}),
                dry_run: false,
                namespaces: vec!["shop".into()],
                cluster_actions: None,
                approval: None,
                timeout_ms: Some(60_000),
                lock_key: None,
                cooldown_ms: None,
                interactive: true,
                trace_id: None,
            },
        ))
        .await
        .unwrap();
    assert_eq!(h.dispatcher.resume_unfinished().await, 0);
    let records = h.journal.records_for_run("cli-1").unwrap();
    match &records.last().unwrap().body {
        RecordBody::RunFinished { status, error } => {
            assert_eq!(*status, firebreak_audit::RunStatus::Cancelled);
            assert!(error.as_deref().unwrap().contains("abandoned"), "{error:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(h.journal.unfinished_runs().is_empty());
}

/// A bus message that is not an event is parked: kept whole in the journal (a notice, never
/// a run), then acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_bus_message_is_parked_in_the_journal() {
    use std::sync::Arc;
    let h = H::new(Backend::Embedded, QUICK).await;
    let bad = Arc::new(firebreak_event::unprocessable(
        "firebreak.events.alertmanager.firing",
        "expected value at line 1 column 1",
        b"garbage",
    ));
    assert_eq!(
        h.deliver(&bad, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let records = all_records(&h.journal);
    match &records[0].body {
        RecordBody::Parked {
            origin, payload, ..
        } => {
            assert_eq!(origin, "firebreak.events.alertmanager.firing");
            assert_eq!(payload, "garbage");
        }
        other => panic!("{other:?}"),
    }
    assert!(h.journal.unfinished_runs().is_empty());
}

/// A dry run takes a lock of its own: a dry run still waiting never blocks the real
/// remediation of the same incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_does_not_block_the_real_run() {
    use std::sync::Arc;
    let h = H::new(Backend::Embedded, WAITS).await;
    let mut params = serde_json::Map::new();
    params.insert("target".into(), json!("api"));
    let dry = Arc::new(firebreak_event::manual::trigger(
        "waits", params, "ann", true,
    ));
    assert_eq!(
        h.deliver(&dry, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let real = alert(
        "ev-9",
        "firing",
        "00000000000000f9",
        json!({"target": "api"}),
    );
    assert_eq!(
        h.deliver(&real, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let records = all_records(&h.journal);
    let runs = started(&records, "waits");
    assert_eq!(runs.len(), 2, "{}", summary(&records));
    let dry_runs: Vec<bool> = records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::RunStarted { dry_run, .. } => Some(*dry_run),
            _ => None,
        })
        .collect();
    assert_eq!(dry_runs, vec![true, false]);
}

/// A dry run that ended sets no cooldown, neither on its own lock's key nor on the real
/// one's: the real remediation of the same incident starts right after it. The real run's
/// end does set its cooldown (what this test looks for can be seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_sets_no_cooldown() {
    const COOLS: &[(&str, &str)] = keyed_runbook!(
        "cools",
        "cooldown: 10m\n",
        "log(`handled ${ctx.params.target}`);\n"
    );
    let h = H::new(Backend::Embedded, COOLS).await;
    // The cooldown is set before the lock is released: once the lock is free, it is there
    // if it ever will be.
    let released = |key: &'static str| {
        let state = h.state.clone();
        async move {
            for _ in 0..500 {
                if state.lock_holder(key).await.unwrap().is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{key} was never released");
        }
    };
    let mut params = serde_json::Map::new();
    params.insert("target".into(), json!("api"));
    let dry = Arc::new(firebreak_event::manual::trigger(
        "cools", params, "ann", true,
    ));
    assert_eq!(
        h.deliver(&dry, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    h.wait("the dry run to end", |r| finished(r, "cools") == 1)
        .await;
    released("dry-run:cools/api").await;
    assert_eq!(h.state.cooldown("dry-run:cools/api").await.unwrap(), None);
    assert_eq!(h.state.cooldown("cools/api").await.unwrap(), None);

    let real = alert(
        "ev-9",
        "firing",
        "00000000000000f9",
        json!({"target": "api"}),
    );
    assert_eq!(
        h.deliver(&real, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let records = h
        .wait("the real run to end", |r| finished(r, "cools") == 2)
        .await;
    let dry_runs: Vec<bool> = records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::RunStarted { dry_run, .. } => Some(*dry_run),
            _ => None,
        })
        .collect();
    assert_eq!(dry_runs, vec![true, false], "{}", summary(&records));
    assert!(
        !records
            .iter()
            .any(|r| matches!(r.body, RecordBody::Skipped { .. })),
        "{}",
        summary(&records)
    );
    released("cools/api").await;
    assert!(
        h.state.cooldown("cools/api").await.unwrap().is_some(),
        "the real run's end sets its cooldown"
    );
}

/// A second alert for a key whose run has just ended, while the run's lock is being released
/// (the state store is slow to answer), waits for the release and starts its own run. It used
/// to be skipped as "active on another engine replica": the run was forgotten before its lock
/// was released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_while_the_last_run_releases_its_lock_starts_its_own_run() {
    let (h, gated) = H::gated(QUICK).await;
    gated.unlock.arm();
    let first = alert(
        "first",
        "firing",
        "00000000000000f1",
        json!({"target": "a"}),
    );
    assert_eq!(
        h.deliver(&first, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    // The run ended; its unlock is held.
    gated.unlock.reached().await;
    let second = alert(
        "second",
        "firing",
        "00000000000000f2",
        json!({"target": "a"}),
    );
    let h = Arc::new(h);
    let delivering = {
        let h = h.clone();
        tokio::spawn(async move { h.deliver(&second, jiff::Timestamp::now()).await })
    };
    // The second found the ended run still holding the key, and waits for its release.
    waiting_for_a_holder(&h, 1).await;
    gated.unlock.open();
    assert_eq!(delivering.await.unwrap(), vec![Settled::Ack]);
    first_and_second_each_ran_once(&h).await;
}

/// Waits for the `quick` runs of alerts `first` and `second` to finish: each started its own
/// run, in that order, and nothing was skipped.
async fn first_and_second_each_ran_once(h: &crate::H) {
    let records = h
        .wait("two runs to finish", |r| finished(r, "quick") == 2)
        .await;
    let starters: Vec<&str> = records
        .iter()
        .filter(|r| matches!(r.body, RecordBody::RunStarted { .. }))
        .map(|r| r.event_id.as_str())
        .collect();
    assert_eq!(starters, ["first", "second"], "{}", summary(&records));
    assert!(
        !records
            .iter()
            .any(|r| matches!(r.body, RecordBody::Skipped { .. })),
        "nothing skipped:\n{}",
        summary(&records)
    );
}

/// Waits until `n` deliveries wait for a run of the engine that holds their key (or their
/// run id) to start or to let go.
async fn waiting_for_a_holder(h: &crate::H, n: usize) {
    for _ in 0..1000 {
        if h.dispatcher.deliveries_waiting_for_a_holder() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{} deliveries wait for a holder, not {n}",
        h.dispatcher.deliveries_waiting_for_a_holder()
    );
}

/// A second alert for a key whose run ends between the store naming that run as the key's
/// holder and the engine looking for the run among its own: the run released the lock and
/// was forgotten meanwhile. The alert starts its own run; it used to be skipped as "active on
/// another engine replica", a replica that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_whose_keys_run_ends_while_the_holder_is_looked_up_starts_its_own_run() {
    let (h, gated) = H::gated(QUICK).await;
    gated.unlock.arm();
    let first = alert(
        "first",
        "firing",
        "00000000000000f1",
        json!({"target": "a"}),
    );
    assert_eq!(
        h.deliver(&first, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    // The run ended; its unlock is held.
    gated.unlock.reached().await;
    gated.lock_holder.arm();
    let second = alert(
        "second",
        "firing",
        "00000000000000f2",
        json!({"target": "a"}),
    );
    let h = Arc::new(h);
    let delivering = {
        let h = h.clone();
        tokio::spawn(async move { h.deliver(&second, jiff::Timestamp::now()).await })
    };
    // The store named the first run as the holder; the answer is held.
    gated.lock_holder.reached().await;
    gated.unlock.open();
    for _ in 0..1000 {
        if h.dispatcher.active_runs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        h.dispatcher.active_runs().is_empty(),
        "the first run is forgotten once its lock is released"
    );
    gated.lock_holder.open();
    assert_eq!(delivering.await.unwrap(), vec![Settled::Ack]);
    first_and_second_each_ran_once(&h).await;
}

/// The same message delivered again while its first delivery's start still waits for the
/// state store (NATS was killed and came back: the server handed the message out again while
/// the first delivery's lock request was still waiting for its answer), and that first start
/// then fails. The second delivery may be acked only once the run has started: it waits for
/// the first start to end, then starts the run itself. It used to be acked at once as "started
/// before" while the first start failed: the event was gone from the bus and never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_while_the_first_start_fails_starts_the_run() {
    let (h, gated) = H::gated(QUICK).await;
    let h = Arc::new(h);
    gated.try_lock.arm();
    let event = alert("ev", "firing", "00000000000000e1", json!({"target": "a"}));
    let published = jiff::Timestamp::now();
    let first = {
        let (h, event) = (h.clone(), event.clone());
        tokio::spawn(async move { h.deliver(&event, published).await })
    };
    gated.try_lock.reached().await;
    let again = {
        let (h, event) = (h.clone(), event.clone());
        tokio::spawn(async move { h.deliver(&event, published).await })
    };
    // The redelivery waits for the first delivery's start of the same run.
    waiting_for_a_holder(&h, 1).await;
    gated.try_lock.fail();
    assert_eq!(first.await.unwrap(), vec![Settled::Nak], "the failed start");
    assert_eq!(again.await.unwrap(), vec![Settled::Ack], "the redelivery");
    let records = h
        .wait("the event's run to finish", |r| finished(r, "quick") == 1)
        .await;
    assert_eq!(started(&records, "quick").len(), 1, "{}", summary(&records));
}

const WAITING: &[(&str, &str)] = &[
    (
        "waiting.yaml",
        "name: waiting\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
         triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"Slow\"']\n\
         params:\n  target: { from: label, key: target, type: string, required: true }\n\
         concurrency: \"{{params.target}}\"\ncooldown: 1m\ntimeout: 30s\n",
    ),
    ("waiting.rhai", "wait_resolved(\"20s\");\n"),
];

/// A second alert for a key whose run is still starting (it holds the lock, it is not yet
/// running) waits for the start and joins the run. It used to be skipped as "active on another
/// engine replica".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_while_its_keys_run_starts_joins_that_run() {
    let (h, gated) = H::gated(WAITING).await;
    let h = Arc::new(h);
    gated.cooldown.arm();
    let first = alert(
        "first",
        "firing",
        "00000000000000f1",
        json!({"target": "a"}),
    );
    let starting = {
        let h = h.clone();
        tokio::spawn(async move { h.deliver(&first, jiff::Timestamp::now()).await })
    };
    // The first start holds the lock and looks up the cooldown: held there.
    gated.cooldown.reached().await;
    let second = alert(
        "second",
        "firing",
        "00000000000000f2",
        json!({"target": "a"}),
    );
    let joining = {
        let h = h.clone();
        tokio::spawn(async move { h.deliver(&second, jiff::Timestamp::now()).await })
    };
    // The second found the key held by the run still starting, and waits for that start.
    waiting_for_a_holder(&h, 1).await;
    gated.cooldown.open();
    assert_eq!(starting.await.unwrap(), vec![Settled::Ack]);
    assert_eq!(joining.await.unwrap(), vec![Settled::Ack]);
    let records = all_records(&h.journal);
    let joined: Vec<_> = records
        .iter()
        .filter(
            |r| matches!(&r.body, RecordBody::EventJoined { event_id, .. } if event_id == "second"),
        )
        .collect();
    assert_eq!(joined.len(), 1, "joined:\n{}", summary(&records));
    assert_eq!(joined[0].event_id, "first", "in the first alert's run");
    assert!(
        !records
            .iter()
            .any(|r| matches!(r.body, RecordBody::Skipped { .. })),
        "nothing skipped:\n{}",
        summary(&records)
    );
    assert_eq!(started(&records, "waiting").len(), 1);
}

/// A run that started and then could not be counted in its runbook's remediation budget (the
/// state store failed that write) goes on as a tracked run holding its lock; the delivery is
/// acked. The failure used to undo the start as far as the dispatcher knew: the delivery was
/// sent back and the lock released, while the run went on untracked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_run_the_budget_cannot_count_goes_on_tracked_under_its_lock() {
    let (h, gated) = H::gated(keyed_runbook!(
        "counted",
        "budget: { max_runs: 5, per: 1h }\n",
        "sleep(8000);\nlog(\"done\");\n"
    ))
    .await;
    let h = Arc::new(h);
    gated.record_run.arm();
    let event = alert("ev", "firing", "00000000000000c1", json!({"target": "api"}));
    let delivering = {
        let h = h.clone();
        tokio::spawn(async move { h.deliver(&event, jiff::Timestamp::now()).await })
    };
    gated.record_run.reached().await;
    gated.record_run.fail();
    assert_eq!(delivering.await.unwrap(), vec![Settled::Ack]);
    let records = all_records(&h.journal);
    let runs = started(&records, "counted");
    assert_eq!(runs.len(), 1, "{}", summary(&records));
    assert_eq!(h.active_run_ids(), runs, "tracked");
    assert_eq!(
        h.state.lock_holder("counted/api").await.unwrap(),
        Some(runs[0].clone()),
        "holding its lock"
    );
}

/// A run that asks for approval may wait for it as long as the approval's `expires`, on top of
/// its own `timeout`: its lock must last that long too, or a repeat of the alert while people
/// decide starts a second run (and a second approval request) for the same incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_may_wait_for_approval_holds_its_lock_for_that_wait_too() {
    let (h, gated) = H::gated(&[
        (
            "gate.yaml",
            "name: gate\nteam: sre\ndescription: asks first\nnamespaces: [shop]\ntimeout: 5m\n\
             approval: { expires: 30m }\n\
             triggers:\n  - source: alertmanager\n    match: ['alertname=\"Slow\"']\n",
        ),
        ("gate.rhai", "log(\"asked\");\n"),
    ])
    .await;
    let event = alert("ev-1", "firing", "00000000000000a1", json!({}));
    assert_eq!(
        h.deliver(&event, jiff::Timestamp::now()).await,
        vec![Settled::Ack]
    );
    let locked = gated.locked.lock().unwrap().clone();
    let (key, ttl) = locked.first().expect("the run took its lock").clone();
    assert!(key.starts_with("gate/"), "{key}");
    assert!(
        ttl >= Duration::from_secs(35 * 60),
        "lock {key} taken for {ttl:?}: less than the run's timeout (5m) and approval wait (30m)"
    );
}

/// A run takes its lock before it waits for a run slot (`max_concurrent_runs`), and its
/// timeout counts from when it starts: a run that waited long has its lock extended when it
/// starts, or the lock would run out before the run may end (a queue longer than the lock's
/// slack lets a second run of the same incident start beside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_waited_for_a_slot_has_its_lock_extended_when_it_starts() {
    // One slot: the second alert's run waits 1.5 s for the first to end.
    let (h, gated) = H::gated_slots(
        &[
            (
                "hold.yaml",
                "name: hold\nteam: sre\ndescription: d\nnamespaces: [shop]\ntimeout: 5m\n\
                 triggers:\n  - source: alertmanager\n    match: ['alertname=\"Slow\"']\n",
            ),
            ("hold.rhai", "sleep(1500);\n"),
        ],
        1,
    )
    .await;
    let h = Arc::new(h);
    let first = alert("ev-1", "firing", "00000000000000b1", json!({}));
    let second = alert("ev-2", "firing", "00000000000000b2", json!({}));
    h.deliver(&first, jiff::Timestamp::now()).await;
    let waiting = tokio::spawn({
        let h = h.clone();
        async move { h.deliver(&second, jiff::Timestamp::now()).await }
    });
    assert_eq!(waiting.await.unwrap(), vec![Settled::Ack]);
    let started_at = std::time::Instant::now();
    let refreshed = gated.refreshed.lock().unwrap().clone();
    let waited_key = "hold/incident:00000000000000b2";
    let extended: Vec<_> = refreshed.iter().filter(|(k, ..)| k == waited_key).collect();
    assert_eq!(extended.len(), 1, "{refreshed:?}");
    let (_, at, ttl) = extended[0];
    assert!(
        *ttl >= Duration::from_secs(5 * 60)
            && started_at.duration_since(*at) < Duration::from_secs(1),
        "{waited_key} extended by {ttl:?}, {:?} before its start returned",
        started_at.duration_since(*at)
    );
    // A run that did not wait keeps the lock it took: no extra write.
    assert!(
        !refreshed
            .iter()
            .any(|(k, ..)| k == "hold/incident:00000000000000b1"),
        "{refreshed:?}"
    );
}

/// A start waiting for a run slot when the engine is told to stop does not start: its delivery
/// is sent back, nothing of it journaled. It took the slot each suspended run freed, journaled
/// its start and suspended in turn: a replica stopping with thousands of deliveries waiting
/// for slots spent its whole grace period starting runs only to suspend them (1,400 in 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waiting_for_a_slot_when_the_engine_stops_is_sent_back_not_started() {
    let (h, _gated) = H::gated_slots(
        &[
            (
                "hold.yaml",
                "name: hold\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    match: ['alertname=\"Slow\"']\n",
            ),
            ("hold.rhai", "sleep(1500);\nlog(\"slept\");\n"),
        ],
        1,
    )
    .await;
    let h = Arc::new(h);
    let first = alert("ev-1", "firing", "00000000000000c1", json!({}));
    let second = alert("ev-2", "firing", "00000000000000c2", json!({}));
    h.deliver(&first, jiff::Timestamp::now()).await;
    let waiting = tokio::spawn({
        let h = h.clone();
        async move { h.deliver(&second, jiff::Timestamp::now()).await }
    });
    // The second start waits for the slot the first run holds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    h.runner.suspend();
    let settled = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting delivery is settled at once")
        .unwrap();
    assert_eq!(settled, vec![Settled::Nak]);
    let records = all_records(&h.journal);
    let runs = started(&records, "hold");
    assert_eq!(runs.len(), 1, "{}", summary(&records));
    assert!(
        records
            .iter()
            .all(|r| r.run_id.is_empty() || r.run_id == runs[0]),
        "only the first run journaled: {}",
        summary(&records)
    );
}

/// A delivery that waits for a run slot (`max_concurrent_runs`) longer than the bus's ack wait
/// is kept in progress, not delivered again. Each redelivery waited beside the first, one more
/// task per event and ack wait while a backlog lasted (55,144 redeliveries of 27,836 alerts in
/// 77 s behind four slots), and one that ran on at shutdown journaled a skip for its own run.
/// On JetStream the mark is an AckProgress, which restarts the server's ack-wait timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waiting_for_a_slot_past_the_ack_wait_is_not_delivered_again() {
    waiting_for_a_slot_past_the_ack_wait(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waiting_for_a_slot_past_the_ack_wait_is_not_delivered_again_on_jetstream() {
    waiting_for_a_slot_past_the_ack_wait(Backend::Nats).await;
}

async fn waiting_for_a_slot_past_the_ack_wait(backend: Backend) {
    use futures::StreamExt;
    // One slot, and runs that hold it for 1.9 s (a sleep of 2 s or more parks, freeing it).
    let h = H::with_ack_wait(
        backend,
        &[
            (
                "hold.yaml",
                "name: hold\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    match: ['alertname=\"Slow\"']\n",
            ),
            ("hold.rhai", "sleep(1900);\n"),
        ],
        Duration::from_millis(1200),
        1,
    )
    .await;
    // The dispatcher's consumer loop, noting each delivery's attempt.
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut deliveries = h.consume().await;
    let consumer = tokio::spawn({
        let (dispatcher, attempts) = (h.dispatcher.clone(), attempts.clone());
        async move {
            while let Some(Ok(delivery)) = deliveries.next().await {
                let id = delivery.event.id.clone();
                attempts.lock().unwrap().push((id, delivery.attempt));
                tokio::spawn(dispatcher.clone().handle(delivery));
            }
        }
    });
    let events = [
        alert("ev-1", "firing", "00000000000000c1", json!({})),
        alert("ev-2", "firing", "00000000000000c2", json!({})),
    ];
    h.publish(&events).await;
    let records = h
        .wait("both runs to finish", |r| finished(r, "hold") == 2)
        .await;
    assert_eq!(started(&records, "hold").len(), 2, "{}", summary(&records));
    assert_eq!(
        *attempts.lock().unwrap(),
        [("ev-1".to_string(), 1), ("ev-2".to_string(), 1)]
    );
    h.stop().await;
    consumer.await.unwrap();
}

/// Each delivery in flight is one `handle` future, up to the bus's 20,000 (a backlog behind
/// busy run slots): it stays small. The work passed by value to the in-progress heartbeat was
/// held twice in it, 5,032 bytes; boxed, the work (about 2.3 KB) is on the heap once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_future_of_a_delivery_in_flight_stays_small() {
    use futures::StreamExt;
    let h = H::new(
        Backend::Embedded,
        &[
            (
                "note.yaml",
                "name: note\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    match: ['alertname=\"Slow\"']\n",
            ),
            ("note.rhai", "log(\"noted\");\n"),
        ],
    )
    .await;
    let mut deliveries = h.consume().await;
    h.publish(&[alert("ev-1", "firing", "00000000000000d1", json!({}))])
        .await;
    let delivery = deliveries.next().await.unwrap().unwrap();
    let handling = h.dispatcher.clone().handle(delivery);
    let size = std::mem::size_of_val(&handling);
    assert!(size <= 1024, "a delivery's future holds {size} bytes");
    handling.await;
    let records = h
        .wait("the run to finish", |r| finished(r, "note") == 1)
        .await;
    assert_eq!(started(&records, "note").len(), 1, "{}", summary(&records));
}

/// A run's id is the same for every delivery of one publish of an event (so a redelivery finds
/// the run its first delivery started), differs for another runbook or a later publish, and is
/// a UUIDv7 of the publish time (run ids still sort by time).
#[test]
fn a_runs_id_comes_from_the_event_its_runbook_and_the_publish_time() {
    let at: jiff::Timestamp = "2026-12-06T21:00:00.123456789Z".parse().unwrap();
    let id = firebreak_dispatch::run_id_for("ev-1", "note", at);
    assert_eq!(id, firebreak_dispatch::run_id_for("ev-1", "note", at));
    assert_ne!(id, firebreak_dispatch::run_id_for("ev-1", "other", at));
    assert_ne!(id, firebreak_dispatch::run_id_for("ev-2", "note", at));
    let later = at + jiff::SignedDuration::from_millis(1);
    let next = firebreak_dispatch::run_id_for("ev-1", "note", later);
    assert!(next > id, "{next} sorts after {id}");
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
    assert_eq!((secs as i64, nanos / 1_000_000), (at.as_second(), 123));
}
