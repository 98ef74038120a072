//! The behaviours every [`Bus`] and [`StateStore`] must have, each a generic async fn over a
//! [`Harness`] that the `embedded` and `nats` modules implement.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use firebreak_bus::{Bus, BusError, Delivery, StateStore};
use firebreak_event::Event;
use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

/// How long a test waits for a delivery it expects before failing.
pub const EXPECT_WITHIN: Duration = Duration::from_secs(15);
/// How long a test watches for a delivery it does not expect.
pub const QUIET_FOR: Duration = Duration::from_millis(500);

/// One backend under test.
pub trait Harness {
    /// A bus handle. Each call on NATS is a new connection (a replica); embedded shares one bus.
    async fn bus(&mut self) -> Arc<dyn Bus>;
    /// A state store handle on the same backend.
    async fn state(&mut self) -> Arc<dyn StateStore>;
    /// Closes every handle handed out and restarts the backend on the same storage. Callers must
    /// drop their handles first.
    async fn restart(&mut self);
}

pub type Deliveries = BoxStream<'static, Result<Delivery, BusError>>;

pub fn event(id: &str) -> Event {
    Event {
        id: id.to_owned(),
        source: "alertmanager".into(),
        kind: "firing".into(),
        subject: "ModelErrorRateHigh".into(),
        time: "2026-11-26T22:03:25.277Z".parse().unwrap(),
        namespace: Some("team-a".into()),
        fingerprint: Some(format!("fp-{id}")),
        traceparent: None,
        data: json!({"labels": {"alertname": "ModelErrorRateHigh", "n": id}}),
        written: Default::default(),
    }
}

/// The next delivery, failing the test if none comes within [`EXPECT_WITHIN`].
pub async fn next(stream: &mut Deliveries) -> Delivery {
    match tokio::time::timeout(EXPECT_WITHIN, stream.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("consume yielded an error: {e}"),
        Ok(None) => panic!("consume stream ended"),
        Err(_) => panic!("no delivery within {EXPECT_WITHIN:?}"),
    }
}

/// Asserts nothing is delivered for [`QUIET_FOR`].
pub async fn assert_quiet(stream: &mut Deliveries) {
    if let Ok(Some(item)) = tokio::time::timeout(QUIET_FOR, stream.next()).await {
        panic!(
            "expected no delivery, got {:?}",
            item.map(|d| d.event.id.clone())
        );
    }
}

async fn consume(bus: &Arc<dyn Bus>) -> Deliveries {
    bus.consume().await.expect("consume")
}

pub async fn publish_consume_ack(h: &mut impl Harness) {
    let bus = h.bus().await;
    assert!(bus.ready());
    let mut stream = consume(&bus).await;
    let sent = vec![event("a1"), event("a2"), event("a3")];
    // Millisecond resolution on the embedded bus; allow that much before and after.
    let before = jiff::Timestamp::now() - jiff::SignedDuration::from_millis(1);
    bus.publish(sent.clone()).await.expect("publish");
    let after = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1);
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut stream).await;
        assert_eq!(d.attempt, 1);
        assert!(
            before <= d.published && d.published <= after,
            "published {} not within the publish call [{before}, {after}]",
            d.published
        );
        // The event's JSON as this bus wrote it comes with it, for the audit journal.
        let json = serde_json::to_vec(&*d.event).unwrap();
        assert_eq!(d.event.written.get().map(|j| &j[..]), Some(&json[..]));
        got.push((*d.event).clone());
        d.ack().await.expect("ack");
    }
    got.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(got, sent, "events come back exactly as published");
    assert_quiet(&mut stream).await;
    drop((stream, bus));

    // Acked events stay acked across a restart.
    h.restart().await;
    let bus = h.bus().await;
    let mut stream = consume(&bus).await;
    bus.publish(vec![event("a4")])
        .await
        .expect("publish after restart");
    let d = next(&mut stream).await;
    assert_eq!(d.event.id, "a4");
    d.ack().await.unwrap();
    assert_quiet(&mut stream).await;
}

pub async fn dedupe_by_id(h: &mut impl Harness) {
    let bus = h.bus().await;
    let mut stream = consume(&bus).await;
    let err = bus.publish(vec![event("ok"), event("")]).await.unwrap_err();
    assert!(matches!(err, BusError::EmptyEventId { .. }), "{err:?}");
    assert_quiet(&mut stream).await; // the whole batch was refused
    bus.publish(vec![event("d1")]).await.unwrap();
    bus.publish(vec![event("d1")]).await.unwrap();
    bus.publish(vec![event("d1"), event("d2"), event("d2")])
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = next(&mut stream).await;
        ids.push(d.event.id.clone());
        d.ack().await.unwrap();
    }
    ids.sort();
    assert_eq!(ids, ["d1", "d2"]);
    assert_quiet(&mut stream).await;
    // Still deduplicated once acked, within the window.
    bus.publish(vec![event("d1")]).await.unwrap();
    assert_quiet(&mut stream).await;
}

pub async fn unacked_is_redelivered_after_restart(h: &mut impl Harness) {
    let bus = h.bus().await;
    let mut stream = consume(&bus).await;
    bus.publish(vec![event("r1"), event("r2")]).await.unwrap();
    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    let (acked, kept) = if first.event.id == "r1" {
        (first, second)
    } else {
        (second, first)
    };
    acked.ack().await.unwrap();
    let kept_id = kept.event.id.clone();
    let kept_published = kept.published;
    // A crash: the delivery is never settled.
    drop((kept, stream, bus));

    h.restart().await;
    let bus = h.bus().await;
    let mut stream = consume(&bus).await;
    let again = next(&mut stream).await;
    assert_eq!(again.event.id, kept_id);
    assert_eq!(
        again.published, kept_published,
        "a redelivery keeps the time the event was accepted"
    );
    again.ack().await.unwrap();
    assert_quiet(&mut stream).await;
}

/// Needs a harness with a short ack wait (about 1 s).
pub async fn unacked_is_redelivered_after_ack_wait_and_nak(h: &mut impl Harness) {
    let bus = h.bus().await;
    let mut stream = consume(&bus).await;
    bus.publish(vec![event("w1")]).await.unwrap();
    let d = next(&mut stream).await;
    assert_eq!(d.attempt, 1);
    drop(d); // neither acked nor nak'd: back after the ack wait
    let d = next(&mut stream).await;
    assert_eq!((d.event.id.as_str(), d.attempt), ("w1", 2));
    d.nak(Duration::ZERO).await.unwrap();
    let d = next(&mut stream).await;
    assert_eq!((d.event.id.as_str(), d.attempt), ("w1", 3));
    d.ack().await.unwrap();
    assert_quiet(&mut stream).await;
}

/// Needs a harness with an ack wait of about 1 s: `in_progress` keeps a long run's event from
/// being redelivered past the ack wait.
pub async fn in_progress_extends_the_ack_wait(h: &mut impl Harness) {
    let bus = h.bus().await;
    let mut stream = consume(&bus).await;
    bus.publish(vec![event("p1")]).await.unwrap();
    let d = next(&mut stream).await;
    // Three ack waits pass; without the progress signals the event would come back.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        d.in_progress().await.expect("in progress");
    }
    assert_quiet(&mut stream).await;
    d.ack().await.unwrap();
    assert_quiet(&mut stream).await;
}

/// Two consumers (replicas) share the work: together they see every event exactly once, and
/// each sees some.
pub async fn two_consumers_split_work(h: &mut impl Harness) {
    const N: usize = 200;
    let (a, b) = (h.bus().await, h.bus().await);
    let streams = [consume(&a).await, consume(&b).await];
    // Each consumer, after its first event, waits for the other to get one too, so neither can
    // take everything; then both drain.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(N));
    let mut tasks = Vec::new();
    for mut stream in streams {
        let barrier = Arc::clone(&barrier);
        let remaining = Arc::clone(&remaining);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut first = true;
            while remaining.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                let Ok(Some(item)) =
                    tokio::time::timeout(Duration::from_millis(200), stream.next()).await
                else {
                    continue;
                };
                let d = item.expect("delivery");
                ids.push(d.event.id.clone());
                d.ack().await.expect("ack");
                remaining.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                if first {
                    first = false;
                    tokio::time::timeout(EXPECT_WITHIN, barrier.wait())
                        .await
                        .expect("the other consumer got no event");
                }
            }
            ids
        }));
    }
    let events: Vec<Event> = (0..N).map(|i| event(&format!("s{i:03}"))).collect();
    a.publish(events).await.unwrap();
    let mut all = Vec::new();
    for task in tasks {
        let ids = tokio::time::timeout(EXPECT_WITHIN, task)
            .await
            .expect("consumers finished")
            .expect("consumer task");
        assert!(!ids.is_empty(), "each consumer gets a share");
        all.extend(ids);
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), N, "no event delivered twice");
    assert_eq!(unique.len(), N, "every event delivered");
}

pub async fn audit_publish_is_accepted(h: &mut impl Harness) {
    let bus = h.bus().await;
    bus.publish_audit(vec![firebreak_bus::AuditMessage {
        subject: "firebreak.audit.ml-platform.run-1".into(),
        id: "hash-1".into(),
        payload: br#"{"kind":"run_started"}"#.to_vec().into(),
    }])
    .await
    .expect("audit sent")
    .await
    .expect("audit stored");
}

pub async fn locks(h: &mut impl Harness) {
    let s = h.state().await;
    let ttl = Duration::from_secs(60);
    assert_eq!(s.lock_holder("team-a/fraud-model").await.unwrap(), None);
    assert!(s.try_lock("team-a/fraud-model", "o1", ttl).await.unwrap());
    assert!(
        !s.try_lock("team-a/fraud-model", "o2", ttl).await.unwrap(),
        "held by o1"
    );
    assert_eq!(
        s.lock_holder("team-a/fraud-model")
            .await
            .unwrap()
            .as_deref(),
        Some("o1")
    );
    assert!(
        s.try_lock("team-a/fraud-model", "o1", ttl).await.unwrap(),
        "re-entrant for o1"
    );
    assert!(
        !s.refresh_lock("team-a/fraud-model", "o2", ttl)
            .await
            .unwrap()
    );
    assert!(
        s.refresh_lock("team-a/fraud-model", "o1", ttl)
            .await
            .unwrap()
    );
    assert!(
        !s.unlock("team-a/fraud-model", "o2").await.unwrap(),
        "only the owner unlocks"
    );
    assert!(s.unlock("team-a/fraud-model", "o1").await.unwrap());
    assert!(
        !s.unlock("team-a/fraud-model", "o1").await.unwrap(),
        "already free"
    );
    assert!(
        s.try_lock("team-a/fraud-model", "o2", ttl).await.unwrap(),
        "free again"
    );
    assert!(
        !s.refresh_lock("other", "o1", ttl).await.unwrap(),
        "no such lock"
    );
    // Keys with characters NATS subjects cannot hold are distinct keys, not errors.
    assert!(s.try_lock("a.b c", "o1", ttl).await.unwrap());
    assert!(s.try_lock("a=2Eb c", "o2", ttl).await.unwrap());
    assert!(matches!(
        s.try_lock("", "o1", ttl).await,
        Err(BusError::EmptyKey)
    ));

    // Expiry: a lock with a short ttl is taken over once it lapses.
    assert!(
        s.try_lock("short", "o1", Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(!s.try_lock("short", "o2", ttl).await.unwrap());
    let deadline = tokio::time::Instant::now() + EXPECT_WITHIN;
    while !s.try_lock("short", "o2", ttl).await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired lock never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !s.refresh_lock("short", "o1", ttl).await.unwrap(),
        "o1 lost it"
    );
    assert!(
        !s.unlock("short", "o1").await.unwrap(),
        "o1 cannot release what o2 took over"
    );
    assert!(s.unlock("short", "o2").await.unwrap());

    // A race for one free lock: exactly one winner.
    let mut racers = Vec::new();
    for i in 0..8 {
        let s = Arc::clone(&s);
        racers.push(tokio::spawn(async move {
            s.try_lock("raced", &format!("r{i}"), ttl).await.unwrap()
        }));
    }
    let mut winners = 0;
    for r in racers {
        winners += usize::from(r.await.unwrap());
    }
    assert_eq!(winners, 1);
}

pub async fn cooldowns_and_budgets_survive_restart(h: &mut impl Harness) {
    let s = h.state().await;
    let now = Timestamp::now();
    let hour = SignedDuration::from_hours(1);
    assert_eq!(s.cooldown("k").await.unwrap(), None);
    s.set_cooldown("k", now + hour).await.unwrap();
    s.set_cooldown("past", now - hour).await.unwrap();
    assert_eq!(s.cooldown("k").await.unwrap(), Some(now + hour));
    assert_eq!(
        s.cooldown("past").await.unwrap(),
        None,
        "an ended cooldown is none"
    );

    s.record_run("ns/dep", now - hour * 2).await.unwrap();
    s.record_run("ns/dep", now - SignedDuration::from_mins(30))
        .await
        .unwrap();
    s.record_run("ns/dep", now).await.unwrap();
    assert_eq!(s.runs_since("ns/dep", now - hour).await.unwrap(), 2);
    assert_eq!(s.runs_since("ns/dep", now - hour * 3).await.unwrap(), 3);
    assert_eq!(s.runs_since("other", now - hour).await.unwrap(), 0);
    drop(s);

    h.restart().await;
    let s = h.state().await;
    assert_eq!(s.cooldown("k").await.unwrap(), Some(now + hour));
    assert_eq!(s.runs_since("ns/dep", now - hour).await.unwrap(), 2);
}
