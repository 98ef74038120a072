//! The runbook manifest (`NAME.yaml`): its YAML schema ([`raw`], strict, with positions) and
//! the checked form the engine uses ([`Manifest`]). Start at [`Manifest::parse`].
//!
//! Schema (every key is checked; unknown keys are errors):
//!
//! ```yaml
//! name: model-latency-rollback          # required; [A-Za-z0-9_-]+
//! team: ml-platform                     # required; owner team, [A-Za-z0-9_-]+
//! description: Roll a model back ...    # required
//! namespaces: [team-a]                  # required, non-empty; DNS labels
//! triggers:                             # optional; none = started by hand only
//!   - source: alertmanager              # alertmanager | k8s | manual
//!     status: firing                    # firing | resolved | any; default firing for
//!                                       #   alertmanager, any (and only any) otherwise
//!     match: ['alertname="X"', 'severity=~"critical|page"', '{a="b", c!~"d"}']
//! params:                               # optional
//!   namespace: { from: label, key: namespace, type: string, required: true }
//!   max_wait: { type: duration, default: 2m, description: how long to wait }
//! concurrency: "{{params.namespace}}/{{params.deployment}}"  # default: the incident
//! cooldown: 10m                         # default 0 (none)
//! timeout: 5m                           # default 5m
//! approval: false                       # default false; true = one member of the team, 30m
//! approval:                             # or a policy:
//!   approvers: [ml-platform, sre]       #   teams whose members may approve; default: team
//!   required: 2                         #   distinct people; default 1
//!   expires: 30m                        #   default 30m; then the run ends as expired
//!   on_expiry: deny                     #   the only choice: nothing runs unapproved
//!   self_approval: false                #   may the requester approve; default false
//! allow_during_freeze: false            # may run mutations in a freeze window (approved)
//! budget: { max_runs: 3, per: 1h }      # optional
//! script: model-latency-rollback.rhai   # default: <file stem>.rhai, beside the manifest
//! ```
//!
//! Param `from`: `label`, `annotation`, `event` (with `key` defaulting to the param name)
//! or absent (given by hand on manual triggers, else the default).
//!
//! A trigger is implicitly scoped to the runbook's `namespaces`: an event whose namespace
//! is known (an alert's `namespace` label, a Kubernetes event's namespace) and not listed
//! never matches, since every action there would be refused anyway. Events without a
//! namespace (cluster-scoped objects, alerts without the label) are not filtered.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::diag::Diagnostic;
use crate::duration::parse_duration;
use crate::labels::{LabelMatcher, parse_matchers};
use crate::params::{EVENT_FIELDS, ParamFrom, ParamSpec};
use crate::template::Template;

/// Default `timeout` of a run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The YAML shapes, exactly as written, with positions for diagnostics.
pub(crate) mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_saphyr::Spanned;

    use super::{Source, StatusFilter};
    use crate::params::ParamType;

    /// A manifest file.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Manifest {
        pub name: Spanned<String>,
        pub team: Spanned<String>,
        pub description: String,
        pub namespaces: Spanned<Vec<Spanned<String>>>,
        #[serde(default)]
        pub triggers: Vec<Spanned<Trigger>>,
        #[serde(default)]
        pub params: BTreeMap<String, Spanned<Param>>,
        pub concurrency: Option<Spanned<String>>,
        pub cooldown: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub approval: Option<Spanned<Approval>>,
        #[serde(default)]
        pub allow_during_freeze: bool,
        pub budget: Option<Budget>,
        pub script: Option<Spanned<String>>,
    }

    /// `approval`: a flag or a policy.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Approval {
        Flag(bool),
        Policy(ApprovalPolicy),
    }

    /// `approval` as a policy.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ApprovalPolicy {
        #[serde(default)]
        pub approvers: Vec<String>,
        pub required: Option<u32>,
        pub expires: Option<String>,
        pub on_expiry: Option<String>,
        #[serde(default)]
        pub self_approval: bool,
    }

    /// One entry of `triggers`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Trigger {
        pub source: Source,
        pub status: Option<Spanned<StatusFilter>>,
        #[serde(default, rename = "match")]
        pub matchers: Vec<Spanned<String>>,
    }

    /// Where a param comes from, as written.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum From {
        Label,
        Annotation,
        Event,
    }

    /// One entry of `params`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Param {
        pub from: Option<From>,
        pub key: Option<Spanned<String>>,
        #[serde(rename = "type", default)]
        pub ty: ParamType,
        #[serde(default)]
        pub required: bool,
        pub default: Option<Spanned<serde_json::Value>>,
        pub description: Option<String>,
    }

    /// `budget`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Budget {
        pub max_runs: Spanned<u32>,
        pub per: Spanned<String>,
    }
}

/// Which producer a trigger listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Alertmanager webhooks (`source = "alertmanager"`).
    Alertmanager,
    /// Kubernetes events (`source = "k8s"`).
    K8s,
    /// Manual triggers; every runbook can be started by hand, so this only documents intent.
    Manual,
}

impl Source {
    /// The event `source` this trigger listens to.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Alertmanager => firebreak_event::SOURCE_ALERTMANAGER,
            Source::K8s => firebreak_event::SOURCE_K8S,
            Source::Manual => firebreak_event::SOURCE_MANUAL,
        }
    }
}

/// Which alert states a trigger fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    /// Only firing alerts.
    Firing,
    /// Only resolved alerts.
    Resolved,
    /// Any status.
    Any,
}

/// One checked trigger: every matcher must hold (logical AND).
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The producer.
    pub source: Source,
    /// The alert states it fires on.
    pub status: StatusFilter,
    /// Compiled label matchers.
    pub matchers: Vec<LabelMatcher>,
}

/// At most `max_runs` runs per concurrency key per `per` window (enforced by the dispatcher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Runs allowed per window, at least 1.
    pub max_runs: u32,
    /// The window.
    pub per: Duration,
}

/// A checked manifest. Field meanings are in the module docs.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Unique runbook name.
    pub name: String,
    /// Owner team.
    pub team: String,
    /// What it does, for people.
    pub description: String,
    /// Namespaces its actions may touch (non-empty).
    pub namespaces: Vec<String>,
    /// What starts it automatically (empty: by hand only).
    pub triggers: Vec<Trigger>,
    /// Declared params by name.
    pub params: BTreeMap<String, ParamSpec>,
    /// The concurrency key template. `None`: one run per incident (the alert's fingerprint, or
    /// the values of the params of a manual trigger); see [`crate::Match::concurrency_key`].
    pub concurrency: Option<Template>,
    /// Quiet time per concurrency key after a run (zero: none).
    pub cooldown: Duration,
    /// Longest a run may take.
    pub timeout: Duration,
    /// People must approve before the first mutating action (or at `approve("why")`).
    pub approval: Option<Approval>,
    /// Mutations may run inside a freeze window (once approved).
    pub allow_during_freeze: bool,
    /// Optional run budget per concurrency key.
    pub budget: Option<Budget>,
    /// Script file name, relative to the manifest's folder.
    pub script: String,
}

impl Manifest {
    /// Parses and checks a manifest; `file` is used in diagnostics and for the default
    /// script name (`<stem>.rhai`). Collects every problem found, not just the first (only
    /// a YAML syntax or schema error stops early, as nothing after it can be trusted).
    pub fn parse(file: &Path, text: &str) -> Result<Manifest, Vec<Diagnostic>> {
        Manifest::parse_with_positions(file, text).map(|(manifest, _)| manifest)
    }

    /// As [`Manifest::parse`], also returning the raw YAML form with positions, for checks
    /// that need other files (duplicate names, teams, the script file).
    pub(crate) fn parse_with_positions(
        file: &Path,
        text: &str,
    ) -> Result<(Manifest, raw::Manifest), Vec<Diagnostic>> {
        let raw: raw::Manifest = crate::diag::parse_yaml(file, text).map_err(|d| vec![d])?;
        let mut diags = Vec::new();
        let manifest = check(file, &raw, &mut diags);
        if diags.is_empty() {
            Ok((manifest, raw))
        } else {
            Err(diags)
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a parsed manifest, one concern per function, pushing every problem to `diags`.
fn check(file: &Path, raw: &raw::Manifest, diags: &mut Vec<Diagnostic>) -> Manifest {
    check_identity(file, raw, diags);
    let params = check_params(file, raw, diags);
    let triggers = check_triggers(file, raw, diags);
    check_fillable(file, raw, &params, &triggers, diags);
    let concurrency = check_concurrency(file, raw, &params, diags);
    let cooldown = duration(
        file,
        diags,
        raw.cooldown.as_ref(),
        "cooldown",
        Duration::ZERO,
    );
    let timeout = duration(
        file,
        diags,
        raw.timeout.as_ref(),
        "timeout",
        DEFAULT_TIMEOUT,
    );
    if let Some(node) = &raw.timeout
        && timeout.is_zero()
    {
        diags.push(Diagnostic::spanned(
            file,
            node,
            "timeout must be more than zero",
        ));
    }
    let budget = raw.budget.as_ref().map(|b| check_budget(file, b, diags));
    let script = check_script(file, raw, diags);
    Manifest {
        name: raw.name.value.clone(),
        team: raw.team.value.clone(),
        description: raw.description.clone(),
        namespaces: raw
            .namespaces
            .value
            .iter()
            .map(|n| n.value.clone())
            .collect(),
        triggers,
        params,
        concurrency,
        cooldown,
        timeout,
        approval: check_approval(file, raw, diags),
        allow_during_freeze: raw.allow_during_freeze,
        budget,
        script,
    }
}

/// Name, team and namespaces.
fn check_identity(file: &Path, raw: &raw::Manifest, diags: &mut Vec<Diagnostic>) {
    for (node, what) in [(&raw.name, "runbook name"), (&raw.team, "team name")] {
        if !is_name(&node.value) {
            diags.push(Diagnostic::spanned(
                file,
                node,
                format!(
                    "{what} {:?} must be 1-128 characters of A-Z, a-z, 0-9, `-`, `_`",
                    node.value
                ),
            ));
        }
    }
    if raw.namespaces.value.is_empty() {
        diags.push(Diagnostic::spanned(
            file,
            &raw.namespaces,
            "namespaces must list at least one namespace",
        ));
    }
    for ns in &raw.namespaces.value {
        if !is_namespace(&ns.value) {
            diags.push(Diagnostic::spanned(
                file,
                ns,
                format!("{:?} is not a valid Kubernetes namespace name", ns.value),
            ));
        }
    }
}

/// Param names, sources, event field paths and defaults (converted to the declared type).
fn check_params(
    file: &Path,
    raw: &raw::Manifest,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, ParamSpec> {
    let mut params = BTreeMap::new();
    for (name, node) in &raw.params {
        let p = &node.value;
        if !is_identifier(name) {
            diags.push(Diagnostic::spanned(
                file,
                node,
                format!("param name `{name}` must be an identifier ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        let key = || {
            p.key
                .as_ref()
                .map_or_else(|| name.clone(), |k| k.value.clone())
        };
        let from = match p.from {
            Some(raw::From::Label) => ParamFrom::Label(key()),
            Some(raw::From::Annotation) => ParamFrom::Annotation(key()),
            Some(raw::From::Event) => {
                let path = key();
                if !(EVENT_FIELDS.contains(&path.as_str()) || path.starts_with("data.")) {
                    let at = p.key.as_ref().map_or(node.referenced, |k| k.referenced);
                    diags.push(Diagnostic::at(
                        file,
                        at,
                        format!(
                            "param `{name}`: unknown event field `{path}`; use one of {} or data.<path>",
                            EVENT_FIELDS.join(", ")
                        ),
                    ));
                }
                ParamFrom::Event(path)
            }
            None => {
                if let Some(k) = &p.key {
                    diags.push(Diagnostic::spanned(
                        file,
                        k,
                        format!("param `{name}`: `key` needs `from: label | annotation | event`"),
                    ));
                }
                ParamFrom::Given
            }
        };
        let default = p
            .default
            .as_ref()
            .and_then(|d| match p.ty.coerce(&d.value) {
                Ok(v) => Some(v),
                Err(e) => {
                    diags.push(Diagnostic::spanned(
                        file,
                        d,
                        format!(
                            "param `{name}`: default does not fit type {}: {e}",
                            p.ty.as_str()
                        ),
                    ));
                    None
                }
            });
        params.insert(
            name.clone(),
            ParamSpec {
                from,
                ty: p.ty,
                required: p.required,
                default,
                description: p.description.clone(),
            },
        );
    }

    params
}

/// Sources, status filters and matchers (compiled here, so a bad regex fails the load).
fn check_triggers(file: &Path, raw: &raw::Manifest, diags: &mut Vec<Diagnostic>) -> Vec<Trigger> {
    let mut triggers = Vec::new();
    for node in &raw.triggers {
        let t = &node.value;
        let status = match (&t.status, t.source) {
            (None, Source::Alertmanager) => StatusFilter::Firing,
            (None, _) => StatusFilter::Any,
            (Some(s), Source::Alertmanager) => s.value,
            (Some(s), source) => {
                if s.value != StatusFilter::Any {
                    diags.push(Diagnostic::spanned(
                        file,
                        s,
                        format!(
                            "status firing/resolved applies to alertmanager triggers; use `any` for {}",
                            source.as_str()
                        ),
                    ));
                }
                StatusFilter::Any
            }
        };
        if t.source == Source::Manual && !t.matchers.is_empty() {
            diags.push(Diagnostic::spanned(
                file,
                node,
                "manual triggers take no `match`: a person names the runbook",
            ));
        }
        let mut matchers = Vec::new();
        for m in &t.matchers {
            match parse_matchers(&m.value) {
                Ok(parsed) => matchers.extend(parsed),
                Err(e) => diags.push(Diagnostic::inside(
                    file,
                    m,
                    e.offset,
                    format!("bad matcher {:?}: {}", m.value, e.message),
                )),
            }
        }
        triggers.push(Trigger {
            source: t.source,
            status,
            matchers,
        });
    }

    triggers
}

/// A required param that no event can fill makes every event-started run fail: refuse it
/// at load instead.
fn check_fillable(
    file: &Path,
    raw: &raw::Manifest,
    params: &BTreeMap<String, ParamSpec>,
    triggers: &[Trigger],
    diags: &mut Vec<Diagnostic>,
) {
    if triggers.iter().any(|t| t.source != Source::Manual) {
        for (name, spec) in params {
            if spec.required && spec.from == ParamFrom::Given && spec.default.is_none() {
                diags.push(Diagnostic::spanned(
                    file,
                    &raw.params[name],
                    format!(
                        "param `{name}` is required but has no `from` and no default, so triggers can never fill it"
                    ),
                ));
            }
        }
    }
}

/// The concurrency template; every `{{params.X}}` must be declared.
fn check_concurrency(
    file: &Path,
    raw: &raw::Manifest,
    params: &BTreeMap<String, ParamSpec>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Template> {
    let node = raw.concurrency.as_ref()?;
    match Template::parse(&node.value, |p| params.contains_key(p)) {
        Ok(t) => Some(t),
        Err(e) => {
            diags.push(Diagnostic::inside(
                file,
                node,
                e.offset,
                format!("concurrency: {}", e.message),
            ));
            None
        }
    }
}

/// An optional duration field; `default` when absent or wrong (the latter reported).
fn duration(
    file: &Path,
    diags: &mut Vec<Diagnostic>,
    node: Option<&serde_saphyr::Spanned<String>>,
    what: &str,
    default: Duration,
) -> Duration {
    let Some(node) = node else { return default };
    parse_duration(&node.value).unwrap_or_else(|e| {
        diags.push(Diagnostic::spanned(file, node, format!("{what}: {e}")));
        default
    })
}

/// Who must approve a run of a runbook before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Teams whose members may approve (the owner team unless the manifest names others).
    pub approvers: Vec<String>,
    /// Distinct people who must approve.
    pub required: u32,
    /// How long a request waits; then the run ends as expired.
    pub expires: Duration,
    /// The person who started the run may approve it.
    pub self_approval: bool,
}

/// Default `approval.expires`.
pub const DEFAULT_APPROVAL_EXPIRY: Duration = Duration::from_secs(30 * 60);

/// `approval`: `true`, `false` or a policy with sane numbers.
fn check_approval(
    file: &Path,
    raw: &raw::Manifest,
    diags: &mut Vec<Diagnostic>,
) -> Option<Approval> {
    let node = raw.approval.as_ref()?;
    let owner = || vec![raw.team.value.clone()];
    let policy = match &node.value {
        raw::Approval::Flag(false) => return None,
        raw::Approval::Flag(true) => {
            return Some(Approval {
                approvers: owner(),
                required: 1,
                expires: DEFAULT_APPROVAL_EXPIRY,
                self_approval: false,
            });
        }
        raw::Approval::Policy(policy) => policy,
    };
    let mut problem = |message: String| diags.push(Diagnostic::spanned(file, node, message));
    for team in &policy.approvers {
        if !is_name(team) {
            problem(format!("approval.approvers: {team:?} is not a team name"));
        }
    }
    let required = policy.required.unwrap_or(1);
    if required == 0 {
        problem("approval.required must be at least 1 (or leave approval out)".into());
    }
    let expires = match policy.expires.as_deref().map(parse_duration) {
        None => DEFAULT_APPROVAL_EXPIRY,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            problem("approval.expires must be more than zero".into());
            DEFAULT_APPROVAL_EXPIRY
        }
        Some(Err(e)) => {
            problem(format!("approval.expires: {e}"));
            DEFAULT_APPROVAL_EXPIRY
        }
    };
    if let Some(other) = policy.on_expiry.as_deref().filter(|o| *o != "deny") {
        problem(format!(
            "approval.on_expiry: {other:?} is not supported: an unanswered request is denied \
             (on_expiry: deny), so nothing runs that nobody approved"
        ));
    }
    Some(Approval {
        approvers: if policy.approvers.is_empty() {
            owner()
        } else {
            policy.approvers.clone()
        },
        required,
        expires,
        self_approval: policy.self_approval,
    })
}

/// `budget`: at least one run per a non-zero window.
fn check_budget(file: &Path, b: &raw::Budget, diags: &mut Vec<Diagnostic>) -> Budget {
    let per = duration(
        file,
        diags,
        Some(&b.per),
        "budget.per",
        Duration::from_secs(3600),
    );
    if b.max_runs.value == 0 {
        diags.push(Diagnostic::spanned(
            file,
            &b.max_runs,
            "budget.max_runs must be at least 1",
        ));
    }
    if per.is_zero() {
        diags.push(Diagnostic::spanned(
            file,
            &b.per,
            "budget.per must be more than zero",
        ));
    }
    Budget {
        max_runs: b.max_runs.value,
        per,
    }
}

/// The script file name: given (a plain file name, no folder) or `<manifest stem>.rhai`.
fn check_script(file: &Path, raw: &raw::Manifest, diags: &mut Vec<Diagnostic>) -> String {
    match &raw.script {
        Some(node) => {
            let name = &node.value;
            let plain = Path::new(name)
                .file_name()
                .is_some_and(|f| f == name.as_str());
            if !plain || name == ".." {
                diags.push(Diagnostic::spanned(
                    file,
                    node,
                    format!(
                        "script {name:?} must be a file name beside the manifest, without a folder"
                    ),
                ));
            }
            name.clone()
        }
        None => {
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            format!("{stem}.rhai")
        }
    }
}

/// Looks up a `from: event` field of an event (see [`EVENT_FIELDS`]).
pub(crate) fn event_field(event: &firebreak_event::Event, path: &str) -> Option<Value> {
    let text = |s: &str| Some(Value::String(s.to_owned()));
    match path {
        "id" => text(&event.id),
        "source" => text(&event.source),
        "type" => text(&event.kind),
        "subject" => text(&event.subject),
        "time" => text(&event.time.to_string()),
        "namespace" => event.namespace.as_deref().and_then(text),
        "fingerprint" => event.fingerprint.as_deref().and_then(text),
        _ => {
            let mut value = &event.data;
            for part in path.strip_prefix("data.")?.split('.') {
                value = value.get(part)?;
            }
            match value {
                Value::Null => None,
                // Objects are flattened to JSON text, the only form every type accepts.
                Value::Object(_) => text(&value.to_string()),
                other => Some(other.clone()),
            }
        }
    }
}
