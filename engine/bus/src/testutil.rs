//! Test harness: a real `nats-server -js` on a free loopback port with a temporary store
//! (behind the `test-util` feature; other crates' tests use it too).
//!
//! [`NatsServer::start`] spawns the server and waits (bounded) until it logs that it is ready;
//! [`NatsServer::stop`] shuts it down (SIGTERM, as `kill PID` or systemd would),
//! [`NatsServer::kill`] kills it (SIGKILL, like a crash), and [`NatsServer::restart`] starts it
//! again on the same port and store directory. Dropping it kills the server.
//! [`NatsServer::start_with_config`] adds a server config file (accounts, users and their
//! permissions, TLS) next to files it includes.
//!
//! Note for crash tests: nats-server 2.9 writes a stored message to the OS before its PubAck, so
//! accepted events survive SIGKILL; the removal of an acked message from a work-queue stream is
//! persisted lazily, so after SIGKILL a recently acked event may be delivered again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long to wait for nats-server to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What can go wrong starting the test server.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    /// The binary could not be run.
    #[error("cannot run {binary}")]
    Spawn {
        /// The binary tried.
        binary: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server did not log "Server is ready" in time, or exited first.
    #[error(
        "nats-server on port {port} was not ready within {timeout:?}; its log ends with: {log_tail}"
    )]
    NotReady {
        /// The port it was told to use.
        port: u16,
        /// How long we waited.
        timeout: Duration,
        /// The last lines it printed.
        log_tail: String,
    },
    /// No free port or temp dir.
    #[error("cannot prepare the nats-server test environment")]
    Setup(#[source] std::io::Error),
}

/// A running (or stopped) `nats-server -js` for tests; see the module docs.
pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    /// `-c` file, if started with a config.
    config: Option<PathBuf>,
    child: Option<Child>,
}

/// The nats-server binary: `$NATS_SERVER_BIN`, else `nats-server` on the PATH, else
/// `/usr/sbin/nats-server` (Debian's location, often not on a user's PATH).
fn binary() -> String {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin;
    }
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("nats-server").is_file())
    });
    if on_path {
        "nats-server".into()
    } else {
        "/usr/sbin/nats-server".into()
    }
}

fn free_port() -> Result<u16, NatsServerError> {
    crate::port::free_loopback_port().map_err(NatsServerError::Setup)
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store directory.
    pub fn start() -> Result<NatsServer, NatsServerError> {
        let store = tempfile::tempdir().map_err(NatsServerError::Setup)?;
        let mut server = NatsServer {
            port: free_port()?,
            store,
            config: None,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a server as [`NatsServer::start`] does, with `config` (nats-server's config
    /// format: `accounts`, `authorization`, `tls`, ...) as its config file; `files` (name,
    /// contents) are written beside it first, for the config to `include` by name. The port,
    /// address, JetStream and store directory come from the command line, which wins over
    /// the file.
    pub fn start_with_config(
        config: &str,
        files: &[(&str, &str)],
    ) -> Result<NatsServer, NatsServerError> {
        let store = tempfile::tempdir().map_err(NatsServerError::Setup)?;
        let dir = store.path().join("conf");
        std::fs::create_dir_all(&dir).map_err(NatsServerError::Setup)?;
        for (name, contents) in files {
            std::fs::write(dir.join(name), contents).map_err(NatsServerError::Setup)?;
        }
        let path = dir.join("nats.conf");
        std::fs::write(&path, config).map_err(NatsServerError::Setup)?;
        let mut server = NatsServer {
            port: free_port()?,
            store,
            config: Some(path),
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts `n` servers on loopback forming one JetStream cluster (`server_name` `n1`…,
    /// cluster `firebreak`, each routed to the others). Restarted nodes rejoin on the same
    /// ports and stores. The cluster may still be electing its meta leader on return.
    pub fn start_cluster(n: usize) -> Result<Vec<NatsServer>, NatsServerError> {
        NatsServer::start_cluster_with(n, "")
    }

    /// [`NatsServer::start_cluster`] with `config` (users and their permissions, say) added to
    /// every node's config file.
    pub fn start_cluster_with(n: usize, config: &str) -> Result<Vec<NatsServer>, NatsServerError> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Spawned together: a node logs ready only once it could reach the others' routes.
        let mut nodes = Vec::new();
        for (i, port) in routes.iter().enumerate() {
            let node = format!(
                "server_name: n{}\ncluster {{\n  name: firebreak\n  listen: 127.0.0.1:{port}\n  routes: [{route_list}]\n}}\n{config}",
                i + 1
            );
            nodes.push(NatsServer::start_with_config(&node, &[])?);
        }
        Ok(nodes)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (the same across restarts).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the server to shut down (SIGTERM, through `kill`, since this crate forbids the
    /// unsafe a direct signal needs) and waits for it to exit; SIGKILL if `kill` cannot be run.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !sent {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory (stopping it first if it runs).
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), NatsServerError> {
        let binary = binary();
        let store: PathBuf = self.store.path().to_owned();
        let mut command = Command::new(&binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NatsServerError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        // nats-server logs to stderr; a thread reads it to the end (so the pipe never fills)
        // and reports each line until the ready line.
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        let mut tail: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("Server is ready");
                    tail.push(line);
                    if ready {
                        self.child = Some(child);
                        return Ok(());
                    }
                }
                // Timed out, or stderr closed because the server exited.
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let start = tail.len().saturating_sub(5);
                    return Err(NatsServerError::NotReady {
                        port: self.port,
                        timeout: READY_TIMEOUT,
                        log_tail: tail[start..].join(" | "),
                    });
                }
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a hand-made [`crate::Delivery`] was settled (see [`delivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Ack,
    Nak,
}

/// Publishes one audit line on `subject` with message id `id` and waits until the stream has
/// it (as a replica's audit mirror does).
pub async fn publish_audit_line(
    bus: &crate::NatsBus,
    subject: String,
    id: String,
    payload: bytes::Bytes,
) {
    crate::Bus::publish_audit(
        bus,
        vec![crate::AuditMessage {
            subject,
            id,
            payload,
        }],
    )
    .await
    .expect("published")
    .await
    .expect("stored");
}

/// The requests nats-server received on `subjects` (the JetStream API's, say) while `work`
/// ran, (subject, payload), as a subscriber beside them saw them.
pub async fn api_requests_during(
    url: &str,
    subjects: &str,
    work: impl std::future::Future<Output = ()>,
) -> Vec<(String, bytes::Bytes)> {
    use futures::StreamExt;
    let watcher = async_nats::connect(url).await.unwrap();
    let mut requests = watcher.subscribe(subjects.to_owned()).await.unwrap();
    // A flush only writes the subscription out; nats-server handles a connection's commands
    // in order, so once a message published after it comes back, the subscription is in place
    // (without this, a request made at once was missed once in 6 to 11 runs).
    let probe = watcher.new_inbox();
    let mut probes = watcher.subscribe(probe.clone()).await.unwrap();
    watcher
        .publish(probe.clone(), "in place".into())
        .await
        .unwrap();
    probes.next().await.unwrap();
    work.await;
    watcher.publish(probe, "done".into()).await.unwrap();
    probes.next().await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_millis(300), requests.next()).await
    {
        seen.push((request.subject.to_string(), request.payload.clone()));
    }
    seen
}

/// A delivery made by hand, for consumers' tests (the same message delivered twice at once,
/// say): how it is settled lands in the returned list.
pub fn delivery(
    event: std::sync::Arc<firebreak_event::Event>,
    attempt: u32,
    published: jiff::Timestamp,
) -> (
    crate::Delivery,
    std::sync::Arc<std::sync::Mutex<Vec<Settled>>>,
) {
    struct Probe(std::sync::Arc<std::sync::Mutex<Vec<Settled>>>);
    impl crate::AckHandle for Probe {
        fn ack(&self) -> futures::future::BoxFuture<'_, Result<(), crate::BusError>> {
            self.0.lock().expect("probe lock").push(Settled::Ack);
            Box::pin(async { Ok(()) })
        }
        fn nak(
            &self,
            _delay: Duration,
        ) -> futures::future::BoxFuture<'_, Result<(), crate::BusError>> {
            self.0.lock().expect("probe lock").push(Settled::Nak);
            Box::pin(async { Ok(()) })
        }
        fn in_progress(&self) -> futures::future::BoxFuture<'_, Result<(), crate::BusError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let settled = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let delivery = crate::Delivery::new(
        event,
        attempt,
        published,
        Duration::from_secs(60),
        Box::new(Probe(settled.clone())),
    );
    (delivery, settled)
}

/// Certificates for TLS tests, made by the `openssl` CLI in a temp dir: a CA, a server
/// certificate for `IP:127.0.0.1` and a client certificate (`CN=firebreak-engine`), both
/// signed by the CA, and a second CA that signed neither. PEM files, keys in PKCS#8.
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Makes the certificates; fails naming the command if `openssl` cannot run or fails
    /// (Debian package `openssl`).
    pub fn generate() -> Result<TlsFiles, NatsServerError> {
        let dir = tempfile::tempdir().map_err(NatsServerError::Setup)?;
        let files = TlsFiles { dir };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (ca, cn) in [("ca", "firebreak test CA"), ("other-ca", "some other CA")] {
            files.openssl(
                &[
                    &["req", "-x509"][..],
                    &ec,
                    &[
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.pem"),
                    ],
                    &["-days", "2", "-subj", &format!("/CN={cn}")],
                ]
                .concat(),
            )?;
        }
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "firebreak-engine",
                "extendedKeyUsage=clientAuth\n",
            ),
        ] {
            std::fs::write(files.dir.path().join(format!("{name}.ext")), ext)
                .map_err(NatsServerError::Setup)?;
            files.openssl(
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-keyout",
                        &format!("{name}.key"),
                        "-out",
                        &format!("{name}.csr"),
                    ],
                    &["-subj", &format!("/CN={cn}")],
                ]
                .concat(),
            )?;
            files.openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ])?;
        }
        Ok(files)
    }

    fn openssl(&self, args: &[&str]) -> Result<(), NatsServerError> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NatsServerError::Spawn {
                binary: "openssl".into(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NatsServerError::Setup(std::io::Error::other(format!(
                "`openssl {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))))
        }
    }

    /// `NAME.pem` or `NAME.key` in the temp dir: `ca.pem`, `other-ca.pem`, `server.pem`,
    /// `server.key`, `client.pem`, `client.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A nats-server `tls` block serving `server.pem` and requiring a client certificate signed
    /// by `ca.pem` (`verify: true`).
    pub fn server_block(&self) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem"),
        )
    }
}
