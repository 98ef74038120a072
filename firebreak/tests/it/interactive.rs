//! `firebreak run` is interactive: Ctrl-C cancels the run (journaled as cancelled by the
//! operator), and a run whose terminal died is closed as abandoned by the next engine, never
//! resumed behind the operator's back.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Journal, Serve, ServeOpts, wait_for, write_runbooks};

const SLOW: &[(&str, &str)] = &[
    (
        "slow.yaml",
        "name: slow\nteam: sre\ndescription: waits\nnamespaces: [shop]\ntimeout: 60s\n",
    ),
    (
        "slow.rhai",
        "log(\"working\");\nsleep(20000);\nlog(\"done\");\n",
    ),
];

/// `firebreak run slow` as a child process on `data`, with the given runbooks.
fn spawn_run(runbooks: &std::path::Path, data: &std::path::Path) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(crate::harness::firebreak_bin());
    cmd.args(["run", "slow", "--actor", "ann"])
        .env("FIREBREAK_DATA_DIR", data)
        .env("FIREBREAK_RUNBOOKS", runbooks)
        .env("FIREBREAK_KUBERNETES_DISABLED", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("FIREBREAK_")
            && !matches!(
                k.as_str(),
                "FIREBREAK_DATA_DIR" | "FIREBREAK_RUNBOOKS" | "FIREBREAK_KUBERNETES_DISABLED"
            )
        {
            cmd.env_remove(k);
        }
    }
    cmd.spawn().expect("spawn firebreak run")
}

async fn wait_until_sleeping(data: &std::path::Path) {
    let path = data.join("audit.jsonl");
    wait_for(
        "the run to be in its sleep",
        Duration::from_secs(20),
        String::new,
        || {
            let journal = Journal::read(&path);
            let sleeping = journal
                .records
                .iter()
                .any(|r| r["body"]["type"] == "step_started" && r["body"]["name"] == "sleep");
            std::future::ready(sleeping.then_some(()))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_cancels_the_run_and_journals_who_did() {
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    write_runbooks(&runbooks, SLOW);
    let data = tmp.path().join("data");
    let mut child = spawn_run(&runbooks, &data);
    wait_until_sleeping(&data).await;
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("firebreak run exits after Ctrl-C")
        .unwrap();
    assert!(!status.success(), "a cancelled run is not a success");
    let journal = Journal::read(&data.join("audit.jsonl"));
    let runs = journal.runs_of("slow");
    assert_eq!(runs[0].status(), Some("cancelled"), "{}", journal.summary());
    let end = runs[0]
        .records
        .iter()
        .find(|r| r["body"]["type"] == "run_finished")
        .unwrap();
    assert_eq!(end["body"]["error"], "cancelled by ann (Ctrl-C)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_terminal_died_is_abandoned_by_the_next_engine_not_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    write_runbooks(&runbooks, SLOW);
    let data = tmp.path().join("data");
    let mut child = spawn_run(&runbooks, &data);
    wait_until_sleeping(&data).await;
    child.kill().await.unwrap();
    let journal = Journal::read(&data.join("audit.jsonl"));
    assert_eq!(journal.runs_of("slow")[0].status(), None, "left unfinished");

    let serve = Serve::start(
        &runbooks,
        ServeOpts {
            env: vec![("FIREBREAK_DATA_DIR", data.display().to_string())],
            ..ServeOpts::default()
        },
    )
    .await;
    let path = data.join("audit.jsonl");
    let journal = wait_for(
        "the run to be closed",
        Duration::from_secs(20),
        || serve.log_tail(),
        || {
            let journal = Journal::read(&path);
            std::future::ready((journal.finished("slow").len() == 1).then_some(journal))
        },
    )
    .await;
    let run = &journal.runs_of("slow")[0];
    assert_eq!(run.status(), Some("cancelled"));
    assert!(
        !run.records
            .iter()
            .any(|r| r["body"]["type"] == "run_resumed"),
        "not resumed"
    );
    let end = run
        .records
        .iter()
        .find(|r| r["body"]["type"] == "run_finished")
        .unwrap();
    assert!(
        end["body"]["error"]
            .as_str()
            .unwrap()
            .starts_with("abandoned"),
        "{end}"
    );
}
