//! The run console at `/ui`, in a real headless Chromium driven through WebDriver: a team's
//! token lists its team's runs (not another team's), a run's page shows its timeline and the
//! audit chain's state, a running run's page follows it live to its end, and an approver
//! approves a pending run from the page. A screenshot of a run page is kept in
//! `target/test-artifacts/`.

use std::time::Duration;

use serde_json::json;

use crate::harness::browser::Browser;
use crate::harness::{Serve, ServeOpts, repo_root, write_runbooks};

const WAIT: Duration = Duration::from_secs(30);

const TEAMS: &str = r#"teams:
  - name: ml
    namespaces: [ml-serving]
    members:
      - { name: ann, tokens: [ann-token-0001] }
      - { name: ben, tokens: [ben-token-0002] }
  - name: web
    namespaces: [web]
    members:
      - { name: wes, tokens: [wes-token-0005] }
"#;

async fn trigger(serve: &Serve, token: &str, runbook: &str) {
    let (status, body) = serve
        .post(
            "/v1/trigger",
            Some(token),
            json!({"runbook": runbook}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

/// Uses `token` in the page (as a person would type it) and opens `hash`.
async fn as_member(browser: &Browser, serve: &Serve, token: &str, hash: &str) {
    browser.goto(&serve.url("/ui")).await;
    browser
        .exec(
            "localStorage.setItem('firebreak-token', arguments[0]); location.hash = arguments[1]; \
             location.reload(); return 1",
            json!([token, hash]),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_lists_follows_and_approves_runs_in_a_real_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let teams = tmp.path().join("teams.yaml");
    std::fs::write(&teams, TEAMS).unwrap();
    let dir = tmp.path().join("runbooks");
    let manifest = |name: &str, team: &str, ns: &str, extra: &str| {
        format!("name: {name}\nteam: {team}\ndescription: d\nnamespaces: [{ns}]\n{extra}")
    };
    write_runbooks(
        &dir,
        &[
            ("note.yaml", &manifest("note", "ml", "ml-serving", "")),
            ("note.rhai", "log(\"noted\");\n"),
            ("slow.yaml", &manifest("slow", "ml", "ml-serving", "")),
            (
                "slow.rhai",
                "log(\"working\");\nsleep(2500);\nlog(\"done\");\n",
            ),
            (
                "gated.yaml",
                &manifest("gated", "ml", "ml-serving", "approval: true\n"),
            ),
            (
                "gated.rhai",
                "approve(\"restart the model?\");\nlog(\"restarted\");\n",
            ),
            ("web-note.yaml", &manifest("web-note", "web", "web", "")),
            ("web-note.rhai", "log(\"web\");\n"),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_TEAMS", teams.display().to_string())],
            ..ServeOpts::default()
        },
    )
    .await;
    trigger(&serve, "ann-token-0001", "note").await;
    trigger(&serve, "wes-token-0005", "web-note").await;
    serve
        .wait_journal("the first runs", WAIT, |j| {
            j.finished("note").len() == 1 && j.finished("web-note").len() == 1
        })
        .await;

    let browser = Browser::start().await;
    // The list, as ann sees it: her team's run, not web's; the audit chain verified.
    as_member(&browser, &serve, "ann-token-0001", "#/").await;
    let row = browser.wait_text("tr.run", "note", WAIT).await;
    let listed = browser
        .exec(
            "return document.querySelector('#runs').innerText",
            json!([]),
        )
        .await;
    assert!(!listed.as_str().unwrap().contains("web-note"), "{listed}");
    browser
        .wait_text("#audit-state", "audit chain verified", WAIT)
        .await;

    // A run's page: its status and its timeline.
    browser.click(&row).await;
    browser.wait_text("#run-status", "succeeded", WAIT).await;
    browser.wait_text("#timeline .step", "log", WAIT).await;
    // The `log` step is one record, `step_finished` with its inputs: they show.
    browser.wait_text("#timeline .step", "noted", WAIT).await;

    // A running run's page follows it live to its end.
    trigger(&serve, "ann-token-0001", "slow").await;
    let journal = serve
        .wait_journal("the slow run to start", WAIT, |j| {
            !j.runs_of("slow").is_empty()
        })
        .await;
    let slow = journal.runs_of("slow")[0].records[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    browser.goto(&serve.url(&format!("/ui#/runs/{slow}"))).await;
    browser.wait_text("#run-status", "running", WAIT).await;
    browser.wait_text("#timeline .step", "sleep", WAIT).await;
    browser.wait_text("#run-status", "succeeded", WAIT).await;
    let steps = browser.find_all("#timeline .step").await;
    assert_eq!(steps.len(), 3, "log, sleep, log arrived live");
    let artifact = repo_root().join("target/test-artifacts/ui-run.png");
    browser.screenshot(&artifact).await;
    assert!(
        std::fs::metadata(&artifact).unwrap().len() > 1000,
        "a real PNG"
    );

    // ann asks: her page shows the request without buttons (she may not approve her own run);
    // ben, an approver, approves from the list.
    trigger(&serve, "ann-token-0001", "gated").await;
    as_member(&browser, &serve, "ann-token-0001", "#/").await;
    browser
        .wait_text(".approval", "you may not decide on this run", WAIT)
        .await;
    assert!(
        browser
            .find_all(".approval button.approve")
            .await
            .is_empty()
    );
    as_member(&browser, &serve, "ben-token-0002", "#/").await;
    let approve = browser
        .wait_text(".approval button.approve", "Approve", WAIT)
        .await;
    browser.click(&approve).await;
    browser.wait_text("#flash", "approved", WAIT).await;
    let journal = serve
        .wait_journal("the approved run to finish", WAIT, |j| {
            j.finished("gated").len() == 1
        })
        .await;
    let gated = &journal.finished("gated")[0];
    assert_eq!(gated.status(), Some("succeeded"));
    let decision = gated
        .records
        .iter()
        .find(|r| r["body"]["type"] == "approval")
        .expect("the approval is audited");
    assert_eq!(decision["body"]["approver"], "ben");
    assert_eq!(decision["body"]["seen"], "the firebreak run console");
}
