//! `firebreak bench --waiting N`: many runs at once, each waiting in a step, and their resume.
//!
//! It writes one runbook whose script logs, then sleeps four minutes, starts `firebreak serve`
//! (embedded bus, default limits: a sleeping run is parked, holding neither a thread nor one of
//! the `max_concurrent_runs` slots) and posts N alerts, one incident each.
//! Measured:
//! - **waiting**: time until the server's `firebreak_runs_waiting` gauge shows all N runs in
//!   their `sleep` step, and the server's RSS and thread count then;
//! - **stop**: SIGTERM → exit (every run suspends at once, mid-sleep);
//! - **resume**: a new server on the same data dir, from its spawn until all N runs wait in
//!   their `sleep` again (each resumed from the journal with the sleep's remaining time), its
//!   RSS then.
//!
//! One summary line on stdout.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Child;

use crate::bench::{BenchArgs, Replica, post_all, status_field, wait_metric, wait_ready};

pub async fn bench(args: BenchArgs, n: usize) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks)?;
    std::fs::write(
        runbooks.join("bench-wait.yaml"),
        "name: bench-wait\nteam: bench\ndescription: waits in a step\nnamespaces: [bench]\n\
         triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"BenchAlert\"']\n\
         params:\n  seq: { from: label, key: seq, type: string, required: true }\n\
         concurrency: \"{{params.seq}}\"\ntimeout: 10m\n",
    )?;
    std::fs::write(
        runbooks.join("bench-wait.rhai"),
        "log(`waiting for ${ctx.params.seq}`);\nsleep(240000);\n",
    )?;
    let env = [("FIREBREAK_KUBERNETES_DISABLED", "1".to_owned())];
    let http = reqwest::Client::new();

    let mut server = Replica::spawn(dir.path(), &runbooks, None, &env)?;
    wait_ready(&http, &server.base, &mut server.child).await?;
    let pid = server.child.id().context("server exited")?;
    let t0 = Instant::now();
    post_all(&[server.addr], 0, n, args.clients).await?;
    wait_metric(&http, std::slice::from_mut(&mut server), WAITING, n as u64).await?;
    let all_waiting = t0.elapsed();
    let rss = status_field(pid, "VmRSS:")?;
    let threads = status_field(pid, "Threads:")?;
    eprintln!(
        "bench: {n} runs waiting after {:.2}s, RSS {:.0} MiB, {threads} threads",
        all_waiting.as_secs_f64(),
        rss as f64 / 1024.0
    );

    let stop = Instant::now();
    terminate(&mut server.child).await?;
    let stopped = stop.elapsed();

    let restart = Instant::now();
    let mut server = Replica::spawn(dir.path(), &runbooks, None, &env)?;
    wait_ready(&http, &server.base, &mut server.child).await?;
    let ready = restart.elapsed();
    wait_metric(&http, std::slice::from_mut(&mut server), WAITING, n as u64).await?;
    let resumed = restart.elapsed();
    let pid = server.child.id().context("server exited")?;
    let rss_after = status_field(pid, "VmRSS:")?;
    let _ = server.child.kill().await;
    println!(
        "bench[waiting]: {n} runs waiting in a step at once: RSS {:.0} MiB ({threads} threads), \
         all waiting {:.2}s after the first alert; SIGTERM stopped them in {:.2}s; after a restart \
         all {n} resumed and waiting again in {:.2}s (ready in {:.0} ms), RSS {:.0} MiB",
        rss as f64 / 1024.0,
        all_waiting.as_secs_f64(),
        stopped.as_secs_f64(),
        resumed.as_secs_f64(),
        ready.as_secs_f64() * 1000.0,
        rss_after as f64 / 1024.0,
    );
    Ok(())
}

/// SIGTERM (as Kubernetes stops a pod), then waits for the exit (bounded).
async fn terminate(server: &mut Child) -> Result<()> {
    let pid = server.id().context("server exited")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -TERM {pid} failed: {status}");
    }
    tokio::time::timeout(Duration::from_secs(60), server.wait())
        .await
        .context("the server did not stop within 60 s of SIGTERM")??;
    Ok(())
}

/// The gauge of runs waiting in a step.
const WAITING: &str = "firebreak_runs_waiting";
