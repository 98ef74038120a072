//! Bad runbooks: `firebreak check` names each problem as `file:line:col: message`; the shipped
//! runbooks pass. Hot reload under `serve`: a broken edit is refused and the old runbook keeps
//! matching; a good edit takes effect.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::harness::{Serve, ServeOpts, firebreak, repo_root, wait_for, write_runbooks};

fn manifest(matcher: &str, tail: &str) -> String {
    format!(
        "name: greet\nteam: sre\ndescription: says hello\nnamespaces: [shop]\ntriggers:\n  \
         - source: alertmanager\n    status: firing\n    match: ['{matcher}']\n\
         params:\n  instance: {{ from: label, key: instance, type: string, required: true }}\n\
         concurrency: \"{{{{params.instance}}}}\"\ntimeout: 30s\n{tail}"
    )
}

/// `serve` with one runbook, `greet` (matches `alertname="Hello"`), running `script`.
async fn serve_greet(root: &Path, script: &str) -> (Serve, std::path::PathBuf) {
    let dir = root.join("runbooks");
    let yaml = manifest("alertname=\"Hello\"", "");
    write_runbooks(&dir, &[("greet.yaml", &yaml), ("greet.rhai", script)]);
    (Serve::start(&dir, ServeOpts::default()).await, dir)
}

/// A webhook with one firing `Hello` alert for `instance`.
fn hello(instance: &str) -> String {
    json!({
        "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "g",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
        "alerts": [{"status": "firing",
            "labels": {"alertname": "Hello", "namespace": "shop", "instance": instance},
            "annotations": {}, "startsAt": "2026-11-27T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": format!("{:0>16}", instance)}],
    })
    .to_string()
}

/// The scripting reference is what the binary prints: `docs/RUNBOOKS.md` is generated from the
/// connectors' specs and the runtime's tables (`firebreak/src/reference.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn docs_runbooks_md_is_what_connectors_markdown_prints() {
    let out = firebreak(&["connectors", "--markdown"], &[])
        .await
        .ok("firebreak connectors --markdown");
    let committed =
        std::fs::read_to_string(repo_root().join("docs/RUNBOOKS.md")).unwrap_or_default();
    assert!(
        committed == out.stdout,
        "docs/RUNBOOKS.md is out of date: run `cargo run -q -- connectors --markdown > \
         docs/RUNBOOKS.md` from the repository's root"
    );
}

/// Runs `firebreak check DIR` on one runbook and returns its output; it must fail.
async fn check_fails(root: &Path, case: &str, yaml: &str, script: &str) -> crate::harness::Output {
    let dir = root.join(case);
    write_runbooks(&dir, &[("greet.yaml", yaml), ("greet.rhai", script)]);
    let out = firebreak(&["check", dir.to_str().unwrap()], &[]).await;
    assert!(!out.success(), "check must fail for {case}: {out}");
    out
}

/// Asserts a `FILE:LINE:COL: message` line naming `file` at `line` with every word in `words`.
fn assert_diagnostic(out: &crate::harness::Output, file: &Path, line: u32, words: &[&str]) {
    let prefix = format!("{}:{line}:", file.display());
    let found = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| {
            panic!("no `{prefix}COL: message` line: {out}");
        });
    let rest = &found[prefix.len()..];
    let (col, message) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("no `COL: ` in {found}"));
    assert!(col.parse::<u32>().is_ok_and(|c| c > 0), "column in {found}");
    for word in words {
        assert!(message.contains(word), "{found} should mention {word:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_file_line_and_column_of_each_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let good = manifest("alertname=\"Hello\"", "");

    // Bad YAML: a mapping value where none may be (line 14).
    let out = check_fails(
        root,
        "yaml",
        &manifest("alertname=\"Hello\"", "cooldown: 5m\n  extra: x\n"),
        "log(1);",
    )
    .await;
    assert_diagnostic(&out, &root.join("yaml/greet.yaml"), 14, &["mapping values"]);
    // An unknown field, named.
    let out = check_fails(
        root,
        "field",
        &manifest("alertname=\"Hello\"", "colour: red\n"),
        "log(1);",
    )
    .await;
    assert_diagnostic(
        &out,
        &root.join("field/greet.yaml"),
        13,
        &["unknown field", "colour"],
    );
    // A regex that does not compile, at its matcher.
    let out = check_fails(
        root,
        "regex",
        &manifest("alertname=~\"(Hel\"", ""),
        "log(1);",
    )
    .await;
    assert_diagnostic(
        &out,
        &root.join("regex/greet.yaml"),
        8,
        &["regex", "alertname"],
    );
    // A script syntax error, in the .rhai file at its line.
    let out = check_fails(root, "script", &good, "log(\"hello\");\nlet x = ;\n").await;
    assert_diagnostic(&out, &root.join("script/greet.rhai"), 2, &[]);
    // A misspelt connector action, and one called with too few arguments: found at check
    // time, against the real connectors' actions, not mid-incident.
    let out = check_fails(
        root,
        "action",
        &good,
        "log(1);\nk8s::rolback(\"shop\", \"web\");\nk8s::scale(\"shop\", \"web\");\n",
    )
    .await;
    assert_diagnostic(
        &out,
        &root.join("action/greet.rhai"),
        2,
        &["k8s::rolback", "did you mean `k8s::rollback`"],
    );
    assert_diagnostic(
        &out,
        &root.join("action/greet.rhai"),
        3,
        &["k8s::scale", "takes 3 arguments", "not 2"],
    );
    // A runbook acting on a target from the alert without a concurrency key: loads, warned.
    let dir = root.join("unkeyed");
    write_runbooks(
        &dir,
        &[
            (
                "greet.yaml",
                &good.replace("concurrency: \"{{params.instance}}\"\n", ""),
            ),
            ("greet.rhai", "log(1);"),
        ],
    );
    let out = firebreak(&["check", dir.to_str().unwrap()], &[])
        .await
        .ok("check warns");
    assert!(
        out.stderr.contains("warning:") && out.stderr.contains("no `concurrency` key"),
        "{out}"
    );

    let shipped = repo_root().join("runbooks");
    let out = firebreak(&["check", shipped.to_str().unwrap()], &[])
        .await
        .ok("check runbooks/");
    for name in [
        "model-latency-rollback",
        "crashloop-triage",
        "quarantine-pod",
    ] {
        assert!(out.stdout.contains(&format!("ok  {name}")), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_edit_is_refused_and_a_good_edit_takes_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let (serve, dir) = serve_greet(tmp.path(), "log(\"greeting v1\");\n").await;
    let logged = |message: &'static str| {
        let serve = &serve;
        async move {
            wait_for(
                &format!("serve to log `{message}`"),
                Duration::from_secs(20),
                || serve.log_tail(),
                || {
                    let n = serve
                        .log_lines()
                        .iter()
                        .filter(|l| l["fields"]["message"] == message)
                        .count();
                    std::future::ready((n > 0).then_some(()))
                },
            )
            .await
        }
    };
    // The greeting a run of `greet` logged, once it finished.
    let greeting_for = |instance: &'static str| {
        let serve = &serve;
        async move {
            let journal = serve
                .wait_journal(
                    &format!("the greet run for {instance}"),
                    Duration::from_secs(20),
                    |j| {
                        j.finished("greet")
                            .iter()
                            .any(|r| r.started().unwrap()["body"]["params"]["instance"] == instance)
                    },
                )
                .await;
            let runs = journal.finished("greet");
            let run = runs
                .iter()
                .find(|r| r.started().unwrap()["body"]["params"]["instance"] == instance)
                .unwrap();
            assert_eq!(run.status(), Some("succeeded"), "{}", journal.summary());
            run.records
                .iter()
                .find(|r| r["body"]["type"] == "step_finished" && r["body"]["name"] == "log")
                .map(|r| r["body"]["inputs"]["message"].as_str().unwrap().to_owned())
                .unwrap()
        }
    };

    // A broken edit: the old script keeps serving.
    std::fs::write(dir.join("greet.rhai"), "log(\"greeting v2\"\n").unwrap();
    logged("runbook change refused; the previous runbooks keep serving").await;
    let refused = serve
        .log_lines()
        .into_iter()
        .find(|l| {
            l["fields"]["message"] == "runbook change refused; the previous runbooks keep serving"
        })
        .unwrap();
    assert!(
        refused["fields"]["problem"]
            .as_str()
            .unwrap_or("")
            .contains("greet.rhai:"),
        "the refusal names the file: {refused}"
    );
    let (status, body) = serve.post("/v1/alertmanager", None, hello("a")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(greeting_for("a").await, "greeting v1");

    // A good edit: new script and a new matcher.
    write_runbooks(
        &dir,
        &[
            ("greet.yaml", &manifest("alertname=~\"Hello|Hi\"", "")),
            ("greet.rhai", "log(\"greeting v2, edited\");\n"),
        ],
    );
    logged("runbooks reloaded").await;
    let (status, body) = serve.post("/v1/alertmanager", None, hello("b")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(greeting_for("b").await, "greeting v2, edited");
}

/// A run's log lines come in the order it ran: `run started` first, then what its script
/// logged, `run finished` last, without an `error` field when it succeeded. (The start used to
/// be logged once journaled, which for a run that needs no thread is with its finish: after
/// both other lines.)
#[tokio::test(flavor = "multi_thread")]
async fn a_runs_log_lines_come_in_the_order_it_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let (serve, _) = serve_greet(tmp.path(), "log(\"hello from the script\");\n").await;
    let (status, body) = serve.post("/v1/alertmanager", None, hello("i1")).await;
    assert_eq!(status, 202, "{body}");
    let journal = serve
        .wait_journal("the greet run", Duration::from_secs(20), |j| {
            !j.finished("greet").is_empty()
        })
        .await;
    let run_id = journal.finished("greet")[0].run_id.clone();
    let lines = || {
        serve
            .log_lines()
            .into_iter()
            .filter(|l| l["fields"]["run_id"] == run_id.as_str())
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    wait_for(
        "the run's finish to be logged",
        Duration::from_secs(20),
        || serve.log_tail(),
        || {
            std::future::ready(
                lines()
                    .iter()
                    .any(|l| l.contains("run finished"))
                    .then_some(()),
            )
        },
    )
    .await;
    let lines = lines();
    let at = |text: &str| {
        lines
            .iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no line of run {run_id} with `{text}`: {lines:#?}"))
    };
    let (started, logged, finished) = (
        at("run started"),
        at("hello from the script"),
        at("run finished"),
    );
    assert!(
        started < logged && logged < finished,
        "the run's lines out of order: {lines:#?}"
    );
    // A run that succeeded has no error to name, not an empty one.
    let finish: serde_json::Value = serde_json::from_str(&lines[finished]).unwrap();
    assert_eq!(finish["fields"]["status"], "succeeded", "{finish}");
    assert!(finish["fields"].get("error").is_none(), "{finish}");
}
