//! The CLI around a running engine: `firebreak run --server` (accepted / refused), an
//! in-process `run` refused while `serve` holds the journal and working once it stopped,
//! `audit` errors that say what is wrong, and `run --dry-run --event` changing nothing.

use std::time::Duration;

use crate::harness::{Cluster, Journal, Serve, ServeOpts, firebreak, repo_root, write_runbooks};

#[tokio::test(flavor = "multi_thread")]
async fn run_and_audit_commands_against_a_serving_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "note.yaml",
                "name: note\nteam: sre\ndescription: writes a note\nnamespaces: [shop]\n\
                 params:\n  text: { type: string, default: \"-\" }\ntimeout: 30s\n",
            ),
            ("note.rhai", "log(`note: ${ctx.params.text}`);\n"),
        ],
    );
    let mut serve = Serve::start(&dir, ServeOpts::default()).await;

    let out = serve
        .cli(&[
            "run",
            "--server",
            &serve.base,
            "note",
            "-p",
            "text=hello",
            "--actor",
            "ann",
        ])
        .await
        .ok("run --server");
    assert!(out.stdout.contains("accepted"), "{out}");
    let journal = serve
        .wait_journal("the remote run", Duration::from_secs(20), |j| {
            j.finished("note").len() == 1
        })
        .await;
    let run = &journal.finished("note")[0];
    assert_eq!(run.status(), Some("succeeded"));
    // No authentication configured (loopback): the actor is `local`, not the `--actor` sent.
    assert_eq!(run.records[0]["actor"], "local");
    assert_eq!(run.started().unwrap()["body"]["params"]["text"], "hello");

    let out = serve.cli(&["run", "--server", &serve.base, "nope"]).await;
    assert!(
        !out.success() && out.stderr.contains("404") && out.stderr.contains("unknown_runbook"),
        "{out}"
    );

    // In process, while serve writes the journal: refused, pointing at --server.
    let out = serve.cli(&["run", "note"]).await;
    assert!(!out.success() && out.stderr.contains("--server"), "{out}");

    let out = serve.cli(&["audit", "show", "zzz"]).await;
    assert!(!out.success() && out.stderr.contains("no run zzz"), "{out}");
    let out = firebreak(
        &["audit", "list"],
        &[(
            "FIREBREAK_DATA_DIR",
            tmp.path().join("nowhere").display().to_string(),
        )],
    )
    .await;
    assert!(
        !out.success() && out.stderr.contains("no audit journal"),
        "{out}"
    );

    // Once serve is gone, an in-process run appends to the same journal and prints its timeline.
    serve.kill();
    let out = serve
        .cli(&["run", "note", "-p", "text=offline", "--actor", "bob"])
        .await
        .ok("run in process");
    assert!(
        out.stdout.contains("note: offline") && out.stdout.contains("run succeeded"),
        "{out}"
    );
    let journal = serve.journal();
    assert_eq!(journal.finished("note").len(), 2, "{}", journal.summary());
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.contains("2 runs"), "{verify}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_replay_changes_nothing() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    let golden = repo_root().join("runbooks/tests/model-latency-rollback");
    for file in ["cluster.yaml", "update.yaml"] {
        cluster
            .kubectl(&["apply", "-f", golden.join(file).to_str().unwrap()])
            .await
            .ok(&format!("kubectl apply {file}"));
        cluster
            .kubectl(&[
                "-n",
                "ml-serving",
                "rollout",
                "status",
                "deployment/fraud-model",
                "--timeout=60s",
            ])
            .await
            .ok("rollout status");
    }
    let data = tempfile::tempdir().unwrap();
    let env = [
        (
            "FIREBREAK_RUNBOOKS",
            repo_root().join("runbooks").display().to_string(),
        ),
        ("FIREBREAK_DATA_DIR", data.path().display().to_string()),
        (
            "FIREBREAK_KUBECONFIG",
            cluster.kubeconfig.display().to_string(),
        ),
    ];
    let event = golden.join("event.json");
    let out = firebreak(
        &["run", "--dry-run", "--event", event.to_str().unwrap()],
        &env,
    )
    .await
    .ok("run --dry-run");
    assert!(out.stdout.contains("[dry run]"), "{out}");

    let journal = Journal::read(&data.path().join("audit.jsonl"));
    let runs = journal.runs();
    assert_eq!(runs.len(), 1, "{}", journal.summary());
    assert_eq!(runs[0].started().unwrap()["body"]["dry_run"], true);
    let rollback = runs[0]
        .records
        .iter()
        .find(|r| r["body"]["type"] == "step_finished" && r["body"]["name"] == "k8s::rollback")
        .expect("the rollback step");
    assert_eq!(rollback["body"]["status"], "skipped", "{rollback}");
    let history = cluster
        .kubectl(&[
            "-n",
            "ml-serving",
            "rollout",
            "history",
            "deployment/fraud-model",
        ])
        .await
        .ok("rollout history");
    let revisions: Vec<&str> = history
        .stdout
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()
                .filter(|c| c.parse::<u32>().is_ok())
        })
        .collect();
    assert_eq!(
        revisions,
        ["1", "2"],
        "a dry run rolls nothing back: {history}"
    );
    let image = cluster
        .kubectl(&[
            "-n",
            "ml-serving",
            "get",
            "deploy",
            "fraud-model",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await
        .ok("get deploy");
    assert!(image.stdout.ends_with(":v2"), "{image}");
}

/// `firebreak bench`, small: it drives a real `serve` child and prints one summary line whose
/// figures add up (the real figures are in the README, from a full-size run).
#[tokio::test(flavor = "multi_thread")]
async fn bench_prints_one_summary_line() {
    let out = firebreak(
        &[
            "bench",
            "--alerts",
            "300",
            "--clients",
            "4",
            "--paced-seconds",
            "1",
            "--rate",
            "100",
        ],
        &[],
    )
    .await
    .ok("bench");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line = lines[0];
    assert!(line.starts_with("bench[embedded]: "), "{line}");
    let alerts_per_s: f64 = line["bench[embedded]: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(alerts_per_s > 0.0, "{line}");
    for part in [
        "(300 alerts, 4 clients, 50 runbooks)",
        "p50 ",
        "p99 ",
        "alerts/s (a 1 ms sleep on this host ends p99 ",
        " ms late, an fdatasync p99 ",
        " %), idle RSS ",
        " anonymous), peak RSS ",
        "ready in ",
    ] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    // The host's wake-up noise is a measured figure: a 1 ms sleep never ends early.
    let overshoot: f64 = line
        .split("(a 1 ms sleep on this host ends p99 ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overshoot figure: {line}"));
    assert!((0.0..1000.0).contains(&overshoot), "{line}");
    // So are the disk's and the hypervisor's: an fdatasync takes time, steal is a share.
    let figure = |after: &str| -> f64 {
        line.split(after)
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no figure after {after:?}: {line}"))
    };
    let fsync = figure("an fdatasync p99 ");
    assert!(fsync > 0.0 && fsync < 10_000.0, "{line}");
    let steal = figure("CPU steal ");
    assert!((0.0..=100.0).contains(&steal), "{line}");
}

/// A count of zero for any of `bench`'s sizes is refused up front with the flag's name: it
/// used to panic on an empty sample (`--rate 0`, `--paced-seconds 0`, `--incidents 0`), wait
/// for ever (`--clients 0`, `--remedy-rate 0`) or print `NaN` figures (`--alerts 0`).
#[tokio::test(flavor = "multi_thread")]
async fn bench_refuses_zero_sizes_with_a_clear_error() {
    for flag in [
        "--alerts",
        "--clients",
        "--paced-seconds",
        "--rate",
        "--incidents",
        "--remedy-rate",
        "--replicas",
        "--waiting",
    ] {
        let out = firebreak(&["bench", flag, "0"], &[]).await;
        assert_eq!(out.code, Some(2), "bench {flag} 0: {out}");
        assert!(
            out.stderr.contains(flag) && out.stderr.contains("at least 1"),
            "bench {flag} 0 does not say what is wrong: {out}"
        );
        assert!(!out.stderr.contains("panicked"), "bench {flag} 0: {out}");
    }
}

/// `firebreak bench --waiting`, small: runs waiting at once, a SIGTERM, a restart that
/// resumes them all; one summary line.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_bench_prints_one_summary_line() {
    let out = firebreak(&["bench", "--waiting", "40", "--clients", "4"], &[])
        .await
        .ok("bench --waiting");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    for part in [
        "bench[waiting]: 40 runs waiting in a step at once: RSS ",
        "SIGTERM stopped them in ",
        "all 40 resumed and waiting again in ",
    ] {
        assert!(lines[0].contains(part), "{part:?} missing: {}", lines[0]);
    }
}

/// `firebreak bench --replicas 2` shares the alerts between two engines on one JetStream and
/// counts the runs of both.
#[tokio::test(flavor = "multi_thread")]
async fn bench_with_two_replicas_counts_both() {
    let out = firebreak(
        &[
            "bench",
            "--nats",
            "spawn",
            "--replicas",
            "2",
            "--alerts",
            "200",
            "--clients",
            "4",
            "--paced-seconds",
            "1",
            "--rate",
            "50",
        ],
        &[],
    )
    .await
    .ok("bench --replicas 2");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with("bench[jetstream x2]: ") && lines[0].contains("+ nats-server "),
        "{}",
        lines[0]
    );
    // Both replicas ran a share, and their runs add up to every alert (200, and 50 paced).
    let shares: Vec<u64> = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("bench: runs per replica: "))
        .unwrap_or_else(|| panic!("no runs per replica: {out}"))
        .split(" / ")
        .map(|n| n.parse().expect("a count"))
        .collect();
    assert_eq!(shares.len(), 2, "{out}");
    assert!(shares.iter().all(|n| *n > 0), "{shares:?}");
    assert_eq!(shares.iter().sum::<u64>(), 250, "{shares:?}");
}

/// `firebreak bench --remedy`, small: alert → remedy written for both scenarios' shipped
/// runbooks against kubesim, one summary line with a p50 and p99 of each.
#[tokio::test(flavor = "multi_thread")]
async fn remedy_bench_prints_one_summary_line() {
    let out = firebreak(
        &[
            "bench",
            "--remedy",
            "--incidents",
            "10",
            "--remedy-rate",
            "50",
        ],
        &[],
    )
    .await
    .ok("bench --remedy");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line = lines[0];
    assert!(
        line.starts_with("bench[embedded] alert → remedy written (10 incidents each, 50/s): "),
        "{line}"
    );
    let figures: Vec<f64> = line
        .split(' ')
        .zip(line.split(' ').skip(1))
        .filter(|(k, _)| *k == "p50" || *k == "p99")
        .map(|(_, v)| v.parse().unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(figures.len(), 4, "{line}");
    assert!(figures.iter().all(|ms| *ms > 0.0), "{line}");
    assert!(
        figures[0] <= figures[1] && figures[2] <= figures[3],
        "{line}"
    );
    assert!(
        line.contains("rollback p50") && line.contains("shift back p50"),
        "{line}"
    );
}

/// Text logs written to a file or a pipe (a pod's log, `2> serve.log`) carry no terminal
/// colour codes.
#[tokio::test(flavor = "multi_thread")]
async fn text_logs_to_a_pipe_have_no_colour_codes() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "note.yaml",
                "name: note\nteam: sre\ndescription: writes a note\nnamespaces: [shop]\n",
            ),
            ("note.rhai", "log(`note`);\n"),
        ],
    );
    let mut child = std::process::Command::new(crate::harness::firebreak_bin())
        .arg("serve")
        .env("FIREBREAK_LISTEN", "127.0.0.1:0")
        .env("FIREBREAK_RUNBOOKS", &dir)
        .env("FIREBREAK_DATA_DIR", tmp.path().join("data"))
        .env("FIREBREAK_KUBERNETES_DISABLED", "1")
        .env("RUST_LOG", "info")
        .env_remove("FIREBREAK_LOG_FORMAT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn firebreak serve");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let serving = line.contains("serving");
        lines.push(line);
        if serving || lines.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains(" INFO ")),
        "info lines: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no escape codes: {lines:?}"
    );
}
