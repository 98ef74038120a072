//! The suite against [`EmbeddedBus`] and [`FileStateStore`] in a temp dir, plus what only the
//! embedded store has (directory lock, torn log tail, bad store files).

use std::sync::Arc;
use std::time::Duration;

use firebreak_bus::{Bus, BusError, EmbeddedBus, EmbeddedOptions, FileStateStore, StateStore};
use tempfile::TempDir;

use crate::suite::{self, Harness, assert_quiet, event, next};

struct Embedded {
    dir: TempDir,
    opts: EmbeddedOptions,
    bus: Option<Arc<EmbeddedBus>>,
    state: Option<Arc<FileStateStore>>,
}

impl Embedded {
    fn new(ack_wait: Duration) -> Embedded {
        Embedded {
            dir: tempfile::tempdir().unwrap(),
            opts: EmbeddedOptions {
                ack_wait,
                ..EmbeddedOptions::default()
            },
            bus: None,
            state: None,
        }
    }
}

impl Harness for Embedded {
    async fn bus(&mut self) -> Arc<dyn Bus> {
        if self.bus.is_none() {
            let bus = EmbeddedBus::open_with(self.dir.path(), self.opts.clone()).expect("open bus");
            self.bus = Some(Arc::new(bus));
        }
        self.bus.clone().unwrap()
    }

    async fn state(&mut self) -> Arc<dyn StateStore> {
        if self.state.is_none() {
            let state = FileStateStore::open(self.dir.path()).expect("open state");
            self.state = Some(Arc::new(state));
        }
        self.state.clone().unwrap()
    }

    async fn restart(&mut self) {
        if let Some(bus) = self.bus.take() {
            bus.close().await;
        }
        if let Some(state) = self.state.take() {
            state.close().await;
        }
    }
}

const ACK_WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn publish_consume_ack() {
    suite::publish_consume_ack(&mut Embedded::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn dedupe_by_id() {
    suite::dedupe_by_id(&mut Embedded::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn unacked_is_redelivered_after_restart() {
    suite::unacked_is_redelivered_after_restart(&mut Embedded::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn unacked_is_redelivered_after_ack_wait_and_nak() {
    suite::unacked_is_redelivered_after_ack_wait_and_nak(&mut Embedded::new(Duration::from_secs(
        1,
    )))
    .await;
}

#[tokio::test]
async fn in_progress_extends_the_ack_wait() {
    suite::in_progress_extends_the_ack_wait(&mut Embedded::new(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_split_work() {
    suite::two_consumers_split_work(&mut Embedded::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn locks() {
    suite::locks(&mut Embedded::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn cooldowns_and_budgets_survive_restart() {
    suite::cooldowns_and_budgets_survive_restart(&mut Embedded::new(ACK_WAIT)).await;
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    assert!(matches!(
        EmbeddedBus::open(dir.path()),
        Err(BusError::Locked { .. })
    ));
    let state = FileStateStore::open(dir.path()).unwrap();
    assert!(matches!(
        FileStateStore::open(dir.path()),
        Err(BusError::Locked { .. })
    ));
    bus.close().await;
    state.close().await;
    EmbeddedBus::open(dir.path()).expect("reopen after close");
}

#[tokio::test]
async fn closed_bus_refuses_work_and_ends_streams() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let mut stream = bus.consume().await.unwrap();
    bus.close().await;
    assert!(!bus.ready());
    let err = bus.publish(vec![event("x")]).await.unwrap_err();
    assert_eq!(err.kind(), firebreak_bus::BusErrorKind::Unavailable);
    use futures::StreamExt;
    assert!(stream.next().await.is_none(), "stream ends on close");
}

#[tokio::test]
async fn a_torn_last_record_is_dropped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    bus.publish(vec![event("t1"), event("t2")]).await.unwrap();
    bus.close().await;
    // A crash in the middle of writing the next record.
    let log = dir.path().join("events.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(br#"{"op":"publish","at_ms":1,"event":{"id":"t3","sou"#);
    std::fs::write(&log, bytes).unwrap();

    let bus = EmbeddedBus::open(dir.path()).unwrap();
    assert_eq!(bus.pending(), 2);
    let mut stream = bus.consume().await.unwrap();
    let mut ids = vec![
        next(&mut stream).await.event.id.clone(),
        next(&mut stream).await.event.id.clone(),
    ];
    ids.sort();
    assert_eq!(ids, ["t1", "t2"]);
}

#[tokio::test]
async fn a_corrupt_store_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("events.log"),
        b"{\"op\":\"ack\",\"id\":\"a\"}\ngarbage\n{\"op\":\"ack\",\"id\":\"b\"}\n",
    )
    .unwrap();
    let err = EmbeddedBus::open(dir.path())
        .err()
        .expect("corrupt log refused");
    assert!(matches!(err, BusError::Corrupt { line: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("events.log"), "{err}");
}

#[tokio::test]
async fn the_log_is_compacted_and_keeps_only_unacked_events() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        compact_at_bytes: 4096,
        ..EmbeddedOptions::default()
    };
    let bus = EmbeddedBus::open_with(dir.path(), opts.clone()).unwrap();
    let mut stream = bus.consume().await.unwrap();
    bus.publish(vec![event("keep")]).await.unwrap();
    let keep = next(&mut stream).await;
    for i in 0..100 {
        bus.publish(vec![event(&format!("c{i}"))]).await.unwrap();
        next(&mut stream).await.ack().await.unwrap();
    }
    drop(keep);
    // Closing finishes a compaction still being written (they run beside the commits).
    bus.close().await;
    let size = std::fs::metadata(dir.path().join("events.log"))
        .unwrap()
        .len();
    assert!(
        size < 8192,
        "log compacted, but holds {size} bytes of records"
    );
    let bus = EmbeddedBus::open_with(dir.path(), opts.clone()).unwrap();
    assert_eq!(bus.pending(), 1);
    let mut stream = bus.consume().await.unwrap();
    let keep = next(&mut stream).await;
    assert_eq!(*keep.event, event("keep"));
    // Compacted again, the event read back from the log (its JSON not kept as the bus
    // wrote it) is written whole.
    for i in 0..100 {
        bus.publish(vec![event(&format!("d{i}"))]).await.unwrap();
        next(&mut stream).await.ack().await.unwrap();
    }
    drop((keep, stream));
    bus.close().await;
    let size = std::fs::metadata(dir.path().join("events.log"))
        .unwrap()
        .len();
    assert!(size < 8192, "log compacted again, but holds {size} bytes");
    let bus = EmbeddedBus::open_with(dir.path(), opts).unwrap();
    assert_eq!(bus.pending(), 1);
    let mut stream = bus.consume().await.unwrap();
    assert_eq!(*next(&mut stream).await.event, event("keep"));
}

#[tokio::test]
async fn publish_returns_only_once_the_event_is_in_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    for i in 0..20 {
        let id = format!("durable-{i}");
        bus.publish(vec![event(&id)]).await.unwrap();
        let log = std::fs::read_to_string(dir.path().join("events.log")).unwrap();
        assert!(
            log.contains(&format!("\"id\":\"{id}\"")),
            "{id} not on disk when publish returned"
        );
    }
}

/// Publishers and an acking consumer run concurrently while the log compacts every few KiB:
/// after a reopen exactly the unacked events are pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_under_concurrent_publish_and_ack_keeps_exactly_the_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        compact_at_bytes: 8192,
        ..EmbeddedOptions::default()
    };
    let bus = Arc::new(EmbeddedBus::open_with(dir.path(), opts.clone()).unwrap());
    let mut publishers = Vec::new();
    for p in 0..8 {
        let bus = Arc::clone(&bus);
        publishers.push(tokio::spawn(async move {
            for i in 0..100 {
                bus.publish(vec![event(&format!("p{p}-{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    // Ack everything except ids ending in 7, which stay in flight.
    let mut stream = bus.consume().await.unwrap();
    let mut kept = Vec::new();
    for _ in 0..800 {
        let d = next(&mut stream).await;
        if d.event.id.ends_with('7') {
            kept.push(d);
        } else {
            d.ack().await.unwrap();
        }
    }
    for p in publishers {
        p.await.unwrap();
    }
    // Nothing beyond the 800.
    suite::assert_quiet(&mut stream).await;
    let unacked: std::collections::BTreeSet<String> =
        kept.iter().map(|d| d.event.id.clone()).collect();
    drop(kept);
    bus.close().await;
    drop(bus);

    let bus = EmbeddedBus::open_with(dir.path(), opts).unwrap();
    assert_eq!(bus.pending(), unacked.len());
    let mut stream = bus.consume().await.unwrap();
    let mut again = std::collections::BTreeSet::new();
    for _ in 0..unacked.len() {
        again.insert(next(&mut stream).await.event.id.clone());
    }
    assert_eq!(again, unacked);
}

/// At most `max_in_flight` deliveries are out at once (JetStream's `max_ack_pending`): the
/// others wait, in order, until one is acked, nak'd or its ack wait runs out. Without the bound
/// a backlog became one waiting task per event in the dispatcher.
#[tokio::test]
async fn no_more_than_max_in_flight_deliveries_are_out_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        max_in_flight: 2,
        ack_wait: Duration::from_secs(2),
        ..EmbeddedOptions::default()
    };
    let bus = EmbeddedBus::open_with(dir.path(), opts).unwrap();
    let mut stream = bus.consume().await.unwrap();
    let events: Vec<_> = (1..=5).map(|i| event(&format!("e{i}"))).collect();
    bus.publish(events).await.unwrap();
    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    assert_eq!((&*first.event.id, &*second.event.id), ("e1", "e2"));
    // Two out: the third waits.
    assert_quiet(&mut stream).await;
    // An ack lets the next one out.
    first.ack().await.unwrap();
    let third = next(&mut stream).await;
    assert_eq!(third.event.id, "e3");
    // So does a nak (e2 comes back after its delay).
    second.nak(Duration::from_millis(100)).await.unwrap();
    let fourth = next(&mut stream).await;
    assert_eq!(fourth.event.id, "e4");
    assert_quiet(&mut stream).await;
    // And an ack wait running out: e3 and e4 left unsettled are out until then; after it
    // e5 and e2 (back from its nak) go out.
    drop((third, fourth));
    let mut again = std::collections::BTreeSet::new();
    for _ in 0..2 {
        again.insert(next(&mut stream).await.event.id.clone());
    }
    assert_eq!(again, ["e2".to_string(), "e5".to_string()].into());
}
