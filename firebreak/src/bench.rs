//! `firebreak bench`: a load generator against a real `firebreak serve` child process.
//!
//! It writes 50 runbooks (one matches, with one `log` step), starts `firebreak serve` on a free
//! loopback port (embedded bus, or JetStream with `--nats spawn|URL`), and measures:
//! - **ready**: process start → `GET /readyz` answers 200;
//! - **idle RSS**: the server's resident memory once ready, before any load, and the part of
//!   it that is anonymous (the heap and stacks; the rest is the binary's code and read-only
//!   data, shared page cache, and depends on how the kernel cached the file: a freshly
//!   written binary maps about 2 MiB more of its code than one read back from disk);
//! - **throughput**: `--alerts` Alertmanager v4 webhooks (shaped like the captured fixtures)
//!   posted by 16 keep-alive clients; alerts/s counts from the first POST until the server's
//!   `firebreak_runs_finished_total` shows every run finished, and every run's records are
//!   durable in the audit journal by then (the journal answers only after fsync);
//! - **latency**: POST → RunStarted (the journal's sealing time) at a paced 1,000 alerts/s;
//!   beside it, the host's own wake-up noise: how late a thread's 1 ms sleep ends, p99, over
//!   a second while the server is idle. A start is several such wake-ups (client, HTTP, the
//!   bus log's fsync, the run, the journal), so on a host whose sleeps overshoot by
//!   milliseconds no engine's start latency is below that;
//! - **the host**: beside the wake-up noise, the disk's `fdatasync` p99 (200 appends of 180
//!   bytes, each made durable, in the bench's own directory before the servers start: every
//!   alert waits for one, in the bus log) and the CPU the hypervisor took from this machine
//!   over both phases (`steal` in `/proc/stat`), so a slow run on a busy host reads as such;
//! - **peak RSS**: the server's high-water mark at the end.
//!
//! It prints exactly one summary line on stdout (progress goes to stderr).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use firebreak_bus::port::free_loopback_port;
use http_body_util::{BodyExt, Full};
use tokio::process::{Child, Command};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Alerts in the throughput phase.
    #[arg(long, default_value_t = 20_000, value_parser = at_least_one::<usize>)]
    pub alerts: usize,
    /// Concurrent keep-alive HTTP clients.
    #[arg(long, default_value_t = 16, value_parser = at_least_one::<usize>)]
    pub clients: usize,
    /// Seconds of the paced latency phase (at --rate alerts/s).
    #[arg(long, default_value_t = 5, value_parser = at_least_one::<u64>)]
    pub paced_seconds: u64,
    /// Alerts per second in the latency phase.
    #[arg(long, default_value_t = 1_000, value_parser = at_least_one::<u64>)]
    pub rate: u64,
    /// `spawn` starts a private nats-server -js; a nats:// URL uses that server; absent:
    /// the embedded bus.
    #[arg(long)]
    pub nats: Option<String>,
    /// Measure alert arrival → remedy written for the shipped scenario-1 and scenario-2
    /// runbooks against kubesim instead (see `bench_remedy`).
    #[arg(long)]
    pub remedy: bool,
    /// `--remedy`: incidents per scenario (one alert each).
    #[arg(long, default_value_t = 100, value_parser = at_least_one::<usize>)]
    pub incidents: usize,
    /// `--remedy`: alerts per second.
    #[arg(long, default_value_t = 20, value_parser = at_least_one::<u64>)]
    pub remedy_rate: u64,
    /// Engine replicas sharing the work (with `--nats`): alerts go to them round-robin, by
    /// client connection; the figures are for all of them together.
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>)]
    pub replicas: usize,
    /// Measure N runs waiting in a step at once, a SIGTERM and their resume after a restart
    /// instead (see `bench_waiting`).
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    pub waiting: Option<usize>,
}

/// A size or rate of the benchmark: zero would measure nothing (an empty sample, a phase
/// that never starts), so clap refuses it with the flag's name.
fn at_least_one<T>(arg: &str) -> Result<T, String>
where
    T: std::str::FromStr + From<u8> + PartialOrd,
    T::Err: std::fmt::Display,
{
    let n: T = arg.parse().map_err(|e: T::Err| e.to_string())?;
    if n < T::from(1) {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

const RUNBOOKS: usize = 50;

pub async fn bench(args: BenchArgs) -> Result<()> {
    if args.remedy {
        return crate::bench_remedy::bench(args).await;
    }
    if let Some(n) = args.waiting {
        return crate::bench_waiting::bench(args, n).await;
    }
    let replicas = args.replicas.max(1);
    if replicas > 1 && args.nats.is_none() {
        bail!("--replicas needs --nats: replicas share the work through JetStream");
    }
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let runbooks = dir.path().join("runbooks");
    write_runbooks(&runbooks)?;
    let fsync_p99 =
        fdatasync_p99(dir.path()).context("timing fdatasync in the bench's directory")?;
    let (nats_url, _nats, bus) = bus_for(&args, dir.path()).await?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let started = Instant::now();
    let mut servers = Vec::with_capacity(replicas);
    for i in 0..replicas {
        // Each replica has its own data dir (journal, replica id); the first keeps `data`.
        let home = if i == 0 {
            dir.path().to_path_buf()
        } else {
            dir.path().join(format!("replica-{i}"))
        };
        std::fs::create_dir_all(&home)?;
        servers.push(Replica::spawn(
            &home,
            &runbooks,
            nats_url.as_deref(),
            &[("FIREBREAK_KUBERNETES_DISABLED", "1".into())],
        )?);
    }
    for server in &mut servers {
        wait_ready(&http, &server.base, &mut server.child).await?;
    }
    let ready = started.elapsed();
    let pids = servers
        .iter()
        .map(|s| s.child.id().context("server exited"))
        .collect::<Result<Vec<u32>>>()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = status_field(pids[0], "VmRSS:")?;
    let idle_anon = status_field(pids[0], "RssAnon:")?;
    eprintln!(
        "bench: {replicas} server(s) ready in {:.0} ms, idle RSS {:.1} MiB ({bus} bus)",
        ms(ready),
        idle_rss as f64 / 1024.0
    );

    // Throughput: every alert accepted, run, and its audit records durable.
    let nats_pid = _nats.as_ref().and_then(NatsChild::pid);
    let engines_cpu = |pids: &[u32]| -> Result<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum() };
    let cpu_before = (engines_cpu(&pids)?, nats_pid.map(cpu_seconds).transpose()?);
    let addrs: Vec<std::net::SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let cpu_times_before = HostCpu::read()?;
    let t0 = Instant::now();
    post_all(&addrs, 0, args.alerts, args.clients).await?;
    let posted = t0.elapsed();
    wait_metric(&http, &mut servers, RUNS_FINISHED, args.alerts as u64).await?;
    let total = t0.elapsed();
    let throughput = args.alerts as f64 / total.as_secs_f64();
    // Server CPU per alert over the throughput phase (the load generator's own is not in it).
    let per_alert = |before: f64, after: f64| (after - before) * 1e6 / args.alerts as f64;
    let engine_cpu = per_alert(cpu_before.0, engines_cpu(&pids)?);
    let nats_cpu = match (cpu_before.1, nats_pid) {
        (Some(before), Some(p)) => Some(per_alert(before, cpu_seconds(p)?)),
        _ => None,
    };
    eprintln!(
        "bench: {} alerts posted in {:.2}s, all runs finished after {:.2}s",
        args.alerts,
        posted.as_secs_f64(),
        total.as_secs_f64()
    );

    // The host's wake-up noise while the server idles, then latency at a paced rate.
    let wakeup_p99 = tokio::task::spawn_blocking(|| sleep_overshoot_p99(Duration::from_secs(1)))
        .await
        .context("measuring sleep overshoot")?;
    let paced = (args.rate * args.paced_seconds) as usize;
    let sent = post_paced(&addrs, args.alerts, paced, args.rate, args.clients).await?;
    let runs = wait_metric(
        &http,
        &mut servers,
        RUNS_FINISHED,
        (args.alerts + paced) as u64,
    )
    .await?;
    if replicas > 1 {
        let each: Vec<String> = runs.iter().map(u64::to_string).collect();
        eprintln!("bench: runs per replica: {}", each.join(" / "));
    }
    let journals: Vec<&Path> = servers.iter().map(|s| s.journal.as_path()).collect();
    let latencies = start_latencies(&journals, &sent)?;
    let steal = HostCpu::read()?.steal_percent_since(&cpu_times_before);
    let peak_rss = status_field(pids[0], "VmHWM:")?;
    for server in &mut servers {
        let _ = server.child.kill().await;
    }

    let (p50, p99) = percentiles(latencies);
    let nats_cpu = nats_cpu
        .map(|c| format!(" + nats-server {c:.0} µs"))
        .unwrap_or_default();
    let label = if replicas > 1 {
        format!("{bus} x{replicas}")
    } else {
        bus.to_owned()
    };
    println!(
        "bench[{label}]: {throughput:.0} alerts/s end to end ({} alerts, {} clients, {RUNBOOKS} runbooks), \
         server CPU {engine_cpu:.0} µs/alert{nats_cpu}, \
         start latency p50 {p50:.2} ms p99 {p99:.2} ms at {} alerts/s \
         (a 1 ms sleep on this host ends p99 {wakeup_p99:.2} ms late, an fdatasync p99 {fsync_p99:.2} ms, CPU steal {steal:.1} %), idle RSS {:.1} MiB ({:.1} anonymous), peak RSS {:.1} MiB, ready in {:.0} ms",
        args.alerts,
        args.clients,
        args.rate,
        idle_rss as f64 / 1024.0,
        idle_anon as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        ms(ready),
    );
    Ok(())
}

/// One `firebreak serve` under load.
pub(crate) struct Replica {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) addr: std::net::SocketAddr,
    journal: PathBuf,
}

impl Replica {
    /// `firebreak serve` on a free port with its data in `home/data`, `env` added.
    pub(crate) fn spawn(
        home: &Path,
        runbooks: &Path,
        nats: Option<&str>,
        env: &[(&str, String)],
    ) -> Result<Replica> {
        let port = free_loopback_port()?;
        Ok(Replica {
            child: spawn_server_with(home, runbooks, port, nats, env)?,
            base: format!("http://127.0.0.1:{port}"),
            addr: ([127, 0, 0, 1], port).into(),
            journal: home.join("data/audit.jsonl"),
        })
    }
}

/// The counter the throughput waits on.
const RUNS_FINISHED: &str = "firebreak_runs_finished_total";

/// The bus `--nats` asks for: its URL (none: embedded), the private nats-server to keep alive
/// for `spawn`, and its name for the summary line.
pub(crate) async fn bus_for(
    args: &BenchArgs,
    dir: &Path,
) -> Result<(Option<String>, Option<NatsChild>, &'static str)> {
    Ok(match args.nats.as_deref() {
        None => (None, None, "embedded"),
        Some("spawn") => {
            let server = NatsChild::spawn(dir).await?;
            (Some(server.url.clone()), Some(server), "jetstream")
        }
        Some(url) => (Some(url.to_string()), None, "jetstream"),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// 49 runbooks that never match and one that does, so matching cost is part of the figure.
fn write_runbooks(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..RUNBOOKS {
        let (name, alert) = if i == 0 {
            ("bench-hit".to_string(), "BenchAlert".to_string())
        } else {
            (format!("bench-miss-{i:02}"), format!("OtherAlert{i:02}"))
        };
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            format!(
                "name: {name}\nteam: bench\ndescription: benchmark runbook\nnamespaces: [bench]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"{alert}\"', 'severity=~\"critical|page\"']\n\
                 params:\n  seq: {{ from: label, key: seq, type: string, required: true }}\n\
                 concurrency: \"{{{{params.seq}}}}\"\ntimeout: 30s\n"
            ),
        )?;
        std::fs::write(
            dir.join(format!("{name}.rhai")),
            "log(`alert ${ctx.params.seq}`);\n",
        )?;
    }
    Ok(())
}

/// `firebreak serve` on `port` with `env` added.
pub(crate) fn spawn_server_with(
    dir: &Path,
    runbooks: &Path,
    port: u16,
    nats: Option<&str>,
    env: &[(&str, String)],
) -> Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .current_dir(dir)
        .env("FIREBREAK_LISTEN", format!("127.0.0.1:{port}"))
        .env("FIREBREAK_DATA_DIR", dir.join("data"))
        .env("FIREBREAK_RUNBOOKS", runbooks)
        .env("FIREBREAK_NATS_URL", nats.unwrap_or(""))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().context("starting `firebreak serve`")
}

pub(crate) async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    server: &mut Child,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.try_wait()? {
            bail!("`firebreak serve` exited before it was ready: {status}");
        }
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("`firebreak serve` not ready at {base}/readyz within 20s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One Alertmanager v4 webhook with one firing alert, shaped like the captured fixtures.
/// Written from a template (every value is plain ASCII, nothing to escape), so the load
/// generator spends its CPU on sending, not on building JSON.
fn payload(seq: usize) -> Vec<u8> {
    let now = jiff::Timestamp::now();
    format!(
        r#"{{"receiver":"firebreak","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"BenchAlert","namespace":"bench","severity":"critical","seq":"{seq}"}},"annotations":{{"summary":"bench alert {seq}"}},"startsAt":"{now}","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://127.0.0.1:9090/graph","fingerprint":"{seq:016x}"}}],"groupLabels":{{"alertname":"BenchAlert"}},"commonLabels":{{"alertname":"BenchAlert","namespace":"bench","severity":"critical"}},"commonAnnotations":{{}},"externalURL":"http://127.0.0.1:9093","version":"4","groupKey":"{{}}:{{alertname=\"BenchAlert\", seq=\"{seq}\"}}","truncatedAlerts":0}}"#
    )
    .into_bytes()
}

/// One keep-alive HTTP/1.1 connection to the server, driven by hyper directly: the load
/// generator shares two cores with the server it measures, so it does as little per request
/// as it can (no URL parsing, pooling or redirect handling per request).
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: http::HeaderValue,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            send,
            host: http::HeaderValue::from_str(&addr.to_string())?,
        })
    }

    /// Posts alert `seq`; an answer other than 2xx is an error.
    async fn post(&mut self, seq: usize) -> Result<()> {
        self.send.ready().await.context("connection closed")?;
        let request = http::Request::post("/v1/alertmanager")
            .header(http::header::HOST, self.host.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload(seq))))?;
        let response = self.send.send_request(request).await?;
        let status = response.status();
        // Read the whole answer, so the connection is free for the next request.
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "alert {seq} refused: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}

/// Posts alerts `first..first + n` as fast as `clients` keep-alive connections go; client `k`
/// talks to `addrs[k % addrs.len()]`.
pub(crate) async fn post_all(
    addrs: &[std::net::SocketAddr],
    first: usize,
    n: usize,
    clients: usize,
) -> Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(first));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..clients {
        let mut conn = Conn::open(addrs[k % addrs.len()]).await?;
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seq >= first + n {
                    return Ok::<_, anyhow::Error>(());
                }
                conn.post(seq).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Posts `n` alerts at `rate`/s over a pool of `clients` connections; returns (seq, wall-clock
/// send time). A send waiting for a free connection counts that wait in its latency.
async fn post_paced(
    addrs: &[std::net::SocketAddr],
    first: usize,
    n: usize,
    rate: u64,
    clients: usize,
) -> Result<Vec<(usize, SystemTime)>> {
    let (give_back, pool) = tokio::sync::mpsc::unbounded_channel();
    for k in 0..clients {
        give_back.send(Conn::open(addrs[k % addrs.len()]).await?)?;
    }
    let pool = Arc::new(tokio::sync::Mutex::new(pool));
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for seq in first..first + n {
        tick.tick().await;
        let (pool, give_back) = (pool.clone(), give_back.clone());
        tasks.spawn(async move {
            let at = SystemTime::now();
            let mut conn = pool
                .lock()
                .await
                .recv()
                .await
                .context("connection pool closed")?;
            conn.post(seq).await?;
            let _ = give_back.send(conn);
            Ok::<_, anyhow::Error>((seq, at))
        });
    }
    let mut sent = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        sent.push(r??);
    }
    Ok(sent)
}

/// Polls every server's `/metrics` until `metric` (summed over its label sets and the
/// servers) reaches `n`; returns each server's count.
pub(crate) async fn wait_metric(
    http: &reqwest::Client,
    servers: &mut [Replica],
    metric: &str,
    n: u64,
) -> Result<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut each = Vec::with_capacity(servers.len());
        for server in servers.iter_mut() {
            if let Some(status) = server.child.try_wait()? {
                bail!("`firebreak serve` exited under load: {status}");
            }
            let text = http
                .get(format!("{}/metrics", server.base))
                .send()
                .await?
                .text()
                .await?;
            each.push(
                text.lines()
                    .filter(|l| {
                        l.strip_prefix(metric)
                            .is_some_and(|rest| rest.starts_with([' ', '{']))
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64,
            );
        }
        let total: u64 = each.iter().sum();
        if total >= n {
            return Ok(each);
        }
        if Instant::now() > deadline {
            bail!("{metric} reached only {total} of {n} within 300s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Latency from each paced POST to its run's RunStarted record.
fn start_latencies(journals: &[&Path], sent: &[(usize, SystemTime)]) -> Result<Vec<f64>> {
    use std::collections::HashMap;
    let sent: HashMap<String, SystemTime> = sent
        .iter()
        .map(|(seq, at)| (seq.to_string(), *at))
        .collect();
    let mut out = Vec::with_capacity(sent.len());
    // Every segment of every replica's journal: a busy run seals segments as it goes.
    for journal in journals {
        let reader = firebreak_audit::JournalReader::open(journal)
            .with_context(|| format!("reading {}", journal.display()))?;
        for record in reader.iter_all()? {
            let record = record?;
            let firebreak_audit::RecordBody::RunStarted { event, .. } = &record.body else {
                continue;
            };
            let Some(seq) = event.value()["data"]["labels"]["seq"]
                .as_str()
                .map(str::to_owned)
            else {
                continue;
            };
            let Some(at) = sent.get(&seq) else { continue };
            let started = SystemTime::from(record.time);
            let latency = started.duration_since(*at).unwrap_or_default();
            out.push(ms(latency));
        }
    }
    if out.len() != sent.len() {
        bail!(
            "found {} of {} paced runs in the journal",
            out.len(),
            sent.len()
        );
    }
    Ok(out)
}

/// How late a thread's 1 ms sleep ends, in ms, p99 over `window` of back-to-back sleeps.
fn sleep_overshoot_p99(window: Duration) -> f64 {
    let step = Duration::from_millis(1);
    let start = Instant::now();
    let mut late = Vec::with_capacity(1024);
    while start.elapsed() < window {
        let t = Instant::now();
        std::thread::sleep(step);
        late.push(ms(t.elapsed().saturating_sub(step)));
    }
    percentiles(late).1
}

/// The disk's `fdatasync` latency where the servers keep their data, in ms, p99 over 200
/// appends of 180 bytes (about one alert's line), each made durable before the next.
fn fdatasync_p99(dir: &Path) -> Result<f64> {
    use std::io::Write as _;
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)?;
    let line = [b'x'; 180];
    let mut took = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&line)?;
        file.sync_data()?;
        took.push(ms(t.elapsed()));
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(percentiles(took).1)
}

/// The machine's CPU time by kind, from the first line of `/proc/stat` (USER_HZ ticks).
struct HostCpu {
    /// Every kind up to and including steal (guest time is counted in user time already).
    total: u64,
    /// Time a hypervisor ran something else while this machine's CPUs had work.
    steal: u64,
}

impl HostCpu {
    fn read() -> Result<HostCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        HostCpu::parse(&stat).context("no `cpu` line with a steal field in /proc/stat")
    }

    /// `cpu  user nice system idle iowait irq softirq steal [guest guest_nice]`.
    fn parse(stat: &str) -> Option<HostCpu> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        (ticks.len() == 8).then(|| HostCpu {
            total: ticks.iter().sum(),
            steal: ticks[7],
        })
    }

    /// The share of the machine's CPU time since `before` that was stolen, in percent.
    fn steal_percent_since(&self, before: &HostCpu) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(before.steal) as f64 * 100.0 / total as f64
    }
}

pub(crate) fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

/// A process's CPU time so far (user + system), from `/proc/PID/stat` (in USER_HZ ticks,
/// 100 per second on Linux).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: the fields that follow start after its `)`.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ')' in /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields; `after` starts at the 3rd.
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// A number field of `/proc/PID/status` (`VmRSS:` and `VmHWM:` in KiB, `Threads:`).
pub(crate) fn status_field(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// A private `nats-server -js` for `--nats spawn`.
pub(crate) struct NatsChild {
    pub(crate) url: String,
    child: Child,
}

impl NatsChild {
    pub(crate) async fn spawn(dir: &Path) -> Result<NatsChild> {
        let port = free_loopback_port()?;
        let store: PathBuf = dir.join("nats");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server (apt-get install nats-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on 127.0.0.1:{port} within 10s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(NatsChild {
            url: format!("nats://127.0.0.1:{port}"),
            child,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_stolen_share_of_the_machines_cpu_time() {
        // The machine's line as the kernel writes it (the per-CPU lines follow, not read).
        let before = HostCpu::parse(
            "cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\nintr 1 2 3\n",
        )
        .unwrap();
        let after = HostCpu::parse("cpu  160 0 80 900 10 0 5 45 0 0\n").unwrap();
        // 200 ticks went by, 10 of them stolen.
        assert_eq!(after.steal_percent_since(&before), 5.0);
        assert_eq!(after.steal_percent_since(&after), 0.0);
        // A kernel without the steal field, or a line that is not numbers, is not read.
        assert!(HostCpu::parse("cpu  1 2 3 4 5 6 7\n").is_none());
        assert!(HostCpu::parse("cpu  1 2 3 x 5 6 7 8\n").is_none());
        assert!(HostCpu::parse("intr 1 2 3\n").is_none());
        // This machine's own.
        let now = HostCpu::read().unwrap();
        assert!(now.total > 0 && now.steal <= now.total);
    }

    #[test]
    fn an_fdatasync_takes_a_measured_time_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p99 = fdatasync_p99(dir.path()).unwrap();
        assert!(p99 > 0.0 && p99 < 10_000.0, "{p99}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn cpu_time_is_read_from_proc_and_grows_with_work() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let spent = cpu_seconds(me).unwrap() - before;
        assert!((0.1..5.0).contains(&spent), "{spent}");
    }

    #[test]
    fn the_bench_payload_is_a_valid_alertmanager_webhook() {
        let body = payload(42);
        let events = firebreak_event::alertmanager::decode(&body).expect("decodes");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].label("seq"), Some("42"));
        assert_eq!(events[0].label("alertname"), Some("BenchAlert"));
        assert_eq!(events[0].fingerprint.as_deref(), Some("000000000000002a"));
    }
}
