//! The simulator as a value: [`SimConfig`] → [`Sim`] (shared state + router) → [`SimHandle`]
//! (a running TCP server on 127.0.0.1).
//!
//! Start at [`Sim::start`]. The state lives in one `std::sync::Mutex` ([`Inner`]) that no code
//! holds across an `.await`; every API write and every tick ends by running the controllers
//! under that lock, so a client never observes a half-reconciled write.
//!
//! Shutdown: [`SimHandle::shutdown`] cancels one token; the HTTP server stops accepting and
//! drains, every watch stream ends at its next event or tick, and the ticker stops. The state
//! file (if configured) is written after that.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::hook::{self, ControllerConfig};
use crate::status::ApiError;
use crate::store::Store;

/// Why the simulator could not start or load something.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse YAML in {origin}: {message}")]
    Yaml { origin: String, message: String },
    #[error("manifest {index} in {origin} has no known apiVersion/kind ({api_version} {kind})")]
    UnknownKind {
        origin: String,
        index: usize,
        api_version: String,
        kind: String,
    },
    #[error("manifest {what} was refused")]
    Refused {
        what: String,
        #[source]
        source: ApiError,
    },
    #[error("cannot bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is not a kubesim state")]
    BadState { path: PathBuf, message: String },
}

/// How to start a simulator. `Default` is a fresh cluster on a free loopback port.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The `gitVersion` `/version` reports; it also picks the dispatched kubectl.
    pub version: String,
    /// Where to listen; port 0 picks a free port. Keep it on loopback.
    pub bind: SocketAddr,
    /// Objects created at start (after the state file, if any), in order.
    pub manifests: Vec<Value>,
    /// How often the controllers run besides after every write.
    pub tick: Duration,
    /// How many changes watches can resume from; older resourceVersions get `410 Expired`.
    pub watch_window: usize,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// The controllers' knobs.
    pub controllers: ControllerConfig,
    /// Loaded at start when it exists, saved by [`SimHandle::shutdown`].
    pub state_file: Option<PathBuf>,
    /// Install the bundled CRDs at start (Gateway API HTTPRoute, Istio VirtualService, from
    /// `kubesim/crds/`), as on a cluster with Gateway API and Istio; `false` (`--no-crds`)
    /// starts without them, so those kinds are served only once their CRDs are applied.
    pub bundled_crds: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            version: "v1.32.4".to_string(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            manifests: Vec::new(),
            tick: Duration::from_millis(50),
            watch_window: 10_000,
            bookmark_interval: Duration::from_secs(10),
            controllers: ControllerConfig::default(),
            state_file: None,
            bundled_crds: true,
        }
    }
}

/// Parses YAML (one or more documents, `kind: List` flattened) into objects.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Value>, SimError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| SimError::Yaml {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            out.extend(
                doc.get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
        } else {
            out.push(doc);
        }
    }
    Ok(out)
}

impl SimConfig {
    /// Adds every `*.yaml`, `*.yml` and `*.json` manifest under `dir` (sorted by path) to
    /// [`SimConfig::manifests`].
    pub fn load_dir(mut self, dir: &Path) -> Result<Self, SimError> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|source| SimError::Read {
                path: d.clone(),
                source,
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|source| SimError::Read {
                        path: d.clone(),
                        source,
                    })?
                    .path();
                if path.is_dir() {
                    stack.push(path);
                } else if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                ) {
                    files.push(path);
                }
            }
        }
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| SimError::Read {
                path: path.clone(),
                source,
            })?;
            self.manifests
                .extend(parse_manifests(&text, &path.display().to_string())?);
        }
        Ok(self)
    }

    /// Adds the objects of a YAML text to [`SimConfig::manifests`].
    pub fn load_yaml(mut self, text: &str) -> Result<Self, SimError> {
        self.manifests.extend(parse_manifests(text, "<yaml>")?);
        Ok(self)
    }
}

/// One request as the simulator saw it (for tests that assert what a client sent).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub accept: String,
    pub kubectl_command: String,
    pub code: u16,
    /// When the answer was ready (a write: committed).
    pub at: jiff::Timestamp,
}

/// A fault for clients' crash tests: the next `count` requests with this method whose path
/// contains `path` are carried out (a write is committed) and their answer is held back for
/// `delay`, so a test can kill the client between the server's commit and the client hearing
/// of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerDelay {
    pub method: String,
    pub path: String,
    pub delay: std::time::Duration,
    pub count: u32,
}

/// Everything behind the lock.
pub(crate) struct Inner {
    pub store: Store,
    pub controllers: ControllerConfig,
    pub version: String,
    pub audit: VecDeque<AuditEntry>,
    /// Answers to hold back (see [`AnswerDelay`]).
    pub answer_delays: Vec<AnswerDelay>,
    /// Simulated request traffic and its metrics (`crate::traffic`).
    pub traffic: crate::traffic::Traffic,
    /// Cancelled (and replaced) by `/_sim/compact`, ending every open watch so clients must
    /// resume from a resourceVersion that is now too old.
    pub watch_reset: CancellationToken,
    /// The ServiceAccount tokens issued (`authn`).
    pub tokens: crate::authn::Tokens,
}

impl Inner {
    /// Runs the controllers once. Traffic is counted up to now first, with the routes and
    /// pods as they were, so what the controllers change applies from this moment on.
    pub fn reconcile(&mut self) {
        self.traffic.advance(&self.store, std::time::Instant::now());
        hook::reconcile(&mut self.store, &self.controllers);
    }

    /// One controller pass (traffic counted up to now first, as in [`Inner::reconcile`]); the
    /// writes it made.
    pub fn reconcile_pass(&mut self) -> usize {
        self.traffic.advance(&self.store, std::time::Instant::now());
        hook::reconcile_pass(&mut self.store, &self.controllers)
    }

    /// The traffic metrics up to now (`GET /metrics`).
    pub fn metrics(&mut self) -> String {
        self.traffic.advance(&self.store, std::time::Instant::now());
        self.traffic.render()
    }
}

pub(crate) struct Shared {
    pub inner: Mutex<Inner>,
    /// Wakes the ticker after an API write.
    pub wake: tokio::sync::Notify,
    /// Whether a ticker runs the controllers (else API writes run them inline).
    pub ticker_running: std::sync::atomic::AtomicBool,
    pub cancel: CancellationToken,
    pub bookmark_interval: Duration,
    pub tick: Duration,
    pub state_file: Option<PathBuf>,
}

/// A simulator's state: cheap to clone, shared by the router, the ticker and the handle.
#[derive(Clone)]
pub struct Sim {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

/// Creates, or updates in place, one object given as a manifest (no HTTP involved).
fn apply_one(store: &mut Store, obj: Value) -> Result<Value, ApiError> {
    let av = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let rt = store.types().by_kind(av, kind).ok_or_else(|| {
        ApiError::bad_request(format!("no resource for apiVersion {av:?} kind {kind:?}"))
    })?;
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let ns = if rt.namespaced {
        Some(ns.unwrap_or_else(|| "default".into()))
    } else {
        None
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match store.get_resource(rt, ns.as_deref(), &name) {
        Ok(live) if !name.is_empty() => {
            let mut merged = crate::patch::apply_merge(&live, &obj);
            if !merged.get("metadata").is_some_and(Value::is_object) {
                return Err(ApiError::bad_request("metadata must be an object"));
            }
            merged["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
            let with_status = obj.get("status").is_some() && rt.has_sub("status");
            let updated = store.update_resource(rt, ns.as_deref(), &name, merged.clone(), false)?;
            if with_status {
                let mut st = updated;
                st["status"] = merged["status"].clone();
                return store.update_resource_status(rt, ns.as_deref(), &name, st, false);
            }
            Ok(updated)
        }
        _ => {
            let status = obj.get("status").cloned();
            let created = store.create_resource(rt, ns.as_deref(), obj, false)?;
            // Manifests may carry status (nodes, services); keep it like a restore would.
            match status {
                Some(st)
                    if rt.has_sub("status")
                        && rt.kind != "Deployment"
                        && rt.kind != "ReplicaSet" =>
                {
                    let mut with = created;
                    with["status"] = st;
                    let name = with["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    store.update_resource_status(rt, ns.as_deref(), &name, with, false)
                }
                _ => Ok(created),
            }
        }
    }
}

impl Sim {
    /// Builds a simulator's state: default namespaces and node, the bundled CRDs (unless
    /// `bundled_crds` is off), then the state file (if it exists), then the manifests, then one
    /// controller pass. Starts no task.
    pub fn new(cfg: SimConfig) -> Result<Sim, SimError> {
        let mut store = Store::new(cfg.watch_window);
        if cfg.bundled_crds {
            for crd in crate::crd::bundled() {
                let what = format!("bundled CRD {}", crd["metadata"]["name"]);
                apply_one(&mut store, crd).map_err(|source| SimError::Refused { what, source })?;
            }
        }
        if let Some(path) = cfg.state_file.as_ref().filter(|p| p.exists()) {
            load_state(&mut store, path)?;
        }
        for (i, obj) in cfg.manifests.iter().enumerate() {
            let what = format!(
                "#{i} ({} {})",
                obj.get("kind").and_then(Value::as_str).unwrap_or("?"),
                obj.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            );
            apply_one(&mut store, obj.clone())
                .map_err(|source| SimError::Refused { what, source })?;
        }
        let mut inner = Inner {
            store,
            controllers: cfg.controllers,
            version: cfg.version,
            audit: VecDeque::new(),
            answer_delays: Vec::new(),
            traffic: crate::traffic::Traffic::default(),
            watch_reset: CancellationToken::new(),
            tokens: crate::authn::Tokens::default(),
        };
        inner.reconcile();
        Ok(Sim {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                wake: tokio::sync::Notify::new(),
                ticker_running: std::sync::atomic::AtomicBool::new(false),
                cancel: CancellationToken::new(),
                bookmark_interval: cfg.bookmark_interval,
                tick: cfg.tick,
                state_file: cfg.state_file,
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough JSON behind; keep serving.
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The axum router serving the Kubernetes API and `/_sim/` admin endpoints.
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.clone())
    }

    /// Starts a simulator on `cfg.bind` (127.0.0.1:0 by default) with its controller ticker.
    pub async fn start(cfg: SimConfig) -> Result<SimHandle, SimError> {
        let bind = cfg.bind;
        let sim = Sim::new(cfg)?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| SimError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr: bind, source })?;
        let cancel = sim.shared.cancel.clone();
        let app = sim.router();
        let server = tokio::spawn(async move {
            let stop = cancel.clone();
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(%error, "kubesim server failed");
            }
        });
        let ticker = sim.spawn_ticker();
        tracing::info!(%addr, "kubesim listening");
        Ok(SimHandle {
            sim,
            addr,
            server: Some(server),
            ticker: Some(ticker),
        })
    }

    /// Runs the controllers every `tick`, and soon after API writes, until shutdown (for
    /// in-process use of [`Sim::router`]; [`Sim::start`] spawns it).
    ///
    /// Pacing: a burst of writes is coalesced into one reconcile; each of its passes holds the
    /// lock alone and is followed by a pause as long as it took; after a reconcile whose passes
    /// took `t` the next one waits at least `2t` (timed ticks `max(tick, 3t)`). So an API
    /// request waits for one pass at most, and gets the lock for most of the time however
    /// large the cluster grows.
    pub fn spawn_ticker(&self) -> tokio::task::JoinHandle<()> {
        use std::sync::atomic::Ordering;
        let sim = self.clone();
        sim.shared.ticker_running.store(true, Ordering::SeqCst);
        tokio::spawn(async move {
            let tick = sim.shared.tick.max(Duration::from_millis(1));
            let mut wait = tick;
            let mut earliest = tokio::time::Instant::now();
            loop {
                let woken = tokio::select! {
                    _ = sim.shared.cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => false,
                    _ = sim.shared.wake.notified() => true,
                };
                if woken {
                    let settle = tokio::time::Instant::now() + Duration::from_millis(2);
                    tokio::time::sleep_until(settle.max(earliest)).await;
                }
                // Until the controllers settle, one pass per hold of the lock, each followed
                // by a pause as long as it took: a request arriving meanwhile waits for one
                // pass at most, not for all of them.
                let mut took = Duration::ZERO;
                let max_passes = sim.lock().controllers.max_passes.max(1);
                for _ in 0..max_passes {
                    let started = tokio::time::Instant::now();
                    let wrote = sim.lock().reconcile_pass();
                    let pass = started.elapsed();
                    took += pass;
                    if wrote == 0 {
                        break;
                    }
                    tokio::time::sleep(pass).await;
                }
                tracing::trace!(?took, "reconcile");
                earliest = tokio::time::Instant::now() + took * 2;
                wait = tick.max(took * 3);
            }
            sim.shared.ticker_running.store(false, Ordering::SeqCst);
        })
    }

    /// Runs the controllers now.
    pub fn reconcile(&self) {
        self.lock().reconcile();
    }

    /// Creates or updates every object in a YAML text (like `kubectl apply`, without HTTP);
    /// returns the stored objects. Stops at the first refused object.
    pub fn apply_yaml(&self, text: &str) -> Result<Vec<Value>, SimError> {
        let objs = parse_manifests(text, "<yaml>")?;
        let mut inner = self.lock();
        let mut out = Vec::new();
        for (i, obj) in objs.into_iter().enumerate() {
            let what = format!(
                "#{i} ({})",
                obj.get("kind").and_then(Value::as_str).unwrap_or("?")
            );
            out.push(
                apply_one(&mut inner.store, obj)
                    .map_err(|source| SimError::Refused { what, source })?,
            );
        }
        // Once for the whole text: the controllers see every object at once, as after a
        // `kubectl apply -f` of many files (and a large manifest costs one pass, not one each).
        inner.reconcile();
        Ok(out)
    }

    /// One object by apiVersion, kind, namespace and name.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let inner = self.lock();
        let rt = inner.store.types().by_kind(api_version, kind)?;
        inner.store.get_resource(rt, namespace, name).ok()
    }

    /// Changes the controllers' knobs (e.g. `pod_ready_delay`, `image_faults`).
    pub fn configure(&self, f: impl FnOnce(&mut ControllerConfig)) {
        let mut inner = self.lock();
        f(&mut inner.controllers);
        inner.reconcile();
    }

    /// Moves the simulated clock forward and runs the controllers.
    pub fn advance_clock(&self, by: Duration) {
        let mut inner = self.lock();
        inner
            .store
            .clock
            .advance(jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::MAX));
        inner.reconcile();
    }

    /// The current simulated time.
    pub fn now(&self) -> jiff::Timestamp {
        self.lock().store.clock.now()
    }

    /// Holds back the answers of the next `count` requests with `method` whose path contains
    /// `path` (see [`AnswerDelay`]; `POST /_sim/delay-answers` does the same over HTTP).
    pub fn delay_answers(&self, method: &str, path: &str, delay: std::time::Duration, count: u32) {
        self.lock().answer_delays.push(AnswerDelay {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            delay,
            count,
        });
    }

    /// The requests served so far, oldest first (bounded to the last 10,000).
    pub fn requests(&self) -> Vec<AuditEntry> {
        self.lock().audit.iter().cloned().collect()
    }

    /// Writes every object to `path` as JSON (what `--state` saves).
    pub fn save_state(&self, path: &Path) -> std::io::Result<()> {
        let doc = {
            let inner = self.lock();
            let objects: Vec<&Value> = inner.store.all_objects().collect();
            serde_json::to_vec_pretty(
                &json!({"kind": "KubesimState", "resourceVersion": inner.store.current_rv().to_string(), "objects": objects}),
            )?
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, doc)?;
        std::fs::rename(tmp, path)
    }
}

fn load_state(store: &mut Store, path: &Path) -> Result<(), SimError> {
    let text = std::fs::read(path).map_err(|source| SimError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: String| SimError::BadState {
        path: path.to_path_buf(),
        message,
    };
    let doc: Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if doc.get("kind").and_then(Value::as_str) != Some("KubesimState") {
        return Err(bad("kind is not KubesimState".into()));
    }
    let mut objects = doc
        .get("objects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // CRDs first: their objects can only be read back once they are.
    objects
        .sort_by_key(|o| o.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition"));
    for obj in objects {
        store.restore(obj).map_err(|e| bad(e.message))?;
    }
    Ok(())
}

/// A running simulator. Dropping it stops the server too (without saving state).
pub struct SimHandle {
    sim: Sim,
    addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The simulator's state (for programmatic access).
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// Writes a kubeconfig (context `kubesim`, namespace `default`) pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        crate::kubeconfig::write(path, &self.url())
    }

    /// See [`Sim::apply_yaml`].
    pub fn apply_yaml(&self, text: &str) -> Result<Vec<Value>, SimError> {
        self.sim.apply_yaml(text)
    }

    /// Stops serving (watches end, in-flight requests finish), then saves the state file if one
    /// is configured.
    pub async fn shutdown(mut self) {
        self.sim.shared.cancel.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.await;
        }
        if let Some(path) = &self.sim.shared.state_file {
            match self.sim.save_state(path) {
                Ok(()) => tracing::info!(path = %path.display(), "state saved"),
                Err(error) => tracing::error!(path = %path.display(), %error, "state not saved"),
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.sim.shared.cancel.cancel();
    }
}
