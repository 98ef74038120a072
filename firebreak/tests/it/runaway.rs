//! Runaway scripts: `loop {}` and unbounded recursion are terminated with a clear error in the
//! audit trail, while a runbook started at the same time finishes normally.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Serve, ServeOpts, write_runbooks};

fn manual(name: &str, timeout: &str) -> String {
    format!(
        "name: {name}\nteam: sre\ndescription: started by hand\nnamespaces: [shop]\ntimeout: {timeout}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_scripts_are_terminated_and_others_keep_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            ("spin.yaml", &manual("spin", "4s")),
            ("spin.rhai", "log(\"spinning\");\nloop {}\n"),
            ("recurse.yaml", &manual("recurse", "30s")),
            ("recurse.rhai", "fn down(n) { down(n + 1) }\ndown(0);\n"),
            ("steady.yaml", &manual("steady", "30s")),
            (
                "steady.rhai",
                // Far shorter than any spin: 10M operations take >100 ms even alone on this
                // machine (a 200 ms sleep here raced it when the machine was quiet).
                "log(\"steady start\");\nsleep(20);\nlog(\"steady done\");\n",
            ),
        ],
    );
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    let trigger = |name: &'static str| {
        let serve = &serve;
        async move {
            let body = json!({"runbook": name, "params": {}, "actor": "tester"}).to_string();
            let (status, answer) = serve.post("/v1/trigger", None, body).await;
            assert_eq!(status, 202, "trigger {name}: {answer}");
        }
    };
    tokio::join!(trigger("spin"), trigger("recurse"), trigger("steady"));

    let journal = serve
        .wait_journal(
            "spin, recurse and steady to finish",
            Duration::from_secs(60),
            |j| {
                ["spin", "recurse", "steady"]
                    .iter()
                    .all(|r| j.finished(r).len() == 1)
            },
        )
        .await;
    let finished_at = |runbook: &str| {
        let run = &journal.finished(runbook)[0];
        let rec = run
            .records
            .iter()
            .find(|r| r["body"]["type"] == "run_finished")
            .unwrap();
        (
            rec["time"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap(),
            rec["body"]["error"].as_str().unwrap_or("").to_owned(),
            run.run_id.clone(),
        )
    };
    let steady = &journal.finished("steady")[0];
    assert_eq!(steady.status(), Some("succeeded"), "{}", journal.summary());
    let (steady_end, _, _) = finished_at("steady");
    let (spin_end, spin_error, spin_id) = finished_at("spin");
    assert!(
        matches!(
            journal.finished("spin")[0].status(),
            Some("timed_out" | "failed")
        ),
        "{}",
        journal.summary()
    );
    assert!(
        steady_end < spin_end,
        "steady ran to its end while spin was still spinning"
    );
    let (_, recurse_error, recurse_id) = finished_at("recurse");
    assert_eq!(journal.finished("recurse")[0].status(), Some("failed"));

    let show = serve
        .cli(&["audit", "show", &spin_id])
        .await
        .ok("audit show spin");
    assert!(
        show.stdout.contains("run TIMED OUT") || show.stdout.contains("run FAILED"),
        "{}",
        show.stdout
    );
    assert!(
        !spin_error.is_empty() && show.stdout.contains(&spin_error),
        "{}",
        show.stdout
    );
    let spin_lower = spin_error.to_lowercase();
    assert!(
        spin_lower.contains("timed out")
            || spin_lower.contains("timeout")
            || spin_lower.contains("operations"),
        "spin's error should say why it was stopped: {spin_error}"
    );
    let show = serve
        .cli(&["audit", "show", &recurse_id])
        .await
        .ok("audit show recurse");
    assert!(show.stdout.contains("run FAILED"), "{}", show.stdout);
    let recurse_lower = recurse_error.to_lowercase();
    assert!(
        recurse_lower.contains("call")
            || recurse_lower.contains("stack")
            || recurse_lower.contains("depth"),
        "recurse's error should name the call depth limit: {recurse_error}"
    );
    assert!(show.stdout.contains(&recurse_error), "{}", show.stdout);

    // The engine still serves.
    trigger("steady").await;
    let journal = serve
        .wait_journal("a second steady run", Duration::from_secs(30), |j| {
            j.finished("steady").len() == 2
        })
        .await;
    assert!(
        journal
            .finished("steady")
            .iter()
            .all(|r| r.status() == Some("succeeded"))
    );
}

/// The two scripts through the HTTP API: one fills memory with 300 variables of about
/// 1 MB (it took the engine to 668 MB before budgets), one writes 200,000 `log` lines (400,100
/// records, 187 MB). Each ends failed with its budget named in the audit trail, the engine's
/// peak memory stays far below what they asked for, and a runbook running beside them
/// finishes.
#[tokio::test(flavor = "multi_thread")]
async fn scripts_that_fill_memory_or_the_journal_end_at_their_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    let mut hog = String::from("let s = \"x\"; for i in 0..20 { s += s; }\n");
    for i in 0..300 {
        hog.push_str(&format!("let v{i} = s.to_upper();\n"));
    }
    write_runbooks(
        &dir,
        &[
            ("hog.yaml", &manual("hog", "60s")),
            ("hog.rhai", &hog),
            ("flood.yaml", &manual("flood", "60s")),
            ("flood.rhai", "for i in 0..200000 { log(\"line \" + i); }\n"),
            ("steady.yaml", &manual("steady", "30s")),
            ("steady.rhai", "sleep(300);\nlog(\"steady done\");\n"),
        ],
    );
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    let before = serve.peak_rss();
    for name in ["hog", "flood", "steady"] {
        let body = json!({"runbook": name, "params": {}}).to_string();
        let (status, answer) = serve.post("/v1/trigger", None, body).await;
        assert_eq!(status, 202, "trigger {name}: {answer}");
    }
    let journal = serve
        .wait_journal(
            "hog, flood and steady to finish",
            Duration::from_secs(60),
            |j| {
                ["hog", "flood", "steady"]
                    .iter()
                    .all(|r| j.finished(r).len() == 1)
            },
        )
        .await;
    let error_of = |runbook: &str| {
        let run = &journal.finished(runbook)[0];
        assert_eq!(run.status(), Some("failed"), "{}", journal.summary());
        let end = run.records.last().unwrap();
        end["body"]["error"].as_str().unwrap_or("").to_owned()
    };
    let hog_error = error_of("hog");
    assert!(hog_error.contains("limits.max_script_bytes"), "{hog_error}");
    let flood_error = error_of("flood");
    assert!(
        flood_error.contains("limits.max_run_records"),
        "{flood_error}"
    );
    assert!(journal.finished("flood")[0].records.len() <= 10_002);
    assert_eq!(
        journal.finished("steady")[0].status(),
        Some("succeeded"),
        "{}",
        journal.summary()
    );
    let peak = serve.peak_rss();
    eprintln!(
        "engine peak RSS: {} MiB before, {} MiB after the hog and the flood",
        before >> 20,
        peak >> 20
    );
    // One run's budget (16 MiB of variables, one 1 MiB value over) on top of the idle engine,
    // with room for the allocator; without budgets the hog alone took 668 MB.
    assert!(
        peak < before + (96 << 20),
        "peak {} MiB, idle {} MiB",
        peak >> 20,
        before >> 20
    );
    let (status, _) = serve
        .post(
            "/v1/trigger",
            None,
            json!({"runbook": "steady"}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "the engine still takes work");
    // Single tenant on loopback: the read API needs no token and lists every run.
    let (status, failed) = serve.get("/v1/runs?status=failed", None).await;
    assert_eq!(status, 200, "{failed}");
    let mut names: Vec<&str> = failed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["runbook"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["flood", "hog"], "{failed}");
}

/// Threads of process `pid` that are running or ready to run now (state `R` in
/// `/proc/PID/task/TID/stat`).
fn runnable_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        // `TID (COMM) STATE ...`: the name may hold spaces and parentheses.
        .filter(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('R'))
        })
        .count()
}

/// Six scripts spinning at once on their threads compute one at a time under
/// `max_computing_scripts: 1` (the others wait their turn, not in the kernel's run queue, where
/// they would take the webhook's core), and each still gets its turns until its timeout.
#[tokio::test(flavor = "multi_thread")]
async fn spinning_scripts_compute_within_their_shares() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "spin.yaml",
                "name: spin\nteam: sre\ndescription: started by hand\nnamespaces: [shop]\n\
                 timeout: 6s\nparams:\n  n: { type: string, required: true }\n\
                 concurrency: \"{{params.n}}\"\n",
            ),
            // Each search reads 100 KB: the spin reaches its 6 s timeout long before its
            // 10 million operations.
            (
                "spin.rhai",
                "let s = \"\";\nfor i in 0..1000 { s += \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"; }\n\
                 log(\"spinning\");\nloop { s.contains(\"b\"); }\n",
            ),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            config: Some("limits: { max_computing_scripts: 1 }\n".into()),
            ..ServeOpts::default()
        },
    )
    .await;
    for n in 0..6 {
        let body = json!({"runbook": "spin", "params": {"n": n.to_string()}, "actor": "tester"});
        let (status, answer) = serve.post("/v1/trigger", None, body.to_string()).await;
        assert_eq!(status, 202, "trigger {n}: {answer}");
    }
    serve
        .wait_journal("six spins started", Duration::from_secs(20), |j| {
            j.runs_of("spin").len() == 6
        })
        .await;

    // Forty looks over two seconds; the median is what the spinning leaves runnable. Without
    // the bound all six are (and more than the cores: they queue in the kernel).
    let mut seen = Vec::new();
    for _ in 0..40 {
        seen.push(runnable_threads(serve.pid()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen.sort_unstable();
    let median = seen[seen.len() / 2];
    assert!(
        median <= 2,
        "runnable threads of the engine while six scripts spin: {seen:?}"
    );

    let journal = serve
        .wait_journal("the six spins to end", Duration::from_secs(30), |j| {
            j.finished("spin").len() == 6
        })
        .await;
    for run in journal.finished("spin") {
        assert_eq!(run.status(), Some("timed_out"), "{}", journal.summary());
    }
}

/// The async runtime runs one worker per core; `limits.worker_threads` sets another count. Read
/// from the engine's `/metrics`, which reports what its runtime has.
#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_has_one_worker_per_core_unless_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    crate::harness::write_note_runbook(&dir);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (config, expected) in [
        (None, cores.max(1)),
        (Some("limits: { worker_threads: 3 }\n".to_owned()), 3),
    ] {
        let serve = Serve::start(
            &dir,
            ServeOpts {
                config: config.clone(),
                ..ServeOpts::default()
            },
        )
        .await;
        let metrics = crate::harness::scrape_checked(&serve).await;
        let workers = metrics
            .lines()
            .find_map(|line| line.strip_prefix("firebreak_worker_threads "))
            .unwrap_or_else(|| panic!("no firebreak_worker_threads in:\n{metrics}"));
        assert_eq!(
            workers.trim().parse::<f64>().ok(),
            Some(expected as f64),
            "config {config:?} on {cores} cores"
        );
    }
}
