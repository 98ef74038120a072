//! A server's memory does not grow with its history: it lists every unfinished run and the
//! newest `audit.finished_runs_kept` finished ones, and still answers an older run by id from
//! the journal on disk, before and after a restart; `firebreak audit list` lists them all.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Serve, ServeOpts, wait_for, write_note_runbook};

fn listed(answer: &Value) -> Vec<String> {
    answer["runs"]
        .as_array()
        .expect("a runs array")
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn old_runs_leave_the_listing_but_are_still_answered_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_note_runbook(&dir);
    let mut serve = Serve::start(
        &dir,
        ServeOpts {
            config: Some("audit:\n  finished_runs_kept: 3\n".into()),
            ..ServeOpts::default()
        },
    )
    .await;
    for n in 1..=8 {
        let (status, answer) = serve
            .post("/v1/trigger", None, json!({"runbook": "note"}).to_string())
            .await;
        assert_eq!(status, 202, "{answer}");
        serve
            .wait_journal("the run", Duration::from_secs(30), |j| {
                j.finished("note").len() == n
            })
            .await;
    }
    let journal = serve.journal();
    let runs: Vec<String> = journal
        .finished("note")
        .iter()
        .map(|r| r.run_id.clone())
        .collect();
    let (status, answer) = serve.get("/v1/runs", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(listed(&answer), runs[5..], "{answer}");

    let oldest = journal.finished("note")[0].records.len();
    let check_oldest = |status: u16, answer: &Value| {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["run"]["run_id"], runs[0].as_str());
        assert_eq!(answer["run"]["status"], "succeeded");
        assert_eq!(
            answer["records"].as_array().unwrap().len(),
            oldest,
            "{answer}"
        );
    };
    let (status, answer) = serve.get(&format!("/v1/runs/{}", runs[0]), None).await;
    check_oldest(status, &answer);
    let (status, _) = serve.get("/v1/runs/no-such-run", None).await;
    assert_eq!(status, 404);

    // After a restart: the same three, once the history is indexed; the oldest still found.
    assert_eq!(serve.terminate().await, Some(0), "{}", serve.log_tail());
    serve.restart().await;
    wait_for(
        "the newest three runs listed",
        Duration::from_secs(10),
        || serve.log_tail(),
        || async {
            let (_, answer) = serve.get("/v1/runs", None).await;
            (listed(&answer) == runs[5..]).then_some(())
        },
    )
    .await;
    let (status, answer) = serve.get(&format!("/v1/runs/{}", runs[0]), None).await;
    check_oldest(status, &answer);

    let out = serve.cli(&["audit", "list"]).await.ok("audit list");
    for run in &runs {
        assert!(out.stdout.contains(run.as_str()), "{run}: {}", out.stdout);
    }
}
