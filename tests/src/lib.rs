//! The end-to-end test harness: the real `firebreak` binary, the real Alertmanager, Prometheus
//! and `kubectl`, each on loopback with its own temp dir, killed on drop, with bounded waits that
//! say what they waited for. Used by the scenario tests in this crate (`scenarios/`) and by the
//! binary's own end-to-end tests (`firebreak/tests/it`).
//!
//! Start at [`Serve::start`] (a `firebreak serve` process), [`firebreak`] (one CLI command),
//! [`Alertmanager::start`] and [`kubectl`]. [`Journal`] reads `DATA/audit.jsonl` the way an
//! operator's script would: line by line, as JSON.
//! [`chat::ChatStandIn`] stands in for Slack and Mattermost.

pub mod browser;
pub mod chat;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a spawned program may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The binary under test: `FIREBREAK_BIN`, else `firebreak` in the target directory the test
/// executable was built into (`target/<profile>/deps/TEST` → `target/<profile>/firebreak`),
/// which `cargo test --workspace` and `./scripts/test` build first.
pub fn firebreak_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("FIREBREAK_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let exe = std::env::current_exe().expect("the test executable's path");
                let profile = exe
                    .parent()
                    .and_then(Path::parent)
                    .expect("the test executable lives in target/<profile>/deps");
                profile.join(format!("firebreak{}", std::env::consts::EXE_SUFFIX))
            });
        assert!(
            bin.is_file(),
            "{} is missing: build it first (`cargo build -p firebreak`; ./scripts/test and \
             `cargo test --workspace` do) or point FIREBREAK_BIN at it",
            bin.display()
        );
        bin
    })
}

/// The repository root (the shipped runbooks and fixtures live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `firebreak/` (fixtures, demo manifests, golden files).
pub fn crate_dir() -> PathBuf {
    repo_root().join("firebreak")
}

/// A reqwest client (the ring provider installed first, as every process must).
pub fn http() -> reqwest::Client {
    http_with_timeout(Duration::from_secs(30))
}

/// [`http`] with another request timeout.
pub fn http_with_timeout(timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// Polls `probe` every 50 ms until it yields `Some`, for at most `limit`; panics naming `what`
/// (and `context()` for diagnostics) otherwise.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A runbook directory written from `(file name, text)` pairs.
pub fn write_runbooks(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("runbook dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("writing {name}: {e}"));
    }
}

/// The `note` runbook of team `sre` in `dir`: started by hand, it logs one line.
pub fn write_note_runbook(dir: &Path) {
    write_runbooks(
        dir,
        &[
            (
                "note.yaml",
                "name: note\nteam: sre\ndescription: started by hand\nnamespaces: [shop]\ntimeout: 30s\n",
            ),
            ("note.rhai", "log(\"noted\");\n"),
        ],
    );
}

/// The shipped `runbooks/` copied into `dir`.
pub fn copy_shipped_runbooks(dir: &Path) {
    std::fs::create_dir_all(dir).expect("runbook dir");
    for entry in std::fs::read_dir(repo_root().join("runbooks")).expect("runbooks/") {
        let entry = entry.expect("dir entry");
        // The runbooks, not their test fixtures (tests/).
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy runbook");
        }
    }
}

/// What a CLI command did.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with both streams unless the command succeeded.
    pub fn ok(self, what: &str) -> Output {
        assert!(self.success(), "{what} failed: {self}");
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `firebreak ARGS` with `env` (and no inherited FIREBREAK_* settings), bounded.
pub async fn firebreak(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = tokio::process::Command::new(firebreak_bin());
    cmd.args(args)
        .env("RUST_BACKTRACE", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("FIREBREAK_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(cmd, &format!("firebreak {}", args.join(" "))).await
}

async fn run_bounded(mut cmd: tokio::process::Command, what: &str) -> Output {
    let out = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`{what}` did not finish within {CLI_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// How to start `firebreak serve`.
#[derive(Default)]
pub struct ServeOpts {
    /// Extra environment (FIREBREAK_NATS_URL, FIREBREAK_KUBECONFIG, ...).
    pub env: Vec<(&'static str, String)>,
    /// A `firebreak.yaml` to pass with `--config`.
    pub config: Option<String>,
    /// Keep the Kubernetes connector (default: disabled).
    pub kubernetes: bool,
}

/// A running `firebreak serve` with its own data dir; killed on drop.
pub struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    env: Vec<(&'static str, String)>,
    config: Option<PathBuf>,
    /// How many times the process was started (each start logs to its own file).
    starts: u32,
    tmp: TempDir,
}

/// Spawns `firebreak serve` in `dir` with JSON logs to `dir/serve-N.log`.
fn spawn_serve(
    dir: &Path,
    config: Option<&Path>,
    env: &[(&'static str, String)],
    n: u32,
) -> (Child, PathBuf) {
    let log = dir.join(format!("serve-{n}.log"));
    let mut cmd = Command::new(firebreak_bin());
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.arg("serve")
        .current_dir(dir)
        .env("FIREBREAK_LISTEN", "127.0.0.1:0")
        .env("FIREBREAK_LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            "info,firebreak::dispatch=debug,firebreak_ingest=debug",
        )
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("serve log"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FIREBREAK_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().expect("spawn firebreak serve"), log)
}

impl Serve {
    /// Starts `firebreak serve` on a free loopback port with the runbooks in `runbooks` and waits
    /// until it logs the address it serves on.
    pub async fn start(runbooks: &Path, opts: ServeOpts) -> Serve {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let mut env: Vec<(&'static str, String)> = vec![
            ("FIREBREAK_DATA_DIR", data_dir.display().to_string()),
            ("FIREBREAK_RUNBOOKS", runbooks.display().to_string()),
        ];
        if !opts.kubernetes {
            env.push(("FIREBREAK_KUBERNETES_DISABLED", "1".into()));
        }
        env.extend(opts.env.iter().cloned());
        let config = opts.config.as_ref().map(|text| {
            let path = tmp.path().join("firebreak.yaml");
            std::fs::write(&path, text).expect("write config");
            path
        });
        let (child, log) = spawn_serve(tmp.path(), config.as_deref(), &env, 1);
        let mut serve = Serve {
            child,
            base: String::new(),
            data_dir,
            log,
            env,
            config,
            starts: 1,
            tmp,
        };
        serve.wait_serving().await;
        serve
    }

    /// The engine's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The engine's peak resident memory so far, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the engine's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc status")
            * 1024
    }

    /// Kills the engine if it still runs (SIGKILL, like a crash) and starts it again on the
    /// same data dir, runbooks and settings (on a new port); waits until it serves.
    pub async fn restart(&mut self) {
        self.kill();
        self.starts += 1;
        let (child, log) = spawn_serve(
            self.tmp.path(),
            self.config.as_deref(),
            &self.env,
            self.starts,
        );
        self.child = child;
        self.log = log;
        self.wait_serving().await;
    }

    /// Asks the engine to stop (SIGTERM, as systemd or Kubernetes would) and waits, bounded,
    /// until it exits; returns its exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for serve") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "firebreak serve did not exit within {READY_TIMEOUT:?} of SIGTERM\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_serving(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = loop {
            if let Some(addr) = self.logged_addr() {
                break addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "firebreak serve exited before serving: {status}\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "firebreak serve did not log `firebreak serving` within {READY_TIMEOUT:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.base = format!("http://{addr}");
    }

    /// The `addr` of the `firebreak serving` log line, once written.
    fn logged_addr(&self) -> Option<String> {
        self.log_lines().into_iter().find_map(|line| {
            (line["fields"]["message"] == "firebreak serving")
                .then(|| line["fields"]["addr"].as_str().map(str::to_owned))
                .flatten()
        })
    }

    /// The JSON log lines written so far.
    pub fn log_lines(&self) -> Vec<Value> {
        let Ok(file) = std::fs::File::open(&self.log) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// Where this start of the process logs.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last 40 log lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!("--- serve log (tail)\n{}", lines[start..].join("\n"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` to `path` (JSON content type, optional bearer token); status and JSON body.
    /// `GET path` with an optional bearer token; the status and the JSON answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = http().get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail()));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = http()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_tail()));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// `firebreak ARGS` against this engine's data dir and runbooks.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (*k, v.clone())).collect();
        firebreak(args, &env).await
    }

    pub fn journal_path(&self) -> PathBuf {
        self.data_dir.join("audit.jsonl")
    }

    pub fn journal(&self) -> Journal {
        Journal::read(&self.journal_path())
    }

    /// Waits until `pred` holds for the journal; returns that journal.
    pub async fn wait_journal(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Journal) -> bool,
    ) -> Journal {
        wait_for(
            what,
            limit,
            || format!("{}\n{}", self.journal().summary(), self.log_tail()),
            || {
                let j = self.journal();
                std::future::ready(pred(&j).then_some(j))
            },
        )
        .await
    }
}

impl Serve {
    /// Kills the process (SIGKILL) and waits for it; the data dir stays until drop.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The audit journal as an operator reads it: one JSON record per line.
pub struct Journal {
    pub records: Vec<Value>,
}

/// One run's records, in journal order.
pub struct Run<'a> {
    pub run_id: String,
    pub runbook: String,
    pub records: Vec<&'a Value>,
}

impl Run<'_> {
    /// `succeeded`, `failed`, `timed_out`, `cancelled`; `None` while running.
    pub fn status(&self) -> Option<&str> {
        self.records
            .iter()
            .find(|r| r["body"]["type"] == "run_finished")
            .and_then(|r| r["body"]["status"].as_str())
    }

    pub fn started(&self) -> Option<&Value> {
        self.records
            .iter()
            .copied()
            .find(|r| r["body"]["type"] == "run_started")
    }

    /// The triggering event's id.
    pub fn event_id(&self) -> &str {
        self.records[0]["event_id"].as_str().unwrap_or("")
    }
}

/// What an audit trail shows done more than once, one line each: a run id with more than one
/// `run_started` (a delivery that started its run again under the same id: the id comes from
/// the event, so a second start does not make a second run id), and a run's step with more
/// than one `step_finished` other than `replayed` (a resumed run journals the steps it replays
/// as `replayed`: not a second execution). Empty when nothing ran twice.
pub fn done_twice<'a>(records: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    let mut starts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut steps: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for r in records {
        let run_id = r["run_id"].as_str().unwrap_or("");
        match r["body"]["type"].as_str() {
            Some("run_started") => *starts.entry(run_id).or_default() += 1,
            Some("step_finished") if r["body"]["status"] != "replayed" => {
                let step = r["body"]["step"].as_u64().unwrap_or(u64::MAX);
                *steps.entry((run_id, step)).or_default() += 1;
            }
            _ => {}
        }
    }
    let started = starts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, n)| format!("run {id} started {n} times"));
    let stepped = steps
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((id, step), n)| format!("step {step} of run {id} finished {n} times"));
    started.chain(stepped).collect()
}

/// One record as a line of the golden trail: type, step name, status; no time or hash.
pub fn trail_line(r: &Value) -> String {
    let body = &r["body"];
    let kind = body["type"].as_str().unwrap_or("?");
    let mut line = kind.to_owned();
    for key in ["name", "action", "status"] {
        if let Some(v) = body[key].as_str() {
            line.push(' ');
            line.push_str(v);
        }
    }
    line
}

impl Journal {
    /// Reads the journal; a missing file is empty and a torn last line is skipped.
    pub fn read(path: &Path) -> Journal {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        Journal { records }
    }

    /// Runs that have a `run_started` record, in start order.
    pub fn runs(&self) -> Vec<Run<'_>> {
        let mut order: Vec<String> = Vec::new();
        let mut by_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for r in &self.records {
            let id = r["run_id"].as_str().unwrap_or("").to_owned();
            if !by_id.contains_key(&id) {
                order.push(id.clone());
            }
            by_id.entry(id).or_default().push(r);
        }
        order
            .into_iter()
            .filter_map(|id| {
                let records = by_id.remove(&id)?;
                records
                    .iter()
                    .any(|r| r["body"]["type"] == "run_started")
                    .then(|| Run {
                        runbook: records[0]["runbook"].as_str().unwrap_or("").to_owned(),
                        run_id: id,
                        records,
                    })
            })
            .collect()
    }

    pub fn runs_of(&self, runbook: &str) -> Vec<Run<'_>> {
        self.runs()
            .into_iter()
            .filter(|r| r.runbook == runbook)
            .collect()
    }

    /// Finished runs of `runbook`.
    pub fn finished(&self, runbook: &str) -> Vec<Run<'_>> {
        self.runs_of(runbook)
            .into_iter()
            .filter(|r| r.status().is_some())
            .collect()
    }

    /// Every `refusal` record.
    pub fn refusals(&self) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["body"]["type"] == "refusal")
            .collect()
    }

    /// One line per run, for failure messages.
    pub fn summary(&self) -> String {
        let mut out = format!("--- journal: {} records\n", self.records.len());
        for run in self.runs() {
            out.push_str(&format!(
                "{} {} {:?} event {}\n",
                run.run_id,
                run.runbook,
                run.status(),
                run.event_id()
            ));
        }
        for r in self.refusals() {
            out.push_str(&format!(
                "refusal {} {}\n",
                r["runbook"], r["body"]["reason"]
            ));
        }
        out
    }
}

/// A real Alertmanager (`/usr/bin/prometheus-alertmanager`) with a webhook receiver pointing at
/// `webhook_url`; killed on drop.
pub struct Alertmanager {
    child: Child,
    pub base: String,
    dir: TempDir,
}

impl Alertmanager {
    /// `group_wait` 1s, `group_interval` 1s, `repeat_interval` as given; `send_resolved`.
    /// `token`: the bearer credentials the receiver sends.
    pub async fn start(
        webhook_url: &str,
        repeat_interval: &str,
        token: Option<&str>,
    ) -> Alertmanager {
        let dir = tempfile::tempdir().expect("alertmanager temp dir");
        let auth = token
            .map(|t| {
                format!(
                    "        http_config:\n          authorization:\n            credentials: {t}\n"
                )
            })
            .unwrap_or_default();
        let config = format!(
            "route:\n  receiver: firebreak\n  group_by: [alertname]\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: {repeat_interval}\nreceivers:\n  - name: firebreak\n    \
             webhook_configs:\n      - url: {webhook_url}\n        send_resolved: true\n{auth}"
        );
        std::fs::write(dir.path().join("alertmanager.yml"), config).expect("write am config");
        std::fs::create_dir_all(dir.path().join("data")).expect("am data dir");
        let port = firebreak_bus::port::free_loopback_port().expect("free port");
        let child = spawn_ready(
            "/usr/bin/prometheus-alertmanager",
            &[
                format!(
                    "--config.file={}",
                    dir.path().join("alertmanager.yml").display()
                ),
                format!("--storage.path={}", dir.path().join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--cluster.listen-address=".into(),
                "--log.level=debug".into(),
            ],
            &dir.path().join("am.log"),
            &format!("http://127.0.0.1:{port}/-/ready"),
        )
        .await;
        Alertmanager {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("am.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!("--- alertmanager log (tail)\n{}", lines[start..].join("\n"))
    }

    /// `POST /api/v2/alerts`.
    pub async fn post_alerts(&self, alerts: &Value) {
        let resp = http()
            .post(format!("{}/api/v2/alerts", self.base))
            .json(alerts)
            .send()
            .await
            .expect("POST /api/v2/alerts");
        let status = resp.status();
        assert!(
            status.is_success(),
            "alertmanager refused the alerts: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An RFC 3339 time `offset_ms` from now.
pub fn at(offset_ms: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_millis(offset_ms)).to_string()
}

/// A simulated cluster (kubesim in process) with a kubeconfig file for `firebreak` and kubectl.
pub struct Cluster {
    pub sim: kubesim::SimHandle,
    pub kubeconfig: PathBuf,
    _dir: TempDir,
}

impl Cluster {
    pub async fn start(controllers: kubesim::ControllerConfig) -> Cluster {
        let sim = kubesim::Sim::start(kubesim::SimConfig {
            controllers,
            ..Default::default()
        })
        .await
        .expect("start kubesim");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Cluster {
            sim,
            kubeconfig,
            _dir: dir,
        }
    }

    /// The real `kubectl ARGS` against this cluster, with a fresh cache dir; bounded.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(&self.kubeconfig, args).await
    }
}

/// The real `kubectl ARGS` with `KUBECONFIG` and a fresh `KUBECACHEDIR`; bounded.
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    let cache = tempfile::tempdir().expect("kube cache dir");
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", cache.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    run_bounded(cmd, &format!("kubectl {}", args.join(" "))).await
}

/// `ml-serving/fraud-model` (the demo's manifest) at v1, then rolled to v2, both rollouts
/// finished: the start of scenario 1.
pub async fn fraud_model_at_v2(cluster: &Cluster) {
    let manifest =
        std::fs::read_to_string(crate_dir().join("demo/fraud-model.yaml")).expect("demo manifest");
    let status = [
        "-n",
        "ml-serving",
        "rollout",
        "status",
        "deployment/fraud-model",
        "--timeout=60s",
    ];
    cluster.sim.apply_yaml(&manifest).expect("apply v1");
    cluster.kubectl(&status).await.ok("rollout status v1");
    let v2 = manifest
        .replace("fraud-model:v1", "fraud-model:v2")
        .replace("deploy fraud-model v1", "deploy fraud-model v2");
    cluster.sim.apply_yaml(&v2).expect("apply v2");
    cluster.kubectl(&status).await.ok("rollout status v2");
}

impl Cluster {
    /// The REVISION column of `kubectl rollout history deployment/fraud-model`.
    pub async fn fraud_model_revisions(&self) -> Vec<u32> {
        self.kubectl(&[
            "-n",
            "ml-serving",
            "rollout",
            "history",
            "deployment/fraud-model",
        ])
        .await
        .ok("kubectl rollout history")
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
    }

    /// The image fraud-model's template runs, as kubectl reads it.
    pub async fn fraud_model_image(&self) -> String {
        self.kubectl(&[
            "-n",
            "ml-serving",
            "get",
            "deployment/fraud-model",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await
        .ok("kubectl get deployment")
        .stdout
    }

    /// fraud-model's resourceVersion (changes with any write to it).
    pub async fn fraud_model_version(&self) -> String {
        self.kubectl(&[
            "-n",
            "ml-serving",
            "get",
            "deployment/fraud-model",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .await
        .ok("kubectl get deployment")
        .stdout
    }
}

/// The captured ModelLatencyHigh notification (Alertmanager 0.25), as a webhook body.
pub fn latency_alert() -> String {
    std::fs::read_to_string(crate_dir().join("fixtures/alertmanager-model-latency-high.json"))
        .expect("fixture")
}

/// Spawns `program ARGS` (stderr and stdout to `log`) and waits until `ready` answers 2xx;
/// panics with the log's tail if it does not within [`READY_TIMEOUT`].
async fn spawn_ready(program: &str, args: &[String], log: &Path, ready: &str) -> Child {
    let out = std::fs::File::create(log).expect("program log");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("program log"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {program} log (tail)\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    };
    let client = http();
    wait_for(
        &format!("{program} at {ready}"),
        READY_TIMEOUT,
        tail,
        || {
            let client = client.clone();
            async move {
                let ok = client.get(ready).send().await.ok()?.status().is_success();
                ok.then_some(())
            }
        },
    )
    .await;
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "{program} exited ({status}) right after it answered\n{}",
            tail()
        );
    }
    child
}

/// A real Prometheus (`/usr/bin/prometheus`) scraping `targets` (`job` → `host:port`, path
/// `/metrics`) every second, evaluating `rules` every second and sending alerts to
/// `alertmanager` (a base URL) if given; killed on drop.
pub struct Prometheus {
    child: Child,
    pub base: String,
    dir: TempDir,
}

impl Prometheus {
    pub async fn start(
        targets: &[(&str, std::net::SocketAddr)],
        rules: &str,
        alertmanager: Option<&str>,
    ) -> Prometheus {
        let dir = tempfile::tempdir().expect("prometheus temp dir");
        std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n",
        );
        if let Some(am) = alertmanager {
            let host = am.trim_start_matches("http://");
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{host}']\n"
            ));
        }
        config.push_str("scrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let port = firebreak_bus::port::free_loopback_port().expect("free port");
        let child = spawn_ready(
            "/usr/bin/prometheus",
            &[
                format!("--config.file={}", file.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &dir.path().join("prometheus.log"),
            &format!("http://127.0.0.1:{port}/-/ready"),
        )
        .await;
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!("--- prometheus log (tail)\n{}", lines[start..].join("\n"))
    }

    /// An instant query's single value; `None` for no data (or an error, logged).
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let resp = http()
            .post(format!("{}/api/v1/query", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("query={encoded}"))
            .send()
            .await
            .ok()?;
        let body: Value = resp.json().await.ok()?;
        let result = body["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// The alerts Prometheus holds (`/api/v1/alerts`): `(alertname, state)`.
    pub async fn alerts(&self) -> Vec<(String, String)> {
        let Ok(resp) = http()
            .get(format!("{}/api/v1/alerts", self.base))
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value = resp.json().await.unwrap_or_default();
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    /// The active alerts Alertmanager holds (`/api/v2/alerts`): each one's labels.
    pub async fn active(&self) -> Vec<Value> {
        let Ok(resp) = http()
            .get(format!("{}/api/v2/alerts", self.base))
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value = resp.json().await.unwrap_or_default();
        body.as_array()
            .into_iter()
            .flatten()
            .map(|a| a["labels"].clone())
            .collect()
    }
}

/// `GET /metrics` of `serve`, checked clean by the real `promtool check metrics`.
pub async fn scrape_checked(serve: &Serve) -> String {
    let metrics = http()
        .get(serve.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed with prometheus)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool ran");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_id: &str, body: Value) -> Value {
        serde_json::json!({ "run_id": run_id, "body": body })
    }

    #[test]
    fn done_twice_names_a_second_start_under_one_run_id_and_a_step_run_again() {
        let once = [
            record("r1", serde_json::json!({"type": "run_started"})),
            record(
                "r1",
                serde_json::json!({"type": "step_finished", "step": 1, "status": "ok"}),
            ),
            // A resumed run replays its finished step: not done twice.
            record("r1", serde_json::json!({"type": "run_resumed"})),
            record(
                "r1",
                serde_json::json!({"type": "step_finished", "step": 1, "status": "replayed"}),
            ),
            record(
                "r1",
                serde_json::json!({"type": "run_finished", "status": "succeeded"}),
            ),
            record("r2", serde_json::json!({"type": "run_started"})),
        ];
        assert_eq!(done_twice(&once), Vec::<String>::new());

        let mut twice = once.to_vec();
        twice.push(record("r2", serde_json::json!({"type": "run_started"})));
        twice.push(record(
            "r1",
            serde_json::json!({"type": "step_finished", "step": 1, "status": "failed"}),
        ));
        assert_eq!(
            done_twice(&twice),
            [
                "run r2 started 2 times",
                "step 1 of run r1 finished 2 times"
            ]
        );
    }
}
