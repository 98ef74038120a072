//! `firebreak serve`: builds the pipeline and runs it until SIGINT/SIGTERM.
//!
//! [`Engine::start`] is the composition root shared by `serve`, `demo` and the tests:
//! bus + state store (NATS JetStream when configured, else embedded under `data_dir`), the
//! audit journal (mirrored to JetStream in NATS mode), the runtime with the connector
//! registry, the runbooks (hot-reloaded), the dispatcher, and the HTTP ingest.
//!
//! Shutdown ([`Engine::stop`]): the ingest stops taking requests, the dispatcher stops taking
//! deliveries, running scripts finish the step in flight and stop before the next one without
//! journaling an end, so the next start resumes them; then the bus is closed. Nothing acked
//! is left unjournaled. A stop takes at most [`STOP_WITHIN`], NATS down or not.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use firebreak_audit::{AuditMirror, Journal, Record};
use firebreak_bus::{
    AuditMessage, Bus, DeferredNats, EmbeddedBus, FileStateStore, RunLeases, StateStore,
};
use firebreak_connector::plugin::{BuildContext, Plugin, Shared};
use firebreak_connector::{ProgressSink, Registry};
use firebreak_dispatch::{ConnectorSpecs, Dispatcher, Runbooks};
use firebreak_ingest::{IngestState, Invalid, Refused};
use firebreak_runtime::{CancellationToken, Runner, RunnerConfig};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;

/// How long a graceful stop waits for steps in flight (Kubernetes' default grace is 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How long a whole stop may take, the wait for steps included: inside Kubernetes' 30 s
/// grace, with room for the runtime's own shutdown. What is not done by then is left as a
/// crash leaves it (the journal is durable; the next start or another replica resumes).
const STOP_WITHIN: Duration = Duration::from_secs(25);

/// How often the runbook folder is checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The metrics recorder is process-wide; install it once.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                // Runs last from milliseconds (a triage) to half an hour (a canary).
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "firebreak_run_duration_seconds".into(),
                    ),
                    &[0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0],
                )
                .expect("the buckets are not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "firebreak_step_duration_seconds".into(),
                    ),
                    &[0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0],
                )
                .expect("the buckets are not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("firebreak_bus_lag_seconds".into()),
                    &[0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
                )
                .expect("the buckets are not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "firebreak_journal_fsync_seconds".into(),
                    ),
                    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0],
                )
                .expect("the buckets are not empty")
                .install_recorder()
                .inspect(|_| describe_metrics())
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// The help text of every metric the engine records (`promtool check metrics` wants one each).
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "firebreak_ingest_alerts_received_total",
        "Alerts received on the Alertmanager webhook."
    );
    describe_counter!(
        "firebreak_ingest_events_published_total",
        "Events the ingest published onto the bus (answered 2xx)."
    );
    describe_counter!(
        "firebreak_ingest_errors_total",
        "Requests the ingest refused or could not take, by reason."
    );
    describe_histogram!(
        "firebreak_ingest_publish_seconds",
        metrics::Unit::Seconds,
        "Time to publish one request's events onto the bus."
    );
    describe_counter!(
        "firebreak_events_consumed_total",
        "Events the dispatcher took from the bus."
    );
    describe_counter!(
        "firebreak_events_joined_total",
        "Events handed to the run already handling their incident."
    );
    describe_counter!(
        "firebreak_events_parked_total",
        "Bus messages that could not be processed, kept in the journal."
    );
    describe_counter!("firebreak_runs_started_total", "Runs started.");
    describe_counter!(
        "firebreak_runs_skipped_total",
        "Matched events that started no run, by reason (cooldown, redelivered, budget)."
    );
    describe_counter!("firebreak_runs_finished_total", "Runs ended, by status.");
    describe_counter!(
        "firebreak_runs_total",
        "Runs ended, by runbook, team and outcome."
    );
    describe_histogram!(
        "firebreak_run_duration_seconds",
        metrics::Unit::Seconds,
        "How long runs took, by runbook."
    );
    describe_gauge!(
        "firebreak_runs_in_progress",
        "Runs this engine is running now."
    );
    describe_gauge!(
        "firebreak_runs_waiting",
        "Runs waiting in a step now (sleep, wait_resolved)."
    );
    describe_gauge!(
        "firebreak_worker_threads",
        "The async runtime's worker threads (limits.worker_threads; absent: one per core)."
    );
    describe_gauge!(
        "firebreak_scripts_waiting_for_cpu",
        "Scripts waiting for a share of the CPU (limits.max_computing_scripts) now."
    );
    describe_counter!(
        "firebreak_runbook_reload_failures_total",
        "Runbook reloads refused (the last good set stays in force)."
    );
    describe_histogram!(
        "firebreak_step_duration_seconds",
        metrics::Unit::Seconds,
        "How long connector actions took, by connector and action."
    );
    describe_histogram!(
        "firebreak_bus_lag_seconds",
        metrics::Unit::Seconds,
        "Time from the bus accepting an event to the dispatcher taking it."
    );
    describe_counter!(
        "firebreak_bus_redeliveries_total",
        "Events the bus delivered again (a lost ack, a nak, a restart)."
    );
    describe_histogram!(
        "firebreak_journal_fsync_seconds",
        metrics::Unit::Seconds,
        "Time of one audit journal sync (one per group commit)."
    );
    describe_gauge!(
        "firebreak_journal_healthy",
        "1 while the audit journal can write; 0 after a failed write or sync (no new work is taken)."
    );
    describe_gauge!(
        "firebreak_approvals_pending",
        "Runs waiting for people to approve them."
    );
    describe_counter!(
        "firebreak_refusals_total",
        "Actions and triggers the engine refused, by reason (namespace, tenancy, cluster_grant, freeze, blast_radius, deploy_policy, budget, other)."
    );
    describe_counter!(
        "firebreak_triggers_unauthenticated_total",
        "Trigger and chat requests refused for a missing or wrong credential."
    );
    describe_counter!(
        "firebreak_run_lease_renewals_total",
        "Run leases this replica renewed on the NATS KV store (one update per run in flight per third of nats.run_lease)."
    );
    describe_counter!(
        "firebreak_run_leases_lost_total",
        "Runs stopped here because another replica took their lease over."
    );
    describe_counter!(
        "firebreak_runs_taken_over_total",
        "Runs this replica took over from a replica whose lease ran out."
    );
    // Exported from the start at zero, so `rate()` and alerts see them before they first move.
    for counter in [
        "firebreak_ingest_alerts_received_total",
        "firebreak_events_parked_total",
        "firebreak_bus_redeliveries_total",
        "firebreak_runbook_reload_failures_total",
        "firebreak_triggers_unauthenticated_total",
        "firebreak_run_lease_renewals_total",
        "firebreak_run_leases_lost_total",
        "firebreak_runs_taken_over_total",
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for reason in firebreak_runtime::guard::REFUSAL_KINDS {
        metrics::counter!("firebreak_refusals_total", "reason" => *reason).absolute(0);
    }
    for gauge in [
        "firebreak_runs_in_progress",
        "firebreak_runs_waiting",
        "firebreak_scripts_waiting_for_cpu",
        "firebreak_approvals_pending",
    ] {
        metrics::gauge!(gauge).set(0.0);
    }
}

/// A running engine.
pub struct Engine {
    pub addr: SocketAddr,
    pub dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    consumer: JoinHandle<Result<(), firebreak_bus::BusError>>,
    background: TaskTracker,
}

impl Engine {
    /// Builds and starts everything. `registry` holds the connectors the caller wired;
    /// `progress` receives every run's log and progress lines.
    pub async fn start(
        cfg: &Config,
        registry: Registry,
        progress: Option<ProgressSink>,
    ) -> Result<Engine> {
        if let Some(problem) = cfg.exposure_problem() {
            anyhow::bail!("{problem}");
        }
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let metrics = metrics_handle();
        metrics::gauge!("firebreak_worker_threads")
            .set(tokio::runtime::Handle::current().metrics().num_workers() as f64);

        let shutdown = CancellationToken::new();
        // With NATS unreachable the engine still starts: not ready (503) until it connects.
        let mut deferred = None;
        let (bus, state): (Arc<dyn Bus>, Arc<dyn StateStore>) = match &cfg.nats {
            Some(nats) => {
                let mut opts = nats.options()?;
                if opts.replica.is_none() {
                    opts.replica = Some(replica_id(&cfg.data_dir)?);
                }
                let nats_bus = DeferredNats::connect(&nats.url, opts, shutdown.clone())
                    .await
                    .with_context(|| format!("connecting to NATS at {}", nats.url))?;
                deferred = Some(nats_bus.clone());
                (nats_bus.clone(), nats_bus)
            }
            None => {
                let bus = EmbeddedBus::open(cfg.data_dir.join("bus"))
                    .context("opening the embedded bus")?;
                let state = FileStateStore::open(cfg.data_dir.join("state"))
                    .context("opening the embedded state store")?;
                (Arc::new(bus), Arc::new(state))
            }
        };

        let mut journal = crate::audit_cmd::open_journal(cfg)?;
        if let Some(nats) = &deferred {
            let catch_up = CatchUp {
                nats: nats.clone(),
                reader: journal.reader(),
                opening: tokio::sync::Mutex::new(Some(journal.opened_at())),
                gap: Arc::default(),
            };
            journal = journal.with_mirror(Arc::new(BusMirror {
                bus: bus.clone(),
                replica: nats.replica().to_owned(),
                stopping: shutdown.clone(),
                retry_for: match &cfg.nats {
                    Some(nats) => nats.audit_mirror_retry()?,
                    None => None,
                }
                .unwrap_or(MIRROR_RETRY_FOR),
                catch_up,
            }));
        }
        let journal = Arc::new(journal);

        let runbooks = Arc::new(
            Runbooks::load(&cfg.runbooks, cfg.teams.as_deref(), connector_specs()).map_err(
                |problems| {
                    anyhow!(
                        "runbooks in {} do not load:\n  {}",
                        cfg.runbooks.display(),
                        problems.join("\n  ")
                    )
                },
            )?,
        );
        let mut runner = Runner::new(
            &registry,
            journal.clone(),
            RunnerConfig {
                max_concurrent_runs: cfg.limits.max_concurrent_runs,
                max_computing_scripts: cfg
                    .limits
                    .max_computing_scripts
                    .unwrap_or_else(firebreak_runtime::default_computing_scripts),
                budget: cfg.limits.budget(),
                ..RunnerConfig::default()
            },
        )
        .with_guard(firebreak_dispatch::engine_guard(runbooks.clone()));
        // With replicas, an incident's later run may run on another one: `once` decisions go
        // where all of them read.
        if let Some(nats) = &deferred {
            runner = runner.with_memory(Arc::new(firebreak_dispatch::SharedMemory(nats.clone())));
            // And a run acts only while this replica's lease on it holds: cut off from NATS
            // for most of it, another replica may have taken the run over.
            let leases = nats.clone();
            runner = runner.with_fence(Arc::new(move |key: &str, run_id: &str| {
                firebreak_bus::RunLeases::holds(&*leases, key, run_id)
            }));
        }
        let runner = Arc::new(runner);
        info!(runbooks = runbooks.current().set.len(), dir = %cfg.runbooks.display(), "runbooks loaded");

        let mut dispatcher = Dispatcher::new(
            bus.clone(),
            state,
            runner,
            journal.clone(),
            runbooks.clone(),
            progress,
            shutdown.clone(),
        );
        if let Some(nats) = &deferred {
            dispatcher = dispatcher.with_leases(nats.clone());
        }
        let dispatcher = Arc::new(dispatcher);
        let nats = deferred.clone();
        match deferred.filter(|d| !d.is_connected()) {
            None => {
                let resumed = dispatcher.resume_unfinished().await;
                if resumed > 0 {
                    info!(resumed, "resumed runs a previous engine left unfinished");
                }
            }
            // Resuming takes locks in NATS: once it is there.
            Some(nats) => {
                let dispatcher = dispatcher.clone();
                tokio::spawn(async move {
                    nats.connected().await;
                    let resumed = dispatcher.resume_unfinished().await;
                    if resumed > 0 {
                        info!(resumed, "resumed runs a previous engine left unfinished");
                    }
                });
            }
        }

        let background = TaskTracker::new();
        background.spawn(runbooks.clone().watch(RELOAD_EVERY, shutdown.clone()));
        background.spawn(dispatcher.clone().summarize_refusals(shutdown.clone()));
        background.spawn(probe_journal(journal.clone(), shutdown.clone()));
        background.spawn(checkpoint_journal(journal.clone(), shutdown.clone()));
        if let Some(nats) = nats {
            background.spawn(sweep_buckets(nats.clone(), shutdown.clone()));
            {
                // The opening checkpoint to the stream once NATS is there, and with it what
                // an earlier engine's mirror gave up on (see `CatchUp`), appends or not.
                let (nats, journal) = (nats.clone(), journal.clone());
                background.spawn(async move {
                    nats.connected().await;
                    if let Err(e) = journal.settled().await {
                        warn!(error = %e, "the journal's opening did not reach the audit stream; the next append takes it");
                    }
                });
            }
            let dispatcher = dispatcher.clone();
            let shutdown = shutdown.clone();
            // Leases are kept once NATS is there (the resume above takes them first).
            background.spawn(async move {
                nats.connected().await;
                dispatcher.keep_leases(shutdown).await;
            });
        }
        let consumer = tokio::spawn(dispatcher.clone().run());

        let ingest = IngestState {
            bus: bus.clone(),
            alertmanager_token: cfg.auth.alertmanager_token.clone(),
            max_body_bytes: cfg.limits.max_body_bytes,
            validate_trigger: validate_trigger(dispatcher.clone()),
            authorize_trigger: authorize_trigger(dispatcher.clone(), cfg.auth.api_token.clone()),
            metrics,
            ready: {
                let journal = journal.clone();
                Arc::new(move || journal.healthy())
            },
        };
        let action_key = Arc::new(
            crate::chat::ActionKey::load_or_create(&cfg.data_dir)
                .context("loading the chat action key")?,
        );
        let follow_ups = crate::notify::FollowUps::default();
        let routes = firebreak_ingest::router(ingest)
            .merge(crate::api::router(
                dispatcher.clone(),
                cfg.auth.api_token.clone(),
            ))
            .merge(crate::ui::router())
            .merge(crate::chat::router(
                dispatcher.clone(),
                bus.clone(),
                action_key.clone(),
                follow_ups.clone(),
                cfg.auth.slack_signing_secret.as_deref(),
                cfg.auth.mattermost_token.as_deref(),
            ));
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        // Only with chat configured: otherwise nothing follows the journal (and no record is
        // copied for a follower).
        if cfg.chat_enabled() {
            let notifier = crate::notify::Notifier::new(
                cfg,
                addr,
                dispatcher.clone(),
                action_key.clone(),
                follow_ups.clone(),
            );
            tokio::spawn(notifier.follow(journal.subscribe(), shutdown.clone()));
        }
        let http = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(listener, routes)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await
            })
        };
        info!(%addr, bus = if cfg.nats.is_some() { "jetstream" } else { "embedded" }, "firebreak serving");
        Ok(Engine {
            addr,
            dispatcher,
            shutdown,
            http,
            consumer,
            background,
        })
    }

    /// A token that stops the engine when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Graceful stop; see the module docs for the order. Bounded by [`STOP_WITHIN`].
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        if tokio::time::timeout(STOP_WITHIN, self.stop_in_order())
            .await
            .is_err()
        {
            warn!(
                within_secs = STOP_WITHIN.as_secs(),
                "the stop did not finish in time; what is left is resumed as after a crash"
            );
        }
        Ok(())
    }

    async fn stop_in_order(self) {
        // 1. no new requests or deliveries
        let _ = self.http.await;
        let _ = self.consumer.await;
        // 2. runs finish the step in flight and stop before the next one, unfinished in the
        //    journal, so the next start resumes them; a step still running after the grace
        //    period is abandoned like a crash (it runs again on resume).
        self.dispatcher.runner.suspend();
        self.dispatcher.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.dispatcher.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                deliveries = self.dispatcher.tasks.len(),
                running = self.dispatcher.active_runs().len(),
                starting = self.dispatcher.starting_runs(),
                "runs still inside a step at shutdown; they resume after the next start"
            );
        }
        // 3. background loops (runbook reload, k8s watcher, lease renewal); then, with leases,
        //    this replica's heartbeat ends, so the others read its locks at their next scan
        //    and take the runs suspended above over
        self.background.close();
        self.background.wait().await;
        self.dispatcher.leave().await;
        // 4. sign the journal's tail: nothing but the next engine may append after this
        if let Err(e) = self.dispatcher.journal.checkpoint(true).await {
            warn!(error = %e, "cannot sign the audit journal's closing checkpoint");
        }
        // 5. flush the bus's pending acks and release its files
        self.dispatcher.bus.close().await;
    }

    /// Runs `fut` on the engine's background tracker (stopped by [`Engine::stop`]).
    pub fn spawn_background<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.background.spawn(fut);
    }
}

/// How often the journal signs a checkpoint while records arrive.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// Signs a checkpoint every [`CHECKPOINT_EVERY`] when records came since the last one, so
/// at most a few seconds of the journal are unanchored.
async fn checkpoint_journal(journal: Arc<Journal>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if journal.healthy()
            && let Err(e) = journal.checkpoint(false).await
        {
            warn!(error = %e, "cannot sign an audit checkpoint");
        }
    }
}

/// While the audit journal cannot write, probes it every [`firebreak_audit::PROBE_EVERY`]
/// (repairing it when the disk takes writes again), so the engine becomes ready again by
/// itself; `/readyz` and the ingest answer 503 until then.
async fn probe_journal(journal: Arc<Journal>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(firebreak_audit::PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let healthy = journal.healthy() || journal.probe().await;
        if healthy != was_healthy {
            if healthy {
                info!(path = %journal.path().display(), "audit journal writes again; taking work");
            } else {
                warn!(path = %journal.path().display(), "audit journal cannot write; refusing work (503) until it can");
            }
            was_healthy = healthy;
        }
    }
}

/// This replica's name in run leases: kept in `data_dir/replica-id`, made once from the host
/// name and a random suffix, so a restart on the same data dir finds its own runs and two
/// replicas never share a name.
pub fn replica_id(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("replica-id");
    if let Ok(text) = std::fs::read_to_string(&path)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().to_owned());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "firebreak".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("{host}-{}", &suffix[..8]);
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// How often the lock and cooldown buckets are swept of dead keys.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Sweeps released locks and ended cooldowns (tombstones included) out of the NATS buckets, so
/// they do not grow with every incident ever handled. Every replica sweeps; a key swept twice
/// is no harm.
async fn sweep_buckets(nats: Arc<DeferredNats>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        match nats.sweep(jiff::Timestamp::now()).await {
            Ok(0) => {}
            Ok(swept) => info!(
                swept,
                "swept dead locks and cooldowns from the NATS buckets"
            ),
            Err(e) => warn!(error = %e, "cannot sweep the NATS buckets; trying again later"),
        }
    }
}

/// Every connector firebreak has, one line each: its module, configuration, actions and how
/// to build it come from the connector itself (see `firebreak_connector::plugin`).
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![
        Box::new(firebreak_kubernetes::Plugin),
        Box::new(firebreak_prometheus::Plugin),
        Box::new(firebreak_traffic::Plugin),
        Box::new(firebreak_alertmanager::Plugin),
    ]
}

/// Every connector's actions, by Rhai module, for checking scripts' calls at load. Static:
/// a runbook is checked against every connector firebreak has, configured here or not.
pub fn connector_specs() -> ConnectorSpecs {
    plugins()
        .iter()
        .map(|p| (p.module(), p.actions()))
        .collect()
}

/// `POST /v1/trigger` validation: the runbook exists and the params fit its manifest; a
/// namespace outside the runbook's is refused (403) and the refusal journaled.
pub(crate) fn validate_trigger(dispatcher: Arc<Dispatcher>) -> firebreak_ingest::ValidateTrigger {
    Arc::new(move |actor, runbook, params| {
        use firebreak_matcher::MatchError;
        let loaded = dispatcher.runbooks.current();
        match loaded.set.resolve_manual(runbook, params) {
            Ok(_) => Ok(()),
            Err(e @ MatchError::NamespaceNotAllowed { .. }) => {
                let team = loaded
                    .set
                    .get(runbook)
                    .map(|r| r.manifest.team.clone())
                    .unwrap_or_default();
                journal_refusal_later(&dispatcher, runbook, &team, actor, e.to_string());
                Err(Invalid::Forbidden(e.to_string()))
            }
            Err(MatchError::UnknownRunbook { runbook }) => Err(Invalid::UnknownRunbook(format!(
                "no runbook named {runbook:?} is loaded"
            ))),
            Err(MatchError::UnknownParam { param, .. }) => Err(Invalid::Param {
                field: param,
                reason: "the runbook declares no such param".into(),
            }),
            Err(MatchError::MissingParam { param, from, .. }) => Err(Invalid::Param {
                field: param,
                reason: format!("required, and {from}"),
            }),
            Err(MatchError::BadParam { param, message, .. }) => Err(Invalid::Param {
                field: param,
                reason: message,
            }),
            Err(e @ MatchError::MalformedManualEvent { .. }) => Err(Invalid::Param {
                field: "-".into(),
                reason: e.to_string(),
            }),
        }
    })
}

/// Journals a refused trigger without holding up the answer to it.
pub(crate) fn journal_refusal_later(
    dispatcher: &Arc<Dispatcher>,
    runbook: &str,
    team: &str,
    actor: &str,
    reason: String,
) {
    let d = dispatcher.clone();
    let (runbook, team, actor) = (runbook.to_owned(), team.to_owned(), actor.to_owned());
    tokio::spawn(async move {
        d.journal_manual_refusal(&runbook, &team, &actor, reason)
            .await
    });
}

/// `POST /v1/trigger` authorization: who the bearer token belongs to (a member of the teams
/// file, `api` for `auth.api_token`, `local` where nothing is configured and only loopback can
/// reach the engine), then whether that identity may run the runbook (its owner team). The
/// token is checked before the runbook is looked up; 403s are journaled, 401s counted.
fn authorize_trigger(
    dispatcher: Arc<Dispatcher>,
    api_token: Option<String>,
) -> firebreak_ingest::AuthorizeTrigger {
    Arc::new(move |token, runbook| {
        let loaded = dispatcher.runbooks.current();
        let unknown = || Refused::UnknownRunbook(format!("no runbook named {runbook:?} is loaded"));
        let Some(teams) = loaded.set.teams() else {
            // Single-tenant: the API token, or (on loopback only, see `exposure_problem`) no
            // authentication at all. Either way the actor is fixed, never the body's.
            let actor = match &api_token {
                Some(expected) => {
                    let ok = token.is_some_and(|t| {
                        firebreak_matcher::teams::constant_time_eq(
                            t.as_bytes(),
                            expected.as_bytes(),
                        )
                    });
                    if !ok {
                        dispatcher.note_unauthenticated(runbook);
                        return Err(Refused::Unauthenticated(
                            "missing or wrong bearer token (auth.api_token)".into(),
                        ));
                    }
                    "api"
                }
                None => "local",
            };
            return loaded
                .set
                .get(runbook)
                .map(|_| actor.to_owned())
                .ok_or_else(unknown);
        };
        // The token before the runbook: names cannot be probed without a token.
        let Some(actor) = token.and_then(|t| teams.member_by_token(t)) else {
            dispatcher.note_unauthenticated(runbook);
            return Err(Refused::Unauthenticated(
                firebreak_matcher::Refusal::UnknownToken.to_string(),
            ));
        };
        let rb = loaded.set.get(runbook).ok_or_else(unknown)?;
        let refusal = match teams.can_trigger(actor, rb) {
            Ok(()) => return Ok(actor.1.name.clone()),
            Err(r) => r,
        };
        journal_refusal_later(
            &dispatcher,
            &rb.manifest.name,
            &rb.manifest.team,
            &actor.1.name,
            refusal.to_string(),
        );
        Err(Refused::Forbidden(refusal.to_string()))
    })
}

/// Mirrors every audit record into the JetStream audit stream: the journal's own lines, one
/// message per run per append (the lines of that run's records, in order), so the stream holds
/// the very bytes `audit verify` checks.
struct BusMirror {
    bus: Arc<dyn Bus>,
    /// This replica's name: its journal's own records go on a subject of its own.
    replica: String,
    /// Cancelled when the engine stops: from then on a publish NATS refuses is not retried
    /// (see [`Retry::after`]).
    stopping: CancellationToken,
    /// How long a batch is retried while NATS is unreachable (`nats.audit_mirror_retry`).
    retry_for: Duration,
    /// What this mirror or an earlier engine's gave up on, sent before the next batch.
    catch_up: CatchUp,
}

/// Most bytes of journal lines in one audit message (NATS' default max payload is 1 MiB).
const MIRROR_MESSAGE_BYTES: usize = 512 * 1024;

impl BusMirror {
    /// The append's records as audit messages: consecutive lines of one run, split so no
    /// message grows past [`MIRROR_MESSAGE_BYTES`] (a single larger line goes alone).
    fn messages(
        replica: &str,
        records: &[Record],
        lines: &bytes::Bytes,
    ) -> Vec<(u64, AuditMessage)> {
        // (first seq, subject, id, byte range of its lines)
        let mut spans: Vec<(u64, &Record, String, std::ops::Range<usize>)> = Vec::new();
        let mut at = 0;
        // Line ends found with memchr (a byte-by-byte split cost 11,000 instructions per
        // alert); a last line without its newline still ends where the bytes do.
        let unterminated = (!lines.is_empty() && !lines.ends_with(b"\n")).then_some(lines.len());
        let ends = memchr::memchr_iter(b'\n', lines)
            .map(|newline| newline + 1)
            .chain(unterminated);
        for (record, end) in records.iter().zip(ends) {
            match spans.last_mut() {
                Some((_, first, id, range))
                    if first.run_id == record.run_id
                        && end - range.start <= MIRROR_MESSAGE_BYTES =>
                {
                    range.end = end;
                    id.clone_from(&record.hash);
                }
                _ => spans.push((record.seq, record, record.hash.clone(), at..end)),
            }
            at = end;
        }
        spans
            .into_iter()
            .map(|(seq, first, id, range)| {
                // The journal's own records (no run) on a subject of their own, so the
                // newest checkpoint can be read back directly.
                let subject = if first.run_id.is_empty() {
                    firebreak_bus::nats::journal_subject(replica, first.body.kind())
                } else {
                    firebreak_bus::nats::audit_run_subject(&first.team, &first.run_id)
                };
                let payload = lines.slice(range);
                (
                    seq,
                    AuditMessage {
                        subject,
                        id,
                        payload,
                    },
                )
            })
            .collect()
    }
}

impl AuditMirror for BusMirror {
    fn publish<'a>(
        &'a self,
        records: &'a [Record],
        lines: bytes::Bytes,
    ) -> BoxFuture<'a, Result<firebreak_audit::MirrorStored, (u64, String)>> {
        Box::pin(async move {
            let messages = Self::messages(&self.replica, records, &lines);
            let Some((first_seq, _)) = messages.first().cloned() else {
                return Ok(Box::pin(async { Ok(()) }) as firebreak_audit::MirrorStored);
            };
            let batch: Vec<AuditMessage> = messages.into_iter().map(|(_, m)| m).collect();
            // The records are already durable in the journal file. While NATS is briefly
            // unreachable, retry (delaying the runs) rather than fail the steps; give up after
            // `retry_for` so a lasting outage still fails loudly. A retry re-sends the
            // whole batch: message ids keep the stream from storing anything twice. Sending is
            // retried here, in journal order; a batch sent but not stored is sent again while
            // later ones may already be on their way (only then can the stream's order differ
            // from the journal's).
            let deadline = tokio::time::Instant::now() + self.retry_for;
            let mut retry = Retry::new(deadline, first_seq, self.stopping.clone());
            let given_up = |failed| {
                self.catch_up.gave_up(first_seq);
                failed
            };
            self.catch_up
                .before(self, first_seq, &mut retry)
                .await
                .map_err(given_up)?;
            let stored = loop {
                match self.bus.publish_audit(batch.clone()).await {
                    Ok(stored) => break stored,
                    Err(e) => retry.after(e).await.map_err(given_up)?,
                }
            };
            let bus = self.bus.clone();
            let gap = self.catch_up.gap.clone();
            Ok(Box::pin(async move {
                let mut stored = stored;
                loop {
                    match stored.await {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            if let Err(failed) = retry.after(e).await {
                                note_gap(&gap, first_seq);
                                return Err(failed);
                            }
                        }
                    }
                    stored = match bus.publish_audit(batch.clone()).await {
                        Ok(stored) => stored,
                        Err(e) => Box::pin(async move { Err(e) }),
                    };
                }
            }) as firebreak_audit::MirrorStored)
        })
    }
}

/// Most records the catch-up reads and sends at a time.
const CATCH_UP_CHUNK: usize = 1024;

/// The records of this replica's journal the audit stream never took, sent by the mirror
/// before its next batch (so a run's records reach the stream in journal order, and a takeover
/// reading them back finds its last step last).
///
/// The mirror gives a batch up when NATS stays away (after `nats.audit_mirror_retry`; at once once
/// the engine stops). The records are in the journal; without this they were missing from the
/// stream for good (`audit verify --stream` showed the journal as two chains). Two cases:
/// - this mirror gave a batch up: before its next batch it sends the journal's records from
///   the first one it gave up on;
/// - an earlier engine's did (it stopped or died with NATS away): before the first batch, the
///   records after the newest checkpoint of this journal the stream holds, up to where this
///   engine opened the journal. A journal the stream holds no checkpoint of was never
///   mirrored (NATS configured from this start on): nothing is sent.
///
/// Records in between that the stream did take are sent again: the stream may keep both
/// copies (past its duplicate window); whoever reads it counts a record once (by hash).
struct CatchUp {
    nats: Arc<DeferredNats>,
    reader: firebreak_audit::JournalReader,
    /// Until the first batch went: this engine's first record (the start's catch-up ends
    /// before it). Also keeps catch-ups one at a time.
    opening: tokio::sync::Mutex<Option<u64>>,
    /// The first record of a batch given up on since the last catch-up.
    gap: Arc<std::sync::Mutex<Option<u64>>>,
}

/// Keeps the earliest record of a batch the mirror gave up on.
fn note_gap(gap: &std::sync::Mutex<Option<u64>>, seq: u64) {
    let mut gap = gap.lock().unwrap_or_else(|p| p.into_inner());
    *gap = Some(gap.map_or(seq, |from| from.min(seq)));
}

impl CatchUp {
    fn gave_up(&self, seq: u64) {
        note_gap(&self.gap, seq);
    }

    /// Before the batch from `next`: what the stream lacks, retried like the batch.
    async fn before(
        &self,
        mirror: &BusMirror,
        next: u64,
        retry: &mut Retry,
    ) -> Result<(), (u64, String)> {
        let mut opening = self.opening.lock().await;
        if let Some(upto) = *opening {
            loop {
                match self.since_checkpoint(mirror, upto).await {
                    Ok(()) => break,
                    Err(e) => retry.after(e).await?,
                }
            }
            *opening = None;
        }
        let gap = *self.gap.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(from) = gap.filter(|from| *from < next) {
            loop {
                match self.send(mirror, from, next).await {
                    Ok(sent) => {
                        info!(
                            sent,
                            from,
                            to = next - 1,
                            "caught the audit stream up: it now holds the records the mirror gave up on while NATS was away"
                        );
                        break;
                    }
                    Err(e) => retry.after(e).await?,
                }
            }
            let mut gap = self.gap.lock().unwrap_or_else(|p| p.into_inner());
            // Given up on again meanwhile (a batch in flight): from there next time.
            if *gap == Some(from) {
                *gap = None;
            }
        }
        Ok(())
    }

    /// What an earlier engine's mirror gave up on; an error only when NATS did not answer.
    async fn since_checkpoint(
        &self,
        mirror: &BusMirror,
        upto: u64,
    ) -> Result<(), firebreak_bus::BusError> {
        let subject = firebreak_bus::nats::checkpoint_subject(&mirror.replica);
        let Some(newest) = self.nats.last_audit_message(&subject).await? else {
            return Ok(());
        };
        // The message holds the checkpoint's line (and any journal record after it in its
        // batch).
        let Some(held) = newest
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Record>(line).ok())
            .map(|r| r.seq)
            .max()
        else {
            warn!(
                subject,
                "this journal's newest checkpoint on the audit stream does not parse; not catching the stream up"
            );
            return Ok(());
        };
        let sent = self.send(mirror, held + 1, upto).await?;
        if sent > 0 {
            info!(
                sent,
                from = held + 1,
                to = upto - 1,
                "caught the audit stream up: it now holds the records an earlier engine's mirror gave up on"
            );
        }
        Ok(())
    }

    /// Sends the journal's records from `from` up to (not including) `upto`; how many. A
    /// journal that cannot be read is logged and skipped (nothing to retry); an error only
    /// when NATS did not take them.
    async fn send(
        &self,
        mirror: &BusMirror,
        from: u64,
        upto: u64,
    ) -> Result<usize, firebreak_bus::BusError> {
        if from >= upto {
            return Ok(0);
        }
        let mut records = match self.reader.iter_from(from) {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "cannot read the journal to catch the audit stream up");
                return Ok(0);
            }
        };
        let mut sent = 0;
        loop {
            // Off the runtime: a chunk of lines from the journal's files.
            let read = tokio::task::spawn_blocking(move || {
                let mut chunk: Vec<Record> = Vec::new();
                let mut lines = Vec::new();
                while chunk.len() < CATCH_UP_CHUNK {
                    match records.next_with_line() {
                        None => break,
                        Some(Err(e)) => return (records, Err(e)),
                        Some(Ok((record, _))) if record.seq < from => {}
                        Some(Ok((record, _))) if record.seq >= upto => break,
                        Some(Ok((record, line))) => {
                            chunk.push(record);
                            lines.extend_from_slice(&line);
                        }
                    }
                }
                (records, Ok((chunk, lines)))
            })
            .await;
            let (rest, chunk) = match read {
                Ok(read) => read,
                Err(e) => {
                    warn!(error = %e, "the audit catch-up's read of the journal failed");
                    return Ok(sent);
                }
            };
            records = rest;
            let (chunk, lines) = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    warn!(error = %e, "cannot read the journal to catch the audit stream up");
                    return Ok(sent);
                }
            };
            let Some(last) = chunk.last().map(|r| r.seq) else {
                return Ok(sent);
            };
            let lines = bytes::Bytes::from(lines);
            let batch: Vec<AuditMessage> = BusMirror::messages(&mirror.replica, &chunk, &lines)
                .into_iter()
                .map(|(_, m)| m)
                .collect();
            mirror.bus.publish_audit(batch).await?.await?;
            sent += chunk.len();
            if last + 1 >= upto {
                return Ok(sent);
            }
        }
    }
}

/// The mirror's retries of one batch: a growing delay, up to a deadline, and none once the
/// engine stops.
struct Retry {
    deadline: tokio::time::Instant,
    delay: Duration,
    first_seq: u64,
    stopping: CancellationToken,
}

impl Retry {
    fn new(deadline: tokio::time::Instant, first_seq: u64, stopping: CancellationToken) -> Retry {
        Retry {
            deadline,
            delay: Duration::from_millis(50),
            first_seq,
            stopping,
        }
    }

    /// Waits before the next try after `e`, or gives up with what the journal reports: on a
    /// permanent error, past the deadline, or once the engine stops. A stopping engine has a
    /// grace period to keep (Kubernetes' 30 s), and the journal's batches wait for the mirror
    /// one after another: retried for [`MIRROR_RETRY_FOR`] each, a stop with NATS down took
    /// minutes. The records are durable in the journal whether or not the stream took them;
    /// their runs are suspended and resume from the journal at the next start.
    async fn after(&mut self, e: firebreak_bus::BusError) -> Result<(), (u64, String)> {
        if e.kind() == firebreak_bus::BusErrorKind::Permanent
            || self.stopping.is_cancelled()
            || tokio::time::Instant::now() + self.delay >= self.deadline
        {
            return Err((self.first_seq, e.to_string()));
        }
        warn!(error = %e, seq = self.first_seq, "audit mirror unavailable; retrying");
        tokio::select! {
            () = tokio::time::sleep(self.delay) => {}
            () = self.stopping.cancelled() => return Err((self.first_seq, e.to_string())),
        }
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
        Ok(())
    }
}

/// How long one append's mirror publish is retried while NATS is unreachable, by default.
const MIRROR_RETRY_FOR: Duration = Duration::from_secs(30);

/// The connectors the configuration asks for (see [`plugins`]). Without a reachable cluster
/// the Kubernetes connectors are left out (an error when `require_kube`).
pub async fn connectors(
    cfg: &Config,
    require_kube: bool,
) -> Result<(Registry, Option<firebreak_kubernetes::Client>)> {
    let kube = if cfg.kubernetes.disabled {
        None
    } else {
        match firebreak_kubernetes::client::connect(cfg.kubernetes.kubeconfig.as_deref()).await {
            Ok(client) => Some(client),
            Err(e) if require_kube => {
                return Err(anyhow::Error::new(e).context(
                    "connecting to Kubernetes (set kubernetes.disabled to run without it)",
                ));
            }
            Err(e) => {
                warn!(error = %e, "no Kubernetes cluster reachable: runbooks calling k8s:: will fail");
                None
            }
        }
    };
    let mut shared = Shared::default();
    shared.insert_with(reqwest::Client::new);
    if let Some(client) = &kube {
        shared.insert(client.clone());
    }
    let mut registry = Registry::new();
    for plugin in plugins() {
        let keys: Vec<&str> = plugin.settings().iter().map(|s| s.key).collect();
        let settings = cfg.connector_settings(plugin.section(), &keys);
        let built = plugin
            .build(BuildContext {
                settings: &settings,
                shared: &shared,
            })
            .await
            .map_err(|e| anyhow!("connector {}: {e}", plugin.module()))?;
        match built {
            Some(connector) => {
                info!(connector = plugin.module(), "connector ready");
                registry.register(connector);
            }
            None => info!(
                connector = plugin.module(),
                section = plugin.section(),
                "connector not configured"
            ),
        }
    }
    Ok((registry, kube))
}

/// `firebreak serve`.
pub async fn serve(cfg: Config) -> Result<()> {
    // Before anything connects anywhere.
    if let Some(problem) = cfg.exposure_problem() {
        anyhow::bail!("{problem}");
    }
    let (registry, kube) = connectors(&cfg, false).await?;
    let engine = Engine::start(&cfg, registry, None).await?;
    if let Some(client) = kube {
        let namespaces = if cfg.kubernetes.watch_namespaces.is_empty() {
            let mut ns: Vec<String> = engine
                .dispatcher
                .runbooks
                .current()
                .set
                .iter()
                .flat_map(|r| r.manifest.namespaces.clone())
                .collect();
            ns.sort();
            ns.dedup();
            ns
        } else {
            cfg.kubernetes.watch_namespaces.clone()
        };
        spawn_watcher(&engine, client, namespaces);
    }
    let stop = engine.shutdown_token();
    tokio::select! {
        _ = shutdown_signal() => info!("shutdown signal received"),
        _ = stop.cancelled() => {}
    }
    engine.stop().await?;
    info!("stopped");
    Ok(())
}

/// Kubernetes warnings and stalled rollouts → the bus, as `firebreak.events.k8s.*`.
pub fn spawn_watcher(
    engine: &Engine,
    client: firebreak_kubernetes::Client,
    namespaces: Vec<String>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let shutdown = engine.shutdown_token();
    engine.spawn_background(firebreak_kubernetes::watcher::run(
        client,
        namespaces,
        tx,
        shutdown.clone(),
    ));
    let bus = engine.dispatcher.bus.clone();
    engine.spawn_background(async move {
        while let Some(event) = rx.recv().await {
            // Retry until the bus takes it: a watcher event is not re-sent by anyone else.
            let mut delay = Duration::from_millis(100);
            while let Err(e) = bus.publish(vec![event.clone()]).await {
                warn!(error = %e, event_id = %event.id, "k8s event not published yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    });
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `firebreak connectors [--rbac]`: every connector's actions, or the least-privilege RBAC
/// that all of them (and the event watcher) need.
pub fn print_connectors(rbac: bool, namespace: &str) {
    let plugins = plugins();
    if rbac {
        let rules = plugins
            .iter()
            .flat_map(|p| p.actions())
            .flat_map(|a| a.rbac)
            .chain(firebreak_kubernetes::spec::watcher_rules());
        print!(
            "{}",
            firebreak_connector::rbac::render(
                "the connectors' action specs",
                "firebreak",
                namespace,
                rules
            )
        );
        return;
    }
    for plugin in &plugins {
        let module = plugin.module();
        let settings: Vec<String> = plugin
            .settings()
            .iter()
            .map(|s| {
                format!(
                    "connectors.{}.{} ({}): {}",
                    plugin.section(),
                    s.key,
                    firebreak_connector::plugin::env_var(plugin.section(), s.key),
                    s.doc
                )
            })
            .collect();
        println!(
            "## {module}{}",
            if settings.is_empty() {
                String::new()
            } else {
                format!("  [{}]", settings.join("; "))
            }
        );
        for action in plugin.actions() {
            let params: Vec<String> = action
                .params
                .iter()
                .map(|p| {
                    if p.required {
                        p.name.to_string()
                    } else {
                        format!("[{}]", p.name)
                    }
                })
                .collect();
            println!(
                "{module}::{}({})  [{:?}]\n    {}\n    e.g. {}",
                action.name,
                params.join(", "),
                action.effect,
                action.doc,
                action.example
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebreak_audit::{RecordDraft, RunMeta};

    /// `(macro, name)` of every metric recorded with a literal name under `dir`.
    fn recorded_metrics(dir: &std::path::Path, out: &mut Vec<(&'static str, String)>) {
        for entry in std::fs::read_dir(dir).expect("source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                recorded_metrics(&path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source file");
            for kind in ["counter!(", "gauge!(", "histogram!("] {
                for (at, _) in text.match_indices(kind) {
                    if text[..at].ends_with("describe_") {
                        continue;
                    }
                    let rest = text[at + kind.len()..].trim_start();
                    let name = rest.strip_prefix('"').and_then(|r| r.split('"').next());
                    if let Some(name) = name.filter(|n| {
                        n.starts_with("firebreak_")
                            && n.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    }) {
                        out.push((kind, name.to_owned()));
                    }
                }
            }
        }
    }

    /// Every metric the engine records has help text: `promtool check metrics` refuses one
    /// without, and it would appear only once it first moves (a lost lease, a takeover).
    #[test]
    fn every_metric_the_engine_records_is_described() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut recorded = Vec::new();
        for dir in ["engine", "connectors", "firebreak/src"] {
            recorded_metrics(&root.join(dir), &mut recorded);
        }
        assert!(recorded.len() > 20, "{recorded:?}");
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            for (kind, name) in &recorded {
                match *kind {
                    "counter!(" => metrics::counter!(name.clone()).increment(1),
                    "gauge!(" => metrics::gauge!(name.clone()).set(1.0),
                    _ => metrics::histogram!(name.clone()).record(1.0),
                }
            }
        });
        let text = handle.render();
        let undescribed: Vec<&String> = recorded
            .iter()
            .map(|(_, name)| name)
            .filter(|name| !text.contains(&format!("# HELP {name} ")))
            .collect();
        assert!(undescribed.is_empty(), "no help text: {undescribed:?}");
    }

    /// The shared HTTP client reads every system root certificate when it is made: a
    /// connector left unconfigured must not ask for it (the idle server never makes it).
    #[tokio::test]
    async fn unconfigured_connectors_do_not_make_the_shared_http_client() {
        static MADE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut shared = Shared::default();
        shared.insert_with(|| {
            MADE.store(true, std::sync::atomic::Ordering::SeqCst);
            reqwest::Client::new()
        });
        for plugin in plugins() {
            let built = plugin
                .build(BuildContext {
                    settings: &serde_json::Value::Null,
                    shared: &shared,
                })
                .await;
            assert!(matches!(built, Ok(None)), "{}", plugin.module());
        }
        assert!(!MADE.load(std::sync::atomic::Ordering::SeqCst));
        // Configured, a connector gets it.
        let settings = serde_json::json!({"url": "http://127.0.0.1:9"});
        let built = firebreak_prometheus::Plugin
            .build(BuildContext {
                settings: &settings,
                shared: &shared,
            })
            .await;
        assert!(matches!(built, Ok(Some(_))));
        assert!(MADE.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// Records of two runs sealed through a real journal, with their lines.
    async fn sealed(runs: &[(&str, usize)]) -> (Vec<Record>, bytes::Bytes) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path().join("audit.jsonl")).unwrap();
        let mut drafts = Vec::new();
        for (run, evidence_bytes) in runs {
            let meta = Arc::new(RunMeta {
                run_id: (*run).into(),
                runbook: "rb".into(),
                team: "ml.platform".into(),
                actor: "tester".into(),
                event_id: "e1".into(),
            });
            drafts.push(RecordDraft::new(
                meta,
                firebreak_audit::RecordBody::Evidence {
                    step: 1,
                    name: "blob".into(),
                    data: serde_json::Value::String("x".repeat(*evidence_bytes)),
                },
            ));
        }
        let records = journal.append_all(drafts).await.unwrap();
        let lines = bytes::Bytes::from(std::fs::read(journal.path()).unwrap());
        (records, lines)
    }

    #[tokio::test]
    async fn audit_messages_group_one_runs_lines_and_stay_under_the_size_cap() {
        let (records, lines) = sealed(&[("r1", 10), ("r1", 10), ("r2", 10), ("r1", 10)]).await;
        let messages = BusMirror::messages("r", &records, &lines);
        let shape: Vec<(u64, &str, usize)> = messages
            .iter()
            .map(|(seq, m)| {
                (
                    *seq,
                    m.subject.as_str(),
                    m.payload.split(|b| *b == b'\n').count() - 1,
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, "firebreak.audit.ml_platform.r1", 2),
                (3, "firebreak.audit.ml_platform.r2", 1),
                (4, "firebreak.audit.ml_platform.r1", 1)
            ]
        );
        assert_eq!(
            messages[0].1.id, records[1].hash,
            "id: the last record's hash"
        );
        let joined: Vec<u8> = messages
            .iter()
            .flat_map(|(_, m)| m.payload.clone())
            .collect();
        assert_eq!(joined, lines);

        // Big records of one run are split at line boundaries.
        let big = MIRROR_MESSAGE_BYTES / 2;
        let (records, lines) = sealed(&[("r1", big), ("r1", big), ("r1", 10)]).await;
        let messages = BusMirror::messages("r", &records, &lines);
        assert_eq!(messages.len(), 2);
        assert!(messages.iter().all(|(_, m)| m.payload.ends_with(b"\n")));
        let joined: Vec<u8> = messages
            .iter()
            .flat_map(|(_, m)| m.payload.clone())
            .collect();
        assert_eq!(joined, lines);

        // A last line without its newline is still sent, whole.
        let (records, lines) = sealed(&[("r1", 10), ("r2", 10)]).await;
        let cut = lines.slice(..lines.len() - 1);
        let messages = BusMirror::messages("r", &records, &cut);
        assert_eq!(messages.len(), 2);
        let second = lines.iter().position(|b| *b == b'\n').unwrap() + 1;
        assert_eq!(messages[1].1.payload, cut.slice(second..));
    }
}
