//! `firebreak.yaml`: the daemon's configuration, with environment overrides.
//!
//! Every field has a default, so with no file at all `firebreak serve` runs the embedded
//! default (in-process bus, local store under `.firebreak/`). Environment variables win over
//! the file: `FIREBREAK_LISTEN`, `FIREBREAK_DATA_DIR`, `FIREBREAK_RUNBOOKS`, `FIREBREAK_TEAMS`,
//! `FIREBREAK_NATS_URL`, `FIREBREAK_ALERTMANAGER_TOKEN`, `FIREBREAK_API_TOKEN`, `FIREBREAK_KUBECONFIG`,
//! `FIREBREAK_KUBERNETES_DISABLED`, `FIREBREAK_MAX_CONCURRENT_RUNS`, `FIREBREAK_AUDIT_PATH`,
//! and, for each connector's settings, `FIREBREAK_<SECTION>_<KEY>` (`FIREBREAK_PROMETHEUS_URL`
//! sets `connectors.prometheus.url`; see `serve::plugins`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
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
    /// A journal segment is sealed once it holds this many MiB. Default 64.
    pub segment_mib: Option<u64>,
    /// Set by `serve --audit-relink`: a journal whose tail does not verify is set aside and
    /// the engine goes on from its last good record, instead of refusing to start.
    #[serde(skip)]
    pub relink_broken: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
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
}

impl Config {
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
            max_script_bytes: budget.max_script_bytes,
            max_run_records: budget.max_records,
            max_run_journal_bytes: budget.max_journal_bytes,
            max_evidence_bytes: budget.max_evidence_bytes,
        }
    }
}

impl LimitsConfig {
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
            let var = format!("FIREBREAK_{}_{}", section, key).to_ascii_uppercase();
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
            self.nats = (!v.is_empty()).then_some(NatsConfig { url: v });
        }
        if let Some(v) = get("FIREBREAK_ALERTMANAGER_TOKEN") {
            self.auth.alertmanager_token = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("FIREBREAK_API_TOKEN") {
            self.auth.api_token = (!v.is_empty()).then_some(v);
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
