//! The suite against [`NatsBus`] and [`NatsStateStore`] on a real `nats-server -js`, plus the
//! outage check: kill nats-server while events arrive, lose none that were accepted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use firebreak_bus::testutil::NatsServer;
use firebreak_bus::{Bus, BusErrorKind, NatsBus, NatsOptions, StateStore};

use crate::suite::{self, EXPECT_WITHIN, Harness, event, next};

/// The suite's harness on a nats-server; each bus or state handle is a new connection with
/// `opts` (the secure tests give it credentials).
pub(crate) struct Nats {
    pub(crate) server: NatsServer,
    pub(crate) opts: NatsOptions,
    buses: Vec<Arc<NatsBus>>,
}

impl Nats {
    fn new(ack_wait: Duration) -> Nats {
        Nats::on(
            NatsServer::start().expect("nats-server"),
            NatsOptions {
                ack_wait,
                fetch_batch: 10,
                ..NatsOptions::default()
            },
        )
    }

    /// The harness on `server`, connecting with `opts`.
    pub(crate) fn on(server: NatsServer, opts: NatsOptions) -> Nats {
        Nats {
            server,
            opts,
            buses: Vec::new(),
        }
    }

    pub(crate) async fn connect(&mut self) -> Arc<NatsBus> {
        let bus = NatsBus::connect(&self.server.url(), self.opts.clone())
            .await
            .expect("connect");
        let bus = Arc::new(bus);
        self.buses.push(Arc::clone(&bus));
        bus
    }
}

impl Harness for Nats {
    async fn bus(&mut self) -> Arc<dyn Bus> {
        self.connect().await
    }

    async fn state(&mut self) -> Arc<dyn StateStore> {
        let bus = self.connect().await;
        Arc::new(bus.state_store().await.expect("state store"))
    }

    async fn restart(&mut self) {
        for bus in self.buses.drain(..) {
            bus.close().await;
        }
        self.server.restart().expect("nats-server restart");
    }
}

const ACK_WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn publish_consume_ack() {
    suite::publish_consume_ack(&mut Nats::new(ACK_WAIT)).await;
}

/// `GET path` on nats-server's monitoring port (`/subsz`, `/varz`), as JSON.
async fn monitor(http: u16, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .expect("monitoring port");
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    serde_json::from_str(body).expect("JSON")
}

/// An ack is confirmed by the server (a double ack) on the connection's shared reply inbox:
/// acking many events adds no subscription per event to nats-server (each would be a SUB, an
/// UNSUB and its subject cache rebuilt).
#[tokio::test]
async fn acks_are_confirmed_without_a_subscription_each() {
    let http = firebreak_bus::port::free_loopback_port().unwrap();
    let server =
        NatsServer::start_with_config(&format!("http: \"127.0.0.1:{http}\"\n"), &[]).unwrap();
    let mut nats = Nats::on(
        server,
        NatsOptions {
            ack_wait: ACK_WAIT,
            fetch_batch: 10,
            ..NatsOptions::default()
        },
    );
    let bus = nats.connect().await;
    let mut stream = bus.consume().await.expect("consume");
    const EVENTS: u64 = 50;
    let events: Vec<_> = (0..EVENTS).map(|n| event(&format!("ack-{n}"))).collect();
    bus.publish(events).await.expect("publish");
    let first = next(&mut stream).await;
    let before = monitor(http, "/subsz").await["num_inserts"]
        .as_u64()
        .unwrap();
    first.ack().await.expect("ack");
    for _ in 1..EVENTS {
        next(&mut stream).await.ack().await.expect("ack");
    }
    let inserts = monitor(http, "/subsz").await["num_inserts"]
        .as_u64()
        .unwrap()
        - before;
    assert!(
        inserts < EVENTS / 5,
        "{inserts} subscriptions made while acking {EVENTS} events"
    );
    suite::assert_quiet(&mut stream).await;
}

#[tokio::test]
async fn dedupe_by_id() {
    suite::dedupe_by_id(&mut Nats::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn unacked_is_redelivered_after_restart() {
    // The server redelivers after the ack wait, counted from the first delivery and kept
    // across its restart.
    suite::unacked_is_redelivered_after_restart(&mut Nats::new(Duration::from_secs(2))).await;
}

#[tokio::test]
async fn unacked_is_redelivered_after_ack_wait_and_nak() {
    suite::unacked_is_redelivered_after_ack_wait_and_nak(&mut Nats::new(Duration::from_secs(1)))
        .await;
}

#[tokio::test]
async fn in_progress_extends_the_ack_wait() {
    suite::in_progress_extends_the_ack_wait(&mut Nats::new(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_split_work() {
    suite::two_consumers_split_work(&mut Nats::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn audit_publish_is_accepted() {
    suite::audit_publish_is_accepted(&mut Nats::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn locks() {
    suite::locks(&mut Nats::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn cooldowns_and_budgets_survive_restart() {
    suite::cooldowns_and_budgets_survive_restart(&mut Nats::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn connect_to_a_dead_server_is_unavailable() {
    let mut server = NatsServer::start().unwrap();
    server.kill();
    let err = NatsBus::connect(&server.url(), NatsOptions::default())
        .await
        .err()
        .expect("no server");
    assert_eq!(err.kind(), BusErrorKind::Unavailable);
}

/// Events arrive while nats-server is killed and restarted: every publish that returned `Ok` is
/// delivered afterwards; publishes during the outage fail with `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_event_is_lost_when_nats_server_dies() {
    let mut h = Nats::new(ACK_WAIT);
    let bus = h.connect().await;
    let mut accepted = HashSet::new();
    let mut attempted = HashSet::new();
    for i in 0..50 {
        let id = format!("before-{i}");
        attempted.insert(id.clone());
        bus.publish(vec![event(&id)])
            .await
            .expect("publish before outage");
        accepted.insert(id);
    }

    h.server.kill();
    // The client notices the dead connection; from then on publish fails at once.
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + EXPECT_WITHIN;
    let mut i = 0;
    while refused < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish never failed during the outage"
        );
        let id = format!("during-{i}");
        i += 1;
        attempted.insert(id.clone());
        match bus.publish(vec![event(&id)]).await {
            Ok(()) => {
                accepted.insert(id);
            }
            Err(e) => {
                assert_eq!(e.kind(), BusErrorKind::Unavailable, "{e}");
                refused += 1;
            }
        }
    }
    assert!(!bus.ready());

    h.server.restart().expect("restart nats-server");
    // Bounded wait for the client to reconnect by itself.
    let deadline = tokio::time::Instant::now() + EXPECT_WITHIN;
    loop {
        let id = format!("after-{i}");
        i += 1;
        attempted.insert(id.clone());
        match bus.publish(vec![event(&id)]).await {
            Ok(()) => {
                accepted.insert(id);
                break;
            }
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "client never reconnected"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(bus.ready());

    let mut stream = bus.consume().await.expect("consume");
    let mut delivered = HashSet::new();
    while !accepted.is_subset(&delivered) {
        let d = next(&mut stream).await;
        delivered.insert(d.event.id.clone());
        d.ack().await.expect("ack");
    }
    // Nothing delivered that was not sent (publishes refused during the outage may still have
    // reached the server: a refusal only means "not known to be stored").
    let unsent: Vec<&String> = delivered.difference(&attempted).collect();
    assert!(unsent.is_empty(), "delivered, never sent: {unsent:?}");
}

/// A consumer stream opened before an outage keeps delivering after nats-server comes back
/// (the engine's consumer runs for the life of the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_consumer_resumes_after_nats_server_restarts() {
    let mut h = Nats::new(ACK_WAIT);
    let bus = h.connect().await;
    let mut stream = bus.consume().await.expect("consume");
    bus.publish(vec![event("pre")]).await.unwrap();
    let d = next(&mut stream).await;
    assert_eq!(d.event.id, "pre");
    d.ack().await.unwrap();

    h.server.kill();
    h.server.restart().expect("restart nats-server");
    let deadline = tokio::time::Instant::now() + EXPECT_WITHIN;
    while bus.publish(vec![event("post")]).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "client never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // After SIGKILL the server may deliver the acked "pre" once more (it persists acks
    // lazily); at-least-once allows that, so skip it.
    loop {
        let d = next(&mut stream).await;
        let id = d.event.id.clone();
        d.ack().await.unwrap();
        match id.as_str() {
            "post" => break,
            "pre" => continue,
            other => panic!("unexpected event {other}"),
        }
    }
}

/// Someone deletes the events stream (or nats-server comes back without its store): publish
/// recreates it, and a running consumer recreates the shared consumer and keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_recreated_by_publish_and_consume() {
    let mut h = Nats::new(ACK_WAIT);
    let bus = h.connect().await;
    let mut stream = bus.consume().await.expect("consume");
    bus.publish(vec![event("one")]).await.unwrap();
    next(&mut stream).await.ack().await.unwrap();

    let admin = async_nats::jetstream::new(async_nats::connect(h.server.url()).await.unwrap());
    admin
        .delete_stream("FIREBREAK_EVENTS")
        .await
        .expect("delete stream");

    bus.publish(vec![event("two")])
        .await
        .expect("publish recreates the stream");
    let d = next(&mut stream).await;
    assert_eq!(d.event.id, "two");
    d.ack().await.unwrap();
}

/// Someone deletes the audit stream (or nats-server comes back without its store): a publish
/// that finds no stream is refused as unavailable (the audit mirror tries again; the same
/// answer comes while a cluster elects the stream's leader) and makes the stream again, so
/// the next try is stored.
#[tokio::test]
async fn a_deleted_audit_stream_is_made_again_for_the_next_try() {
    let mut h = Nats::new(ACK_WAIT);
    let bus = h.connect().await;
    let admin = async_nats::jetstream::new(async_nats::connect(h.server.url()).await.unwrap());
    admin
        .delete_stream("FIREBREAK_AUDIT")
        .await
        .expect("delete stream");
    let batch = vec![firebreak_bus::AuditMessage {
        subject: "firebreak.audit.ml-platform.r-1".into(),
        id: "hash-1".into(),
        payload: br#"{"seq":1,"run_id":"r-1"}"#.to_vec().into(),
    }];
    let first = match bus.publish_audit(batch.clone()).await {
        Ok(stored) => stored.await,
        Err(e) => Err(e),
    };
    let err = first.expect_err("no stream to store the record");
    assert_eq!(err.kind(), BusErrorKind::Unavailable, "{err}");
    bus.publish_audit(batch)
        .await
        .expect("sent")
        .await
        .expect("stored in the stream made again");
    let mut stream = admin.get_stream("FIREBREAK_AUDIT").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

/// Audit records land in the `FIREBREAK_AUDIT` stream under their subjects, byte for byte, in
/// order; publishing the same batch again (a retry) stores nothing twice.
#[tokio::test]
async fn audit_records_are_stored_in_the_audit_stream_once_and_in_order() {
    let mut h = Nats::new(ACK_WAIT);
    let bus = h.connect().await;
    let batch: Vec<firebreak_bus::AuditMessage> = (1..=3)
        .map(|seq| firebreak_bus::AuditMessage {
            subject: "firebreak.audit.ml-platform.r-1".into(),
            id: format!("hash-{seq}"),
            payload: format!(r#"{{"seq":{seq},"run_id":"r-1"}}"#)
                .into_bytes()
                .into(),
        })
        .collect();
    bus.publish_audit(batch.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    bus.publish_audit(batch.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let admin = async_nats::jetstream::new(async_nats::connect(h.server.url()).await.unwrap());
    let mut stream = admin
        .get_stream("FIREBREAK_AUDIT")
        .await
        .expect("audit stream");
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3,
        "retry deduplicated"
    );
    for (i, record) in batch.iter().enumerate() {
        let stored = stream
            .get_raw_message(i as u64 + 1)
            .await
            .expect("stored record");
        assert_eq!(stored.subject.as_str(), record.subject);
        assert_eq!(stored.payload.as_ref(), record.payload.as_ref());
    }
}

/// A bus consuming the events stream, and a JetStream client of its own on the same server
/// (to publish what a bus would not).
async fn consuming_with_a_raw_client() -> (
    Nats,
    Arc<NatsBus>,
    suite::Deliveries,
    async_nats::jetstream::Context,
) {
    let mut h = Nats::new(ACK_WAIT);
    let bus = h.connect().await;
    let stream = bus.consume().await.expect("consume");
    let client = async_nats::connect(h.server.url()).await.expect("connect");
    (h, bus, stream, async_nats::jetstream::new(client))
}

/// A message on the events stream that is not an event is handed on as an `unprocessable`
/// event (for the consumer to park), never dropped; and nothing is given up after a number of
/// deliveries: the 25th delivery of a nak'ed message still comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_is_handed_on_and_no_delivery_limit_drops_anything() {
    let (_h, bus, mut stream, js) = consuming_with_a_raw_client().await;
    js.publish(
        "firebreak.events.alertmanager.firing",
        "not json at all".into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let first = next(&mut stream).await;
    assert_eq!(first.event.source, firebreak_event::SOURCE_FIREBREAK);
    assert_eq!(first.event.kind, firebreak_event::KIND_UNPROCESSABLE);
    assert_eq!(first.event.data["payload"], "not json at all");
    assert_eq!(
        first.event.data["origin"],
        "firebreak.events.alertmanager.firing"
    );
    first.ack().await.expect("ack");

    bus.publish(vec![event("stubborn")]).await.unwrap();
    let mut attempt = 0;
    for _ in 0..25 {
        let d = next(&mut stream).await;
        assert_eq!(d.event.id, "stubborn");
        attempt = d.attempt;
        d.nak(Duration::ZERO).await.expect("nak");
    }
    assert!(attempt >= 25, "delivered {attempt} times");
    let last = next(&mut stream).await;
    assert_eq!(last.event.id, "stubborn");
    last.ack().await.expect("ack");
}

/// A replica hands the events it published to its own consumer without decoding them again,
/// but only as the bytes it sent: when another publisher stored a message under the same id
/// first (so the stream dropped this replica's as a duplicate), the delivery is that message,
/// decoded as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_under_an_own_events_id_is_delivered_as_stored() {
    let (_h, bus, mut stream, js) = consuming_with_a_raw_client().await;
    let mut theirs = event("shared-id");
    theirs.subject = "stored first".into();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "shared-id");
    js.publish_with_headers(
        theirs.subject_name(),
        headers,
        serde_json::to_vec(&theirs).unwrap().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let mut ours = event("shared-id");
    ours.subject = "published second".into();
    bus.publish(vec![ours, event("own")])
        .await
        .expect("publish");
    let first = next(&mut stream).await;
    assert_eq!(first.event.id, "shared-id");
    assert_eq!(first.event.subject, "stored first");
    first.ack().await.expect("ack");
    let second = next(&mut stream).await;
    assert_eq!(*second.event, event("own"));
    second.ack().await.expect("ack");
}

/// Subjects (keys, tombstones included) held by the KV bucket `bucket`.
async fn keys_stored(url: &str, bucket: &str) -> usize {
    use futures::TryStreamExt as _;
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(format!("KV_{bucket}")).await.expect("bucket");
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(">")
        .await
        .expect("subjects")
        .try_collect()
        .await
        .expect("subjects");
    subjects.len()
}

/// Housekeeping: released locks and ended cooldowns go, tombstones included; what still means
/// something stays, and a swept lock can be taken again.
#[tokio::test]
async fn the_sweep_removes_released_locks_and_ended_cooldowns_and_keeps_the_rest() {
    let mut nats = Nats::new(ACK_WAIT);
    let url = nats.server.url();
    let bus = nats.connect().await;
    let state = bus.state_store().await.expect("state store");
    let now = jiff::Timestamp::now();
    let minute = Duration::from_secs(60);
    assert!(
        state
            .try_lock("rb/released", "run-1", minute)
            .await
            .unwrap()
    );
    assert!(state.unlock("rb/released", "run-1").await.unwrap());
    assert!(state.try_lock("rb/held", "run-2", minute).await.unwrap());
    state
        .set_cooldown("rb/ended", now - jiff::SignedDuration::from_secs(1))
        .await
        .unwrap();
    state
        .set_cooldown("rb/running", now + jiff::SignedDuration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        keys_stored(&url, "firebreak_locks").await,
        2,
        "a tombstone and a lock"
    );
    assert_eq!(keys_stored(&url, "firebreak_cooldowns").await, 2);

    assert_eq!(state.sweep(now).await.unwrap(), 2);
    assert_eq!(keys_stored(&url, "firebreak_locks").await, 1);
    assert_eq!(keys_stored(&url, "firebreak_cooldowns").await, 1);
    assert_eq!(
        state.lock_holder("rb/held").await.unwrap().as_deref(),
        Some("run-2")
    );
    assert!(state.cooldown("rb/running").await.unwrap().is_some());
    assert!(
        state
            .try_lock("rb/released", "run-3", minute)
            .await
            .unwrap(),
        "a swept lock is free"
    );
    assert_eq!(state.sweep(now).await.unwrap(), 0, "nothing left to sweep");
}

/// `in_msgs` of nats-server's `/varz` on monitoring port `port`: the messages its clients sent.
fn messages_in(port: u16) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("monitoring port");
    conn.write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request /varz");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read /varz");
    let body = response.split_once("\r\n\r\n").expect("an HTTP response").1;
    let varz: serde_json::Value = serde_json::from_str(body).expect("/varz is JSON");
    varz["in_msgs"].as_u64().expect("in_msgs")
}

/// The sweep asks nats-server once per key it removes (a purge up to the entry it listed), not
/// once to read the key's last entry and again to purge it: at 7,000 alerts/s a five-minute
/// sweep meets two million released locks' delete markers.
#[tokio::test]
async fn the_sweep_sends_one_request_per_key_it_removes() {
    let monitoring = firebreak_bus::port::free_loopback_port().expect("a port");
    let server = NatsServer::start_with_config(&format!("http: \"127.0.0.1:{monitoring}\"\n"), &[])
        .expect("nats-server");
    let mut nats = Nats::on(server, NatsOptions::default());
    let bus = nats.connect().await;
    let state = bus.state_store().await.expect("state store");
    let minute = Duration::from_secs(60);
    const RELEASED: u64 = 300;
    for i in 0..RELEASED {
        let key = format!("rb/released-{i}");
        assert!(state.try_lock(&key, "run", minute).await.unwrap());
        assert!(state.unlock(&key, "run").await.unwrap());
    }
    assert!(state.try_lock("rb/held", "run", minute).await.unwrap());

    let before = messages_in(monitoring);
    assert_eq!(state.sweep(jiff::Timestamp::now()).await.unwrap(), RELEASED);
    let sent = messages_in(monitoring) - before;
    // The listings of the two buckets and their flow control: a handful of messages more.
    assert!(
        sent <= RELEASED + 20,
        "the sweep sent {sent} messages to remove {RELEASED} keys"
    );
    assert_eq!(
        keys_stored(&nats.server.url(), "firebreak_locks").await,
        1,
        "the held lock stays"
    );
    assert_eq!(
        state.lock_holder("rb/held").await.unwrap().as_deref(),
        Some("run")
    );
}

/// A state store on `server` for replica `name` with run leases of `lease`.
async fn replica_store(
    server: &NatsServer,
    name: &str,
    lease: Duration,
) -> (Arc<NatsBus>, firebreak_bus::NatsStateStore) {
    let opts = NatsOptions {
        replica: Some(name.to_owned()),
        run_lease: lease,
        ..NatsOptions::default()
    };
    let bus = Arc::new(
        NatsBus::connect(&server.url(), opts)
            .await
            .expect("connect"),
    );
    let store = bus.state_store().await.expect("state store");
    (bus, store)
}

/// An unlock NATS fails is kept once for the heartbeat to retry, however often it is tried
/// again meanwhile (a run's end tries it again through an election), and dropped once a try
/// goes through: the heartbeat, which retries each kept one before it beats, has none to
/// redo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_unlock_tried_again_is_kept_once_and_dropped_once_done() {
    let mut server = NatsServer::start().expect("nats-server");
    let opts = NatsOptions {
        replica: Some("a".into()),
        request_timeout: Duration::from_secs(1),
        ..NatsOptions::default()
    };
    let bus = NatsBus::connect(&server.url(), opts)
        .await
        .expect("connect");
    let store = bus.state_store().await.expect("state store");
    assert!(
        store
            .try_lock("rb/k", "run", Duration::from_secs(60))
            .await
            .unwrap()
    );
    server.kill();
    for _ in 0..3 {
        assert!(store.unlock("rb/k", "run").await.is_err());
    }
    assert_eq!(store.releases_to_retry(), 1);
    server.restart().expect("restart nats-server");
    let deadline = tokio::time::Instant::now() + EXPECT_WITHIN;
    while store.unlock("rb/k", "run").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unlock never went through"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store.releases_to_retry(), 0);
    assert_eq!(store.lock_holder("rb/k").await.unwrap(), None);
}

/// How long replica a's heartbeat and leases last in [`a_dying_and_b_alive`].
const DYING_LEASE: Duration = Duration::from_secs(1);

/// Replica a, whose heartbeat and leases run out [`DYING_LEASE`] after it last beat (the tests
/// do not renew them: it is as good as dead by then), and replica b, beating for a minute.
async fn a_dying_and_b_alive(
    server: &NatsServer,
) -> (
    (Arc<NatsBus>, firebreak_bus::NatsStateStore),
    (Arc<NatsBus>, firebreak_bus::NatsStateStore),
) {
    let a = replica_store(server, "a", DYING_LEASE).await;
    (a, replica_store(server, "b", Duration::from_secs(60)).await)
}

/// A JetStream client of the test's own on `server`, to look into the buckets.
async fn inspect(server: &NatsServer) -> async_nats::jetstream::Context {
    let client = async_nats::connect(server.url()).await.expect("connect");
    async_nats::jetstream::new(client)
}

/// How many heartbeats of replica `name` the replica bucket holds.
async fn heartbeats_of(js: &async_nats::jetstream::Context, name: &str) -> usize {
    use futures::TryStreamExt as _;
    let beats = js
        .get_key_value("firebreak_replicas")
        .await
        .expect("replica bucket");
    let keys: Vec<String> = beats.keys().await.unwrap().try_collect().await.unwrap();
    keys.iter()
        .filter(|k| k.starts_with(&format!("{name}/")))
        .count()
}

/// Run leases: a lock taken by replica a carries a's lease; while a renews it nobody may take
/// it; once it runs out it is an orphan, one of two racing replicas takes it over, a's renewal
/// and unlock then fail (the run is not a's any more), and a release makes it an orphan at
/// once without freeing the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_lease_that_runs_out_is_taken_over_by_exactly_one_replica() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let lease = Duration::from_secs(1);
    let (_a_bus, a) = replica_store(&server, "a", lease).await;
    let (_b_bus, b) = replica_store(&server, "b", lease).await;
    let (_c_bus, c) = replica_store(&server, "c", lease).await;
    let key = "model-latency-rollback/ml.serving fraud";
    assert!(
        a.try_lock(key, "run-1", Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(
        a.try_lock("other/key", "run-2", Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(b.orphans().await.unwrap().is_empty(), "leases are live");

    // a renews run-1 only; run-2's lease runs out.
    for _ in 0..4 {
        tokio::time::sleep(lease / 3).await;
        assert!(a.renew(key, "run-1").await.unwrap());
    }
    let orphans = b.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let orphan = &orphans[0];
    assert_eq!(
        (
            orphan.key.as_str(),
            orphan.run_id.as_str(),
            orphan.replica.as_str()
        ),
        ("other/key", "run-2", "a")
    );
    // b and c race for it: one wins.
    let (by_b, by_c) = tokio::join!(
        b.take_over(orphan, Duration::from_secs(600)),
        c.take_over(orphan, Duration::from_secs(600))
    );
    let (by_b, by_c) = (by_b.unwrap(), by_c.unwrap());
    assert!(by_b ^ by_c, "exactly one replica takes the run over");
    let (winner, loser) = if by_b { (&b, &c) } else { (&c, &b) };
    assert!(winner.renew("other/key", "run-2").await.unwrap());
    assert!(!loser.renew("other/key", "run-2").await.unwrap());
    assert!(!a.renew("other/key", "run-2").await.unwrap(), "a lost it");
    assert!(
        !a.unlock("other/key", "run-2").await.unwrap(),
        "not a's to release"
    );
    assert!(
        !a.try_lock("other/key", "run-2", Duration::from_secs(600))
            .await
            .unwrap(),
        "a cannot take it back while the new lease is live"
    );
    assert_eq!(
        a.lock_holder("other/key").await.unwrap().as_deref(),
        Some("run-2"),
        "the incident's lock never lapsed"
    );
    assert!(b.orphans().await.unwrap().is_empty());

    // A release (a stop suspended the run): an orphan at once, the lock still held.
    assert!(winner.release("other/key", "run-2").await.unwrap());
    let orphans = a.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert!(
        a.take_over(&orphans[0], Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(a.unlock("other/key", "run-2").await.unwrap());
    assert!(a.unlock(key, "run-1").await.unwrap());
    assert_eq!(a.lock_holder("other/key").await.unwrap(), None);
}

/// A run's lock names the run's team (its records are on the audit stream under it) through
/// the run's refreshes and lease renewals, a takeover and a release: the replica that takes
/// the run over reads them there, whatever team the runbook has moved to since. A lock taken
/// without a team names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_lock_keeps_naming_its_runs_team_until_it_is_released() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let (_a_bus, a) = replica_store(&server, "a", DYING_LEASE).await;
    let (_b_bus, b) = replica_store(&server, "b", Duration::from_secs(60)).await;
    let ttl = Duration::from_secs(600);
    assert!(
        a.try_lock_run("hold/fp-1", "run-1", "data-science", ttl)
            .await
            .unwrap()
    );
    assert!(a.try_lock("hold/fp-2", "run-2", ttl).await.unwrap());
    // Taken again by its own run (a resume, whose runbook may have moved teams since),
    // refreshed, renewed: still named as when the run started.
    assert!(
        a.try_lock_run("hold/fp-1", "run-1", "ml-platform", ttl)
            .await
            .unwrap()
    );
    assert!(a.try_lock("hold/fp-1", "run-1", ttl).await.unwrap());
    assert!(a.refresh_lock("hold/fp-1", "run-1", ttl).await.unwrap());
    assert!(a.renew("hold/fp-1", "run-1").await.unwrap());
    tokio::time::sleep(DYING_LEASE + Duration::from_millis(200)).await;

    let teams_of = |orphans: Vec<firebreak_bus::Orphan>| {
        let mut teams: Vec<(String, Option<String>)> =
            orphans.into_iter().map(|o| (o.run_id, o.team)).collect();
        teams.sort();
        teams
    };
    let orphans = b.orphans().await.unwrap();
    let first = orphans.iter().find(|o| o.run_id == "run-1").cloned();
    assert_eq!(
        teams_of(orphans),
        vec![
            ("run-1".to_owned(), Some("data-science".to_owned())),
            ("run-2".to_owned(), None)
        ]
    );
    assert!(b.take_over(&first.unwrap(), ttl).await.unwrap());
    assert!(b.renew("hold/fp-1", "run-1").await.unwrap());
    assert!(b.release("hold/fp-1", "run-1").await.unwrap());
    let orphans: Vec<_> = a
        .orphans()
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.replica == "b")
        .collect();
    assert_eq!(
        teams_of(orphans),
        vec![("run-1".to_owned(), Some("data-science".to_owned()))]
    );
}

/// A replica knows, without asking NATS, whether its lease on a run's lock holds for a while
/// yet (a third of it to spare): a run acts only while it does, so a replica cut off from
/// NATS stops acting before another replica may take the run over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_knows_its_lease_holds_only_while_it_renews_it() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let lease = Duration::from_millis(1500);
    let (_a_bus, a) = replica_store(&server, "a", lease).await;
    let (_b_bus, b) = replica_store(&server, "b", lease).await;
    let key = "model-latency-rollback/ml.serving fraud";
    assert!(!a.holds(key, "run-1"), "nothing taken yet");
    assert!(
        a.try_lock(key, "run-1", Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(a.holds(key, "run-1"));
    assert!(!a.holds(key, "run-2"), "another run's");
    assert!(!b.holds(key, "run-1"), "another replica's");

    // Not renewed for two thirds of the lease: no longer known to hold.
    tokio::time::sleep(lease * 2 / 3 + Duration::from_millis(100)).await;
    assert!(!a.holds(key, "run-1"));
    assert!(a.renew(key, "run-1").await.unwrap());
    assert!(a.holds(key, "run-1"), "renewed");

    // Run out and taken over: b's now, not a's.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let orphans = b.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert!(
        b.take_over(&orphans[0], Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(b.holds(key, "run-1"));
    assert!(!a.renew(key, "run-1").await.unwrap());
    assert!(!a.holds(key, "run-1"));
    assert!(b.unlock(key, "run-1").await.unwrap());
    assert!(!b.holds(key, "run-1"), "released");
}

/// Replicas do not follow each other's lock writes: while every replica's heartbeat is live
/// and none gave a lease up, a lease scan reads the small replica bucket, not the locks. A
/// watch of the lock bucket per replica cost nats-server a delivery of every lock write to
/// every replica (`scripts/lockwatch-bench`: +16 to +42 µs of its CPU and +47 to +72 µs of
/// the replicas' per alert, for each replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_scan_with_every_replica_alive_reads_no_lock() {
    use firebreak_bus::RunLeases;
    let http = firebreak_bus::port::free_loopback_port().unwrap();
    let server =
        NatsServer::start_with_config(&format!("http: \"127.0.0.1:{http}\"\n"), &[]).unwrap();
    let lease = Duration::from_secs(60);
    let (_a_bus, a) = replica_store(&server, "a", lease).await;
    let (_b_bus, b) = replica_store(&server, "b", lease).await;
    let minute = Duration::from_secs(60);
    assert!(b.orphans().await.unwrap().is_empty());
    let out = || async { monitor(http, "/varz").await["out_msgs"].as_u64().unwrap() };
    let before = out().await;
    const RUNS: u64 = 200;
    for i in 0..RUNS {
        let key = format!("rb/incident-{i}");
        assert!(a.try_lock(&key, &format!("run-{i}"), minute).await.unwrap());
        assert!(a.unlock(&key, &format!("run-{i}")).await.unwrap());
    }
    for _ in 0..5 {
        assert!(b.orphans().await.unwrap().is_empty(), "every lease is live");
    }
    let sent = out().await - before;
    // Each lock write is answered once (its PubAck); a watch would add one delivery per
    // write and watching replica, a listing one per lock and delete marker.
    assert!(
        sent < 2 * RUNS + RUNS / 2,
        "nats-server sent {sent} messages for {RUNS} runs' lock writes and five scans"
    );
}

/// A replica whose heartbeat ended (it died, or was cut off for a lease) gets its locks read:
/// each whose lease ran out is an orphan, and its heartbeat goes once none of its locks is
/// left. A lease given up by a live replica (a stop, a takeover it could not finish) is seen at
/// once, and a lock nothing heartbeats for (left by an older engine) by the first live
/// replica's safety scan, one round in twenty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_scan_reads_the_locks_of_replicas_that_ended_or_gave_a_lease_up() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let (lease, minute) = (DYING_LEASE, Duration::from_secs(60));
    let ((_a_bus, a), (_b_bus, b)) = a_dying_and_b_alive(&server).await;
    assert!(a.try_lock("rb/left", "run-left", minute).await.unwrap());
    assert!(b.orphans().await.unwrap().is_empty(), "a's lease is live");
    // a stops beating (as a replica killed): its heartbeat and lease end together.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let orphans = b.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(
        (orphans[0].run_id.as_str(), orphans[0].replica.as_str()),
        ("run-left", "a")
    );
    assert!(b.take_over(&orphans[0], minute).await.unwrap());
    assert!(b.orphans().await.unwrap().is_empty(), "taken over");

    let js = inspect(&server).await;
    assert_eq!(
        (heartbeats_of(&js, "a").await, heartbeats_of(&js, "b").await),
        (0, 1),
        "a's heartbeat is gone with its last lock"
    );

    // b is alive and beating, and gives a lease up: the lock is an orphan at once.
    b.beat().await.unwrap();
    let (_c_bus, c) = replica_store(&server, "c", Duration::from_secs(60)).await;
    assert!(c.orphans().await.unwrap().is_empty(), "b's lease is live");
    assert!(b.release("rb/left", "run-left").await.unwrap());
    let orphans = c.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].replica, "b");
    assert!(c.take_over(&orphans[0], minute).await.unwrap());

    // A lock written by an engine without heartbeats, its lease long over.
    let (_d_bus, d) = replica_store(&server, "d", Duration::from_secs(60)).await;
    assert!(d.orphans().await.unwrap().is_empty());
    let locks = js
        .get_key_value("firebreak_locks")
        .await
        .expect("lock bucket");
    let old = serde_json::json!({
        "owner": "run-old", "expires_ms": i64::MAX / 2, "replica": "old", "lease_ms": 1
    });
    locks
        .put("rb/old", serde_json::to_vec(&old).unwrap().into())
        .await
        .unwrap();
    // b's heartbeat (live) sorts first: d never reads the locks for it.
    for _ in 0..25 {
        assert!(d.orphans().await.unwrap().is_empty());
    }
    // b scanned three times above; its 20th round reads the locks.
    for round in 4..20 {
        assert!(b.orphans().await.unwrap().is_empty(), "round {round}");
    }
    let orphans = b.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(
        (orphans[0].run_id.as_str(), orphans[0].replica.as_str()),
        ("run-old", "old")
    );
    assert!(b.take_over(&orphans[0], minute).await.unwrap());

    // A replica that starts and gives a lease up between two scans of another.
    let (_e_bus, e) = replica_store(&server, "e", Duration::from_secs(60)).await;
    assert!(e.try_lock("rb/new", "run-new", minute).await.unwrap());
    assert!(e.release("rb/new", "run-new").await.unwrap());
    let orphans = d.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].replica, "e");
}

/// A replica giving many leases up at once (a stopping replica suspends all its runs) counts
/// them in a few heartbeat writes, not one each; the heartbeat ends up counting all of them,
/// and another replica finds every lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_given_up_together_share_heartbeat_writes() {
    use firebreak_bus::RunLeases;
    const RUNS: usize = 200;
    let server = NatsServer::start().expect("nats-server");
    let minute = Duration::from_secs(60);
    let (_a_bus, a) = replica_store(&server, "a", minute).await;
    let (_b_bus, b) = replica_store(&server, "b", minute).await;
    for i in 0..RUNS {
        let (key, run) = (format!("rb/{i}"), format!("run-{i}"));
        assert!(a.try_lock(&key, &run, minute).await.unwrap());
    }
    let js = inspect(&server).await;
    let beat_writes = async || {
        let mut bucket = js.get_stream("KV_firebreak_replicas").await.unwrap();
        bucket.info().await.unwrap().state.last_sequence
    };
    let before = beat_writes().await;
    let a = &a;
    let releases =
        (0..RUNS).map(|i| async move { a.release(&format!("rb/{i}"), &format!("run-{i}")).await });
    for released in futures::future::join_all(releases).await {
        assert!(released.unwrap(), "a held every lease");
    }
    let writes = beat_writes().await - before;
    assert!(
        writes < (RUNS / 10) as u64,
        "{writes} heartbeat writes for {RUNS} leases given up"
    );
    let beats = js.get_key_value("firebreak_replicas").await.unwrap();
    let mut counted = None;
    {
        use futures::TryStreamExt as _;
        let keys: Vec<String> = beats.keys().await.unwrap().try_collect().await.unwrap();
        for key in keys.iter().filter(|k| k.starts_with("a/")) {
            let beat: serde_json::Value =
                serde_json::from_slice(&beats.get(key).await.unwrap().unwrap()).unwrap();
            counted = beat["released"].as_u64();
        }
    }
    assert_eq!(
        counted,
        Some(RUNS as u64),
        "a's heartbeat counts every release"
    );
    assert_eq!(b.orphans().await.unwrap().len(), RUNS, "b finds every lock");
}

/// A dead replica's lock that no replica takes over (none can resume its run: its runbook is
/// loaded nowhere) is read for at the first two scans after the heartbeat ended, then after
/// gaps that double up to the safety round's: not at every scan of every replica until the
/// heartbeat's retention ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_nobody_takes_over_is_read_for_less_and_less_often() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let (lease, minute) = (DYING_LEASE, Duration::from_secs(60));
    let ((_a_bus, a), (_b_bus, b)) = a_dying_and_b_alive(&server).await;
    assert!(a.try_lock("rb/stuck", "run-stuck", minute).await.unwrap());
    // a dies: its heartbeat and lease end together.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let mut found = Vec::new();
    for scan in 1..=40 {
        if !b.orphans().await.unwrap().is_empty() {
            found.push(scan);
        }
    }
    // 20 and 40: b, the first live replica, reads the locks every 20th round anyway.
    assert_eq!(
        found,
        [1, 2, 4, 8, 16, 20, 32, 40],
        "the scans that read the locks"
    );
    let js = inspect(&server).await;
    assert_eq!(heartbeats_of(&js, "a").await, 1, "a's lock is still there");
}

/// A lock a dead replica took after its last heartbeat has a lease that outlives the
/// heartbeat (by up to a renewal round): its locks are read for at every scan until that lease
/// ran out, not only after the growing gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_outlives_its_heartbeat_is_read_for_until_it_runs_out() {
    use firebreak_bus::RunLeases;
    use futures::TryStreamExt as _;
    let server = NatsServer::start().expect("nats-server");
    let (lease, minute) = (DYING_LEASE, Duration::from_secs(60));
    let ((_a_bus, a), (_b_bus, b)) = a_dying_and_b_alive(&server).await;
    let js = inspect(&server).await;
    let beats = js.get_key_value("firebreak_replicas").await.unwrap();
    let keys: Vec<String> = beats.keys().await.unwrap().try_collect().await.unwrap();
    let incarnation = keys
        .iter()
        .find_map(|k| k.strip_prefix("a/"))
        .expect("a's heartbeat")
        .to_owned();
    drop(a);
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    // As if a took it just before it died: its lease runs out 1.5 s after the heartbeat.
    let lease_ends = jiff::Timestamp::now().as_millisecond() + 1_500;
    let late = serde_json::json!({
        "owner": "run-late", "expires_ms": i64::MAX / 2, "replica": "a",
        "lease_ms": lease_ends, "incarnation": incarnation,
    });
    js.get_key_value("firebreak_locks")
        .await
        .unwrap()
        .put("rb/late", serde_json::to_vec(&late).unwrap().into())
        .await
        .unwrap();
    assert!(
        b.orphans().await.unwrap().is_empty(),
        "scan 1: the lease runs"
    );
    assert!(
        b.orphans().await.unwrap().is_empty(),
        "scan 2: the lease runs"
    );
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    // Scan 3 is in no gap's schedule: read because the lease still ran at scan 2.
    let orphans = b.orphans().await.unwrap();
    assert_eq!(
        orphans.len(),
        1,
        "scan 3 finds the lease ended: {orphans:?}"
    );
    assert!(b.take_over(&orphans[0], minute).await.unwrap());
}

/// A replica told to stop ends its heartbeat: the others read its locks at their next scan,
/// and delete the heartbeat once none of its locks is left. While it beats, nobody does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_leaves_has_its_locks_read() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let minute = Duration::from_secs(60);
    let (_a_bus, a) = replica_store(&server, "a", minute).await;
    let (_b_bus, b) = replica_store(&server, "b", minute).await;
    let js = inspect(&server).await;
    assert!(a.try_lock("rb/held", "run-held", minute).await.unwrap());
    assert!(a.unlock("rb/held", "run-held").await.unwrap());
    for _ in 0..3 {
        assert!(b.orphans().await.unwrap().is_empty());
    }
    assert_eq!(
        heartbeats_of(&js, "a").await,
        1,
        "a beats: its heartbeat stays"
    );
    a.leave().await.unwrap();
    assert!(b.orphans().await.unwrap().is_empty(), "a left no lock");
    assert_eq!(
        heartbeats_of(&js, "a").await,
        0,
        "read a's locks, found none, deleted its heartbeat"
    );
}

/// An unlock NATS refused (here: no stream takes the bucket's subjects for a moment) is done
/// before the next heartbeat: otherwise the finished run's lock would hold its incident until
/// the lock's TTL, with no heartbeat ending to have another replica find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_nats_failed_is_done_before_the_next_heartbeat() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let minute = Duration::from_secs(60);
    let (_a_bus, a) = replica_store(&server, "a", minute).await;
    assert!(a.try_lock("rb/ended", "run-ended", minute).await.unwrap());
    let js = inspect(&server).await;
    let mut bucket = js
        .get_stream("KV_firebreak_locks")
        .await
        .expect("lock bucket");
    let config = bucket.info().await.expect("info").config.clone();
    let away = async_nats::jetstream::stream::Config {
        subjects: vec!["away.>".to_owned()],
        ..config.clone()
    };
    js.update_stream(away)
        .await
        .expect("take the subjects away");
    assert!(
        a.unlock("rb/ended", "run-ended").await.is_err(),
        "nothing takes the unlock"
    );
    js.update_stream(config).await.expect("give them back");
    a.beat().await.expect("heartbeat");
    assert_eq!(
        a.lock_holder("rb/ended").await.unwrap(),
        None,
        "the unlock was done with the heartbeat"
    );
}

/// A replica whose heartbeat ended (NATS was away for a lease) and was deleted by another
/// writes it again before it takes a lock: a lock never stands under no heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_heartbeat_ended_beats_again_before_it_takes_a_lock() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let (lease, minute) = (DYING_LEASE, Duration::from_secs(60));
    let ((_a_bus, a), (_b_bus, b)) = a_dying_and_b_alive(&server).await;
    let js = inspect(&server).await;
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert!(b.orphans().await.unwrap().is_empty());
    assert_eq!(
        heartbeats_of(&js, "a").await,
        0,
        "b deleted a's ended heartbeat"
    );
    assert!(a.try_lock("rb/new", "run-new", minute).await.unwrap());
    assert_eq!(
        heartbeats_of(&js, "a").await,
        1,
        "a beats again with its lock"
    );
    assert!(
        b.orphans().await.unwrap().is_empty(),
        "a's new lock is not an orphan"
    );
}

/// A run's journal lines come back from the audit stream in the order they were published,
/// and only that run's; whether it has any is told without reading them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_journal_lines_are_read_back_from_the_audit_stream() {
    use firebreak_bus::{AuditMessage, RunLeases};
    let server = NatsServer::start().expect("nats-server");
    let (bus, store) = replica_store(&server, "a", Duration::from_secs(5)).await;
    let teams = |teams: &[&str]| teams.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert!(store.run_lines("r-1", &[]).await.unwrap().is_empty());
    assert!(
        store
            .run_lines("r-1", &teams(&["team-a"]))
            .await
            .unwrap()
            .is_empty()
    );
    let message = |team: &str, run: &str, n: u32| AuditMessage {
        subject: firebreak_bus::nats::audit_run_subject(team, run),
        id: format!("{run}-{n}"),
        payload: bytes::Bytes::from(format!("{{\"run\":\"{run}\",\"n\":{n}}}\n")),
    };
    bus.publish_audit(vec![
        message("team-a", "r-1", 1),
        message("team-a", "r-2", 1),
        message("team-a", "r-1", 2),
        message("team.b", "r-10", 1),
        message("team-a", "r-1", 3),
    ])
    .await
    .unwrap()
    .await
    .unwrap();
    // Searched for under every team (none given), read from its team's subject, and from the
    // next team's when the first given holds nothing (the runbook changed teams since).
    for team in [&[][..], &["team-a"], &["team-z", "team-a"]] {
        let lines = store.run_lines("r-1", &teams(team)).await.unwrap();
        let lines: Vec<&str> = lines
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap().trim())
            .collect();
        assert_eq!(
            lines,
            [
                r#"{"run":"r-1","n":1}"#,
                r#"{"run":"r-1","n":2}"#,
                r#"{"run":"r-1","n":3}"#
            ],
            "team {team:?}"
        );
    }
    assert!(
        store
            .run_lines("r-1", &teams(&["team-z"]))
            .await
            .unwrap()
            .is_empty(),
        "not under a team not given"
    );
    let lines = store.run_lines("r-10", &teams(&["team.b"])).await.unwrap();
    assert_eq!(
        lines,
        [bytes::Bytes::from_static(b"{\"run\":\"r-10\",\"n\":1}\n")]
    );
    // Whether a run has records: from the stream's index of subjects, under the teams given,
    // or any.
    for (run, team, has) in [
        ("r-1", &["team-a"][..], true),
        ("r-1", &["team-z", "team-a"], true),
        ("r-1", &["team-z"], false),
        ("r-1", &[], true),
        ("r-10", &["team.b"], true),
        ("r-3", &["team-a"], false),
        ("r-3", &[], false),
    ] {
        assert_eq!(
            store.has_run_records(run, &teams(team)).await.unwrap(),
            has,
            "{run} {team:?}"
        );
    }
}

/// A run is read and looked up by its teams' literal subjects: read straight from its team's
/// subject without looking the subject up first (a stream info filtered by the subject, which
/// walks the audit stream's subjects in nats-server 2.9: it doubled nats-server's CPU per run
/// taken over), and looked up by each subject's last message. No wildcard lookup (a match of
/// every subject the stream holds) but with no team given. The requests are seen by a
/// subscriber on the JetStream API's subjects, as nats-server receives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_known_team_is_read_without_a_subject_lookup() {
    use firebreak_bus::RunLeases;
    use firebreak_bus::testutil::api_requests_during;
    let server = NatsServer::start().expect("nats-server");
    let (bus, store) = replica_store(&server, "a", Duration::from_secs(5)).await;
    firebreak_bus::testutil::publish_audit_line(
        &bus,
        firebreak_bus::nats::audit_run_subject("team-a", "r-1"),
        "r-1-1".to_owned(),
        bytes::Bytes::from_static(b"{\"run\":\"r-1\"}\n"),
    )
    .await;
    let teams = |teams: &[&str]| teams.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let seen = api_requests_during(&server.url(), "$JS.API.STREAM.>", async {
        let lines = store.run_lines("r-1", &teams(&["team-a"])).await.unwrap();
        assert_eq!(lines, [bytes::Bytes::from_static(b"{\"run\":\"r-1\"}\n")]);
        // Under another team first: read from the next team's subject.
        let again = teams(&["team-z", "team-a"]);
        assert_eq!(store.run_lines("r-1", &again).await.unwrap(), lines);
        assert!(store.has_run_records("r-1", &again).await.unwrap());
        assert!(!store.has_run_records("r-2", &again).await.unwrap());
    })
    .await;
    let lookups = |seen: &[(String, bytes::Bytes)]| -> Vec<String> {
        seen.iter()
            .map(|(_, payload)| String::from_utf8_lossy(payload).into_owned())
            .filter(|payload| payload.contains("subjects_filter") || payload.contains('*'))
            .collect()
    };
    assert!(lookups(&seen).is_empty(), "{seen:?}");
    let seen = api_requests_during(&server.url(), "$JS.API.STREAM.>", async {
        assert!(store.has_run_records("r-1", &[]).await.unwrap());
    })
    .await;
    let lookups = lookups(&seen);
    assert_eq!(lookups.len(), 1, "{seen:?}");
    assert!(lookups[0].contains("firebreak.audit.*."), "{seen:?}");
}

/// A run's lines are read up to its subject's last message, asked for first, and no further:
/// in nats-server 2.9 the request for the message after a subject's last one searches the rest
/// of the stream (on a stream of 302,000 runs: 1.4–1.9 ms on average, up to 78–320 ms), while
/// the subject's last message comes from its index (0.34 ms on average). Each read of a run's
/// next message must find one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_lines_are_read_without_a_search_past_its_last_message() {
    use firebreak_bus::RunLeases;
    let server = NatsServer::start().expect("nats-server");
    let (bus, store) = replica_store(&server, "a", Duration::from_secs(5)).await;
    let subject = |run: &str| firebreak_bus::nats::audit_run_subject("team-a", run);
    // r-1's last message has others after it.
    for (run, n) in [("r-1", 1), ("r-2", 1), ("r-1", 2), ("r-2", 2), ("r-2", 3)] {
        firebreak_bus::testutil::publish_audit_line(
            &bus,
            subject(run),
            format!("{run}-{n}"),
            bytes::Bytes::from(format!("{{\"run\":\"{run}\",\"n\":{n}}}\n")),
        )
        .await;
    }
    let seen = firebreak_bus::testutil::api_requests_during(
        &server.url(),
        "$JS.API.STREAM.MSG.GET.>",
        async {
            let lines = store.run_lines("r-1", &["team-a".into()]).await.unwrap();
            assert_eq!(
                lines,
                [
                    bytes::Bytes::from_static(b"{\"run\":\"r-1\",\"n\":1}\n"),
                    bytes::Bytes::from_static(b"{\"run\":\"r-1\",\"n\":2}\n"),
                ]
            );
            // A run with no lines is answered by the one request for its last message.
            assert!(
                store
                    .run_lines("r-3", &["team-a".into()])
                    .await
                    .unwrap()
                    .is_empty()
            );
        },
    )
    .await;
    let next_reads = |run: &str| {
        seen.iter()
            .map(|(_, payload)| String::from_utf8_lossy(payload))
            .filter(|p| p.contains("next_by_subj") && p.contains(&format!("\"{}\"", subject(run))))
            .count()
    };
    assert_eq!(next_reads("r-1"), 2, "one read per line: {seen:?}");
    assert_eq!(next_reads("r-3"), 0, "{seen:?}");
}

/// A run's `once` decision is shared: the first replica to decide wins, every replica reads
/// that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_decision_for_a_key_is_the_one_every_replica_reads() {
    use firebreak_bus::{Decision, RunLeases};
    let server = NatsServer::start().expect("nats-server");
    let (_a_bus, a) = replica_store(&server, "a", Duration::from_secs(5)).await;
    let (_b_bus, b) = replica_store(&server, "b", Duration::from_secs(5)).await;
    let key = "model-latency-rollback\u{1f}alertmanager/1a2b.c\u{1f}blamed";
    assert_eq!(b.decision(key).await.unwrap(), None);
    let first = Decision {
        run_id: "run-1".into(),
        value: serde_json::json!("3"),
    };
    let second = Decision {
        run_id: "run-2".into(),
        value: serde_json::json!("4"),
    };
    assert_eq!(a.decide(key, first.clone()).await.unwrap(), first);
    assert_eq!(
        b.decide(key, second).await.unwrap(),
        first,
        "the first decision stands"
    );
    assert_eq!(b.decision(key).await.unwrap(), Some(first.clone()));
    assert_eq!(a.decision("another key").await.unwrap(), None);
}

/// Replica `name` on the cluster at `url` (servers, comma-separated), its buckets at three
/// replicas, once the new cluster answers JetStream requests (it has elected its leaders).
async fn cluster_replica(
    url: &str,
    name: &str,
    lease: Duration,
) -> (NatsBus, firebreak_bus::NatsStateStore) {
    cluster_replica_with(
        url,
        NatsOptions {
            replica: Some(name.to_owned()),
            run_lease: lease,
            replicas: 3,
            ..NatsOptions::default()
        },
    )
    .await
}

/// [`cluster_replica`] with `opts` as given (credentials, timeouts).
async fn cluster_replica_with(
    url: &str,
    opts: NatsOptions,
) -> (NatsBus, firebreak_bus::NatsStateStore) {
    let mut tries = 0;
    loop {
        tries += 1;
        let opened = async {
            let bus = NatsBus::connect(url, opts.clone()).await?;
            let store = bus.state_store().await?;
            Ok::<_, firebreak_bus::BusError>((bus, store))
        };
        match opened.await {
            Ok(opened) => return opened,
            Err(e) if tries < 30 => {
                eprintln!("cluster not ready: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("no JetStream on the cluster after {tries} tries: {e}"),
        }
    }
}

/// Replicas z, x and y, one on each of the three `nodes` in that order, z's leases lasting
/// `z_lease` and the others' a minute; `auth` gives each replica's credentials by its name.
async fn z_x_and_y(
    nodes: &[NatsServer],
    z_lease: Duration,
    auth: impl Fn(&str) -> firebreak_bus::NatsAuth,
) -> [(NatsBus, firebreak_bus::NatsStateStore); 3] {
    let minute = Duration::from_secs(60);
    let mut replicas = Vec::new();
    for (node, (name, lease)) in nodes
        .iter()
        .zip([("z", z_lease), ("x", minute), ("y", minute)])
    {
        let opts = NatsOptions {
            replica: Some(name.to_owned()),
            run_lease: lease,
            replicas: 3,
            security: firebreak_bus::NatsSecurity {
                auth: auth(name),
                ..Default::default()
            },
            ..NatsOptions::default()
        };
        replicas.push(cluster_replica_with(&node.url(), opts).await);
    }
    replicas
        .try_into()
        .unwrap_or_else(|_| panic!("three nodes"))
}

/// A run that ends while its lease is being renewed: the unlock that loses to the renewal reads
/// the lock again and deletes that. In a cluster a read feeding such a compare-and-set must
/// come from the bucket's leader: a direct get may be answered by a follower that has not
/// applied the renewal yet, and the unlock then gave up, leaving the finished run's lock held
/// (`firebreak bench` on three nodes: 17 to 31 of 20,000 runs, and the next alerts for those
/// incidents were skipped as active on another replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_ends_during_its_renewal_leaves_no_lock_on_a_cluster() {
    use firebreak_bus::RunLeases;
    use futures::TryStreamExt as _;
    let nodes = NatsServer::start_cluster(3).expect("three nats-server nodes");
    let url = nodes
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let (_bus, store) = cluster_replica(&url, "a", Duration::from_secs(60)).await;
    const RUNS: usize = 300;
    let minute = Duration::from_secs(60);
    for i in 0..RUNS {
        let (key, run) = (format!("rb/incident-{i}"), format!("run-{i}"));
        assert!(store.try_lock(&key, &run, minute).await.unwrap());
        let (renewed, unlocked) = tokio::join!(store.renew(&key, &run), store.unlock(&key, &run));
        renewed.unwrap();
        assert!(unlocked.unwrap(), "{key}: not unlocked");
    }
    let client = async_nats::connect(nodes[0].url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let locks = js
        .get_key_value("firebreak_locks")
        .await
        .expect("lock bucket");
    let held: Vec<String> = locks.keys().await.unwrap().try_collect().await.unwrap();
    assert!(
        held.is_empty(),
        "{} of {RUNS} ended runs left their lock: {held:?}",
        held.len()
    );
}

/// A cooldown set as a run ends on one replica is seen at once by the next alert's start on
/// another (each replica on its own node of a three-node cluster): cooldowns and budgets are
/// read from the bucket's leader. A direct get may be answered by a follower that has not
/// applied the write yet, and the next alert then ran inside the cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_set_on_one_replica_is_seen_at_once_by_the_others_on_a_cluster() {
    const RUNS: usize = 1000;
    let nodes = NatsServer::start_cluster(3).expect("three nats-server nodes");
    let minute = Duration::from_secs(60);
    let [(_zb, z), (_xb, x), (_yb, y)] = z_x_and_y(&nodes, minute, |_| Default::default()).await;
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600);
    let mut missed = Vec::new();
    for i in 0..RUNS {
        let key = format!("rb/incident-{i}");
        z.set_cooldown(&key, until).await.unwrap();
        z.record_run(&key, jiff::Timestamp::now()).await.unwrap();
        let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
        let (cx, cy, bx, by) = tokio::join!(
            x.cooldown(&key),
            y.cooldown(&key),
            x.runs_since(&key, since),
            y.runs_since(&key, since)
        );
        if cx.unwrap().is_none() || cy.unwrap().is_none() {
            missed.push(format!("{key}: cooldown"));
        }
        if bx.unwrap() != 1 || by.unwrap() != 1 {
            missed.push(format!("{key}: budget"));
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {RUNS} writes not seen at once: {missed:?}",
        missed.len()
    );
}

/// Two replicas taking the same orphan over at once on a three-node cluster: exactly one gets
/// it. nats-server 2.9.10 (Debian's) checks a write's expected revision outside its raft log
/// (nats-server#4320), and both compare-and-sets passed in 65 of 300 races; the takeover now
/// confirms it came last before it counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_taking_one_orphan_over_on_a_cluster_leave_it_to_one() {
    use firebreak_bus::RunLeases;
    const RUNS: usize = 300;
    let nodes = NatsServer::start_cluster(3).expect("three nats-server nodes");
    let minute = Duration::from_secs(60);
    let [(_zb, z), (_xb, x), (_yb, y)] =
        z_x_and_y(&nodes, DYING_LEASE, |_| Default::default()).await;
    for i in 0..RUNS {
        let (key, run) = (format!("rb/incident-{i}"), format!("run-{i}"));
        assert!(z.try_lock(&key, &run, minute).await.unwrap());
    }
    // z dies: its heartbeat and leases run out.
    tokio::time::sleep(DYING_LEASE + Duration::from_millis(500)).await;
    let orphans = x.orphans().await.unwrap();
    assert_eq!(orphans.len(), RUNS);
    let mut takers = std::collections::BTreeMap::new();
    for orphan in &orphans {
        let (by_x, by_y) = tokio::join!(x.take_over(orphan, minute), y.take_over(orphan, minute));
        *takers.entry((by_x.unwrap(), by_y.unwrap())).or_insert(0) += 1;
    }
    assert_eq!(
        takers.get(&(true, true)),
        None,
        "runs taken over by both replicas; (by x, by y) → count: {takers:?}"
    );
    assert_eq!(
        takers.get(&(false, false)),
        None,
        "runs taken over by neither: {takers:?}"
    );
}

/// Two replicas locking one incident's key at once on a three-node cluster (two alerts of one
/// incident reaching two replicas together): exactly one gets the lock. A free key is taken
/// with a create, which 2.9.10 checks when it applies it; an expired lock is taken with a
/// compare-and-set, which it checks before (nats-server#4320): both passed in 81 of 300.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_locking_one_incident_at_once_on_a_cluster_leave_it_to_one() {
    const RUNS: usize = 300;
    let nodes = NatsServer::start_cluster(3).expect("three nats-server nodes");
    let minute = Duration::from_secs(60);
    let [(_zb, z), (_xb, x), (_yb, y)] = z_x_and_y(&nodes, minute, |_| Default::default()).await;
    // Locks whose time ran out (their runs' timeouts), left for the next alerts to take.
    for i in 0..RUNS {
        let key = format!("rb/incident-{i}");
        assert!(
            z.try_lock(&key, &format!("run-z-{i}"), Duration::from_millis(500))
                .await
                .unwrap()
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut lockers = std::collections::BTreeMap::new();
    for i in 0..RUNS {
        let key = format!("rb/incident-{i}");
        let (by_x, by_y) = tokio::join!(
            x.try_lock(&key, &format!("run-x-{i}"), minute),
            y.try_lock(&key, &format!("run-y-{i}"), minute)
        );
        *lockers.entry((by_x.unwrap(), by_y.unwrap())).or_insert(0) += 1;
    }
    assert_eq!(
        lockers.get(&(true, true)),
        None,
        "incidents locked by both replicas; (by x, by y) → count: {lockers:?}"
    );
    assert_eq!(
        lockers.get(&(false, false)),
        None,
        "incidents locked by neither: {lockers:?}"
    );
}

/// Users of a cluster where replica x may not write the lock stream's barrier keys, so every
/// confirmation x makes fails (NATS refuses the write; its PubAck never comes, and x gives up
/// on it after `request_timeout`, 5 s).
const BARRIER_REFUSED_TO_X: &str = r#"
authorization {
  users = [
    { user: engine, password: engine }
    { user: x, password: x, permissions: { publish: { allow: ">", deny: "$KV.firebreak_locks.barrier.>" }, subscribe: ">" } }
  ]
}
"#;

/// Each replica's credentials on a cluster with `BARRIER_REFUSED_TO_X`'s users.
fn barrier_user(replica: &str) -> firebreak_bus::NatsAuth {
    let user = if replica == "x" { "x" } else { "engine" };
    firebreak_bus::NatsAuth::UserPassword {
        user: user.into(),
        password: user.into(),
    }
}

/// Whether the servers of `node`'s cluster (`BARRIER_REFUSED_TO_X`'s users) confirm takes at
/// all: before 2.10 only; from 2.10 a compare-and-set is checked in the raft log and needs no
/// confirmation.
async fn confirms_takes(node: &NatsServer) -> bool {
    let client =
        async_nats::ConnectOptions::with_user_and_password("engine".into(), "engine".into())
            .connect(node.url())
            .await
            .expect("connect");
    !firebreak_bus::nats::serializes_compare_and_set(&client.server_info().version)
}

/// An incident's lock taken from an expired one whose confirmation fails is not the taker's:
/// the take is an error (no run starts) and the lock is deleted, so the next alert of the
/// incident, on any replica, takes it at once instead of after the taker's full timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lock_taken_without_confirmation_is_let_go() {
    let nodes =
        NatsServer::start_cluster_with(3, BARRIER_REFUSED_TO_X).expect("three nats-server nodes");
    let minute = Duration::from_secs(60);
    let [(_zb, z), (_xb, x), (_yb, y)] = z_x_and_y(&nodes, minute, barrier_user).await;
    let confirms = confirms_takes(&nodes[0]).await;
    let key = "rb/incident";
    assert!(
        z.try_lock(key, "run-z", Duration::from_millis(500))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let taken = x.try_lock(key, "run-x", minute).await;
    if !confirms {
        // A current server: nothing to confirm, the take is x's.
        assert!(taken.unwrap());
        return;
    }
    assert!(taken.is_err(), "x's take was not confirmed, yet: {taken:?}");
    assert!(
        y.try_lock(key, "run-y", minute).await.unwrap(),
        "the lock x could not confirm is still held"
    );
}

/// A run taken over whose confirmation fails is given up at once: its lease ends, so another
/// replica takes it over at its next scan instead of after the failed taker's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_without_confirmation_gives_the_lease_up() {
    use firebreak_bus::RunLeases;
    let nodes =
        NatsServer::start_cluster_with(3, BARRIER_REFUSED_TO_X).expect("three nats-server nodes");
    let minute = Duration::from_secs(60);
    let [(_zb, z), (_xb, x), (_yb, y)] = z_x_and_y(&nodes, DYING_LEASE, barrier_user).await;
    let confirms = confirms_takes(&nodes[0]).await;
    let key = "rb/incident";
    assert!(z.try_lock(key, "run-1", minute).await.unwrap());
    // z dies: its heartbeat and lease run out.
    tokio::time::sleep(DYING_LEASE + Duration::from_millis(500)).await;
    let orphans = x.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let taken = x.take_over(&orphans[0], minute).await;
    if !confirms {
        assert!(taken.unwrap());
        return;
    }
    assert!(
        taken.is_err(),
        "x's takeover was not confirmed, yet: {taken:?}"
    );
    let orphans = y.orphans().await.unwrap();
    assert_eq!(
        orphans.len(),
        1,
        "the run x could not confirm is not an orphan again: {orphans:?}"
    );
    assert!(y.take_over(&orphans[0], minute).await.unwrap());
}

/// The consumer every replica shares keeps the ack wait it was created with; a replica started
/// with another one (`nats.ack_wait`, or an earlier version's default of 60 s) changes it, so
/// what a dead replica had pulled comes back after the ack wait the engines are configured
/// with, and each delivery is marked in progress often enough for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_made_with_another_ack_wait_takes_the_configured_one() {
    let mut old = Nats::new(Duration::from_secs(60));
    let first = old.connect().await;
    let mut stream = first.consume().await.expect("consume");
    first.close().await;
    drop(stream);

    let mut h = Nats::on(
        old.server,
        NatsOptions {
            ack_wait: Duration::from_secs(2),
            fetch_batch: 10,
            ..NatsOptions::default()
        },
    );
    let bus = h.connect().await;
    stream = bus.consume().await.expect("consume");
    bus.publish(vec![event("aw1")]).await.unwrap();
    let d = next(&mut stream).await;
    assert_eq!(d.attempt, 1);
    assert_eq!(
        d.ack_wait(),
        Duration::from_secs(2),
        "the delivery's ack wait"
    );
    let pulled = std::time::Instant::now();
    drop(d); // as a replica killed with it in hand: back after the ack wait, not 60 s
    let again = tokio::time::timeout(Duration::from_secs(10), next(&mut stream))
        .await
        .expect("redelivered within the configured ack wait");
    assert_eq!((again.event.id.as_str(), again.attempt), ("aw1", 2));
    assert!(
        pulled.elapsed() >= Duration::from_millis(1500),
        "redelivered before the ack wait: {:?}",
        pulled.elapsed()
    );
    again.ack().await.unwrap();
}
