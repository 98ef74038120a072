//! Bus throughput: 16 concurrent publishers (one event per publish, as ingest does for a
//! single-alert notification), then one consumer that acks one event at a time. Prints one line
//! per bus. Run: `cargo bench -p firebreak-bus --features test-util --bench bus [-- N]`.
//! JetStream is measured only when a nats-server binary is available.

use std::sync::Arc;
use std::time::Instant;

use firebreak_bus::testutil::NatsServer;
use firebreak_bus::{Bus, EmbeddedBus, NatsBus, NatsOptions};
use firebreak_event::Event;
use futures::StreamExt;

const PUBLISHERS: usize = 16;

fn event(i: usize) -> Event {
    Event {
        id: format!("bench-{i}"),
        source: "alertmanager".into(),
        kind: "firing".into(),
        subject: "ModelErrorRateHigh".into(),
        time: jiff::Timestamp::now(),
        namespace: Some("team-a".into()),
        fingerprint: Some(format!("{i:016x}")),
        traceparent: None,
        data: serde_json::json!({
            "labels": {"alertname": "ModelErrorRateHigh", "namespace": "team-a",
                       "deployment": "fraud-model", "severity": "critical", "n": i.to_string()},
            "annotations": {"summary": "5xx ratio of fraud-model v1 is 22.33%",
                            "description": "More than 5% of requests to team-a/fraud-model failed."},
            "startsAt": "2026-11-26T22:03:25.277Z", "endsAt": "0001-01-01T00:00:00Z",
        }),
        written: Default::default(),
    }
}

async fn measure(name: &str, bus: Arc<dyn Bus>, n: usize) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let bus = Arc::clone(&bus);
        tasks.push(tokio::spawn(async move {
            for i in (p..n).step_by(PUBLISHERS) {
                bus.publish(vec![event(i)]).await.expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let publish = start.elapsed();

    let start = Instant::now();
    let mut stream = bus.consume().await.expect("consume");
    for _ in 0..n {
        let d = stream.next().await.expect("open").expect("delivery");
        d.ack().await.expect("ack");
    }
    let consume = start.elapsed();
    println!(
        "{name}: publish {:.0} events/s ({PUBLISHERS} publishers, {n} events), consume+ack {:.0} events/s",
        n as f64 / publish.as_secs_f64(),
        n as f64 / consume.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedBus::open(dir.path()).unwrap());
    measure("embedded", embedded.clone(), n).await;
    embedded.close().await;

    match NatsServer::start() {
        Ok(server) => {
            let bus = NatsBus::connect(&server.url(), NatsOptions::default())
                .await
                .unwrap();
            measure("jetstream", Arc::new(bus), n).await;
        }
        Err(e) => println!("jetstream: skipped ({e})"),
    }
}
