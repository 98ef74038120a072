//! The dispatcher on its own, on both buses' state stores: one run per message and per
//! incident, joins, resume with locks and cooldowns, abandoned interactive runs, parking.
//! Deliveries are made by hand (`firebreak_bus::testutil::delivery`), so the interleavings
//! that matter are played deterministically.

mod dispatch;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use firebreak_audit::{Journal, Record, RecordBody};
use firebreak_bus::testutil::{NatsServer, Settled, delivery};
use firebreak_bus::{Bus, EmbeddedBus, FileStateStore, NatsBus, NatsOptions, StateStore};
use firebreak_connector::Registry;
use firebreak_dispatch::{Dispatcher, Runbooks};
use firebreak_event::Event;
use firebreak_runtime::{CancellationToken, Runner, RunnerConfig};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Which backend holds locks, cooldowns and budgets.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Embedded,
    Nats,
}

/// A dispatcher over a journal, a runner and a state store, in a temp dir.
pub struct H {
    pub dir: TempDir,
    pub journal: Arc<Journal>,
    pub dispatcher: Arc<Dispatcher>,
    pub state: Arc<dyn StateStore>,
    bus: Arc<dyn Bus>,
    runner: Arc<Runner>,
    _nats: Option<Arc<NatsServer>>,
}

/// Writes runbooks `(file, text)` into `dir/runbooks`.
pub fn runbooks(dir: &Path, files: &[(&str, &str)]) {
    let rb = dir.join("runbooks");
    std::fs::create_dir_all(&rb).unwrap();
    for (name, text) in files {
        std::fs::write(rb.join(name), text).unwrap();
    }
}

impl H {
    /// A fresh engine in a new temp dir with `files` as its runbooks.
    pub async fn new(backend: Backend, files: &[(&str, &str)]) -> H {
        let dir = tempfile::tempdir().unwrap();
        runbooks(dir.path(), files);
        let nats = match backend {
            Backend::Nats => Some(Arc::new(NatsServer::start().expect("nats-server -js"))),
            Backend::Embedded => None,
        };
        H::open(dir, nats).await
    }

    /// The engine on `dir` (a restart: the journal and state as left; in-memory locks gone).
    pub async fn open(dir: TempDir, nats: Option<Arc<NatsServer>>) -> H {
        let journal = Arc::new(Journal::open(dir.path().join("audit.jsonl")).unwrap());
        let (bus, state): (Arc<dyn Bus>, Arc<dyn StateStore>) = match &nats {
            Some(server) => {
                let bus = NatsBus::connect(&server.url(), NatsOptions::default())
                    .await
                    .expect("connect");
                let state = bus.state_store().await.expect("state store");
                (Arc::new(bus), Arc::new(state))
            }
            None => (
                Arc::new(EmbeddedBus::open(dir.path().join("bus")).unwrap()),
                Arc::new(FileStateStore::open(dir.path().join("state")).unwrap()),
            ),
        };
        let runner = Arc::new(Runner::new(
            &Registry::new(),
            journal.clone(),
            RunnerConfig::default(),
        ));
        let runbooks = Arc::new(
            Runbooks::load(&dir.path().join("runbooks"), None, Vec::new()).expect("runbooks"),
        );
        let dispatcher = Arc::new(Dispatcher::new(
            bus.clone(),
            state.clone(),
            runner.clone(),
            journal.clone(),
            runbooks,
            None,
            CancellationToken::new(),
        ));
        H {
            dir,
            journal,
            dispatcher,
            state,
            bus,
            runner,
            _nats: nats,
        }
    }

    /// Stops as `serve` does on SIGTERM: runs stop between steps, unfinished; returns the dir
    /// (and the NATS server) for [`H::open`].
    pub async fn stop(self) -> (TempDir, Option<Arc<NatsServer>>) {
        self.runner.suspend();
        self.dispatcher.tasks.close();
        tokio::time::timeout(Duration::from_secs(20), self.dispatcher.tasks.wait())
            .await
            .expect("runs stop within 20 s");
        self.bus.close().await;
        let H { dir, _nats, .. } = self;
        (dir, _nats)
    }

    /// Handles one delivery of `event` published at `published`; how it was settled.
    pub async fn deliver(&self, event: &Arc<Event>, published: jiff::Timestamp) -> Vec<Settled> {
        let (d, settled) = delivery(event.clone(), 1, published);
        self.dispatcher.clone().handle(d).await;
        settled.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds for the journal's records.
    pub async fn wait(&self, what: &str, pred: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        for _ in 0..2000 {
            let records = all_records(&self.journal);
            if pred(&records) {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for {what}; journal:\n{}",
            summary(&all_records(&self.journal))
        );
    }
}

pub fn all_records(journal: &Journal) -> Vec<Record> {
    journal.iter_all().unwrap().map(|r| r.unwrap()).collect()
}

/// `type runbook run_id` per record, for failure messages.
pub fn summary(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| format!("{} {} {}\n", r.body.kind(), r.runbook, r.run_id))
        .collect()
}

/// Run ids with a `run_started` record, for `runbook`.
pub fn started(records: &[Record], runbook: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.runbook == runbook && matches!(r.body, RecordBody::RunStarted { .. }))
        .map(|r| r.run_id.clone())
        .collect()
}

/// Runs of `runbook` that finished.
pub fn finished(records: &[Record], runbook: &str) -> usize {
    records
        .iter()
        .filter(|r| r.runbook == runbook && matches!(r.body, RecordBody::RunFinished { .. }))
        .count()
}

/// An Alertmanager alert event (as decoded from a webhook).
pub fn alert(id: &str, status: &str, fingerprint: &str, labels: Value) -> Arc<Event> {
    let mut labels = labels;
    labels["alertname"] = json!("Slow");
    labels["namespace"] = json!("shop");
    Arc::new(Event {
        id: id.into(),
        source: "alertmanager".into(),
        kind: status.into(),
        subject: "Slow".into(),
        time: jiff::Timestamp::now(),
        namespace: Some("shop".into()),
        fingerprint: Some(fingerprint.into()),
        traceparent: None,
        data: json!({"status": status, "labels": labels, "annotations": {}}),
    })
}
