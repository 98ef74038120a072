//! `firebreak.yaml`: the daemon's configuration, with environment overrides.
//!
//! Every field has a default, so with no file at all `firebreak serve` runs the embedded
//! default (in-process bus, local store under `.firebreak/`). Environment variables win over
//! the file: `FIREBREAK_LISTEN`, `FIREBREAK_DATA_DIR`, `FIREBREAK_RUNBOOKS`, `FIREBREAK_TEAMS`,
//! `FIREBREAK_NATS_URL` (and the NATS security settings, see [`NatsConfig`]),
//! `FIREBREAK_ALERTMANAGER_TOKEN`, `FIREBREAK_API_TOKEN`, `FIREBREAK_KUBECONFIG`,
//! `FIREBREAK_KUBERNETES_DISABLED`, `FIREBREAK_MAX_CONCURRENT_RUNS`, `FIREBREAK_AUDIT_PATH`,
//! and, for each connector's settings, `FIREBREAK_<SECTION>_<KEY>` (`FIREBREAK_PROMETHEUS_URL`
//! sets `connectors.prometheus.url`; see `serve::plugins`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use firebreak_bus::{NatsAuth, NatsSecurity, NatsTls};
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP ingest (Alertmanager webhook, triggers, health, metrics).
    pub listen: SocketAddr,
    /// Where the embedded bus, run state and the audit journal live.
    pub data_dir: PathBuf,
    /// Directory of `NAME.yaml` + `NAME.rhai` runbooks; reloaded when it changes.
    pub runbooks: PathBuf,
    /// Teams file; absent means single-tenant mode (every runbook's own team only).
    pub teams: Option<PathBuf>,
    /// NATS JetStream; absent means the embedded bus.
    pub nats: Option<NatsConfig>,
    pub auth: AuthConfig,
    pub chat: ChatConfig,
    pub limits: LimitsConfig,
    pub kubernetes: KubernetesConfig,
    /// Each connector's own settings, by its section (`prometheus: {url: ...}`,
    /// `alertmanager: {url: ...}`); a connector reads only its own.
    pub connectors: BTreeMap<String, serde_json::Value>,
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The audit journal file; default `<data_dir>/audit.jsonl`. Put it on a volume of its
    /// own to keep it apart from the bus (a full disk then stops runs, not ingest).
    pub path: Option<PathBuf>,
    /// The Ed25519 key that signs the journal's checkpoints; generated on first start.
    /// Default: beside the journal (`audit.key`, public half `audit.pub`).
    pub signing_key: Option<PathBuf>,
    /// A journal segment is sealed once it holds this many MiB. Default 16 (a start scans the active segment whole: about 3.5 ms per MiB here).
    pub segment_mib: Option<u64>,
    /// Finished runs the engine keeps indexed in memory (listed by `/v1/runs` and chat
    /// `status`), beside every unfinished one; default 10,000 (about 13 MB). Older runs stay in
    /// the journal: `/v1/runs/{id}` and `firebreak audit` find them on disk.
    pub finished_runs_kept: Option<usize>,
    /// Set by `serve --audit-relink`: a journal whose tail does not verify is set aside and
    /// the engine goes on from its last good record, instead of refusing to start.
    #[serde(skip)]
    pub relink_broken: bool,
}

/// NATS JetStream, and how firebreak authenticates to it: at most one of user/password,
/// token, NKey seed and creds file, plus TLS. Every secret can come from a file (`*_file`, e.g.
/// a mounted Kubernetes secret) or the environment instead of this file. Each environment
/// variable replaces its key, and the `_FILE` variant of a secret replaces the value and the
/// other way round: `FIREBREAK_NATS_URL`, `FIREBREAK_NATS_USER`, `FIREBREAK_NATS_PASSWORD`,
/// `FIREBREAK_NATS_PASSWORD_FILE`, `FIREBREAK_NATS_TOKEN`, `FIREBREAK_NATS_TOKEN_FILE`,
/// `FIREBREAK_NATS_NKEY` (the seed), `FIREBREAK_NATS_NKEY_FILE`, `FIREBREAK_NATS_CREDS`,
/// `FIREBREAK_NATS_TLS_CA`, `FIREBREAK_NATS_TLS_CERT`, `FIREBREAK_NATS_TLS_KEY`,
/// `FIREBREAK_NATS_TLS_REQUIRED`, `FIREBREAK_NATS_RUN_LEASE`, `FIREBREAK_NATS_ACK_WAIT`,
/// `FIREBREAK_NATS_DUPLICATE_WINDOW`, `FIREBREAK_NATS_AUDIT_MIRROR_RETRY`,
/// `FIREBREAK_NATS_REPLICAS`, `FIREBREAK_REPLICA`. An empty variable unsets its key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://nats:4222` (`tls://` requires TLS); a cluster's servers
    /// comma-separated (`nats://n1:4222,nats://n2:4222,nats://n3:4222`).
    pub url: String,
    /// User name, with `password` or `password_file` (a `users` entry of the server).
    #[serde(default)]
    pub user: Option<String>,
    /// The user's password. Prefer `password_file` or `FIREBREAK_NATS_PASSWORD`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the user's password (one line; surrounding whitespace is dropped).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Token (the server's `authorization { token }`). Prefer `token_file`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// NKey user seed (`SU...`; the server lists its public key `U...`). Prefer
    /// `nkey_seed_file`.
    #[serde(default)]
    pub nkey_seed: Option<Secret>,
    /// File holding the NKey user seed (as `nk -gen user > engine.nk` writes it).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// `.creds` file (user JWT and seed) for a server in operator (JWT) mode.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// TLS towards the server.
    #[serde(default)]
    pub tls: NatsTlsConfig,
    /// Replicas, limits and retention of the streams and buckets firebreak creates.
    #[serde(default)]
    pub storage: NatsStorageConfig,
    /// This engine replica's name in the run leases it holds. Default: kept in the data dir
    /// (`replica-id`, made once from the host name), so a restarted replica finds its own runs.
    /// Two replicas must not share one. `FIREBREAK_REPLICA`.
    #[serde(default)]
    pub replica: Option<String>,
    /// How long a run lease lasts unless its replica renews it (every third of it): when a
    /// replica dies, another takes its runs over this long after its last renewal. Default
    /// `15s`. `FIREBREAK_NATS_RUN_LEASE`.
    #[serde(default)]
    pub run_lease: Option<String>,
    /// How long a delivery of the shared consumer may stay unacked before JetStream delivers
    /// it again: what a replica that died had pulled and not yet started reaches another
    /// replica this long after it was pulled. A replica alive marks each delivery it holds
    /// in progress every third of it, one message each, so a short one costs messages while
    /// deliveries wait for run slots (at most 20,000 held). The replica started last sets it
    /// on the consumer. Default `60s`. `FIREBREAK_NATS_ACK_WAIT`.
    #[serde(default)]
    pub ack_wait: Option<String>,
    /// How long a journal append waits for the audit stream while NATS is unreachable before
    /// it fails (and with it the step): the runs wait rather than fail through a short outage.
    /// The records are in the journal either way and reach the stream once NATS is back.
    /// Default `30s`. `FIREBREAK_NATS_AUDIT_MIRROR_RETRY`.
    #[serde(default)]
    pub audit_mirror_retry: Option<String>,
}

/// What firebreak asks JetStream to keep (it creates the streams and buckets with these, and
/// brings existing ones to them at start). Sizes per million alerts: README, "JetStream
/// storage and a NATS cluster".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsStorageConfig {
    /// Copies of every stream and bucket (1, 3 or 5; at most the cluster's size). 3 on a
    /// three-node cluster survives a node. `FIREBREAK_NATS_REPLICAS`.
    pub replicas: usize,
    /// MiB the events stream may hold before new alerts are refused (503, retried by
    /// Alertmanager); unset: unlimited. Accepted events are never discarded.
    pub events_max_mib: Option<u64>,
    /// How long the audit stream keeps records (e.g. `90d`); unset: for ever. The engines'
    /// local journals are not affected.
    pub audit_max_age: Option<String>,
    /// MiB the audit stream keeps, the oldest records going first; unset: unlimited.
    pub audit_max_mib: Option<u64>,
    /// How long an incident's `once` decisions stay in the `firebreak_runs` bucket (a later
    /// run of the incident, on any replica, gets the first run's value). Default `7d`.
    pub run_retention: String,
    /// How long the events stream recognizes a resent event (the same alert: fingerprint,
    /// status and start) as a duplicate and keeps it out. Default `2m`.
    /// `FIREBREAK_NATS_DUPLICATE_WINDOW`.
    pub duplicate_window: String,
}

impl Default for NatsStorageConfig {
    fn default() -> Self {
        NatsStorageConfig {
            replicas: 1,
            events_max_mib: None,
            audit_max_age: None,
            audit_max_mib: None,
            run_retention: "7d".into(),
            duplicate_window: "2m".into(),
        }
    }
}

/// TLS towards nats-server. With nothing set, TLS is used only if the server requires it,
/// verified against the system's roots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsTlsConfig {
    /// PEM CA file that signs the server's certificate (instead of the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that verifies clients (`verify: true`); needs
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Refuse a connection without TLS. Implied by `ca_file` and `cert_file`.
    pub required: bool,
}

/// A secret from the config file: read like a string, never printed by `Debug`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `nats.KEY` as a duration (`default` unset), at least a second: something is done every
/// third of it (`why`).
fn period(
    key: &str,
    text: Option<&str>,
    default: std::time::Duration,
    why: &str,
) -> Result<std::time::Duration> {
    let Some(text) = text else {
        return Ok(default);
    };
    let period =
        firebreak_matcher::parse_duration(text).map_err(|e| anyhow::anyhow!("nats.{key}: {e}"))?;
    anyhow::ensure!(
        period >= std::time::Duration::from_secs(1),
        "nats.{key} is {text}: at least 1s ({why})"
    );
    Ok(period)
}

impl NatsConfig {
    /// Refuses settings that cannot mean what the operator wants: a user without a password
    /// (or the reverse), a secret given twice, two authentication methods at once, a client
    /// certificate without its key (or the reverse). Reads no file.
    pub fn check(&self) -> Result<()> {
        if self.url.trim().is_empty() {
            anyhow::bail!(
                "nats.url is empty: set it (or FIREBREAK_NATS_URL), or drop `nats` for the embedded bus"
            );
        }
        let both = |a: bool, b: bool, what: &str| {
            if a && b {
                Err(anyhow::anyhow!(
                    "nats.{what} and nats.{what}_file are both set: keep one"
                ))
            } else {
                Ok(())
            }
        };
        both(
            self.password.is_some(),
            self.password_file.is_some(),
            "password",
        )?;
        both(self.token.is_some(), self.token_file.is_some(), "token")?;
        both(
            self.nkey_seed.is_some(),
            self.nkey_seed_file.is_some(),
            "nkey_seed",
        )?;
        let password = self.password.is_some() || self.password_file.is_some();
        match (&self.user, password) {
            (Some(user), false) => anyhow::bail!(
                "nats.user {user:?} is set without a password: set nats.password_file, \
                 nats.password or FIREBREAK_NATS_PASSWORD"
            ),
            (None, true) => {
                anyhow::bail!("a NATS password is set without nats.user (FIREBREAK_NATS_USER)")
            }
            _ => {}
        }
        let methods: Vec<&str> = [
            (self.user.is_some(), "user/password"),
            (self.token.is_some() || self.token_file.is_some(), "token"),
            (
                self.nkey_seed.is_some() || self.nkey_seed_file.is_some(),
                "nkey seed",
            ),
            (self.creds_file.is_some(), "creds file"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            anyhow::bail!(
                "more than one NATS authentication method is set ({}): nats-server takes one per \
                 connection, keep one",
                methods.join(", ")
            );
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), None) => anyhow::bail!(
                "nats.tls.cert_file {} is set without nats.tls.key_file (FIREBREAK_NATS_TLS_KEY)",
                cert.display()
            ),
            (None, Some(key)) => anyhow::bail!(
                "nats.tls.key_file {} is set without nats.tls.cert_file (FIREBREAK_NATS_TLS_CERT)",
                key.display()
            ),
            _ => {}
        }
        Ok(())
    }

    /// The bus's options: its security settings, then the storage settings, checked.
    pub fn options(&self) -> Result<firebreak_bus::NatsOptions> {
        let storage = &self.storage;
        anyhow::ensure!(
            matches!(storage.replicas, 1..=5),
            "nats.storage.replicas is {}: JetStream keeps 1 to 5 copies (3 on a three-node cluster)",
            storage.replicas
        );
        let duration = |key: &str, text: &str| {
            firebreak_matcher::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("nats.storage.{key}: {e}"))
        };
        let mib = |v: Option<u64>| {
            v.map_or(-1, |m| {
                i64::try_from(m.saturating_mul(1 << 20)).unwrap_or(i64::MAX)
            })
        };
        Ok(firebreak_bus::NatsOptions {
            security: self.security()?,
            replicas: storage.replicas,
            events_max_bytes: mib(storage.events_max_mib),
            audit_max_bytes: mib(storage.audit_max_mib),
            audit_max_age: match &storage.audit_max_age {
                Some(text) => duration("audit_max_age", text)?,
                None => std::time::Duration::ZERO,
            },
            run_retention: duration("run_retention", &storage.run_retention)?,
            duplicate_window: duration("duplicate_window", &storage.duplicate_window)?,
            run_lease: period(
                "run_lease",
                self.run_lease.as_deref(),
                firebreak_bus::NatsOptions::default().run_lease,
                "it is renewed every third of it",
            )?,
            ack_wait: period(
                "ack_wait",
                self.ack_wait.as_deref(),
                firebreak_bus::NatsOptions::default().ack_wait,
                "deliveries are marked in progress every third of it",
            )?,
            replica: self.replica.clone(),
            ..firebreak_bus::NatsOptions::default()
        })
    }

    /// How long the audit mirror retries a batch while NATS is unreachable, if set
    /// (`audit_mirror_retry`).
    pub fn audit_mirror_retry(&self) -> Result<Option<std::time::Duration>> {
        self.audit_mirror_retry
            .as_deref()
            .map(|text| {
                firebreak_matcher::parse_duration(text)
                    .map_err(|e| anyhow::anyhow!("nats.audit_mirror_retry: {e}"))
            })
            .transpose()
    }

    /// The bus's security settings: [`NatsConfig::check`], then each secret read from its file.
    pub fn security(&self) -> Result<NatsSecurity> {
        self.check()?;
        let secret =
            |value: &Option<Secret>, file: &Option<PathBuf>, key: &str| -> Result<Option<String>> {
                if let Some(Secret(v)) = value {
                    return Ok(Some(v.clone()));
                }
                let Some(path) = file else { return Ok(None) };
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading nats.{key}_file {}", path.display()))?;
                let text = text.trim();
                anyhow::ensure!(
                    !text.is_empty(),
                    "nats.{key}_file {} is empty",
                    path.display()
                );
                Ok(Some(text.to_owned()))
            };
        let auth = if let Some(user) = &self.user {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: secret(&self.password, &self.password_file, "password")?
                    .unwrap_or_default(),
            }
        } else if let Some(token) = secret(&self.token, &self.token_file, "token")? {
            NatsAuth::Token(token)
        } else if let Some(seed) = secret(&self.nkey_seed, &self.nkey_seed_file, "nkey_seed")? {
            NatsAuth::NKey { seed }
        } else if let Some(path) = &self.creds_file {
            NatsAuth::CredsFile(path.clone())
        } else {
            NatsAuth::None
        };
        let tls = NatsTls {
            ca_file: self.tls.ca_file.clone(),
            client_cert: self.tls.cert_file.clone().zip(self.tls.key_file.clone()),
            required: self.tls.required,
        };
        Ok(NatsSecurity { auth, tls })
    }

    /// Applies the `FIREBREAK_NATS_*` security variables (not the URL); see the type's docs.
    fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<()> {
        let text = |v: String| (!v.is_empty()).then_some(v);
        let path = |v: String| (!v.is_empty()).then(|| PathBuf::from(v));
        if let Some(v) = get("FIREBREAK_NATS_USER") {
            self.user = text(v);
        }
        // A secret's value and its file replace each other: the environment wins over the file.
        let pairs: [(&str, &mut Option<Secret>, &mut Option<PathBuf>); 3] = [
            ("PASSWORD", &mut self.password, &mut self.password_file),
            ("TOKEN", &mut self.token, &mut self.token_file),
            ("NKEY", &mut self.nkey_seed, &mut self.nkey_seed_file),
        ];
        for (name, value, file) in pairs {
            if let Some(v) = get(&format!("FIREBREAK_NATS_{name}")) {
                *value = text(v).map(Secret);
                *file = None;
            }
            if let Some(v) = get(&format!("FIREBREAK_NATS_{name}_FILE")) {
                *file = path(v);
                *value = None;
            }
        }
        if let Some(v) = get("FIREBREAK_NATS_CREDS") {
            self.creds_file = path(v);
        }
        if let Some(v) = get("FIREBREAK_NATS_REPLICAS") {
            self.storage.replicas = v
                .parse()
                .with_context(|| format!("FIREBREAK_NATS_REPLICAS={v} is not a number"))?;
        }
        if let Some(v) = get("FIREBREAK_NATS_DUPLICATE_WINDOW") {
            self.storage.duplicate_window = v;
        }
        if let Some(v) = get("FIREBREAK_NATS_RUN_LEASE") {
            self.run_lease = text(v);
        }
        if let Some(v) = get("FIREBREAK_NATS_ACK_WAIT") {
            self.ack_wait = text(v);
        }
        if let Some(v) = get("FIREBREAK_NATS_AUDIT_MIRROR_RETRY") {
            self.audit_mirror_retry = text(v);
        }
        if let Some(v) = get("FIREBREAK_REPLICA") {
            self.replica = text(v);
        }
        if let Some(v) = get("FIREBREAK_NATS_TLS_CA") {
            self.tls.ca_file = path(v);
        }
        if let Some(v) = get("FIREBREAK_NATS_TLS_CERT") {
            self.tls.cert_file = path(v);
        }
        if let Some(v) = get("FIREBREAK_NATS_TLS_KEY") {
            self.tls.key_file = path(v);
        }
        if let Some(v) = get("FIREBREAK_NATS_TLS_REQUIRED") {
            self.tls.required = parse_bool(&v)
                .with_context(|| format!("FIREBREAK_NATS_TLS_REQUIRED={v} is not true or false"))?;
        }
        Ok(())
    }
}

/// The NATS security variables, for refusing them when NATS is not configured.
const NATS_SECURITY_VARS: [&str; 12] = [
    "FIREBREAK_NATS_USER",
    "FIREBREAK_NATS_PASSWORD",
    "FIREBREAK_NATS_PASSWORD_FILE",
    "FIREBREAK_NATS_TOKEN",
    "FIREBREAK_NATS_TOKEN_FILE",
    "FIREBREAK_NATS_NKEY",
    "FIREBREAK_NATS_NKEY_FILE",
    "FIREBREAK_NATS_CREDS",
    "FIREBREAK_NATS_TLS_CA",
    "FIREBREAK_NATS_TLS_CERT",
    "FIREBREAK_NATS_TLS_KEY",
    "FIREBREAK_NATS_TLS_REQUIRED",
];

fn parse_bool(v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" | "" => Ok(false),
        _ => anyhow::bail!("not a boolean"),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer token Alertmanager must send (`http_config.authorization.credentials`).
    pub alertmanager_token: Option<String>,
    /// Without a teams file: the bearer token every `POST /v1/trigger` must send; runs it
    /// starts are recorded with the actor `api`. Absent (and no teams file): triggers are taken
    /// only because `serve` listens on loopback alone, recorded as `local`.
    pub api_token: Option<String>,
    /// Slack app's signing secret: enables `POST /v1/chat/slack/commands` (requests are
    /// verified with it; chat users are mapped to members by the teams file's `chat_ids`).
    pub slack_signing_secret: Option<String>,
    /// The Mattermost slash command's token: enables `POST /v1/chat/mattermost/commands`
    /// (Mattermost does not sign requests; its token is compared in constant time).
    pub mattermost_token: Option<String>,
}

/// Where firebreak posts to chat: team notifications (run started, waiting for approval with
/// Approve / Deny buttons, finished, refused) go to each team's `slack_channel` /
/// `mattermost_channel` from the teams file. Env: `FIREBREAK_SLACK_BOT_TOKEN`,
/// `FIREBREAK_SLACK_API_URL`, `FIREBREAK_MATTERMOST_URL`, `FIREBREAK_MATTERMOST_BOT_TOKEN`,
/// `FIREBREAK_PUBLIC_URL`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// Slack bot token (`xoxb-…`, scope `chat:write`) for `chat.postMessage` / `chat.update`.
    pub slack_bot_token: Option<String>,
    /// Slack Web API base; default `https://slack.com/api`.
    pub slack_api_url: Option<String>,
    /// Mattermost server URL (`https://chat.example.com`), for its REST API.
    pub mattermost_url: Option<String>,
    /// A Mattermost bot's access token, to post and update messages.
    pub mattermost_bot_token: Option<String>,
    /// How Mattermost reaches this engine for button clicks; default `http://<listen>`.
    pub public_url: Option<String>,
}

impl Config {
    /// Whether any chat is configured: slash commands (their follow-ups) or a bot to post with.
    pub fn chat_enabled(&self) -> bool {
        self.auth.slack_signing_secret.is_some()
            || self.auth.mattermost_token.is_some()
            || self.chat.slack_bot_token.is_some()
            || self.chat.mattermost_bot_token.is_some()
    }

    /// Why `serve` must not listen where it is configured to, if it must not: beyond loopback,
    /// anyone who reaches the port could post alerts and start runbooks unless both the
    /// webhook and the triggers are authenticated (Redis' protected mode, for the same reason).
    pub fn exposure_problem(&self) -> Option<String> {
        if self.listen.ip().is_loopback() {
            return None;
        }
        let webhook = self.auth.alertmanager_token.is_some();
        let triggers = self.auth.api_token.is_some() || self.teams.is_some();
        if webhook && triggers {
            return None;
        }
        let mut missing = Vec::new();
        if !webhook {
            missing.push("auth.alertmanager_token (FIREBREAK_ALERTMANAGER_TOKEN) for the webhook");
        }
        if !triggers {
            missing.push(
                "auth.api_token (FIREBREAK_API_TOKEN) or a teams file (FIREBREAK_TEAMS) for triggers",
            );
        }
        Some(format!(
            "refusing to listen on {} without authentication: anyone who reaches it could post \
             alerts and start runbooks. Set {}; or listen on 127.0.0.1",
            self.listen,
            missing.join(", and ")
        ))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body the ingest accepts.
    pub max_body_bytes: usize,
    /// Scripts running at once; more wait for a slot.
    pub max_concurrent_runs: usize,
    /// Scripts computing at once (a script waiting in a step does not count); the others wait
    /// their turn instead of crowding the webhook off the cores. Absent: as many as the cores.
    pub max_computing_scripts: Option<usize>,
    /// The async runtime's worker threads (the webhook, the dispatcher, the runs' steps between
    /// waits). Absent: one per core (see [`LimitsConfig::workers`]).
    pub worker_threads: Option<usize>,
    /// Per run: bytes the script's variables may hold. The engine's script memory stays under
    /// about `max_concurrent_runs × (max_script_bytes + 1 MiB)`.
    pub max_script_bytes: u64,
    /// Per run: audit records it may write (its end record is always written).
    pub max_run_records: u64,
    /// Per run: bytes of audit records it may write.
    pub max_run_journal_bytes: u64,
    /// Bytes of one evidence record.
    pub max_evidence_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let budget = firebreak_runtime::Budget::default();
        Self {
            max_body_bytes: 1 << 20,
            max_concurrent_runs: 64,
            max_computing_scripts: None,
            worker_threads: None,
            max_script_bytes: budget.max_script_bytes,
            max_run_records: budget.max_records,
            max_run_journal_bytes: budget.max_journal_bytes,
            max_evidence_bytes: budget.max_evidence_bytes,
        }
    }
}

impl LimitsConfig {
    /// Refuses limits no engine can run under: no run slot, or no script ever computing.
    pub fn check(&self) -> Result<()> {
        if self.max_concurrent_runs == 0 {
            anyhow::bail!(
                "limits.max_concurrent_runs is 0: it must be at least 1 (no run could ever start)"
            );
        }
        if self.max_computing_scripts == Some(0) {
            anyhow::bail!(
                "limits.max_computing_scripts is 0: it must be at least 1, or absent for one per core"
            );
        }
        if self.worker_threads == Some(0) {
            anyhow::bail!(
                "limits.worker_threads is 0: it must be at least 1, or absent for one per core"
            );
        }
        Ok(())
    }

    /// The async runtime's worker threads: `worker_threads`, else one per core (at least one).
    /// Measured on two cores, against one fewer than the cores: on the machine of 12-07 03:43
    /// one worker took 10 % less CPU per alert at the same rate; on the faster one of 12-07
    /// 08:17 – 12:30 two workers took 9 % more alerts/s at the same CPU, with a p99 14 % lower
    /// (`docs/BENCHMARKS.md`). The second is the machine measured since; set it where another
    /// measures otherwise.
    pub fn workers(&self, cores: usize) -> usize {
        self.worker_threads.unwrap_or(cores).max(1)
    }

    /// The per-run budget these limits set.
    pub fn budget(&self) -> firebreak_runtime::Budget {
        firebreak_runtime::Budget {
            max_script_bytes: self.max_script_bytes,
            max_records: self.max_run_records,
            max_journal_bytes: self.max_run_journal_bytes,
            max_evidence_bytes: self.max_evidence_bytes,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Path to a kubeconfig; absent means `KUBECONFIG`, `~/.kube/config` or in-cluster, the way
    /// kubectl finds them. `disabled: true` runs without the Kubernetes connector.
    pub kubeconfig: Option<PathBuf>,
    pub disabled: bool,
    /// Namespaces the event watcher follows (empty: those of the loaded runbooks).
    pub watch_namespaces: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9095".parse().expect("static address"),
            data_dir: PathBuf::from(".firebreak"),
            runbooks: PathBuf::from("runbooks"),
            teams: None,
            nats: None,
            auth: AuthConfig::default(),
            chat: ChatConfig::default(),
            limits: LimitsConfig::default(),
            kubernetes: KubernetesConfig::default(),
            connectors: BTreeMap::new(),
            audit: AuditConfig::default(),
        }
    }
}

impl Config {
    /// Connector `section`'s settings with `FIREBREAK_<SECTION>_<KEY>` applied for each of
    /// `keys`; `Null` when there are none.
    pub fn connector_settings(&self, section: &str, keys: &[&str]) -> serde_json::Value {
        self.connector_settings_from(section, keys, |k| std::env::var(k).ok())
    }

    fn connector_settings_from(
        &self,
        section: &str,
        keys: &[&str],
        get: impl Fn(&str) -> Option<String>,
    ) -> serde_json::Value {
        let mut settings = self
            .connectors
            .get(section)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        for key in keys {
            let var = firebreak_connector::plugin::env_var(section, key);
            if let Some(v) = get(&var) {
                if !settings.is_object() {
                    settings = serde_json::json!({});
                }
                settings[*key] = serde_json::Value::String(v);
            }
        }
        settings
    }

    /// Loads `path` if given (an error if it does not exist), else `./firebreak.yaml` if present,
    /// else the defaults; then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new("firebreak.yaml").exists() => {
                Self::from_file(Path::new("firebreak.yaml"))?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.limits.check()?;
        if let Some(nats) = &cfg.nats {
            nats.check()?;
        }
        Ok(cfg)
    }

    fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_yaml(&text).with_context(|| format!("in config {}", path.display()))
    }

    pub fn from_yaml(text: &str) -> Result<Config> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("FIREBREAK_LISTEN") {
            self.listen = v
                .parse()
                .with_context(|| format!("FIREBREAK_LISTEN={v} is not an address"))?;
        }
        if let Some(v) = get("FIREBREAK_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("FIREBREAK_RUNBOOKS") {
            self.runbooks = v.into();
        }
        if let Some(v) = get("FIREBREAK_TEAMS") {
            self.teams = Some(v.into());
        }
        if let Some(v) = get("FIREBREAK_NATS_URL") {
            if v.is_empty() {
                self.nats = None;
            } else {
                self.nats.get_or_insert_with(NatsConfig::default).url = v;
            }
        }
        match &mut self.nats {
            Some(nats) => nats.apply_env(&get)?,
            None => {
                if let Some(var) = NATS_SECURITY_VARS
                    .iter()
                    .find(|k| get(k).is_some_and(|v| !v.is_empty()))
                {
                    anyhow::bail!(
                        "{var} is set but NATS is not configured: set nats.url (or \
                         FIREBREAK_NATS_URL), or unset {var}"
                    );
                }
            }
        }
        if let Some(v) = get("FIREBREAK_ALERTMANAGER_TOKEN") {
            self.auth.alertmanager_token = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("FIREBREAK_API_TOKEN") {
            self.auth.api_token = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("FIREBREAK_SLACK_SIGNING_SECRET") {
            self.auth.slack_signing_secret = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("FIREBREAK_MATTERMOST_TOKEN") {
            self.auth.mattermost_token = (!v.is_empty()).then_some(v);
        }
        for (var, slot) in [
            ("FIREBREAK_SLACK_BOT_TOKEN", &mut self.chat.slack_bot_token),
            ("FIREBREAK_SLACK_API_URL", &mut self.chat.slack_api_url),
            ("FIREBREAK_MATTERMOST_URL", &mut self.chat.mattermost_url),
            (
                "FIREBREAK_MATTERMOST_BOT_TOKEN",
                &mut self.chat.mattermost_bot_token,
            ),
            ("FIREBREAK_PUBLIC_URL", &mut self.chat.public_url),
        ] {
            if let Some(v) = get(var) {
                *slot = (!v.is_empty()).then_some(v);
            }
        }
        if let Some(v) = get("FIREBREAK_KUBECONFIG") {
            self.kubernetes.kubeconfig = Some(v.into());
        }
        if let Some(v) = get("FIREBREAK_KUBERNETES_DISABLED") {
            self.kubernetes.disabled = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("FIREBREAK_AUDIT_PATH") {
            self.audit.path = (!v.is_empty()).then(|| v.into());
        }
        if let Some(v) = get("FIREBREAK_MAX_CONCURRENT_RUNS") {
            self.limits.max_concurrent_runs = v
                .parse()
                .with_context(|| format!("FIREBREAK_MAX_CONCURRENT_RUNS={v} is not a number"))?;
        }
        if let Some(v) = get("FIREBREAK_WORKER_THREADS") {
            self.limits.worker_threads = Some(
                v.parse()
                    .with_context(|| format!("FIREBREAK_WORKER_THREADS={v} is not a number"))?,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_embedded_default() {
        let cfg = Config::from_yaml("").unwrap();
        assert!(cfg.nats.is_none());
        assert_eq!(cfg.listen.port(), 9095);
    }

    #[test]
    fn file_values_and_env_overrides() {
        let mut cfg = Config::from_yaml(
            "listen: 127.0.0.1:8080\nnats:\n  url: nats://127.0.0.1:4222\nlimits:\n  max_body_bytes: 10\n",
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 8080);
        assert_eq!(cfg.limits.max_body_bytes, 10);
        assert_eq!(cfg.limits.max_concurrent_runs, 64);
        cfg.apply_env(|k| match k {
            "FIREBREAK_NATS_URL" => Some(String::new()),
            "FIREBREAK_LISTEN" => Some("127.0.0.1:9999".into()),
            _ => None,
        })
        .unwrap();
        assert!(
            cfg.nats.is_none(),
            "an empty FIREBREAK_NATS_URL selects the embedded bus"
        );
        assert_eq!(cfg.listen.port(), 9999);
    }

    #[test]
    fn limits_of_zero_runs_computing_scripts_or_workers_are_refused() {
        for (yaml, named) in [
            (
                "limits: { max_concurrent_runs: 0 }",
                "limits.max_concurrent_runs",
            ),
            (
                "limits: { max_computing_scripts: 0 }",
                "limits.max_computing_scripts",
            ),
            ("limits: { worker_threads: 0 }", "limits.worker_threads"),
        ] {
            let cfg = Config::from_yaml(yaml).unwrap();
            let error = cfg.limits.check().unwrap_err().to_string();
            assert!(
                error.contains(named) && error.contains("at least 1"),
                "{yaml}: {error}"
            );
        }
        let cfg = Config::from_yaml("limits: { max_computing_scripts: 1 }").unwrap();
        cfg.limits.check().unwrap();
    }

    #[test]
    fn workers_are_one_per_core_unless_set() {
        let cfg = Config::from_yaml("").unwrap();
        assert_eq!(
            [0, 1, 2, 4, 16].map(|cores| cfg.limits.workers(cores)),
            [1, 1, 2, 4, 16]
        );
        let mut cfg = Config::from_yaml("limits: { worker_threads: 3 }").unwrap();
        assert_eq!(cfg.limits.workers(2), 3);
        cfg.apply_env(|k| (k == "FIREBREAK_WORKER_THREADS").then(|| "2".to_owned()))
            .unwrap();
        assert_eq!(cfg.limits.workers(8), 2);
        let error = cfg
            .apply_env(|k| (k == "FIREBREAK_WORKER_THREADS").then(|| "two".to_owned()))
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("FIREBREAK_WORKER_THREADS=two is not a number"),
            "{error:#}"
        );
    }

    #[test]
    fn nats_storage_settings_become_the_bus_options_and_bad_ones_are_refused() {
        let mut cfg = Config::from_yaml(
            "nats:\n  url: nats://nats:4222\n  storage:\n    replicas: 3\n    events_max_mib: 512\n    \
             audit_max_age: 90d\n    audit_max_mib: 2048\n    run_retention: 2d\n",
        )
        .unwrap();
        let opts = cfg.nats.as_ref().unwrap().options().unwrap();
        assert_eq!(opts.replicas, 3);
        assert_eq!(opts.events_max_bytes, 512 << 20);
        assert_eq!(opts.audit_max_bytes, 2048 << 20);
        assert_eq!(opts.audit_max_age.as_secs(), 90 * 86_400);
        assert_eq!(opts.run_retention.as_secs(), 2 * 86_400);
        assert_eq!(opts.duplicate_window.as_secs(), 120, "2m unless set");
        cfg.apply_env(|k| match k {
            "FIREBREAK_NATS_REPLICAS" => Some("5".into()),
            "FIREBREAK_NATS_DUPLICATE_WINDOW" => Some("30s".into()),
            _ => None,
        })
        .unwrap();
        let opts = cfg.nats.as_ref().unwrap().options().unwrap();
        assert_eq!((opts.replicas, opts.duplicate_window.as_secs()), (5, 30));
        // Unset: one copy, unlimited, kept for ever, runs for a week.
        let defaults = Config::from_yaml("nats: { url: nats://nats:4222 }\n").unwrap();
        let opts = defaults.nats.unwrap().options().unwrap();
        assert_eq!(
            (opts.replicas, opts.events_max_bytes, opts.audit_max_bytes),
            (1, -1, -1)
        );
        assert_eq!(opts.run_retention.as_secs(), 7 * 86_400);
        for (yaml, says) in [
            ("replicas: 0", "nats.storage.replicas is 0"),
            ("replicas: 7", "nats.storage.replicas is 7"),
            ("audit_max_age: soon", "nats.storage.audit_max_age"),
            ("duplicate_window: 1x", "nats.storage.duplicate_window"),
        ] {
            let cfg = Config::from_yaml(&format!(
                "nats:\n  url: nats://nats:4222\n  storage: {{ {yaml} }}\n"
            ))
            .unwrap();
            let err = cfg.nats.unwrap().options().unwrap_err().to_string();
            assert!(err.contains(says), "{yaml}: {err}");
        }
        // Run leases: 15 s unless set; at least a second; the replica's name as given.
        assert_eq!(opts.run_lease.as_secs(), 15);
        assert_eq!(opts.replica, None);
        let mut cfg = Config::from_yaml(
            "nats: { url: nats://nats:4222, run_lease: 30s, replica: engine-0 }\n",
        )
        .unwrap();
        let opts = cfg.nats.as_ref().unwrap().options().unwrap();
        assert_eq!(
            (opts.run_lease.as_secs(), opts.replica.as_deref()),
            (30, Some("engine-0"))
        );
        for (lease, says) in [
            ("500ms", "nats.run_lease is 500ms: at least 1s"),
            ("soon", "nats.run_lease:"),
        ] {
            cfg.apply_env(|k| (k == "FIREBREAK_NATS_RUN_LEASE").then(|| lease.into()))
                .unwrap();
            let err = cfg
                .nats
                .as_ref()
                .unwrap()
                .options()
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{lease}: {err}");
        }
        // The shared consumer's ack wait: 60 s unless set, at least a second.
        assert_eq!(opts.ack_wait.as_secs(), 60);
        let acked = Config::from_yaml("nats: { url: nats://nats:4222, ack_wait: 45s }\n").unwrap();
        assert_eq!(
            acked.nats.unwrap().options().unwrap().ack_wait.as_secs(),
            45
        );
        for (wait, says) in [
            ("4s", Ok(4)),
            ("200ms", Err("nats.ack_wait is 200ms: at least 1s")),
            ("later", Err("nats.ack_wait:")),
        ] {
            let mut cfg = Config::from_yaml("nats: { url: nats://nats:4222 }\n").unwrap();
            cfg.apply_env(|k| (k == "FIREBREAK_NATS_ACK_WAIT").then(|| wait.into()))
                .unwrap();
            match (cfg.nats.unwrap().options(), says) {
                (Ok(opts), Ok(secs)) => assert_eq!(opts.ack_wait.as_secs(), secs),
                (Err(err), Err(says)) => {
                    assert!(err.to_string().contains(says), "{wait}: {err}")
                }
                (got, want) => panic!("{wait}: {:?} against {want:?}", got.map(|o| o.ack_wait)),
            }
        }
        let nats = cfg.nats.as_mut().unwrap();
        assert_eq!(nats.audit_mirror_retry().unwrap(), None);
        cfg.apply_env(|k| (k == "FIREBREAK_NATS_AUDIT_MIRROR_RETRY").then(|| "5s".into()))
            .unwrap();
        let nats = cfg.nats.as_ref().unwrap();
        assert_eq!(
            nats.audit_mirror_retry().unwrap(),
            Some(std::time::Duration::from_secs(5))
        );
        cfg.apply_env(|k| (k == "FIREBREAK_NATS_AUDIT_MIRROR_RETRY").then(|| "later".into()))
            .unwrap();
        let err = cfg.nats.as_ref().unwrap().audit_mirror_retry().unwrap_err();
        assert!(
            err.to_string().contains("nats.audit_mirror_retry:"),
            "{err}"
        );
    }

    #[test]
    fn connector_settings_come_from_their_section_and_the_environment() {
        let cfg = Config::from_yaml(
            "connectors:\n  prometheus: { url: http://prom:9090 }\n  alertmanager: { url: http://am:9093 }\n",
        )
        .unwrap();
        let get =
            |k: &str| (k == "FIREBREAK_ALERTMANAGER_URL").then(|| "http://other:9093".to_owned());
        assert_eq!(
            cfg.connector_settings_from("prometheus", &["url"], get),
            serde_json::json!({"url": "http://prom:9090"})
        );
        assert_eq!(
            cfg.connector_settings_from("alertmanager", &["url"], get),
            serde_json::json!({"url": "http://other:9093"}),
            "the environment wins"
        );
        assert_eq!(
            cfg.connector_settings_from("traffic", &[], get),
            serde_json::Value::Null
        );
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let err = Config::from_yaml("lisen: 127.0.0.1:1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    /// `FIREBREAK_*` variables from a list, for `apply_env`.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn nats_error(yaml: &str, vars: &[(&str, &str)]) -> String {
        let mut cfg = Config::from_yaml(yaml).unwrap();
        if let Err(e) = cfg.apply_env(env(vars)) {
            return format!("{e:#}");
        }
        cfg.nats
            .expect("nats configured")
            .security()
            .map(|s| format!("accepted: {s:?}"))
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    #[test]
    fn nats_security_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("nats-password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let mut cfg = Config::from_yaml(&format!(
            "nats:\n  url: nats://nats:4222\n  user: engine\n  password_file: {}\n  tls: {{ ca_file: /etc/nats/ca.pem }}\n",
            pw.display()
        ))
        .unwrap();
        cfg.apply_env(env(&[])).unwrap();
        let nats = cfg.nats.clone().unwrap();
        let security = nats.security().unwrap();
        match &security.auth {
            NatsAuth::UserPassword { user, password } => {
                assert_eq!((user.as_str(), password.as_str()), ("engine", "s3cret"))
            }
            other => panic!("{other:?}"),
        }
        assert!(security.tls.wanted(), "a CA file means TLS is required");
        assert!(
            !format!("{nats:?}{security:?}").contains("s3cret"),
            "secrets are never printed"
        );

        // The environment wins: FIREBREAK_NATS_PASSWORD replaces the file, the URL is kept
        // with the rest of the section, and client certificates come in.
        cfg.apply_env(env(&[
            ("FIREBREAK_NATS_URL", "tls://nats-2:4222"),
            ("FIREBREAK_NATS_PASSWORD", "from-env"),
            ("FIREBREAK_NATS_TLS_CERT", "/etc/nats/client.pem"),
            ("FIREBREAK_NATS_TLS_KEY", "/etc/nats/client.key"),
        ]))
        .unwrap();
        let nats = cfg.nats.unwrap();
        assert_eq!(nats.url, "tls://nats-2:4222");
        assert_eq!(nats.password_file, None);
        let security = nats.security().unwrap();
        assert!(
            matches!(&security.auth, NatsAuth::UserPassword { password, .. } if password == "from-env")
        );
        assert_eq!(
            security.tls.client_cert,
            Some(("/etc/nats/client.pem".into(), "/etc/nats/client.key".into()))
        );
        assert_eq!(
            security.tls.ca_file,
            Some(PathBuf::from("/etc/nats/ca.pem"))
        );

        // Each method on its own, from the environment.
        let url = "nats:\n  url: nats://nats:4222\n";
        let seed = dir.path().join("engine.nk");
        std::fs::write(&seed, "SUAPRETENDSEED\n").unwrap();
        for (vars, method) in [
            (vec![("FIREBREAK_NATS_TOKEN", "t0ken")], "token"),
            (
                vec![("FIREBREAK_NATS_NKEY_FILE", seed.to_str().unwrap())],
                "nkey",
            ),
            (vec![("FIREBREAK_NATS_NKEY", "SUAPRETENDSEED")], "nkey"),
            (
                vec![("FIREBREAK_NATS_CREDS", "/etc/nats/engine.creds")],
                "creds file",
            ),
            (vec![], "none"),
        ] {
            let mut cfg = Config::from_yaml(url).unwrap();
            cfg.apply_env(env(&vars)).unwrap();
            let auth = cfg.nats.unwrap().security().unwrap().auth;
            assert_eq!(auth.method(), method, "{vars:?}");
        }
    }

    #[test]
    fn nats_security_combinations_that_cannot_work_are_refused_saying_why() {
        let url = "nats:\n  url: nats://nats:4222\n";
        for (yaml, vars, expect) in [
            (
                "nats:\n  url: nats://n:4222\n  user: engine\n",
                vec![],
                "nats.user \"engine\" is set without a password: set nats.password_file, nats.password or",
            ),
            (
                url,
                vec![("FIREBREAK_NATS_PASSWORD", "pw")],
                "without nats.user",
            ),
            (
                url,
                vec![
                    ("FIREBREAK_NATS_USER", "engine"),
                    ("FIREBREAK_NATS_PASSWORD", "pw"),
                    ("FIREBREAK_NATS_TOKEN", "t"),
                ],
                "more than one NATS authentication method is set (user/password, token)",
            ),
            (
                url,
                vec![
                    ("FIREBREAK_NATS_NKEY", "SU..."),
                    ("FIREBREAK_NATS_CREDS", "/x.creds"),
                ],
                "(nkey seed, creds file)",
            ),
            (
                "nats:\n  url: nats://n:4222\n  token: a\n  token_file: /b\n",
                vec![],
                "nats.token and nats.token_file are both set",
            ),
            (
                url,
                vec![("FIREBREAK_NATS_TLS_CERT", "/c.pem")],
                "nats.tls.cert_file /c.pem is set without nats.tls.key_file",
            ),
            (
                url,
                vec![("FIREBREAK_NATS_TLS_KEY", "/c.key")],
                "nats.tls.key_file /c.key is set without nats.tls.cert_file",
            ),
            (
                url,
                vec![("FIREBREAK_NATS_TLS_REQUIRED", "maybe")],
                "FIREBREAK_NATS_TLS_REQUIRED=maybe",
            ),
            (
                url,
                vec![("FIREBREAK_NATS_TOKEN_FILE", "/nonexistent/token")],
                "reading nats.token_file /nonexistent/token",
            ),
            (
                "",
                vec![("FIREBREAK_NATS_USER", "engine")],
                "FIREBREAK_NATS_USER is set but NATS is not configured",
            ),
            (
                "nats:\n  url: nats://n:4222\n  pasword: x\n",
                vec![],
                "pasword",
            ),
        ] {
            let err = if yaml.contains("pasword") {
                Config::from_yaml(yaml).unwrap_err().to_string()
            } else {
                nats_error(yaml, &vars)
            };
            assert!(err.contains(expect), "{vars:?}: {err}");
        }
        // An empty secret file is refused, naming it.
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = nats_error(
            url,
            &[
                ("FIREBREAK_NATS_USER", "engine"),
                ("FIREBREAK_NATS_PASSWORD_FILE", empty.to_str().unwrap()),
            ],
        );
        assert!(
            err.contains("nats.password_file") && err.contains("is empty"),
            "{err}"
        );
    }

    #[test]
    fn bad_env_value_is_an_error_naming_the_variable() {
        let mut cfg = Config::default();
        let err = cfg
            .apply_env(|k| (k == "FIREBREAK_LISTEN").then(|| "nope".to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FIREBREAK_LISTEN"), "{err}");
    }
}
