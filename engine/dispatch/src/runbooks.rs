//! The runbooks in force: every manifest checked, every script compiled and its connector
//! calls checked, swapped whole on reload. Start at [`Loaded::load`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use firebreak_connector::ActionSpec;
use firebreak_matcher::{RunbookSet, fingerprint_dir};
use firebreak_runtime::{CancellationToken, Script, check_calls, compile};
use tracing::{error, info, warn};

/// The actions scripts may call, by connector module (`k8s`, `prom`, ...): what `load` checks
/// every `module::action(...)` call against.
pub type ConnectorSpecs = Vec<(&'static str, Vec<ActionSpec>)>;

/// Runbooks with their compiled scripts: what one reload produces.
pub struct Loaded {
    pub set: RunbookSet,
    pub asts: HashMap<String, Arc<Script>>,
    /// Things that load but deserve a look (see [`RunbookSet::warnings`]).
    pub warnings: Vec<String>,
    /// Every team this engine knows, sorted: the runbooks' and the teams file's, and those
    /// of every set loaded before this one since the engine started.
    teams: Vec<String>,
}

impl Loaded {
    /// Loads and checks every manifest, compiles every script and checks each connector call
    /// against `connectors` (an unknown action or a wrong number of arguments is an error
    /// here, not mid-incident). All problems are returned, each as `file:line:col: message`.
    pub fn load(
        dir: &Path,
        teams: Option<&Path>,
        connectors: &ConnectorSpecs,
    ) -> Result<Loaded, Vec<String>> {
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
            match compile(&rb.script_path, &rb.script) {
                Ok(ast) => {
                    problems.extend(check_calls(&rb.script_path, &ast, connectors));
                    asts.insert(rb.manifest.name.clone(), ast);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if problems.is_empty() {
            let warnings = set.warnings();
            let mut teams: Vec<String> = set.iter().map(|rb| rb.manifest.team.clone()).collect();
            if let Some(file) = set.teams() {
                teams.extend(file.iter().map(|team| team.name.clone()));
            }
            let mut loaded = Loaded {
                set,
                asts,
                warnings,
                teams: Vec::new(),
            };
            loaded.know_teams(teams);
            Ok(loaded)
        } else {
            Err(problems)
        }
    }

    /// No runbooks at all.
    pub fn empty() -> Loaded {
        Loaded {
            set: RunbookSet::default(),
            asts: HashMap::new(),
            warnings: Vec::new(),
            teams: Vec::new(),
        }
    }

    /// Adds `teams` to the teams known here (kept sorted, each once).
    fn know_teams(&mut self, teams: impl IntoIterator<Item = String>) {
        self.teams.extend(teams);
        self.teams.sort();
        self.teams.dedup();
    }

    /// The teams whose audit subjects may hold a run of a runbook of `team`, the likeliest
    /// first: `team`, then every other team known here (the runbook may have changed teams
    /// since the run started), for [`firebreak_bus::RunLeases::run_lines`]. A run of a team
    /// this engine has not known since it started (its runbooks moved to other teams before
    /// that, and the teams file does not name it) is not looked for: searching every team
    /// costs the audit stream a match of each subject it holds, per lookup.
    pub fn teams_for(&self, team: Option<&str>) -> Vec<String> {
        let mut teams = Vec::with_capacity(self.teams.len() + 1);
        teams.extend(team.map(str::to_owned));
        teams.extend(
            self.teams
                .iter()
                .filter(|t| Some(t.as_str()) != team)
                .cloned(),
        );
        teams
    }
}

/// What a reload watches: the runbook folder's entries, and the teams file (a revoked token
/// must stop working without a restart).
fn fingerprint(dir: &Path, teams: Option<&Path>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    fingerprint_dir(dir).unwrap_or_default().hash(&mut hasher);
    if let Some(teams) = teams {
        std::fs::read(teams).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// The runbooks in force, swapped whole on reload; a broken edit keeps the previous set.
pub struct Runbooks {
    dir: PathBuf,
    teams: Option<PathBuf>,
    connectors: ConnectorSpecs,
    current: RwLock<Arc<Loaded>>,
    fingerprint: AtomicU64,
}

impl Runbooks {
    pub fn load(
        dir: &Path,
        teams: Option<&Path>,
        connectors: ConnectorSpecs,
    ) -> Result<Runbooks, Vec<String>> {
        let fingerprint = fingerprint(dir, teams);
        // A missing folder is not an error for a server: it starts empty and picks the folder
        // up when it appears (the reload loop watches it). `firebreak check` still refuses it.
        let loaded = if dir.exists() {
            Loaded::load(dir, teams, &connectors)?
        } else {
            warn!(dir = %dir.display(), "no runbook folder: serving with no runbooks until it appears");
            Loaded::empty()
        };
        for w in &loaded.warnings {
            warn!(warning = %w, "runbook warning");
        }
        Ok(Runbooks {
            dir: dir.to_owned(),
            teams: teams.map(Path::to_owned),
            connectors,
            current: RwLock::new(Arc::new(loaded)),
            fingerprint: AtomicU64::new(fingerprint),
        })
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.read().expect("runbook lock poisoned").clone()
    }

    /// Reloads when the folder or the teams file changed. A set that fails to load is refused (logged with every
    /// problem) and the previous one keeps serving.
    pub fn reload_if_changed(&self) -> Result<bool, Vec<String>> {
        let now = fingerprint(&self.dir, self.teams.as_deref());
        if self.fingerprint.swap(now, Ordering::SeqCst) == now {
            return Ok(false);
        }
        let mut loaded = Loaded::load(&self.dir, self.teams.as_deref(), &self.connectors)?;
        // Runs started before the reload keep their records under the team they had then.
        loaded.know_teams(self.current().teams.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runbook_folder_starts_empty_and_is_picked_up_when_it_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runbooks");
        let runbooks = Runbooks::load(&dir, None, Vec::new()).unwrap();
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

        // A policy that could never let anything run is refused with its reasons.
        std::fs::write(
            dir.join("gated.yaml"),
            "name: gated\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
             approval: { required: 0, expires: 0s, on_expiry: approve }\n",
        )
        .unwrap();
        std::fs::write(dir.join("gated.rhai"), "log(\"hi\");\n").unwrap();
        let problems = runbooks.reload_if_changed().unwrap_err().join("\n");
        assert!(problems.contains("approval.required"), "{problems}");
        assert!(problems.contains("approval.expires"), "{problems}");
        assert!(problems.contains("on_expiry: deny"), "{problems}");
        // `approval: true` is one member of the team within 30 minutes.
        std::fs::write(
            dir.join("gated.yaml"),
            "name: gated\nteam: sre\ndescription: d\nnamespaces: [shop]\napproval: true\n",
        )
        .unwrap();
        assert!(runbooks.reload_if_changed().unwrap());
        let current = runbooks.current();
        let approval = current.set.get("gated").unwrap().manifest.approval.clone();
        assert_eq!(
            approval,
            Some(firebreak_matcher::Approval {
                approvers: vec!["sre".into()],
                required: 1,
                expires: firebreak_matcher::DEFAULT_APPROVAL_EXPIRY,
                self_approval: false,
            })
        );
        std::fs::remove_file(dir.join("gated.yaml")).unwrap();
        std::fs::remove_file(dir.join("gated.rhai")).unwrap();
        assert!(runbooks.reload_if_changed().unwrap());

        // A broken edit is refused and the previous set keeps serving.
        std::fs::write(dir.join("hello.rhai"), "log(\"hi\";\n").unwrap();
        let problems = runbooks.reload_if_changed().unwrap_err();
        assert!(problems[0].contains("hello.rhai:1:"), "{problems:?}");
        assert!(runbooks.current().set.get("hello").is_some());
    }

    /// A run's records are on its team's audit subject as the team was when it started: a
    /// runbook moved to another team leaves its runs of before under the old team, which is
    /// still looked under after the reload (the teams file does not name it, no runbook has it
    /// any more), after the new one.
    #[test]
    fn a_team_a_runbook_left_is_still_known_after_the_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let write = |team: &str| {
            std::fs::write(
                dir.join("hello.yaml"),
                format!("name: hello\nteam: {team}\ndescription: d\nnamespaces: [shop]\n"),
            )
            .unwrap()
        };
        write("ml-a");
        std::fs::write(dir.join("hello.rhai"), "log(\"hi\");\n").unwrap();
        let runbooks = Runbooks::load(dir, None, Vec::new()).unwrap();
        assert_eq!(runbooks.current().teams_for(Some("ml-a")), ["ml-a"]);
        write("ml-b");
        assert!(runbooks.reload_if_changed().unwrap());
        assert_eq!(runbooks.current().teams_for(Some("ml-b")), ["ml-b", "ml-a"]);
        assert_eq!(runbooks.current().teams_for(None), ["ml-a", "ml-b"]);
    }

    #[test]
    fn connector_calls_are_checked_against_the_actions_at_load() {
        use firebreak_connector::{Effect, ParamSpec, ParamType};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(
            dir.join("undo.yaml"),
            "name: undo\nteam: sre\ndescription: d\nnamespaces: [shop]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("undo.rhai"),
            "k8s::rollback(\"shop\", \"web\");\nk8s::rolback(\"shop\", \"web\");\nk8s::rollback(\"shop\");\nhelm::upgrade(1);\n",
        )
        .unwrap();
        let specs: ConnectorSpecs = vec![(
            "k8s",
            vec![ActionSpec {
                name: "rollback",
                doc: "",
                effect: Effect::Mutate,
                params: vec![
                    ParamSpec::required("ns", ParamType::String, ""),
                    ParamSpec::required("deploy", ParamType::String, ""),
                    ParamSpec::optional("revision", ParamType::Int, ""),
                ],
                namespace_param: Some("ns"),
                waits: None,
                rbac: vec![],
                errors: vec![],
                example: "",
            }],
        )];
        let problems = Loaded::load(dir, None, &specs).err().expect("refused");
        let path = dir.join("undo.rhai").display().to_string();
        assert_eq!(
            problems,
            vec![
                format!(
                    "{path}:2:6: `k8s::rolback` is not an action of the k8s connector; did you mean `k8s::rollback`?"
                ),
                format!(
                    "{path}:3:6: `k8s::rollback` takes 2 to 3 arguments (ns, deploy, revision), not 1"
                ),
                format!("{path}:4:7: `helm::upgrade`: no connector `helm` (known: k8s)"),
            ]
        );
    }

    /// Runbooks reach a cluster as a mounted ConfigMap (the kubelet writes each version into a
    /// new `..<timestamp>` folder and swaps the `..data` symlink the file links go through) or
    /// through a git-sync sidecar (each commit a new worktree, a `current` symlink swapped to
    /// it). Either swap is a reload, even when the edited file keeps its size.
    #[test]
    fn configmap_and_git_sync_symlink_swaps_are_reloaded() {
        use std::os::unix::fs::symlink;
        let manifest = "name: hello\nteam: sre\ndescription: d\nnamespaces: [shop]\n";
        let version = |dir: &Path, word: &str| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("hello.yaml"), manifest).unwrap();
            std::fs::write(dir.join("hello.rhai"), format!("log(\"{word}\");\n")).unwrap();
        };
        let swap = |link: &Path, to: &str| {
            let tmp = link.parent().unwrap().join("link-being-swapped");
            symlink(to, &tmp).unwrap();
            std::fs::rename(&tmp, link).unwrap();
        };
        let script = |rb: &Runbooks| rb.current().set.get("hello").unwrap().script.clone();

        // The ConfigMap volume's layout.
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("configmap");
        version(&mount.join("..2026_12_03_08_00_00.1"), "one");
        symlink("..2026_12_03_08_00_00.1", mount.join("..data")).unwrap();
        for file in ["hello.yaml", "hello.rhai"] {
            symlink(format!("..data/{file}"), mount.join(file)).unwrap();
        }
        let runbooks = Runbooks::load(&mount, None, Vec::new()).unwrap();
        assert!(script(&runbooks).contains("one"));
        version(&mount.join("..2026_12_03_08_01_00.2"), "two");
        swap(&mount.join("..data"), "..2026_12_03_08_01_00.2");
        std::fs::remove_dir_all(mount.join("..2026_12_03_08_00_00.1")).unwrap();
        assert!(
            runbooks.reload_if_changed().unwrap(),
            "the ConfigMap update"
        );
        assert!(script(&runbooks).contains("two"));

        // git-sync's layout: --root=/git --link=current, runbooks/ inside the repository.
        let root = tmp.path().join("git");
        version(&root.join(".worktrees/aaaa/runbooks"), "one");
        symlink(".worktrees/aaaa", root.join("current")).unwrap();
        let runbooks = Runbooks::load(&root.join("current/runbooks"), None, Vec::new()).unwrap();
        assert!(script(&runbooks).contains("one"));
        assert!(!runbooks.reload_if_changed().unwrap(), "nothing synced yet");
        version(&root.join(".worktrees/bbbb/runbooks"), "two");
        swap(&root.join("current"), ".worktrees/bbbb");
        assert!(runbooks.reload_if_changed().unwrap(), "the new commit");
        assert!(script(&runbooks).contains("two"));
    }

    /// The teams file is reloaded with the runbooks: a revoked token stops working at the next
    /// poll, without a restart.
    #[test]
    fn a_changed_teams_file_is_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runbooks");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("hello.yaml"),
            "name: hello\nteam: sre\ndescription: d\nnamespaces: [shop]\n",
        )
        .unwrap();
        std::fs::write(dir.join("hello.rhai"), "log(\"hi\");\n").unwrap();
        let teams = tmp.path().join("teams.yaml");
        let with = |tokens: &str| {
            format!(
                "teams:\n  - name: sre\n    namespaces: [shop]\n    members:\n      \
                 - name: ann\n        tokens: [{tokens}]\n"
            )
        };
        std::fs::write(&teams, with("ann-token-0001")).unwrap();
        let runbooks = Runbooks::load(&dir, Some(&teams), Vec::new()).unwrap();
        let member = |rb: &Runbooks, token: &str| {
            rb.current()
                .set
                .teams()
                .and_then(|t| t.member_by_token(token).map(|(_, m)| m.name.clone()))
        };
        assert_eq!(member(&runbooks, "ann-token-0001").as_deref(), Some("ann"));
        std::fs::write(&teams, with("ann-token-0002")).unwrap();
        assert!(
            runbooks.reload_if_changed().unwrap(),
            "the teams file changed"
        );
        assert_eq!(member(&runbooks, "ann-token-0001"), None, "revoked");
        assert_eq!(member(&runbooks, "ann-token-0002").as_deref(), Some("ann"));
    }
}
