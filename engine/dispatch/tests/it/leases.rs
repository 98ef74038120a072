//! Run leases, with a lease store of the test's own: what the renewal loop does while a
//! takeover is slow.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebreak_bus::{BusError, Decision, Orphan, RunLeases};
use futures::future::BoxFuture;
use serde_json::json;

use crate::{H, alert, started};

/// Leases that renew at once, and a left run whose trail takes `read` to read back (an audit
/// stream slow to answer).
struct SlowStream {
    lease: Duration,
    read: Duration,
    /// `(run id, when)` of every renewal.
    renewals: Mutex<Vec<(String, Instant)>>,
}

impl RunLeases for SlowStream {
    fn replica(&self) -> &str {
        "here"
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn renew(&self, _key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        self.renewals
            .lock()
            .unwrap()
            .push((owner.to_owned(), Instant::now()));
        Box::pin(async { Ok(true) })
    }

    fn release(&self, _key: &str, _owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async { Ok(true) })
    }

    fn orphans(&self) -> BoxFuture<'_, Result<Vec<Orphan>, BusError>> {
        Box::pin(async {
            Ok(vec![Orphan {
                key: "hold/left".into(),
                run_id: "left-run".into(),
                replica: "gone".into(),
                lease_ended: jiff::Timestamp::now(),
            }])
        })
    }

    fn take_over(&self, _orphan: &Orphan, _ttl: Duration) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async { Ok(false) })
    }

    fn run_lines(
        &self,
        _run_id: &str,
        _team: Option<&str>,
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

/// Taking over another replica's runs (reading each one's trail back from the audit stream)
/// can take long when the stream is large or busy. Meanwhile this replica's own runs must keep
/// their leases: a renewal that waited for the takeovers would let them run out, and other
/// replicas would take over runs that are alive here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_leases_are_renewed_while_a_takeover_waits_on_the_stream() {
    let lease = Duration::from_millis(600);
    let leases = Arc::new(SlowStream {
        lease,
        read: Duration::from_secs(5),
        renewals: Mutex::new(Vec::new()),
    });
    let h = H::leased(HOLD, leases.clone()).await;
    let event = alert("ev-1", "firing", "00000000000000f1", json!({}));
    h.deliver(&event, jiff::Timestamp::now()).await;
    let records = h
        .wait("the run to start", |r| !started(r, "hold").is_empty())
        .await;
    let run_id = started(&records, "hold")[0].clone();
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
        .filter(|(owner, _)| *owner == run_id)
        .map(|(_, at)| at.saturating_duration_since(from))
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
