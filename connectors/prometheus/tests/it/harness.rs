//! Test harness: an exporter on 127.0.0.1 serving `/metrics` with values the test sets, a
//! real `prometheus` on a free loopback port scraping it every second (killed on Drop), and
//! helpers to call `prom::` actions as the runtime would.
//!
//! Every wait is bounded and fails naming what it waited for, with Prometheus's log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use firebreak_connector::{ActionContext, ActionError, Connector};
use firebreak_prometheus::PrometheusConnector;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// How long to wait for Prometheus to start, scrape, or evaluate rules.
const WAIT: Duration = Duration::from_secs(60);

/// Installs the ring provider reqwest needs (CRATES.md §1), once per process.
pub fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest client as the binary builds it.
pub fn http() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder().build().expect("reqwest client")
}

/// The exposition text the exporter serves: a gauge, request counters (one model with no
/// traffic) and a latency histogram whose p99 is exactly 0.5 s.
pub fn exposition(queue_depth: f64) -> String {
    format!(
        "# HELP model_queue_depth Requests waiting.\n\
         # TYPE model_queue_depth gauge\n\
         model_queue_depth{{model=\"fraud\"}} {queue_depth}\n\
         # HELP model_requests_total Requests served.\n\
         # TYPE model_requests_total counter\n\
         model_requests_total{{model=\"fraud\",code=\"200\"}} 100\n\
         model_requests_total{{model=\"fraud\",code=\"500\"}} 3\n\
         model_requests_total{{model=\"idle\",code=\"200\"}} 0\n\
         # HELP model_request_duration_seconds Request latency.\n\
         # TYPE model_request_duration_seconds histogram\n\
         model_request_duration_seconds_bucket{{model=\"fraud\",le=\"0.1\"}} 90\n\
         model_request_duration_seconds_bucket{{model=\"fraud\",le=\"0.5\"}} 99\n\
         model_request_duration_seconds_bucket{{model=\"fraud\",le=\"1\"}} 100\n\
         model_request_duration_seconds_bucket{{model=\"fraud\",le=\"+Inf\"}} 100\n\
         model_request_duration_seconds_sum{{model=\"fraud\"}} 12.5\n\
         model_request_duration_seconds_count{{model=\"fraud\"}} 100\n"
    )
}

/// A `/metrics` endpoint whose body the test sets.
pub struct Exporter {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    pub async fn start(body: String) -> Result<Self> {
        let body = Arc::new(Mutex::new(body));
        let served = body.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let text = served.lock().unwrap().clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, body, task })
    }

    /// Replaces what the next scrape sees.
    pub fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    /// A handle that replaces what the next scrape sees, for a task that outlives a borrow.
    pub fn setter(&self) -> impl Fn(String) + Send + Sync + 'static {
        let body = self.body.clone();
        move |text| *body.lock().unwrap() = text
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

const RULES: &str = r#"groups:
  - name: model
    interval: 1s
    rules:
      - alert: ModelQueueDeep
        expr: model_queue_depth > 5
        labels: { severity: page }
        annotations: { summary: "queue depth is {{ $value }}" }
      - alert: ModelQueueSlowBurn
        expr: model_queue_depth > 0
        for: 1h
      - alert: ModelQueueHuge
        expr: model_queue_depth > 1000
"#;

/// A real Prometheus scraping one target every second, with the rules above; killed on Drop.
pub struct Prometheus {
    child: Child,
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(dir.path().join("rules.yml"), RULES)?;
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yml]\n\
                 scrape_configs:\n  - job_name: model\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let port = free_port()?;
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {PROMETHEUS}"))?;
        let mut prom = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        prom.wait_ready().await?;
        Ok(prom)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = http();
        let ready = format!("{}/-/ready", self.url);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "prometheus exited with {status} before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(r) = http.get(&ready).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "prometheus not ready at {ready} within {WAIT:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of Prometheus's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn connector(&self) -> PrometheusConnector {
        PrometheusConnector::new(&self.url, http()).expect("connector")
    }

    /// Polls `prom::<action>(args)` until `done` accepts its answer; fails after [`WAIT`]
    /// naming what it waited for.
    pub async fn wait_for(
        &self,
        what: &str,
        action: &str,
        args: Value,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let prom = self.connector();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last;
        loop {
            match call(&prom, action, args.clone()).await {
                Ok(v) if done(&v) => return Ok(v),
                other => last = Some(other),
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "waited {WAIT:?} for {what} (prom::{action} {args}); last answer {last:?}\nprometheus log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An exporter and a Prometheus that has scraped it at least once.
pub struct Env {
    pub exporter: Exporter,
    pub prom: Prometheus,
}

impl Env {
    /// Starts both and waits until `model_queue_depth` is queryable with `queue_depth`.
    pub async fn start(queue_depth: f64) -> Result<Self> {
        Self::start_exposing(
            exposition(queue_depth),
            "model_queue_depth{model=\"fraud\"}",
            serde_json::json!(queue_depth),
        )
        .await
    }

    /// Starts both with the exporter serving `body`, and waits until `ready` returns `value`.
    pub async fn start_exposing(body: String, ready: &str, value: Value) -> Result<Self> {
        let exporter = Exporter::start(body).await?;
        let prom = Prometheus::start(exporter.addr).await?;
        prom.wait_for(
            "the first scrape of the exporter",
            "query",
            serde_json::json!({ "promql": ready }),
            |v| v["result"][0]["value"] == value,
        )
        .await?;
        Ok(Self { exporter, prom })
    }
}

/// An `ActionContext` as the runtime passes it.
pub fn cx() -> ActionContext {
    ActionContext {
        run_id: "run-1".into(),
        runbook: "canary".into(),
        team: "ml-platform".into(),
        namespaces: vec!["ml-serving".into()],
        progress: Arc::new(|_| {}),
    }
}

/// Calls `prom::<action>` with named arguments, as the runtime does.
pub async fn call(
    prom: &PrometheusConnector,
    action: &str,
    args: Value,
) -> Result<Value, ActionError> {
    let Value::Object(args) = args else {
        panic!("arguments must be a JSON object")
    };
    prom.call(action, args, &cx()).await
}
