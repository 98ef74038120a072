//! The dispatcher on its own, on both buses' state stores: one run per message and per
//! incident, joins, resume with locks and cooldowns, abandoned interactive runs, parking.
//! Deliveries are made by hand (`firebreak_bus::testutil::delivery`), so the interleavings
//! that matter are played deterministically.

/// Runbook `name` (team `sre`, on `Slow` alerts, its concurrency key the `target` label) with
/// manifest lines `extra` and `script`, as `(file, text)` pairs for [`runbooks`].
macro_rules! keyed_runbook {
    ($name:literal, $extra:literal, $script:literal) => {
        &[
            (
                concat!($name, ".yaml"),
                concat!(
                    "name: ",
                    $name,
                    "\nteam: sre\ndescription: d\nnamespaces: [shop]\n",
                    "triggers:\n  - source: alertmanager\n    match: ['alertname=\"Slow\"']\n",
                    "params:\n  target: { from: label, key: target, type: string, required: true }\n",
                    "concurrency: \"{{params.target}}\"\n",
                    $extra
                ),
            ),
            (concat!($name, ".rhai"), $script),
        ]
    };
}

mod dispatch;
mod leases;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use firebreak_audit::{Journal, Record, RecordBody};
use firebreak_bus::testutil::{NatsServer, Settled, delivery};
use firebreak_bus::{
    Bus, EmbeddedBus, EmbeddedOptions, FileStateStore, NatsBus, NatsOptions, RunLeases, StateStore,
};
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

/// The state store of replica `replica` of `nats`, with the default lease.
pub async fn nats_store(nats: &NatsServer, replica: &str) -> firebreak_bus::NatsStateStore {
    let bus = NatsBus::connect(
        &nats.url(),
        NatsOptions {
            replica: Some(replica.into()),
            ..NatsOptions::default()
        },
    )
    .await
    .expect("connect");
    bus.state_store().await.expect("state store")
}

/// Puts a line of run `run_id` of team `team` on `nats`' audit stream, as the mirror of the
/// replica running it does.
pub async fn publish_run_line(nats: &NatsServer, team: &str, run_id: &str) {
    let bus = NatsBus::connect(&nats.url(), NatsOptions::default())
        .await
        .expect("connect");
    firebreak_bus::testutil::publish_audit_line(
        &bus,
        firebreak_bus::nats::audit_run_subject(team, run_id),
        run_id.to_owned(),
        bytes::Bytes::from_static(b"{}\n"),
    )
    .await;
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

    /// A fresh embedded engine whose state store calls the test can hold (see [`Gated`]).
    pub async fn gated(files: &[(&str, &str)]) -> (H, Arc<Gated>) {
        H::gated_slots(files, RunnerConfig::default().max_concurrent_runs).await
    }

    /// [`H::gated`], running at most `slots` runs at once.
    pub async fn gated_slots(files: &[(&str, &str)], slots: usize) -> (H, Arc<Gated>) {
        let dir = tempfile::tempdir().unwrap();
        runbooks(dir.path(), files);
        let mut gated = None;
        let wrap = |state| {
            let g = Gated::new(state);
            gated = Some(g.clone());
            g as Arc<dyn StateStore>
        };
        let h = H::open_with(dir, None, wrap, None, slots, None).await;
        (h, gated.expect("the store was wrapped"))
    }

    /// The engine on `dir` (a restart: the journal and state as left; in-memory locks gone).
    pub async fn open(dir: TempDir, nats: Option<Arc<NatsServer>>) -> H {
        let slots = RunnerConfig::default().max_concurrent_runs;
        H::open_with(dir, nats, |state| state, None, slots, None).await
    }

    /// A fresh engine with `files` as its runbooks on a bus whose deliveries are redelivered
    /// after `ack_wait`, running at most `slots` runs at once.
    pub async fn with_ack_wait(
        backend: Backend,
        files: &[(&str, &str)],
        ack_wait: Duration,
        slots: usize,
    ) -> H {
        let dir = tempfile::tempdir().unwrap();
        runbooks(dir.path(), files);
        let nats = match backend {
            Backend::Nats => Some(Arc::new(NatsServer::start().expect("nats-server -js"))),
            Backend::Embedded => None,
        };
        H::open_with(dir, nats, |state| state, None, slots, Some(ack_wait)).await
    }

    /// An embedded engine with `files` as its runbooks whose runs hold leases in `leases`,
    /// running at most `slots` runs at once.
    pub async fn leased(files: &[(&str, &str)], leases: Arc<dyn RunLeases>, slots: usize) -> H {
        let dir = tempfile::tempdir().unwrap();
        runbooks(dir.path(), files);
        H::open_with(dir, None, |state| state, Some(leases), slots, None).await
    }

    /// An embedded engine with `files` as its runbooks, as replica `replica` of `nats`: its
    /// locks and leases in that server's KV store (the bus stays embedded: the test delivers).
    pub async fn replica(files: &[(&str, &str)], nats: &NatsServer, replica: &str) -> H {
        let store = Arc::new(nats_store(nats, replica).await);
        let dir = tempfile::tempdir().unwrap();
        runbooks(dir.path(), files);
        let state: Arc<dyn StateStore> = store.clone();
        H::open_with(dir, None, |_| state, Some(store), 4, None).await
    }

    /// [`H::open`] on `dir` again, with leases in `leases`, as a replica restarted on its data
    /// dir.
    pub async fn reopen_leased(dir: TempDir, leases: Arc<dyn RunLeases>, slots: usize) -> H {
        H::open_with(dir, None, |state| state, Some(leases), slots, None).await
    }

    async fn open_with(
        dir: TempDir,
        nats: Option<Arc<NatsServer>>,
        wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>,
        leases: Option<Arc<dyn RunLeases>>,
        slots: usize,
        ack_wait: Option<Duration>,
    ) -> H {
        let journal = Arc::new(Journal::open(dir.path().join("audit.jsonl")).unwrap());
        let (bus, state): (Arc<dyn Bus>, Arc<dyn StateStore>) = match &nats {
            Some(server) => {
                let mut options = NatsOptions::default();
                options.ack_wait = ack_wait.unwrap_or(options.ack_wait);
                let bus = NatsBus::connect(&server.url(), options)
                    .await
                    .expect("connect");
                let state = bus.state_store().await.expect("state store");
                (Arc::new(bus), Arc::new(state))
            }
            None => (
                Arc::new(
                    EmbeddedBus::open_with(
                        dir.path().join("bus"),
                        EmbeddedOptions {
                            ack_wait: ack_wait.unwrap_or(EmbeddedOptions::default().ack_wait),
                            ..EmbeddedOptions::default()
                        },
                    )
                    .unwrap(),
                ),
                Arc::new(FileStateStore::open(dir.path().join("state")).unwrap()),
            ),
        };
        let state = wrap(state);
        let config = RunnerConfig {
            max_concurrent_runs: slots,
            ..RunnerConfig::default()
        };
        let runner = Arc::new(Runner::new(&Registry::new(), journal.clone(), config));
        let runbooks = Arc::new(
            Runbooks::load(&dir.path().join("runbooks"), None, Vec::new()).expect("runbooks"),
        );
        let mut dispatcher = Dispatcher::new(
            bus.clone(),
            state.clone(),
            runner.clone(),
            journal.clone(),
            runbooks,
            None,
            CancellationToken::new(),
        );
        if let Some(leases) = leases {
            dispatcher = dispatcher.with_leases(leases);
        }
        let dispatcher = Arc::new(dispatcher);
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

    /// Publishes `events` on the bus (for a test that runs the dispatcher's consumer).
    pub async fn publish(&self, events: &[Arc<Event>]) {
        let events = events.iter().map(|e| Event::clone(e)).collect();
        self.bus.publish(events).await.expect("published");
    }

    /// The bus's deliveries (for a test that plays the dispatcher's consumer loop).
    pub async fn consume(
        &self,
    ) -> futures::stream::BoxStream<'static, Result<firebreak_bus::Delivery, firebreak_bus::BusError>>
    {
        self.bus.consume().await.expect("consuming")
    }

    /// The ids of the runs the dispatcher tracks now.
    pub fn active_run_ids(&self) -> Vec<String> {
        self.dispatcher
            .active_runs()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
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
        written: Default::default(),
    })
}

/// A point in a state-store call the test holds: the call waits there until released, and
/// then goes on or fails as an unreachable store's would.
pub struct Gate {
    entered: tokio::sync::Semaphore,
    release: tokio::sync::Semaphore,
    armed: std::sync::atomic::AtomicBool,
    failing: std::sync::atomic::AtomicBool,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            entered: tokio::sync::Semaphore::new(0),
            release: tokio::sync::Semaphore::new(0),
            armed: std::sync::atomic::AtomicBool::new(false),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Gate {
    /// The next call through the gate waits until [`Gate::open`].
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until a call is held at the gate.
    pub async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.entered.acquire())
            .await
            .expect("a call reaches the gate within 10 s")
            .unwrap()
            .forget();
    }

    /// Lets the held call go on.
    pub fn open(&self) {
        self.release.add_permits(1);
    }

    /// Lets the held call go on to fail, as one to a store that went away does (NATS killed
    /// while the call waited for its answer).
    pub fn fail(&self) {
        self.failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.release.add_permits(1);
    }

    /// Holds the call if the gate is armed; `Err` if it was let go to fail.
    async fn pass(&self) -> Result<(), firebreak_bus::BusError> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.add_permits(1);
            self.release.acquire().await.unwrap().forget();
            if self
                .failing
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(firebreak_bus::BusError::NotConnected {
                    url: "nats://gone.invalid".into(),
                });
            }
        }
        Ok(())
    }
}

/// A state store whose `try_lock`, `unlock`, `cooldown`, `lock_holder` and `record_run` calls
/// can be held at a [`Gate`], to play the interleavings around a run's start and end
/// deterministically.
pub struct Gated {
    pub inner: Arc<dyn StateStore>,
    pub try_lock: Gate,
    pub unlock: Gate,
    pub cooldown: Gate,
    /// Holds a `lock_holder` call after the store answered it (the answer is kept).
    pub lock_holder: Gate,
    pub record_run: Gate,
    /// `unlock` calls answered so far.
    pub unlocked: std::sync::atomic::AtomicUsize,
    /// `(key, ttl)` of every lock taken.
    pub locked: std::sync::Mutex<Vec<(String, Duration)>>,
    /// `(key, when, ttl)` of every lock refreshed.
    pub refreshed: std::sync::Mutex<Vec<(String, std::time::Instant, Duration)>>,
}

impl Gated {
    pub fn new(inner: Arc<dyn StateStore>) -> Arc<Gated> {
        Arc::new(Gated {
            inner,
            try_lock: Gate::default(),
            unlock: Gate::default(),
            cooldown: Gate::default(),
            lock_holder: Gate::default(),
            record_run: Gate::default(),
            unlocked: Default::default(),
            locked: std::sync::Mutex::default(),
            refreshed: std::sync::Mutex::default(),
        })
    }
}

type Fut<'a, T> = futures::future::BoxFuture<'a, Result<T, firebreak_bus::BusError>>;

impl StateStore for Gated {
    fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Fut<'_, bool> {
        self.locked.lock().unwrap().push((key.to_owned(), ttl));
        let (key, owner) = (key.to_owned(), owner.to_owned());
        Box::pin(async move {
            self.try_lock.pass().await?;
            self.inner.try_lock(&key, &owner, ttl).await
        })
    }
    fn try_lock_run(&self, key: &str, run_id: &str, team: &str, ttl: Duration) -> Fut<'_, bool> {
        self.locked.lock().unwrap().push((key.to_owned(), ttl));
        let (key, run_id, team) = (key.to_owned(), run_id.to_owned(), team.to_owned());
        Box::pin(async move {
            self.try_lock.pass().await?;
            self.inner.try_lock_run(&key, &run_id, &team, ttl).await
        })
    }
    fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Fut<'_, bool> {
        let now = std::time::Instant::now();
        self.refreshed
            .lock()
            .unwrap()
            .push((key.to_owned(), now, ttl));
        self.inner.refresh_lock(key, owner, ttl)
    }
    fn unlock(&self, key: &str, owner: &str) -> Fut<'_, bool> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        Box::pin(async move {
            self.unlock.pass().await?;
            let unlocked = self.inner.unlock(&key, &owner).await;
            self.unlocked
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            unlocked
        })
    }
    fn lock_holder(&self, key: &str) -> Fut<'_, Option<String>> {
        let key = key.to_owned();
        Box::pin(async move {
            let holder = self.inner.lock_holder(&key).await?;
            self.lock_holder.pass().await?;
            Ok(holder)
        })
    }
    fn set_cooldown(&self, key: &str, until: jiff::Timestamp) -> Fut<'_, ()> {
        self.inner.set_cooldown(key, until)
    }
    fn cooldown(&self, key: &str) -> Fut<'_, Option<jiff::Timestamp>> {
        let key = key.to_owned();
        Box::pin(async move {
            self.cooldown.pass().await?;
            self.inner.cooldown(&key).await
        })
    }
    fn record_run(&self, key: &str, at: jiff::Timestamp) -> Fut<'_, ()> {
        let key = key.to_owned();
        Box::pin(async move {
            self.record_run.pass().await?;
            self.inner.record_run(&key, at).await
        })
    }
    fn runs_since(&self, key: &str, since: jiff::Timestamp) -> Fut<'_, u32> {
        self.inner.runs_since(key, since)
    }
}
