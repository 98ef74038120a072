//! Run leases, with a lease store of the test's own: what the renewal loop does while a
//! takeover is slow.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebreak_bus::{BusError, Decision, Orphan, RunLeases};
use futures::future::BoxFuture;
use serde_json::json;

use firebreak_audit::{Record, RecordBody};

use crate::{H, alert, started};

/// Leases that renew at once, and a left run whose trail takes `read` to read back (an audit
/// stream slow to answer).
struct SlowStream {
    lease: Duration,
    read: Duration,
    /// A left run to offer every time orphans are listed.
    orphan: bool,
    /// `(lock key, run id, when)` of every renewal.
    renewals: Mutex<Vec<(String, String, Instant)>>,
    /// Renewals fail (NATS unreachable) while set.
    failing: std::sync::atomic::AtomicBool,
    /// When each heartbeat was written.
    beats: Mutex<Vec<Instant>>,
}

impl SlowStream {
    fn new(lease: Duration, read: Duration, orphan: bool) -> SlowStream {
        SlowStream {
            lease,
            read,
            orphan,
            renewals: Mutex::new(Vec::new()),
            failing: Default::default(),
            beats: Mutex::new(Vec::new()),
        }
    }
}

impl RunLeases for SlowStream {
    fn replica(&self) -> &str {
        "here"
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn holds(&self, _key: &str, _owner: &str) -> bool {
        true
    }

    fn renew(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        self.renewals
            .lock()
            .unwrap()
            .push((key.to_owned(), owner.to_owned(), Instant::now()));
        let failing = self.failing.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if failing {
                Err(BusError::NotConnected {
                    url: "nats://gone".into(),
                })
            } else {
                Ok(true)
            }
        })
    }

    fn beat(&self) -> BoxFuture<'_, Result<(), BusError>> {
        self.beats.lock().unwrap().push(Instant::now());
        Box::pin(async { Ok(()) })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    fn release(&self, _key: &str, _owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async { Ok(true) })
    }

    fn orphans(&self) -> BoxFuture<'_, Result<Vec<Orphan>, BusError>> {
        let orphans = if self.orphan {
            vec![Orphan {
                key: "hold/left".into(),
                run_id: "left-run".into(),
                replica: "gone".into(),
                lease_ended: jiff::Timestamp::now(),
                team: Some("sre".into()),
            }]
        } else {
            Vec::new()
        };
        Box::pin(async { Ok(orphans) })
    }

    fn take_over(&self, _orphan: &Orphan, _ttl: Duration) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async { Ok(false) })
    }

    fn run_lines(
        &self,
        _run_id: &str,
        _teams: &[String],
    ) -> BoxFuture<'_, Result<Vec<bytes::Bytes>, BusError>> {
        Box::pin(async {
            tokio::time::sleep(self.read).await;
            Ok(Vec::new())
        })
    }

    fn decision(&self, _key: &str) -> BoxFuture<'_, Result<Option<Decision>, BusError>> {
        Box::pin(async { Ok(None) })
    }

    fn decide(&self, _key: &str, decision: Decision) -> BoxFuture<'_, Result<Decision, BusError>> {
        Box::pin(async { Ok(decision) })
    }
}

const HOLD: &[(&str, &str)] = &[
    (
        "hold.yaml",
        "name: hold\nteam: sre\ndescription: stays in flight\nnamespaces: [shop]\n\
         triggers:\n  - source: alertmanager\n    match: ['alertname=\"Slow\"']\n",
    ),
    ("hold.rhai", "sleep(1900);\n"),
];

/// Delivers one firing alert for the `hold` runbook and waits for its run to start: the
/// journal's records then, and the run's id.
async fn start_hold(h: &H) -> (Vec<firebreak_audit::Record>, String) {
    let event = alert("ev-1", "firing", "00000000000000f1", json!({}));
    h.deliver(&event, jiff::Timestamp::now()).await;
    let records = h
        .wait("the run to start", |r| !started(r, "hold").is_empty())
        .await;
    let run_id = started(&records, "hold")[0].clone();
    (records, run_id)
}

/// Taking over another replica's runs (reading each one's trail back from the audit stream)
/// can take long when the stream is large or busy. Meanwhile this replica's own runs must keep
/// their leases: a renewal that waited for the takeovers would let them run out, and other
/// replicas would take over runs that are alive here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_leases_are_renewed_while_a_takeover_waits_on_the_stream() {
    let lease = Duration::from_millis(600);
    let leases = Arc::new(SlowStream::new(lease, Duration::from_secs(5), true));
    let h = H::leased(HOLD, leases.clone(), 4).await;
    let (_, run_id) = start_hold(&h).await;
    let shutdown = firebreak_runtime::CancellationToken::new();
    let keeping = tokio::spawn(h.dispatcher.clone().keep_leases(shutdown.clone()));
    // Six renewal periods (a third of the lease each); the first takeover's read lasts all
    // of them.
    let from = Instant::now();
    tokio::time::sleep(lease * 2).await;
    shutdown.cancel();
    let renewed: Vec<Duration> = leases
        .renewals
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, owner, _)| *owner == run_id)
        .map(|(_, _, at)| at.saturating_duration_since(from))
        .collect();
    assert!(
        renewed.len() >= 3,
        "the run's lease was renewed {} times in {:?} (every {:?} expected): {renewed:?}",
        renewed.len(),
        lease * 2,
        lease / 3
    );
    keeping.abort();
}

/// A run holds its lock, and with it a lease, from the moment it takes it, also while it waits
/// for a run slot (`max_concurrent_runs`) before it starts. A lease not renewed then runs out,
/// another replica finds no trail of the run on the stream, releases the lock as left by a run
/// that never started, and the run then starts here without its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_for_a_slot_keeps_its_lease() {
    let lease = Duration::from_millis(600);
    let leases = Arc::new(SlowStream::new(lease, Duration::ZERO, false));
    // One slot: the second alert's run waits for the first to end (1.9 s).
    let h = Arc::new(H::leased(HOLD, leases.clone(), 1).await);
    let first = alert("ev-1", "firing", "00000000000000f1", json!({}));
    h.deliver(&first, jiff::Timestamp::now()).await;
    h.wait("the first run to start", |r| started(r, "hold").len() == 1)
        .await;
    let shutdown = firebreak_runtime::CancellationToken::new();
    let keeping = tokio::spawn(h.dispatcher.clone().keep_leases(shutdown.clone()));
    let second = alert("ev-2", "firing", "00000000000000f2", json!({}));
    let waiting = tokio::spawn({
        let h = h.clone();
        async move { h.deliver(&second, jiff::Timestamp::now()).await }
    });
    tokio::time::sleep(lease * 2).await;
    let records = crate::all_records(&h.journal);
    assert_eq!(
        started(&records, "hold").len(),
        1,
        "the second run waits for the slot"
    );
    let renewals = leases.renewals.lock().unwrap().clone();
    let keys: Vec<&str> = renewals.iter().map(|(key, ..)| key.as_str()).collect();
    let waiting_key = "hold/incident:00000000000000f2";
    let renewed = keys.iter().filter(|k| **k == waiting_key).count();
    assert!(
        renewed >= 3,
        "the waiting run's lease was renewed {renewed} times in {:?}: {keys:?}",
        lease * 2
    );
    shutdown.cancel();
    waiting.await.unwrap();
    keeping.abort();
}

/// The heartbeat vouches for every lease this replica holds: a renewal round beats only when
/// each of its renewals was answered. While a lease cannot be renewed (NATS away) the
/// heartbeat ends with it, and other replicas then look for the lease that ran out; when the
/// renewals succeed again, so do the heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_stops_while_a_lease_cannot_be_renewed() {
    let lease = Duration::from_millis(600);
    let leases = Arc::new(SlowStream::new(lease, Duration::ZERO, false));
    // Longer than the test: the run's lease is renewed (or not) throughout.
    let long: &[(&str, &str)] = &[(HOLD[0].0, HOLD[0].1), ("hold.rhai", "sleep(8000);\n")];
    let h = H::leased(long, leases.clone(), 4).await;
    start_hold(&h).await;
    let shutdown = firebreak_runtime::CancellationToken::new();
    let keeping = tokio::spawn(h.dispatcher.clone().keep_leases(shutdown.clone()));
    let beats = || leases.beats.lock().unwrap().len();
    tokio::time::sleep(lease).await;
    let beating = beats();
    assert!(
        beating >= 2,
        "{beating} heartbeats in {lease:?}, every {:?} expected",
        lease / 3
    );
    leases
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(lease / 3).await;
    let stopped = beats();
    tokio::time::sleep(lease).await;
    assert_eq!(
        beats(),
        stopped,
        "no heartbeat while the run's lease cannot be renewed"
    );
    leases
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(lease).await;
    assert!(
        beats() > stopped,
        "heartbeats again once the renewals succeed"
    );
    shutdown.cancel();
    keeping.abort();
}

/// A delivery that comes again (attempt 2) after its run started on another replica, which
/// then lost its ack (it died, or the ack came too late) and ended the run since: the lock is
/// free, and this replica's journal knows nothing of the run. The run's id is the same for
/// every delivery of one publish, and the audit stream holds that run: the delivery is acked,
/// no second run. One whose run the stream does not hold starts. (Seen as 7 alerts run twice
/// in a kill-bench overload: the killed replica's pulled events came again after the ack wait
/// to replicas whose takeovers had finished their runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_comes_again_after_its_run_started_on_another_replica_does_not_run_again() {
    let nats = firebreak_bus::testutil::NatsServer::start().expect("nats-server -js");
    let leases = Arc::new(crate::nats_store(&nats, "here").await);
    let h = H::leased(NOTE, leases, 4).await;
    let published = jiff::Timestamp::now();
    let ran_elsewhere = alert("ev-elsewhere", "firing", "00000000000000d1", json!({}));
    let never_ran = alert("ev-never", "firing", "00000000000000d2", json!({}));
    // What the other replica's mirror put on the stream for the run it started.
    let run_id = firebreak_dispatch::run_id_for(&ran_elsewhere.id, "note", published);
    crate::publish_run_line(&nats, "sre", &run_id).await;

    let (again, settled) = firebreak_bus::testutil::delivery(ran_elsewhere, 2, published);
    h.dispatcher.clone().handle(again).await;
    assert_eq!(
        *settled.lock().unwrap(),
        vec![firebreak_bus::testutil::Settled::Ack]
    );
    let (again, settled) = firebreak_bus::testutil::delivery(never_ran, 2, published);
    h.dispatcher.clone().handle(again).await;
    assert_eq!(
        *settled.lock().unwrap(),
        vec![firebreak_bus::testutil::Settled::Ack]
    );
    let records = h
        .wait("the run of the one that never ran", |r| {
            !started(r, "note").is_empty()
        })
        .await;
    let runs = started(&records, "note");
    assert_eq!(
        runs,
        vec![firebreak_dispatch::run_id_for(
            "ev-never", "note", published
        )],
        "{}",
        crate::summary(&records)
    );
}

/// A replica restarted on its data dir finds a run of its own unfinished whose incident's lock
/// another run holds now (its own ran out while it was stopped). With replicas a run acts only
/// while it holds its lock (`Runner::with_fence`): resumed, it would act beside the run holding
/// the lock, or, fenced, stay unfinished for ever. It is closed, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lock_another_run_holds_after_a_restart_is_closed_not_resumed() {
    let lease = Duration::from_secs(5);
    let leases = Arc::new(SlowStream::new(lease, Duration::ZERO, false));
    let h = H::leased(HOLD, leases.clone(), 4).await;
    let (records, run_id) = start_hold(&h).await;
    let key = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::RunStarted { lock_key, .. } => lock_key.clone(),
            _ => None,
        })
        .expect("the run's lock");
    let (dir, _) = h.stop().await;

    let h = H::reopen_leased(dir, leases, 4).await;
    assert!(
        h.state
            .try_lock(&key, "newer-run", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(h.dispatcher.resume_unfinished().await, 0, "nothing resumed");
    let records: Vec<Record> = crate::all_records(&h.journal)
        .into_iter()
        .filter(|r| r.run_id == run_id)
        .collect();
    match &records.last().unwrap().body {
        RecordBody::RunFinished { status, error } => {
            assert_eq!(*status, firebreak_runtime::RunStatus::Cancelled);
            let error = error.as_deref().unwrap_or_default();
            assert!(error.contains("newer-run"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !records
            .iter()
            .any(|r| matches!(r.body, RecordBody::RunResumed { .. })),
        "{records:?}"
    );
    assert_eq!(
        h.state.lock_holder(&key).await.unwrap().as_deref(),
        Some("newer-run"),
        "the other run's lock is left alone"
    );
}

const NOTE: &[(&str, &str)] = &[
    (
        "note.yaml",
        "name: note\nteam: sre\ndescription: notes the alert\nnamespaces: [shop]\n\
         triggers:\n  - source: alertmanager\n    match: ['alertname=\"Slow\"']\n",
    ),
    ("note.rhai", "log(\"noted\");\n"),
];

/// Delivers `event` (delivery `attempt` of its publish at `published`) by hand: how it was
/// settled, and how long that took.
async fn deliver_timed(
    h: &H,
    event: &Arc<firebreak_event::Event>,
    attempt: u32,
    published: jiff::Timestamp,
) -> (Vec<firebreak_bus::testutil::Settled>, Duration) {
    let (delivery, settled) = firebreak_bus::testutil::delivery(event.clone(), attempt, published);
    let began = Instant::now();
    h.dispatcher.clone().handle(delivery).await;
    let took = began.elapsed();
    (settled.lock().unwrap().clone(), took)
}

/// A delivery whose incident's lock is held by its very run, under another replica: that
/// replica pulled the event before and took the lock, and has not started the run (it waits
/// for a run slot, or it died there and its lease runs out). The delivery goes back at once,
/// to come again after a lease: by then the holder started the run (the delivery is then
/// acked, whichever attempt it is), or the takeover freed the lock of the run its dead replica
/// never started. It used to wait three times 10 s on a start here, the one it registered
/// itself, and then came back at once: in a kill-bench overload thousands of deliveries of a
/// killed replica's events went round so for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_run_holds_its_lock_on_another_replica_goes_back_at_once() {
    use firebreak_bus::{StateStore as _, testutil::Settled};
    let nats = firebreak_bus::testutil::NatsServer::start().expect("nats-server -js");
    let there = crate::nats_store(&nats, "there").await;
    let h = H::replica(NOTE, &nats, "here").await;
    let published = jiff::Timestamp::now();
    let event = alert("ev-held", "firing", "00000000000000d3", json!({}));
    let run_id = firebreak_dispatch::run_id_for(&event.id, "note", published);
    let key = "note/incident:00000000000000d3";
    assert!(
        there
            .try_lock(key, &run_id, Duration::from_secs(60))
            .await
            .unwrap()
    );
    for attempt in [1, 2] {
        let (settled, took) = deliver_timed(&h, &event, attempt, published).await;
        assert_eq!(settled, vec![Settled::Nak], "attempt {attempt}");
        assert!(
            took < Duration::from_secs(5),
            "attempt {attempt} went back after {took:?}"
        );
    }
    // The holder starts the run: its mirror puts the start on the audit stream.
    crate::publish_run_line(&nats, "sre", &run_id).await;
    let (settled, _) = deliver_timed(&h, &event, 1, published).await;
    assert_eq!(settled, vec![Settled::Ack], "once the run started there");
    let records = crate::all_records(&h.journal);
    assert!(
        started(&records, "note").is_empty(),
        "{}",
        crate::summary(&records)
    );
}

/// A delivery that comes again looks its run up on the audit stream under the teams this
/// engine knows, each by its literal subject, never by a wildcard: nats-server matches a
/// wildcard against every subject the stream holds (a run's each), 6 ms of its time per
/// lookup at 50,000 runs. After a replica died under load, thousands of redeliveries of its
/// events looked up so, and nats-server's read loop stalled for seconds at a time
/// (`scripts/kill-bench`, `docs/BENCHMARKS.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_comes_again_is_looked_up_without_a_wildcard() {
    use firebreak_bus::testutil::{Settled, api_requests_during};
    let nats = firebreak_bus::testutil::NatsServer::start().expect("nats-server -js");
    let h = H::replica(NOTE, &nats, "here").await;
    let published = jiff::Timestamp::now();
    let event = alert("ev-again", "firing", "00000000000000d4", json!({}));
    let seen = api_requests_during(&nats.url(), "$JS.API.STREAM.>", async {
        let (settled, _) = deliver_timed(&h, &event, 2, published).await;
        assert_eq!(settled, vec![Settled::Ack]);
    })
    .await;
    let wildcards: Vec<_> = seen
        .iter()
        .map(|(_, payload)| String::from_utf8_lossy(payload))
        .filter(|payload| payload.contains('*'))
        .collect();
    assert!(wildcards.is_empty(), "{wildcards:?}");
    let looked_up = seen.iter().any(|(_, payload)| {
        let run_id = firebreak_dispatch::run_id_for(&event.id, "note", published);
        String::from_utf8_lossy(payload)
            .contains(&firebreak_bus::nats::audit_run_subject("sre", &run_id))
    });
    assert!(looked_up, "the run's own subject was looked up: {seen:?}");
    h.wait("the run", |r| started(r, "note").len() == 1).await;
}

/// The rest of a cluster as a test plays it: one left run (`orphan`, listed once) whose lock
/// a takeover writes into this engine's own state store; an audit stream whose every read
/// answers `stream`'s messages, its `held_read`-th read (0-based) once `read` lets it.
struct Cluster {
    orphan: Option<Orphan>,
    state: std::sync::OnceLock<Arc<dyn firebreak_bus::StateStore>>,
    listed: std::sync::atomic::AtomicBool,
    reads: std::sync::atomic::AtomicUsize,
    held_read: usize,
    read: crate::Gate,
    stream: Mutex<Vec<bytes::Bytes>>,
}

impl Cluster {
    fn new(orphan: Option<Orphan>, held_read: usize) -> Cluster {
        Cluster {
            orphan,
            state: std::sync::OnceLock::new(),
            listed: Default::default(),
            reads: Default::default(),
            held_read,
            read: crate::Gate::default(),
            stream: Mutex::default(),
        }
    }
}

impl RunLeases for Cluster {
    fn replica(&self) -> &str {
        "here"
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(600)
    }

    fn holds(&self, _key: &str, _owner: &str) -> bool {
        true
    }

    fn renew(&self, _key: &str, _owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async { Ok(true) })
    }

    fn beat(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    fn release(&self, _key: &str, _owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async { Ok(true) })
    }

    fn orphans(&self) -> BoxFuture<'_, Result<Vec<Orphan>, BusError>> {
        let first = !self.listed.swap(true, std::sync::atomic::Ordering::SeqCst);
        let orphans = self.orphan.clone().filter(|_| first).into_iter().collect();
        Box::pin(async { Ok(orphans) })
    }

    fn take_over(&self, orphan: &Orphan, ttl: Duration) -> BoxFuture<'_, Result<bool, BusError>> {
        let orphan = orphan.clone();
        Box::pin(async move {
            let state = self.state.get().expect("the engine's state store");
            // This replica's lock now, as the NATS store writes it (same run id, this
            // replica): a take of it by this replica for the same run succeeds.
            state
                .try_lock_run(&orphan.key, &orphan.run_id, "sre", ttl)
                .await
        })
    }

    fn run_lines(
        &self,
        _run_id: &str,
        _teams: &[String],
    ) -> BoxFuture<'_, Result<Vec<bytes::Bytes>, BusError>> {
        let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if n == self.held_read {
                self.read.pass().await?;
            }
            Ok(self.stream.lock().unwrap().clone())
        })
    }

    fn decision(&self, _key: &str) -> BoxFuture<'_, Result<Option<Decision>, BusError>> {
        Box::pin(async { Ok(None) })
    }

    fn decide(&self, _key: &str, decision: Decision) -> BoxFuture<'_, Result<Decision, BusError>> {
        Box::pin(async { Ok(decision) })
    }
}

const SLOW: &[(&str, &str)] = keyed_runbook!("slow", "", "sleep(8000);\nlog(\"done\");\n");

/// A replica died between taking a run's lock and starting the run. This replica takes the
/// lock over and reads the run back from the audit stream; meanwhile the run's message comes
/// again, here. The delivery waits for the takeover (which, finding nothing started, releases
/// the lock) and then starts the run under a lock of its own. It used to find the lock its own
/// (it names the run and this replica), start the run, and have the takeover release the lock
/// under it: a run acting without its lock, stopped at its first renewal, resumed by no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_during_the_takeover_of_its_never_started_run_waits_for_it() {
    let published = jiff::Timestamp::now();
    let event = alert(
        "ev-left",
        "firing",
        "00000000000000b1",
        json!({"target": "api"}),
    );
    let run_id = firebreak_dispatch::run_id_for(&event.id, "slow", published);
    let cluster = Arc::new(Cluster::new(
        Some(Orphan {
            key: "slow/api".into(),
            run_id: run_id.clone(),
            replica: "gone".into(),
            lease_ended: published,
            team: Some("sre".into()),
        }),
        // The takeover's second read, once it holds the lock.
        1,
    ));
    let (h, gated) = gated_replica(cluster.clone()).await;
    assert!(cluster.state.set(h.state.clone()).is_ok());
    cluster.read.arm();
    let stop = firebreak_runtime::CancellationToken::new();
    tokio::spawn(h.dispatcher.clone().keep_leases(stop.clone()));
    cluster.read.reached().await;
    assert_eq!(
        h.state.lock_holder("slow/api").await.unwrap().as_deref(),
        Some(run_id.as_str()),
        "the takeover holds the lock"
    );

    // The takeover's release of the lock, once it found nothing started, is held.
    gated.unlock.arm();
    // Settled at once (taking the lock as its own), or waiting for the takeover.
    let (delivering, settled) = deliver_again(&h, event, published).await;
    cluster.read.open();
    gated.unlock.reached().await;
    gated.unlock.open();
    for _ in 0..500 {
        if gated.unlocked.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gated.unlocked.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the takeover released the lock"
    );
    delivering.await.unwrap();
    assert_eq!(
        *settled.lock().unwrap(),
        vec![firebreak_bus::testutil::Settled::Ack]
    );
    let records = h
        .wait("the run to start", |r| !started(r, "slow").is_empty())
        .await;
    assert_eq!(started(&records, "slow"), vec![run_id.clone()]);
    // In its sleep: it holds its lock.
    assert_eq!(
        h.state.lock_holder("slow/api").await.unwrap().as_deref(),
        Some(run_id.as_str()),
        "{}",
        crate::summary(&records)
    );
    stop.cancel();
}

/// Delivers `event` again (its second delivery of its publish at `published`) on a task, and
/// returns once that delivery was settled or waits for a start or release of its run or key
/// here: the task, and how the delivery was settled.
async fn deliver_again(
    h: &H,
    event: Arc<firebreak_event::Event>,
    published: jiff::Timestamp,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<Mutex<Vec<firebreak_bus::testutil::Settled>>>,
) {
    let (again, settled) = firebreak_bus::testutil::delivery(event, 2, published);
    let delivering = tokio::spawn({
        let dispatcher = h.dispatcher.clone();
        async move { dispatcher.handle(again).await }
    });
    for _ in 0..500 {
        if !settled.lock().unwrap().is_empty()
            || h.dispatcher.deliveries_waiting_for_a_holder() == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (delivering, settled)
}

/// An engine with the `slow` runbook whose leases are `cluster`'s, on an embedded state store
/// behind a [`crate::Gated`].
async fn gated_replica(cluster: Arc<Cluster>) -> (H, Arc<crate::Gated>) {
    let dir = tempfile::tempdir().unwrap();
    crate::runbooks(dir.path(), SLOW);
    let gated = std::sync::OnceLock::new();
    let h = H::open_with(
        dir,
        None,
        |state| {
            let g = crate::Gated::new(state);
            let _ = gated.set(g.clone());
            g as Arc<dyn firebreak_bus::StateStore>
        },
        Some(cluster),
        4,
        None,
    )
    .await;
    let gated = gated.get().expect("the store is wrapped").clone();
    (h, gated)
}

/// A delivery that came again looks for its run on the audit stream, finds nothing, and goes
/// for the lock; meanwhile the run, started on another replica, ends there (its records reach
/// the stream, then its lock is released). With the lock now taken, the delivery looks again,
/// finds the run, and does not run it a second time. It used to look only before the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_run_ends_elsewhere_while_it_takes_the_lock_does_not_run_it_again() {
    let cluster = Arc::new(Cluster::new(None, usize::MAX));
    let (h, gated) = gated_replica(cluster.clone()).await;
    gated.try_lock.arm();
    let published = jiff::Timestamp::now();
    let event = alert(
        "ev-twice",
        "firing",
        "00000000000000b2",
        json!({"target": "api"}),
    );
    let (again, settled) = firebreak_bus::testutil::delivery(event, 2, published);
    let delivering = tokio::spawn({
        let dispatcher = h.dispatcher.clone();
        async move { dispatcher.handle(again).await }
    });
    // It looked (nothing on the stream) and waits for the lock.
    gated.try_lock.reached().await;
    // (Whether a run has records is all a redelivery asks.)
    *cluster.stream.lock().unwrap() = vec![bytes::Bytes::from_static(b"{}\n")];
    gated.try_lock.open();
    delivering.await.unwrap();
    assert_eq!(
        *settled.lock().unwrap(),
        vec![firebreak_bus::testutil::Settled::Ack]
    );
    // A run started here would hold the lock through its sleep.
    assert_eq!(h.state.lock_holder("slow/api").await.unwrap(), None);
    let records = crate::all_records(&h.journal);
    assert!(
        started(&records, "slow").is_empty(),
        "ran a second time:\n{}",
        crate::summary(&records)
    );
}

/// A replica restarted on its data dir resumes its unfinished runs while its consumer already
/// delivers (on NATS both start once it connects). A delivery of a run's message that comes
/// while the run is being resumed waits for the resume, and leaves the resumed run its lock.
/// It used to find the lock its own (the resume had just taken it: same run, same replica),
/// take the run for one started before, and release the lock under the resumed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_while_its_run_is_resumed_leaves_the_resumed_run_its_lock() {
    let published = jiff::Timestamp::now();
    let event = alert(
        "ev-resumed",
        "firing",
        "00000000000000b3",
        json!({"target": "api"}),
    );
    let (dir, run_id) = stopped_in_its_sleep(&event, published).await;

    // Restarted: the resume's look at the audit stream is held, its lock taken.
    let cluster = Arc::new(Cluster::new(None, 0));
    cluster.read.arm();
    let h = H::reopen_leased(dir, cluster.clone(), 4).await;
    let resuming = tokio::spawn({
        let dispatcher = h.dispatcher.clone();
        async move { dispatcher.resume_unfinished().await }
    });
    cluster.read.reached().await;
    assert_eq!(
        h.state.lock_holder("long/api").await.unwrap().as_deref(),
        Some(run_id.as_str()),
        "the resume holds the run's lock"
    );
    // Settled at once (the run taken for one started before), or waiting for the resume.
    let (delivering, settled) = deliver_again(&h, event, published).await;
    cluster.read.open();
    assert_eq!(resuming.await.unwrap(), 1, "the run is resumed");
    delivering.await.unwrap();
    assert_eq!(
        *settled.lock().unwrap(),
        vec![firebreak_bus::testutil::Settled::Ack]
    );
    assert_eq!(h.active_run_ids(), vec![run_id.clone()]);
    assert_eq!(
        h.state.lock_holder("long/api").await.unwrap().as_deref(),
        Some(run_id.as_str()),
        "the resumed run holds its lock"
    );
    let records = crate::all_records(&h.journal);
    assert_eq!(started(&records, "long"), vec![run_id], "started once");
    let (_dir, _) = h.stop().await;
}

/// A replica restarted on its data dir finds a run of its own unfinished, and, before it
/// resumes it, takes the same run over (another replica went on with it after this one
/// stopped, then died). The resume waits for the takeover, finds the run running here, and
/// leaves it: one copy of the run. It used to go on once the takeover let go of the run,
/// find the lock its own, and resume a second copy beside the taken-over one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_waits_for_a_takeover_of_its_run_does_not_run_it_again() {
    let published = jiff::Timestamp::now();
    let event = alert(
        "ev-both",
        "firing",
        "00000000000000b4",
        json!({"target": "api"}),
    );
    let (dir, run_id) = stopped_in_its_sleep(&event, published).await;
    // What the audit stream holds of the run: this replica's lines of it.
    let journal = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let lines: String = journal
        .lines()
        .filter(|l| l.contains(&format!("\"run_id\":\"{run_id}\"")))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!lines.is_empty());

    let cluster = Arc::new(Cluster::new(
        Some(Orphan {
            key: "long/api".into(),
            run_id: run_id.clone(),
            replica: "gone".into(),
            lease_ended: published,
            team: Some("sre".into()),
        }),
        // The takeover's second read, once it holds the lock.
        1,
    ));
    *cluster.stream.lock().unwrap() = vec![bytes::Bytes::from(lines)];
    cluster.read.arm();
    let h = H::reopen_leased(dir, cluster.clone(), 4).await;
    assert!(cluster.state.set(h.state.clone()).is_ok());
    let stop = firebreak_runtime::CancellationToken::new();
    tokio::spawn(h.dispatcher.clone().keep_leases(stop.clone()));
    cluster.read.reached().await;
    let resuming = tokio::spawn({
        let dispatcher = h.dispatcher.clone();
        async move { dispatcher.resume_unfinished().await }
    });
    // The resume waits for the takeover, or (before) went on beside it.
    for _ in 0..500 {
        if resuming.is_finished() || h.dispatcher.deliveries_waiting_for_a_holder() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.read.open();
    let resumed = resuming.await.unwrap();
    let records = h
        .wait("the run taken over", |r| {
            r.iter()
                .any(|r| r.run_id == run_id && matches!(r.body, RecordBody::RunTakenOver { .. }))
        })
        .await;
    assert_eq!(resumed, 0, "{}", crate::summary(&records));
    let resumes = records
        .iter()
        .filter(|r| r.run_id == run_id && matches!(r.body, RecordBody::RunResumed { .. }))
        .count();
    assert_eq!(resumes, 1, "{}", crate::summary(&records));
    assert_eq!(h.active_run_ids(), vec![run_id]);
    stop.cancel();
    let (_dir, _) = h.stop().await;
}

/// Runbook `long` (an 8 s sleep), for the runs a restart resumes.
const LONG: &[(&str, &str)] = keyed_runbook!("long", "", "sleep(8000);\nlog(\"done\");\n");

/// A run of `long` for `event` (published at `published`), stopped in its sleep as a SIGTERM
/// stops it: the engine's data dir, and the run's id.
async fn stopped_in_its_sleep(
    event: &Arc<firebreak_event::Event>,
    published: jiff::Timestamp,
) -> (tempfile::TempDir, String) {
    let h = H::leased(LONG, Arc::new(Cluster::new(None, usize::MAX)), 4).await;
    assert_eq!(
        h.deliver(event, published).await,
        vec![firebreak_bus::testutil::Settled::Ack]
    );
    let records = h
        .wait("the run to start", |r| !started(r, "long").is_empty())
        .await;
    let run_id = started(&records, "long")[0].clone();
    let (dir, _) = h.stop().await;
    (dir, run_id)
}
