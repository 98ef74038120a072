//! Test harness: a kubesim on 127.0.0.1:0 in this process, a kubeconfig for it, and the real
//! kubectl run with a fresh `KUBECACHEDIR` per call (KUBESIM-NOTES §0.2).
//!
//! Start at [`Kube::start`]; then [`Kube::kubectl`] (bounded, returns exit code and output),
//! [`Kube::kubectl_stdin`], [`Kube::kubectl_spawn`] for long-running commands like `get -w`
//! (killed on drop), and [`Kube::client`] for kube-rs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kubesim::{Sim, SimConfig, SimHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How long one kubectl command may take before the test fails.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// A running simulator plus what kubectl needs to reach it.
pub struct Kube {
    pub handle: SimHandle,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    calls: std::sync::atomic::AtomicUsize,
}

/// What a finished kubectl printed.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts exit code 0 and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "kubectl failed: stdout={:?} stderr={:?}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts a non-zero exit code and returns stderr.
    #[track_caller]
    pub fn failed(&self) -> &str {
        assert_ne!(
            self.code, 0,
            "kubectl unexpectedly succeeded: stdout={:?}",
            self.stdout
        );
        &self.stderr
    }
}

impl Kube {
    /// Starts a fresh simulator with default settings.
    pub async fn start() -> Kube {
        Kube::start_with(SimConfig::default()).await
    }

    /// Starts a simulator with `cfg` and writes its kubeconfig.
    pub async fn start_with(cfg: SimConfig) -> Kube {
        let handle = Sim::start(cfg).await.expect("kubesim starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        handle
            .write_kubeconfig(&kubeconfig)
            .expect("kubeconfig written");
        Kube {
            handle,
            dir,
            kubeconfig,
            calls: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The simulator's state.
    pub fn sim(&self) -> &Sim {
        self.handle.sim()
    }

    fn command(&self, args: &[&str]) -> Command {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cache = self.dir.path().join(format!("cache-{n}"));
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", &cache)
            .env("HOME", self.dir.path())
            .env_remove("KUBE_FEATURE_WatchListClient")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion (bounded by a minute).
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.run(self.command(args), None, args).await
    }

    /// Runs kubectl with `stdin` piped in (e.g. `apply -f -`).
    pub async fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped());
        self.run(cmd, Some(stdin), args).await
    }

    async fn run(&self, mut cmd: Command, stdin: Option<&str>, args: &[&str]) -> Output {
        let mut child = cmd.spawn().expect("kubectl is installed");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            pipe.write_all(text.as_bytes())
                .await
                .expect("stdin written");
            drop(pipe);
        }
        let out = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!("kubectl {args:?} did not finish within {KUBECTL_TIMEOUT:?}")
            })
            .expect("kubectl ran");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts a long-running kubectl (e.g. `get -w`); it is killed when the result is dropped.
    pub fn kubectl_spawn(&self, args: &[&str]) -> Running {
        let mut child = self.command(args).spawn().expect("kubectl is installed");
        let stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        Running {
            child,
            stdout,
            what: format!("kubectl {}", args.join(" ")),
        }
    }

    /// A kube-rs client for this simulator.
    pub fn client(&self) -> kube::Client {
        let url: http::Uri = self.handle.url().parse().expect("url parses");
        let config = kube::Config::new(url);
        kube::Client::try_from(config).expect("kube client builds")
    }

    /// Sends a JSON body to an admin endpoint (`/_sim/...`) and returns the answer.
    pub async fn admin(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let client = self.client();
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request builds");
        client
            .request::<serde_json::Value>(req)
            .await
            .unwrap_or_else(|e| panic!("admin {path} failed: {e}"))
    }
}

/// A kubectl still running.
pub struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
    what: String,
}

impl Running {
    /// Reads stdout lines until one satisfies `pred` (bounded); returns that line.
    pub async fn line_matching(
        &mut self,
        pred: impl Fn(&str) -> bool,
        within: Duration,
        waiting_for: &str,
    ) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout_at(deadline, self.stdout.read_line(&mut line)).await;
            match read {
                Err(_) => panic!(
                    "{}: no line with {waiting_for} within {within:?}; saw {seen:?}",
                    self.what
                ),
                Ok(Ok(0)) => panic!(
                    "{}: output ended before {waiting_for}; saw {seen:?}",
                    self.what
                ),
                Ok(Ok(_)) if pred(&line) => return line,
                Ok(Ok(_)) => seen.push(line),
                Ok(Err(e)) => panic!("{}: reading output: {e}", self.what),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
