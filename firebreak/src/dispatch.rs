//! The dispatcher: takes events off the bus, matches them to runbooks and starts runs, once.
//!
//! Start at [`Dispatcher::handle`]. For each event:
//! 1. match it against the loaded runbooks (or resolve a manual trigger by name);
//! 2. per matched runbook, with key `<runbook>/<concurrency key>`: skip it if the journal shows
//!    this very message started it already (a redelivery after a lost ack); skip it while the
//!    key is in cooldown, refuse it (audited) when the remediation budget for the key is spent,
//!    skip it while another run holds the key's lock (one run per incident: Alertmanager
//!    re-sends a firing group every `repeat_interval`);
//! 3. start the run; the runtime answers once `RunStarted` is durable in the journal;
//! 4. only then ack the delivery. If a start fails, the delivery is nak'ed and comes back.
//!
//! When a run ends its key is unlocked and, if the runbook has a cooldown, put in cooldown.
//! [`Dispatcher::resume_unfinished`] picks up runs a crash interrupted (the journal has their
//! `RunStarted` but no `RunFinished`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use firebreak_audit::{Journal, RecordBody, RecordDraft, RunMeta};
use firebreak_bus::{Bus, Delivery, StateStore};
use firebreak_event::Event;
use firebreak_matcher::{Match, MatchError, RunbookSet, fingerprint_dir};
use firebreak_runtime::{AST, CancellationToken, ProgressSink, RunPlan, Runner, compile};
use futures::StreamExt;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// Runbooks with their compiled scripts: what one reload produces.
pub struct Loaded {
    pub set: RunbookSet,
    pub asts: HashMap<String, Arc<AST>>,
}

impl Loaded {
    /// Loads and checks every manifest, compiles every script. All problems are returned,
    /// each as `file:line:col: message`.
    pub fn load(dir: &Path, teams: Option<&Path>) -> Result<Loaded, Vec<String>> {
        let teams = match teams {
            Some(path) => Some(
                firebreak_matcher::Teams::load(path)
                    .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?,
            ),
            None => None,
        };
        let set = RunbookSet::load_dir_with_teams(dir, teams.as_ref())
            .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let mut asts = HashMap::new();
        let mut problems = Vec::new();
        for rb in set.iter() {
            // No approver flow exists yet; running such a runbook unapproved would be worse
            // than not running it.
            if rb.manifest.approval {
                problems.push(format!(
                    "{}:1:1: runbook {}: `approval: true` is not supported yet (no approval flow); \
                     refusing to load it rather than run it unapproved",
                    rb.yaml_path.display(),
                    rb.manifest.name
                ));
            }
            match compile(&rb.script_path, &rb.script) {
                Ok(ast) => {
                    asts.insert(rb.manifest.name.clone(), ast);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if problems.is_empty() {
            Ok(Loaded { set, asts })
        } else {
            Err(problems)
        }
    }
}

/// The runbooks in force, swapped whole on reload; a broken edit keeps the previous set.
pub struct Runbooks {
    dir: PathBuf,
    teams: Option<PathBuf>,
    current: RwLock<Arc<Loaded>>,
    fingerprint: AtomicU64,
}

impl Runbooks {
    pub fn load(dir: &Path, teams: Option<&Path>) -> Result<Runbooks, Vec<String>> {
        let fingerprint = fingerprint_dir(dir).unwrap_or_default();
        // A missing folder is not an error for a server: it starts empty and picks the folder
        // up when it appears (the reload loop watches it). `firebreak check` still refuses it.
        let loaded = if dir.exists() {
            Loaded::load(dir, teams)?
        } else {
            warn!(dir = %dir.display(), "no runbook folder: serving with no runbooks until it appears");
            Loaded {
                set: RunbookSet::default(),
                asts: HashMap::new(),
            }
        };
        Ok(Runbooks {
            dir: dir.to_owned(),
            teams: teams.map(Path::to_owned),
            current: RwLock::new(Arc::new(loaded)),
            fingerprint: AtomicU64::new(fingerprint),
        })
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.read().expect("runbook lock poisoned").clone()
    }

    /// Reloads when the folder changed. A set that fails to load is refused (logged with every
    /// problem) and the previous one keeps serving.
    pub fn reload_if_changed(&self) -> Result<bool, Vec<String>> {
        let now = fingerprint_dir(&self.dir).unwrap_or_default();
        if self.fingerprint.swap(now, Ordering::SeqCst) == now {
            return Ok(false);
        }
        let loaded = Loaded::load(&self.dir, self.teams.as_deref())?;
        info!(runbooks = loaded.set.len(), "runbooks reloaded");
        *self.current.write().expect("runbook lock poisoned") = Arc::new(loaded);
        Ok(true)
    }

    /// Polls the folder every `every` until `shutdown`.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(problems) = self.reload_if_changed() {
                metrics::counter!("firebreak_runbook_reload_failures_total").increment(1);
                for p in &problems {
                    error!(problem = %p, "runbook change refused; the previous runbooks keep serving");
                }
            }
        }
    }
}

/// Why a start must be retried later (the delivery is nak'ed).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("state store")]
    State(#[from] firebreak_bus::BusError),
    #[error("runtime")]
    Runtime(#[from] firebreak_runtime::RuntimeError),
    #[error("audit")]
    Audit(#[from] firebreak_audit::AuditError),
}

pub struct Dispatcher {
    pub bus: Arc<dyn Bus>,
    pub state: Arc<dyn StateStore>,
    pub runner: Arc<Runner>,
    pub journal: Arc<Journal>,
    pub runbooks: Arc<Runbooks>,
    /// Receives every run's log and progress lines (the CLI prints them).
    pub progress: Option<ProgressSink>,
    /// Every run task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// Extra time a concurrency lock outlives the run's own timeout, so a crashed engine's lock
/// expires on its own.
const LOCK_SLACK: Duration = Duration::from_secs(60);

impl Dispatcher {
    /// Consumes the bus until `shutdown`; each delivery is handled on its own task.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let mut deliveries = self.bus.consume().await?;
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                next = deliveries.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let me = self.clone();
                    self.tasks.spawn(async move { me.handle(delivery).await });
                }
                Some(Err(e)) => {
                    warn!(error = %e, "bus delivery failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Matches one delivery and starts its runs; acks only once every start is journaled.
    pub async fn handle(self: Arc<Self>, delivery: Delivery) {
        let event = &delivery.event;
        metrics::counter!("firebreak_events_consumed_total", "source" => event.source.clone())
            .increment(1);
        let loaded = self.runbooks.current();
        let matches = match event.manual_request() {
            Some((runbook, params, _actor)) => vec![loaded.set.resolve_manual(runbook, params)],
            None => loaded.set.matches(event),
        };
        let mut retry = false;
        for m in matches {
            match m {
                Ok(m) => {
                    if let Err(e) = self.start(&loaded, event, delivery.published, m).await {
                        error!(event_id = %event.id, error = %e, cause = ?std::error::Error::source(&e), "run could not start; the event will be redelivered");
                        retry = true;
                    }
                }
                Err(e) => {
                    if let Err(e) = self.refuse_unstartable(event, &e).await {
                        error!(event_id = %event.id, error = %e, "could not journal a refusal");
                        retry = true;
                    }
                }
            }
        }
        let settled = if retry {
            delivery.nak(Duration::from_secs(1)).await
        } else {
            delivery.ack().await
        };
        if let Err(e) = settled {
            warn!(error = %e, "could not settle a delivery; it will be redelivered");
        }
    }

    async fn start(
        &self,
        loaded: &Loaded,
        event: &Arc<Event>,
        published: jiff::Timestamp,
        m: Match,
    ) -> Result<(), StartError> {
        let manifest = &m.runbook.manifest;
        let name = manifest.name.clone();
        // A redelivery of a message whose run already started (the engine stopped after
        // journaling the start but before the bus had the ack): that run, resumed from the
        // journal if it did not finish, is this delivery's run. A later publish of the same
        // event (Alertmanager repeating it past the bus' duplicate window) is new work.
        if let Some(run) = self
            .journal
            .runs_for_event(&event.id)
            .into_iter()
            .find(|r| r.runbook == name && r.started >= published)
        {
            info!(runbook = %name, run_id = %run.run_id, event_id = %event.id, "skipped: this delivery's run was started before");
            metrics::counter!("firebreak_runs_skipped_total", "reason" => "redelivered")
                .increment(1);
            return Ok(());
        }
        let key = format!("{name}/{}", m.concurrency_key);
        // A runbook without a cooldown has none to look up (one state-store read less per
        // alert); one that had a cooldown before an edit removed it runs again at once.
        if !manifest.cooldown.is_zero()
            && let Some(until) = self.state.cooldown(&key).await?
        {
            info!(runbook = %name, key = %key, until = %until, event_id = %event.id, "skipped: key in cooldown");
            metrics::counter!("firebreak_runs_skipped_total", "reason" => "cooldown").increment(1);
            return Ok(());
        }
        let actor = actor_of(event);
        if let Some(budget) = manifest.budget {
            let since = jiff::Timestamp::now()
                - jiff::SignedDuration::try_from(budget.per).unwrap_or(jiff::SignedDuration::MAX);
            let used = self.state.runs_since(&key, since).await?;
            if used >= budget.max_runs {
                let reason = format!(
                    "remediation budget spent: {used} runs for {key} within {:?} (max {})",
                    budget.per, budget.max_runs
                );
                warn!(runbook = %name, key = %key, "{reason}");
                self.journal_refusal(&name, &manifest.team, &actor, &event.id, "start", reason)
                    .await?;
                metrics::counter!("firebreak_runs_skipped_total", "reason" => "budget")
                    .increment(1);
                return Ok(());
            }
        }
        let run_id = uuid::Uuid::now_v7().to_string();
        if !self
            .state
            .try_lock(&key, &run_id, manifest.timeout + LOCK_SLACK)
            .await?
        {
            debug!(runbook = %name, key = %key, event_id = %event.id, "skipped: a run for this key is active");
            metrics::counter!("firebreak_runs_skipped_total", "reason" => "active").increment(1);
            return Ok(());
        }
        let ast = loaded
            .asts
            .get(&name)
            .cloned()
            .expect("every loaded runbook is compiled");
        let plan = RunPlan {
            run_id: run_id.clone(),
            runbook: name.clone(),
            team: manifest.team.clone(),
            namespaces: manifest.namespaces.clone(),
            ast,
            event: event.clone(),
            params: m.params,
            actor,
            dry_run: false,
            timeout: manifest.timeout,
            progress: self.progress.clone(),
            // Not a child of `shutdown`: a graceful stop suspends runs between steps (so the
            // next start resumes them) instead of cancelling them.
            cancel: CancellationToken::new(),
        };
        let handle = match self.runner.start(plan).await {
            Ok(h) => h,
            Err(e) => {
                let _ = self.state.unlock(&key, &run_id).await;
                return Err(e.into());
            }
        };
        metrics::counter!("firebreak_runs_started_total").increment(1);
        info!(run_id = %run_id, runbook = %name, key = %key, event_id = %event.id, "run started");
        if manifest.budget.is_some() {
            self.state.record_run(&key, jiff::Timestamp::now()).await?;
        }
        let cooldown = manifest.cooldown;
        let state = self.state.clone();
        self.tasks.spawn(async move {
            let outcome = handle.join().await;
            if outcome.suspended {
                // Keep the lock: it expires on its own, and the run resumes after the restart.
                return;
            }
            finish(&*state, &key, &outcome.run_id, cooldown).await;
            info!(run_id = %outcome.run_id, status = %outcome.status, error = outcome.error.as_deref().unwrap_or(""), "run finished");
            metrics::counter!("firebreak_runs_finished_total", "status" => outcome.status.to_string())
                .increment(1);
        });
        Ok(())
    }

    /// A matched runbook whose params cannot be filled: refused, and the refusal audited.
    async fn refuse_unstartable(&self, event: &Event, e: &MatchError) -> Result<(), StartError> {
        warn!(event_id = %event.id, error = %e, "matched runbook cannot start");
        let runbook = e.runbook().unwrap_or("-").to_string();
        let team = self
            .runbooks
            .current()
            .set
            .get(&runbook)
            .map(|r| r.manifest.team.clone())
            .unwrap_or_default();
        self.journal_refusal(
            &runbook,
            &team,
            &actor_of(event),
            &event.id,
            "start",
            e.to_string(),
        )
        .await?;
        metrics::counter!("firebreak_runs_skipped_total", "reason" => "params").increment(1);
        Ok(())
    }

    async fn journal_refusal(
        &self,
        runbook: &str,
        team: &str,
        actor: &str,
        event_id: &str,
        action: &str,
        reason: String,
    ) -> Result<(), firebreak_audit::AuditError> {
        let meta = Arc::new(RunMeta {
            run_id: uuid::Uuid::now_v7().to_string(),
            runbook: runbook.to_string(),
            team: team.to_string(),
            actor: actor.to_string(),
            event_id: event_id.to_string(),
        });
        self.journal
            .append(RecordDraft::new(
                meta,
                RecordBody::Refusal {
                    step: None,
                    action: action.to_string(),
                    reason,
                },
            ))
            .await
            .map(|_| ())
    }

    /// Resumes every run the journal shows as started but not finished (a crash or kill
    /// interrupted it). Finished steps are replayed from the journal, not repeated.
    pub async fn resume_unfinished(&self) -> usize {
        let loaded = self.runbooks.current();
        let mut resumed = 0;
        for run in self.journal.unfinished_runs() {
            if loaded.set.get(&run.runbook).is_none() {
                warn!(run_id = %run.run_id, runbook = %run.runbook, "cannot resume: runbook no longer loaded");
                continue;
            }
            let ast = loaded.asts[&run.runbook].clone();
            match self.runner.resume(&run.run_id, ast).await {
                Ok(handle) => {
                    resumed += 1;
                    info!(run_id = %run.run_id, runbook = %run.runbook, "run resumed");
                    // The concurrency key is not in the journal: the lock taken by the first
                    // attempt expires on its own, and no cooldown is set after a resumed run.
                    self.tasks.spawn(async move {
                        let outcome = handle.join().await;
                        if outcome.suspended {
                            return;
                        }
                        metrics::counter!("firebreak_runs_finished_total", "status" => outcome.status.to_string())
                            .increment(1);
                    });
                }
                Err(e) => {
                    error!(run_id = %run.run_id, error = %e, "cannot resume run");
                }
            }
        }
        resumed
    }
}

/// After a run: cooldown first, then unlock, so no second run slips in between.
async fn finish(state: &dyn StateStore, key: &str, run_id: &str, cooldown: Duration) {
    if !cooldown.is_zero() {
        let until = jiff::Timestamp::now()
            + jiff::SignedDuration::try_from(cooldown).unwrap_or(jiff::SignedDuration::MAX);
        if let Err(e) = state.set_cooldown(key, until).await {
            warn!(key = %key, error = %e, "could not set cooldown");
        }
    }
    if let Err(e) = state.unlock(key, run_id).await {
        warn!(key = %key, error = %e, "could not release concurrency lock; it expires on its own");
    }
}

/// Who a run is started by: the trigger's actor, else the event's source.
fn actor_of(event: &Event) -> String {
    event
        .manual_request()
        .map(|(_, _, actor)| actor.to_string())
        .unwrap_or_else(|| event.source.clone())
}

impl Dispatcher {
    /// Journals a refused manual trigger (not a member of the owner team, bad token).
    pub async fn journal_manual_refusal(
        &self,
        runbook: &str,
        team: &str,
        actor: &str,
        reason: String,
    ) {
        if let Err(e) = self
            .journal_refusal(runbook, team, actor, "-", "trigger", reason)
            .await
        {
            error!(error = %e, "could not journal a refused trigger");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runbook_folder_starts_empty_and_is_picked_up_when_it_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runbooks");
        let runbooks = Runbooks::load(&dir, None).unwrap();
        assert!(runbooks.current().set.is_empty());
        assert!(
            !runbooks.reload_if_changed().unwrap(),
            "nothing changed yet"
        );

        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("hello.yaml"),
            "name: hello\nteam: sre\ndescription: d\nnamespaces: [shop]\n",
        )
        .unwrap();
        std::fs::write(dir.join("hello.rhai"), "log(\"hi\");\n").unwrap();
        assert!(runbooks.reload_if_changed().unwrap());
        assert!(runbooks.current().set.get("hello").is_some());

        // A runbook that asks for approval is refused: there is no approval flow yet.
        std::fs::write(
            dir.join("gated.yaml"),
            "name: gated\nteam: sre\ndescription: d\nnamespaces: [shop]\napproval: true\n",
        )
        .unwrap();
        std::fs::write(dir.join("gated.rhai"), "log(\"hi\");\n").unwrap();
        let problems = runbooks.reload_if_changed().unwrap_err();
        assert!(problems[0].contains("approval"), "{problems:?}");
        std::fs::remove_file(dir.join("gated.yaml")).unwrap();
        std::fs::remove_file(dir.join("gated.rhai")).unwrap();

        // A broken edit is refused and the previous set keeps serving.
        std::fs::write(dir.join("hello.rhai"), "log(\"hi\";\n").unwrap();
        let problems = runbooks.reload_if_changed().unwrap_err();
        assert!(problems[0].contains("hello.rhai:1:"), "{problems:?}");
        assert!(runbooks.current().set.get("hello").is_some());
    }
}
