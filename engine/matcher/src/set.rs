//! A loaded directory of runbooks and the event → runbook matching over it.
//!
//! Start at [`RunbookSet::load_dir`], then [`RunbookSet::matches`]. Matching is indexed: at
//! load, each trigger goes into a bucket per (source, status) and, for alerts with an
//! `alertname="…"` matcher, under that alert name; an event only visits its bucket's
//! entries for its own alert name plus the entries without one. Labels are read borrowed
//! from the event, so an event that matches nothing allocates nothing.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use firebreak_event::{Event, SOURCE_ALERTMANAGER, SOURCE_MANUAL};
use serde_json::{Map, Value};

use crate::diag::{Diagnostic, MAX_YAML_BYTES, read_capped};
use crate::labels::MatchOp;
use crate::manifest::{Manifest, Source, StatusFilter, event_field};
use crate::params::ParamFrom;
use crate::teams::Teams;

/// Largest script file we read, in bytes.
pub const MAX_SCRIPT_BYTES: usize = 1024 * 1024;

/// One runbook: its checked manifest and its script text (compiled by the runtime).
#[derive(Debug, Clone)]
pub struct Runbook {
    /// The checked manifest.
    pub manifest: Manifest,
    /// Where the manifest was read from.
    pub yaml_path: PathBuf,
    /// Where the script was read from.
    pub script_path: PathBuf,
    /// The script's source text.
    pub script: String,
}

/// A runbook to start for an event: typed params and the rendered concurrency key.
#[derive(Debug, Clone)]
pub struct Match {
    /// The runbook.
    pub runbook: Arc<Runbook>,
    /// Params converted to their declared types (absent optional params are left out).
    pub params: Map<String, Value>,
    /// The rendered `concurrency` template. Not prefixed with the runbook name: two runbooks
    /// rendering the same key (same Deployment) exclude each other, which is the point.
    /// Without a template, the incident: `incident:<fingerprint>` for an event that has one
    /// (an alert), else `params:<name>=<value>,...` (a manual trigger for one target), else the
    /// runbook's name.
    pub concurrency_key: String,
}

/// Why a runbook that was asked for (by hand) or matched (by an event) cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// No runbook has this name (HTTP 404).
    #[error("unknown runbook {runbook:?}")]
    UnknownRunbook {
        /// The name asked for.
        runbook: String,
    },
    /// A hand-given param the manifest does not declare.
    #[error("runbook {runbook}: unknown param `{param}`")]
    UnknownParam {
        /// The runbook.
        runbook: String,
        /// The undeclared param.
        param: String,
    },
    /// A required param has no value and no default.
    #[error("runbook {runbook}: required param `{param}` has no value ({from})")]
    MissingParam {
        /// The runbook.
        runbook: String,
        /// The param.
        param: String,
        /// Where it was looked for, e.g. "label `deployment` is absent".
        from: String,
    },
    /// A value does not fit the param's type.
    #[error("runbook {runbook}: param `{param}`: {message}")]
    BadParam {
        /// The runbook.
        runbook: String,
        /// The param.
        param: String,
        /// Why the value does not fit.
        message: String,
    },
    /// A hand-given namespace (the `namespace` or `ns` param) outside the runbook's
    /// `namespaces` (HTTP 403).
    #[error("runbook {runbook}: namespace `{namespace}` is outside its namespaces [{allowed}]")]
    NamespaceNotAllowed {
        /// The runbook.
        runbook: String,
        /// The namespace asked for.
        namespace: String,
        /// The runbook's namespaces, joined.
        allowed: String,
    },
    /// A `manual` event without `data.runbook`, `data.params` or `data.actor`.
    #[error("manual event {event_id} lacks data.runbook, data.params or data.actor")]
    MalformedManualEvent {
        /// The event's id.
        event_id: String,
    },
}

impl MatchError {
    /// The HTTP status for a manual trigger refused with this error: 404 for an unknown
    /// runbook, 403 for a namespace the runbook may not touch, 400 for params that do not fit
    /// the manifest (and a malformed event).
    pub fn http_status(&self) -> u16 {
        match self {
            MatchError::UnknownRunbook { .. } => 404,
            MatchError::NamespaceNotAllowed { .. } => 403,
            MatchError::UnknownParam { .. }
            | MatchError::MissingParam { .. }
            | MatchError::BadParam { .. }
            | MatchError::MalformedManualEvent { .. } => 400,
        }
    }

    /// The runbook the error is about, when known.
    pub fn runbook(&self) -> Option<&str> {
        match self {
            MatchError::UnknownRunbook { runbook }
            | MatchError::UnknownParam { runbook, .. }
            | MatchError::MissingParam { runbook, .. }
            | MatchError::BadParam { runbook, .. }
            | MatchError::NamespaceNotAllowed { runbook, .. } => Some(runbook),
            MatchError::MalformedManualEvent { .. } => None,
        }
    }
}

/// Where a trigger sits in the index.
#[derive(Debug, Clone, Copy)]
struct Entry {
    runbook: usize,
    trigger: usize,
}

/// The triggers one kind of event can match.
#[derive(Debug, Default)]
struct Bucket {
    by_alertname: HashMap<String, Vec<Entry>>,
    rest: Vec<Entry>,
}

impl Bucket {
    fn add(&mut self, runbook: &Runbook, entry: Entry) {
        let trigger = &runbook.manifest.triggers[entry.trigger];
        let alertname = trigger
            .matchers
            .iter()
            .find(|m| m.name == "alertname" && m.op == MatchOp::Equal);
        match alertname {
            Some(m) => self
                .by_alertname
                .entry(m.value.clone())
                .or_default()
                .push(entry),
            None => self.rest.push(entry),
        }
    }

    fn candidates<'a>(&'a self, alertname: Option<&str>) -> impl Iterator<Item = &'a Entry> {
        let named = alertname
            .and_then(|name| self.by_alertname.get(name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        named.iter().chain(&self.rest)
    }
}

/// Every runbook of a directory, checked, indexed for matching. Cheap to share in an `Arc`
/// and to replace as a whole on reload.
#[derive(Debug, Default)]
pub struct RunbookSet {
    /// Sorted by name, so matches come out in name order.
    runbooks: Vec<Arc<Runbook>>,
    firing: Bucket,
    resolved: Bucket,
    k8s: Bucket,
    teams: Option<Teams>,
}

impl RunbookSet {
    /// Loads every `*.yaml` / `*.yml` manifest of `dir` (except `teams.yaml` / `teams.yml`,
    /// which may sit beside them, and hidden files) with its script, in single-tenant mode. Returns **all**
    /// problems of all files, sorted by file and position.
    pub fn load_dir(dir: &Path) -> Result<RunbookSet, Vec<Diagnostic>> {
        RunbookSet::load_dir_with_teams(dir, None)
    }

    /// As [`RunbookSet::load_dir`]; with `teams`, also checks that each runbook's team
    /// exists and its namespaces are within the team's, and keeps the teams for
    /// [`RunbookSet::teams`].
    pub fn load_dir_with_teams(
        dir: &Path,
        teams: Option<&Teams>,
    ) -> Result<RunbookSet, Vec<Diagnostic>> {
        let mut diags = Vec::new();
        let files = manifest_files(dir).map_err(|e| {
            vec![Diagnostic::new(
                dir,
                1,
                1,
                format!("cannot read runbook folder: {e}"),
            )]
        })?;
        let mut runbooks: BTreeMap<String, Runbook> = BTreeMap::new();
        for file in files {
            if let Some(runbook) = load_one(dir, &file, teams, &runbooks, &mut diags) {
                runbooks.insert(runbook.manifest.name.clone(), runbook);
            }
        }
        if !diags.is_empty() {
            diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            return Err(diags);
        }
        Ok(RunbookSet::from_runbooks(
            runbooks.into_values().collect(),
            teams.cloned(),
        ))
    }

    fn from_runbooks(runbooks: Vec<Runbook>, teams: Option<Teams>) -> RunbookSet {
        let mut set = RunbookSet {
            runbooks: runbooks.into_iter().map(Arc::new).collect(),
            teams,
            ..RunbookSet::default()
        };
        for (r, runbook) in set.runbooks.iter().enumerate() {
            for (t, trigger) in runbook.manifest.triggers.iter().enumerate() {
                let entry = Entry {
                    runbook: r,
                    trigger: t,
                };
                match (trigger.source, trigger.status) {
                    (Source::Alertmanager, StatusFilter::Firing) => set.firing.add(runbook, entry),
                    (Source::Alertmanager, StatusFilter::Resolved) => {
                        set.resolved.add(runbook, entry)
                    }
                    (Source::Alertmanager, StatusFilter::Any) => {
                        set.firing.add(runbook, entry);
                        set.resolved.add(runbook, entry);
                    }
                    (Source::K8s, _) => set.k8s.add(runbook, entry),
                    (Source::Manual, _) => {}
                }
            }
        }
        set
    }

    /// The runbook of this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Runbook>> {
        self.runbooks
            .binary_search_by(|r| r.manifest.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.runbooks[i])
    }

    /// Every runbook, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Runbook>> {
        self.runbooks.iter()
    }

    /// How many runbooks are loaded.
    pub fn len(&self) -> usize {
        self.runbooks.len()
    }

    /// Whether no runbook is loaded.
    pub fn is_empty(&self) -> bool {
        self.runbooks.is_empty()
    }

    /// The teams this set was checked against; `None` in single-tenant mode.
    pub fn teams(&self) -> Option<&Teams> {
        self.teams.as_ref()
    }

    /// The cluster-scoped actions `team` is granted (teams file `cluster_actions`); `None`
    /// without a teams file (single tenant: nothing to grant).
    pub fn cluster_grants(&self, team: &str) -> Option<Vec<String>> {
        self.teams.as_ref().map(|teams| {
            teams
                .get(team)
                .map(|t| t.cluster_actions.clone())
                .unwrap_or_default()
        })
    }

    /// The runbooks to start for `event`, one entry per runbook (several matching triggers
    /// of one runbook start it once), in runbook-name order.
    ///
    /// A runbook whose trigger matched but whose params cannot be filled (a required label
    /// is absent, a value has the wrong type) is **reported** as an `Err` entry, never
    /// silently dropped: the dispatcher should log and audit it.
    ///
    /// - `alertmanager` events: triggers of that source whose status filter admits the
    ///   alert's status; matchers see `data.labels`.
    /// - `k8s` events (and other non-manual sources): `k8s` triggers; matchers see
    ///   `data.labels`, then the top-level string fields of `data` (e.g. `reason`), then
    ///   `namespace` from the envelope.
    /// - every source: an event whose `namespace` is set and not one of the runbook's
    ///   `namespaces` does not match (see [`crate::manifest`]).
    /// - `manual` events: exactly one entry, [`RunbookSet::resolve_manual`] of the event's
    ///   `data.runbook` and `data.params` (any runbook can be started by hand).
    pub fn matches(&self, event: &Event) -> Vec<Result<Match, MatchError>> {
        if event.source == SOURCE_MANUAL {
            return vec![match event.manual_request() {
                Some((runbook, params, _actor)) => self.resolve_manual(runbook, params),
                None => Err(MatchError::MalformedManualEvent {
                    event_id: event.id.clone(),
                }),
            }];
        }
        let (bucket, alertname) = if event.source == SOURCE_ALERTMANAGER {
            let bucket = match event.status() {
                "firing" => &self.firing,
                "resolved" => &self.resolved,
                _ => return Vec::new(),
            };
            (bucket, event.label("alertname"))
        } else {
            (&self.k8s, None)
        };
        let mut matched: Vec<usize> = Vec::new();
        for entry in bucket.candidates(alertname) {
            if matched.contains(&entry.runbook) {
                continue;
            }
            let manifest = &self.runbooks[entry.runbook].manifest;
            let in_scope = event
                .namespace
                .as_deref()
                .is_none_or(|ns| manifest.namespaces.iter().any(|n| n == ns));
            let trigger = &manifest.triggers[entry.trigger];
            if in_scope
                && trigger
                    .matchers
                    .iter()
                    .all(|m| m.matches_value(event_label(event, &m.name)))
            {
                matched.push(entry.runbook);
            }
        }
        matched.sort_unstable();
        matched
            .into_iter()
            .map(|r| self.fill(&self.runbooks[r], event))
            .collect()
    }

    /// Warnings about runbooks that load but may not do what their authors expect: a runbook
    /// that acts on a target taken from the event (a `from:` param) without a `concurrency`
    /// key runs once per alert fingerprint, so two different alerts about the same target can
    /// start two runs side by side.
    pub fn warnings(&self) -> Vec<String> {
        self.runbooks
            .iter()
            .filter(|rb| rb.manifest.concurrency.is_none())
            .filter_map(|rb| {
                let targets: Vec<&str> = rb
                    .manifest
                    .params
                    .iter()
                    .filter(|(_, p)| !matches!(p.from, ParamFrom::Given))
                    .map(|(name, _)| name.as_str())
                    .collect();
                (!targets.is_empty()).then(|| {
                    format!(
                        "{}: runbook {} acts on a target taken from the event ({}) but has no \
                         `concurrency` key: each alert fingerprint gets its own run, so two \
                         alerts about the same target can run side by side; set e.g. \
                         concurrency: \"{}\"",
                        rb.yaml_path.display(),
                        rb.manifest.name,
                        targets.join(", "),
                        targets
                            .iter()
                            .map(|t| format!("{{{{params.{t}}}}}"))
                            .collect::<Vec<_>>()
                            .join("/")
                    )
                })
            })
            .collect()
    }

    /// The run a person asks for: the runbook by name, with hand-given params checked
    /// against the manifest (unknown param, missing required param and wrong type are
    /// errors; strings are converted to the declared type, so `--param replicas=3` works).
    /// Whether the person may start it is [`Teams::can_trigger`]'s question.
    pub fn resolve_manual(
        &self,
        runbook: &str,
        given: &Map<String, Value>,
    ) -> Result<Match, MatchError> {
        let rb = self
            .get(runbook)
            .ok_or_else(|| MatchError::UnknownRunbook {
                runbook: runbook.to_owned(),
            })?;
        let manifest = &rb.manifest;
        if let Some(unknown) = given.keys().find(|k| !manifest.params.contains_key(*k)) {
            return Err(MatchError::UnknownParam {
                runbook: runbook.to_owned(),
                param: unknown.clone(),
            });
        }
        let mut params = Map::new();
        for (name, spec) in &manifest.params {
            let value = match given.get(name) {
                Some(Value::Null) | None => None,
                Some(v) => Some(spec.ty.coerce(v).map_err(|message| MatchError::BadParam {
                    runbook: runbook.to_owned(),
                    param: name.clone(),
                    message,
                })?),
            };
            match value.or_else(|| spec.default.clone()) {
                Some(v) => {
                    params.insert(name.clone(), v);
                }
                None if spec.required => {
                    return Err(MatchError::MissingParam {
                        runbook: runbook.to_owned(),
                        param: name.clone(),
                        from: "not given by hand and no default".into(),
                    });
                }
                None => {}
            }
        }
        // The person asks for a target; the runbook's namespaces bound what it may touch.
        for key in ["namespace", "ns"] {
            if let Some(ns) = params.get(key).and_then(Value::as_str)
                && !manifest.namespaces.iter().any(|allowed| allowed == ns)
            {
                return Err(MatchError::NamespaceNotAllowed {
                    runbook: runbook.to_owned(),
                    namespace: ns.to_owned(),
                    allowed: manifest.namespaces.join(", "),
                });
            }
        }
        Ok(self.finish(rb, params, None))
    }

    fn fill(&self, rb: &Arc<Runbook>, event: &Event) -> Result<Match, MatchError> {
        let manifest = &rb.manifest;
        let mut params = Map::new();
        for (name, spec) in &manifest.params {
            let (raw, from) = match &spec.from {
                ParamFrom::Label(key) => (
                    event_label(event, key)
                        .filter(|v| !v.is_empty())
                        .map(|v| Value::String(v.to_owned())),
                    format!("label `{key}` is absent"),
                ),
                ParamFrom::Annotation(key) => (
                    event.annotation(key).map(|v| Value::String(v.to_owned())),
                    format!("annotation `{key}` is absent"),
                ),
                ParamFrom::Event(path) => (
                    event_field(event, path),
                    format!("event field `{path}` is absent"),
                ),
                ParamFrom::Given => (None, "not taken from the event and no default".into()),
            };
            let value = match raw {
                Some(v) => Some(spec.ty.coerce(&v).map_err(|message| MatchError::BadParam {
                    runbook: manifest.name.clone(),
                    param: name.clone(),
                    message,
                })?),
                None => spec.default.clone(),
            };
            match value {
                Some(v) => {
                    params.insert(name.clone(), v);
                }
                None if spec.required => {
                    return Err(MatchError::MissingParam {
                        runbook: manifest.name.clone(),
                        param: name.clone(),
                        from,
                    });
                }
                None => {}
            }
        }
        Ok(self.finish(rb, params, event.fingerprint.as_deref()))
    }

    fn finish(
        &self,
        rb: &Arc<Runbook>,
        params: Map<String, Value>,
        fingerprint: Option<&str>,
    ) -> Match {
        let concurrency_key = match (&rb.manifest.concurrency, fingerprint) {
            (Some(template), _) => template.render(&rb.manifest.name, &params),
            (None, Some(fingerprint)) => format!("incident:{fingerprint}"),
            (None, None) if !params.is_empty() => {
                let pairs: Vec<String> = params
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={s}"),
                        other => format!("{k}={other}"),
                    })
                    .collect();
                format!("params:{}", pairs.join(","))
            }
            (None, None) => rb.manifest.name.clone(),
        };
        Match {
            runbook: Arc::clone(rb),
            params,
            concurrency_key,
        }
    }
}

/// A label as triggers and `from: label` params see it (rules in [`RunbookSet::matches`]).
fn event_label<'e>(event: &'e Event, name: &str) -> Option<&'e str> {
    if let Some(v) = event.label(name) {
        return Some(v);
    }
    if event.source == SOURCE_ALERTMANAGER || event.source == SOURCE_MANUAL {
        return None;
    }
    match event.data.get(name).and_then(Value::as_str) {
        Some(v) => Some(v),
        None if name == "namespace" => event.namespace.as_deref(),
        None => None,
    }
}

fn manifest_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let is_teams = path.file_stem().is_some_and(|s| s == "teams");
        // Editors leave hidden files (`.name.yaml` backups, lock files) beside the real ones.
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if is_yaml && !is_teams && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// An approval policy's teams exist and have enough people to ever approve.
fn check_approvers<T>(
    file: &Path,
    node: &serde_saphyr::Spanned<T>,
    approval: &crate::manifest::Approval,
    teams: &Teams,
    diags: &mut Vec<Diagnostic>,
) {
    let mut people = std::collections::BTreeSet::new();
    for name in &approval.approvers {
        match teams.get(name) {
            None => diags.push(Diagnostic::spanned(
                file,
                node,
                format!("approval.approvers: unknown team {name:?} (not in the teams file)"),
            )),
            Some(team) => people.extend(team.members.iter().map(|m| m.name.as_str())),
        }
    }
    if (people.len() as u64) < u64::from(approval.required) {
        diags.push(Diagnostic::spanned(
            file,
            node,
            format!(
                "approval.required is {} but the approver teams ({}) have {} member(s): \
                 no run could ever be approved",
                approval.required,
                approval.approvers.join(", "),
                people.len()
            ),
        ));
    }
}

fn load_one(
    dir: &Path,
    file: &Path,
    teams: Option<&Teams>,
    loaded: &BTreeMap<String, Runbook>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Runbook> {
    let text = match read_capped(file, MAX_YAML_BYTES) {
        Ok(text) => text,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    let (manifest, raw) = match Manifest::parse_with_positions(file, &text) {
        Ok(parsed) => parsed,
        Err(mut found) => {
            diags.append(&mut found);
            return None;
        }
    };
    let before = diags.len();
    if let Some(other) = loaded.get(&manifest.name) {
        diags.push(Diagnostic::spanned(
            file,
            &raw.name,
            format!(
                "duplicate runbook name {:?}, also defined in {}",
                manifest.name,
                other.yaml_path.display()
            ),
        ));
    }
    if let Some(teams) = teams {
        match teams.get(&manifest.team) {
            None => diags.push(Diagnostic::spanned(
                file,
                &raw.team,
                format!("unknown team {:?} (not in the teams file)", manifest.team),
            )),
            Some(team) => {
                for ns in &raw.namespaces.value {
                    if !team.namespaces.contains(&ns.value) {
                        diags.push(Diagnostic::spanned(
                            file,
                            ns,
                            format!(
                                "namespace {:?} is not one of team {}'s namespaces ({})",
                                ns.value,
                                team.name,
                                team.namespaces.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if let (Some(approval), Some(node)) = (&manifest.approval, &raw.approval) {
            check_approvers(file, node, approval, teams, diags);
        }
    }
    let script_path = dir.join(&manifest.script);
    let script = match read_capped(&script_path, MAX_SCRIPT_BYTES) {
        Ok(script) => Some(script),
        Err(d) => {
            let problem = if script_path.exists() {
                d.message
            } else {
                format!("script file {} not found", script_path.display())
            };
            diags.push(match &raw.script {
                Some(node) => Diagnostic::spanned(file, node, problem),
                None => Diagnostic::new(
                    file,
                    1,
                    1,
                    format!(
                        "{problem} (the default script is <manifest name>.rhai; set `script:`)"
                    ),
                ),
            });
            None
        }
    };
    if diags.len() > before {
        return None;
    }
    Some(Runbook {
        manifest,
        yaml_path: file.to_owned(),
        script_path,
        script: script?,
    })
}

/// A cheap change detector for hot reload: a hash of where `dir` really is (symlinks
/// resolved) and of the names, sizes and modification times of every file in it (not
/// recursive). Poll it; when it changes, call
/// [`RunbookSet::load_dir`] and keep the previous set if that fails.
pub fn fingerprint_dir(dir: &Path) -> io::Result<u64> {
    let mut hasher = DefaultHasher::new();
    // Where the folder really is: git-sync publishes each commit as a new worktree and swaps a
    // symlink to it, so a sync changes this even when every file kept its size and time.
    std::fs::canonicalize(dir)?.hash(&mut hasher);
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos());
        entries.push((entry.file_name(), meta.len(), modified));
    }
    entries.sort();
    entries.hash(&mut hasher);
    Ok(hasher.finish())
}
