//! The real Alertmanager 0.25 → `firebreak serve` → the audit journal, read back with
//! `firebreak audit list | show | verify`; a hand-edited record is caught. Also: a re-sent
//! alert starts one run only.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Alertmanager, Serve, ServeOpts, at, write_runbooks};

const RUN_WAIT: Duration = Duration::from_secs(30);

/// `on-firing` logs and records evidence for `DiskFull` firing; `on-resolved` for resolved.
fn runbooks(dir: &std::path::Path) {
    write_runbooks(
        dir,
        &[
            (
                "on-firing.yaml",
                "name: on-firing\nteam: sre\ndescription: logs a firing alert\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"DiskFull\"']\n\
                 params:\n  instance: { from: label, key: instance, type: string, required: true }\n\
                 concurrency: \"{{params.instance}}\"\ntimeout: 30s\n",
            ),
            (
                "on-firing.rhai",
                "log(`disk full on ${ctx.params.instance}: ${ctx.annotations.summary}`);\n\
                 evidence(\"alert\", #{ instance: ctx.params.instance, severity: ctx.labels.severity });\n",
            ),
            (
                "on-resolved.yaml",
                "name: on-resolved\nteam: sre\ndescription: notes a resolved alert\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: resolved\n    match: ['alertname=\"DiskFull\"']\n\
                 params:\n  instance: { from: label, key: instance, type: string, required: true }\n\
                 concurrency: \"{{params.instance}}\"\ntimeout: 30s\n",
            ),
            (
                "on-resolved.rhai",
                "log(`disk ok again on ${ctx.params.instance}`);\n",
            ),
        ],
    );
}

fn disk_full(instance: &str, starts: &str, ends: Option<&str>) -> Value {
    let mut alert = json!({
        "labels": {"alertname": "DiskFull", "namespace": "shop", "instance": instance, "severity": "page"},
        "annotations": {"summary": format!("/var is 99% full on {instance}")},
        "startsAt": starts,
        "generatorURL": "http://prometheus.invalid/graph",
    });
    if let Some(ends) = ends {
        alert["endsAt"] = json!(ends);
    }
    alert
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_fires_and_resolves_runs_are_audited_and_tampering_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    runbooks(&tmp.path().join("runbooks"));
    // The webhook needs a bearer token, sent by Alertmanager's own http_config.
    let serve = Serve::start(
        &tmp.path().join("runbooks"),
        ServeOpts {
            env: vec![("FIREBREAK_ALERTMANAGER_TOKEN", "am-webhook-token".into())],
            ..ServeOpts::default()
        },
    )
    .await;
    let am = Alertmanager::start(
        &serve.url("/v1/alertmanager"),
        "1h",
        Some("am-webhook-token"),
    )
    .await;

    let starts = at(-100);
    am.post_alerts(&json!([disk_full("db-1", &starts, None)]))
        .await;
    let journal = serve
        .wait_journal("a finished on-firing run for db-1", RUN_WAIT, |j| {
            j.finished("on-firing").len() == 1
        })
        .await;
    let fired = &journal.finished("on-firing")[0];
    assert_eq!(fired.status(), Some("succeeded"), "{}", journal.summary());
    let event = &fired.started().unwrap()["body"]["event"];
    assert_eq!(event["source"], "alertmanager");
    assert_eq!(event["type"], "firing");
    assert_eq!(event["data"]["labels"]["instance"], "db-1");
    assert_eq!(
        event["data"]["receiver"], "firebreak",
        "the webhook came from Alertmanager"
    );
    assert!(
        journal.runs_of("on-resolved").is_empty(),
        "nothing resolved yet"
    );
    let fired_id = fired.run_id.clone();

    // Resolve it: Alertmanager notifies with status resolved at the next group interval.
    am.post_alerts(&json!([disk_full("db-1", &starts, Some(&at(-10)))]))
        .await;
    let journal = serve
        .wait_journal("a finished on-resolved run", RUN_WAIT, |j| {
            j.finished("on-resolved").len() == 1
        })
        .await;
    let resolved = &journal.finished("on-resolved")[0];
    assert_eq!(resolved.status(), Some("succeeded"));
    assert_eq!(
        resolved.started().unwrap()["body"]["event"]["type"],
        "resolved"
    );
    assert_eq!(
        journal.runs_of("on-firing").len(),
        1,
        "the resolve started no firing run"
    );

    // What an operator sees.
    let list = serve.cli(&["audit", "list"]).await.ok("audit list");
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&fired_id))
        .unwrap_or_else(|| panic!("audit list has no row for {fired_id}:\n{}", list.stdout));
    assert!(
        row.contains("on-firing") && row.contains("succeeded"),
        "{row}"
    );
    assert!(
        list.stdout
            .lines()
            .any(|l| l.contains("on-resolved") && l.contains("succeeded")),
        "{}",
        list.stdout
    );
    let show = serve
        .cli(&["audit", "show", &fired_id[..13]])
        .await
        .ok("audit show");
    for expected in [
        "runbook on-firing",
        "actor alertmanager",
        "event alertmanager/firing DiskFull",
        "disk full on db-1: /var is 99% full on db-1",
        "evidence alert",
        "run succeeded",
    ] {
        assert!(
            show.stdout.contains(expected),
            "audit show lacks {expected:?}:\n{}",
            show.stdout
        );
    }
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");

    drop(am);
    tamper_and_verify(serve).await;
}

/// Stops the engine (no writer left), changes one value of the firing run's evidence record by
/// hand and checks that `audit verify` fails naming that record's line and seq.
async fn tamper_and_verify(mut serve: Serve) {
    let path = serve.journal_path();
    serve.kill();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let (index, seq) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["body"]["type"] == "evidence").then(|| (i, v["seq"].as_u64().unwrap()))
        })
        .expect("an evidence record");
    assert!(lines[index].contains("\"db-1\""), "{}", lines[index]);
    lines[index] = lines[index].replace("\"db-1\"", "\"db-2\"");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let verify = serve.cli(&["audit", "verify"]).await;
    assert!(
        !verify.success(),
        "a hand-edited journal must fail verify: {verify}"
    );
    let line = index + 1;
    assert!(
        verify.stderr.contains(&format!("audit.jsonl:{line}:"))
            && verify.stderr.contains(&format!("seq {seq}")),
        "verify must name line {line} / seq {seq}: {verify}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_alert_starts_one_run_while_the_first_runs_or_cools_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "slow.yaml",
                "name: slow\nteam: sre\ndescription: a run that takes a while\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"QueueBacklog\"']\n\
                 params:\n  queue: { from: label, key: queue, type: string, required: true }\n\
                 concurrency: \"{{params.queue}}\"\ncooldown: 1h\ntimeout: 30s\n",
            ),
            (
                "slow.rhai",
                "log(`draining ${ctx.params.queue}`);\nsleep(3000);\n",
            ),
        ],
    );
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    let body = |starts: &str| {
        json!({
            "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "{}:{alertname=\"QueueBacklog\"}",
            "groupLabels": {"alertname": "QueueBacklog"}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am.invalid", "truncatedAlerts": 0,
            "alerts": [{"status": "firing",
                "labels": {"alertname": "QueueBacklog", "namespace": "shop", "queue": "orders"},
                "annotations": {}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "", "fingerprint": "0123456789abcdef"}],
        })
        .to_string()
    };
    // The same notification twice (Alertmanager's repeat), then the same incident with a new
    // startsAt (a new event id, so only the lock / cooldown can stop it).
    let first = body("2026-11-27T03:00:00Z");
    let (s1, a1) = serve.post("/v1/alertmanager", None, first.clone()).await;
    let (s2, a2) = serve.post("/v1/alertmanager", None, first).await;
    assert_eq!((s1, s2), (202, 202), "{a1} {a2}");
    assert_eq!(
        a1["accepted"], a2["accepted"],
        "a repeat keeps its event id"
    );
    let (s3, a3) = serve
        .post("/v1/alertmanager", None, body("2026-11-27T03:05:00Z"))
        .await;
    assert_eq!(s3, 202, "{a3}");
    assert_ne!(a3["accepted"], a1["accepted"]);

    // While the first run is active (it sleeps 3s) the lock holds; afterwards the cooldown.
    let journal = serve
        .wait_journal("the slow run to finish", RUN_WAIT, |j| {
            j.finished("slow").len() == 1
        })
        .await;
    assert_eq!(journal.finished("slow")[0].status(), Some("succeeded"));
    let (s4, a4) = serve
        .post("/v1/alertmanager", None, body("2026-11-27T03:10:00Z"))
        .await;
    assert_eq!(s4, 202, "{a4}");
    let fourth = a4["accepted"][0].as_str().unwrap().to_owned();
    let first = a1["accepted"][0].as_str().unwrap().to_owned();
    let third = a3["accepted"][0].as_str().unwrap().to_owned();
    // Each decision is in the journal: of the first and third alerts (same incident, handled
    // on concurrent tasks, so either may take the lock first) one started the run and the
    // other joined its trail; the fourth (in the cooldown) is a skipped notice.
    let journal = serve
        .wait_journal("both decisions journaled", RUN_WAIT, |j| {
            let joined = j.records.iter().any(|r| {
                r["body"]["type"] == "event_joined"
                    && (r["body"]["event_id"] == third.as_str()
                        || r["body"]["event_id"] == first.as_str())
            });
            let skipped = j.records.iter().any(|r| {
                r["body"]["type"] == "skipped"
                    && r["event_id"] == fourth.as_str()
                    && r["body"]["reason"]
                        .as_str()
                        .is_some_and(|m| m.contains("cooldown"))
            });
            joined && skipped
        })
        .await;
    let runs = journal.runs_of("slow");
    assert_eq!(runs.len(), 1, "one run per incident\n{}", journal.summary());
    let starter = runs[0].event_id().to_owned();
    let other = if starter == first { &third } else { &first };
    assert!(
        starter == first || starter == third,
        "the run was started by one of the two alerts\n{}",
        journal.summary()
    );
    assert!(
        runs[0].records.iter().any(|r| {
            r["body"]["type"] == "event_joined" && r["body"]["event_id"] == other.as_str()
        }),
        "the other alert is in the run's own trail\n{}",
        journal.summary()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_repeats_of_a_firing_alert_start_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    runbooks(&dir);
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    // repeat_interval 1s: Alertmanager re-sends the still-firing group about every second.
    let am = Alertmanager::start(&serve.url("/v1/alertmanager"), "1s", None).await;
    am.post_alerts(&json!([disk_full("db-7", &at(-100), None)]))
        .await;
    crate::harness::wait_for(
        "Alertmanager to deliver the firing group three times",
        Duration::from_secs(30),
        || format!("{}\n{}", serve.log_tail(), am.log_tail()),
        || {
            let n = serve
                .log_lines()
                .iter()
                .filter(|l| l["fields"]["message"] == "alertmanager notification accepted")
                .count();
            std::future::ready((n >= 3).then_some(()))
        },
    )
    .await;
    let journal = serve
        .wait_journal("the run to finish", RUN_WAIT, |j| {
            j.finished("on-firing").len() == 1
        })
        .await;
    assert_eq!(
        journal.runs().len(),
        1,
        "one run for three notifications\n{}",
        journal.summary()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_remediation_budget_is_a_journaled_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "restart-db.yaml",
                "name: restart-db\nteam: sre\ndescription: restarts a database\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"DbStuck\"']\n\
                 params:\n  db: { from: label, key: db, type: string, required: true }\n\
                 concurrency: \"{{params.db}}\"\ntimeout: 30s\nbudget: { max_runs: 2, per: 1h }\n",
            ),
            ("restart-db.rhai", "log(`restarting ${ctx.params.db}`);\n"),
        ],
    );
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    // The same incident flapping: each notification a new startsAt (a new event), no cooldown.
    for (i, minute) in ["00", "05", "10"].iter().enumerate() {
        let body = json!({
            "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "g",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
            "alerts": [{"status": "firing",
                "labels": {"alertname": "DbStuck", "namespace": "shop", "db": "orders"},
                "annotations": {}, "startsAt": format!("2026-11-27T03:{minute}:00Z"),
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "00000000000000db"}],
        });
        let (status, answer) = serve.post("/v1/alertmanager", None, body.to_string()).await;
        assert_eq!(status, 202, "{answer}");
        serve
            .wait_journal(&format!("alert {} to be handled", i + 1), RUN_WAIT, |j| {
                j.finished("restart-db").len() + j.refusals().len() == i + 1
            })
            .await;
    }
    let journal = serve.journal();
    assert_eq!(
        journal.finished("restart-db").len(),
        2,
        "{}",
        journal.summary()
    );
    let refusals = journal.refusals();
    assert_eq!(refusals.len(), 1, "{}", journal.summary());
    assert_eq!(refusals[0]["runbook"], "restart-db");
    let reason = refusals[0]["body"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("budget") && reason.contains("restart-db/orders"),
        "{reason}"
    );
}

/// The real Alertmanager fires and then resolves an alert while the run handling it waits for
/// the resolution: the resolved notification reaches that run (joined, in its trail) and
/// wakes its `wait_resolved`.
#[tokio::test(flavor = "multi_thread")]
async fn a_resolved_alert_reaches_the_run_handling_its_incident() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "watch.yaml",
                "name: watch\nteam: sre\ndescription: acts, then waits for the alert to clear\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"DiskFull\"']\n\
                 params:\n  instance: { from: label, key: instance, type: string, required: true }\n\
                 concurrency: \"{{params.instance}}\"\ntimeout: 60s\n",
            ),
            (
                "watch.rhai",
                "log(`cleaning ${ctx.params.instance}`);\n\
                 let cleared = wait_resolved(\"50s\");\n\
                 log(`cleared: ${cleared}`);\n\
                 if !cleared { fail(\"the alert did not clear\"); }\n",
            ),
        ],
    );
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    let am = Alertmanager::start(&serve.url("/v1/alertmanager"), "1h", None).await;
    let starts = at(-100);
    am.post_alerts(&json!([disk_full("db-9", &starts, None)]))
        .await;
    serve
        .wait_journal("the run to wait for the resolution", RUN_WAIT, |j| {
            j.records.iter().any(|r| {
                r["body"]["type"] == "step_started" && r["body"]["name"] == "wait_resolved"
            })
        })
        .await;
    am.post_alerts(&json!([disk_full("db-9", &starts, Some(&at(-1)))]))
        .await;
    let journal = serve
        .wait_journal("the run to end", RUN_WAIT, |j| {
            j.finished("watch").len() == 1
        })
        .await;
    let run = &journal.runs_of("watch")[0];
    assert_eq!(run.status(), Some("succeeded"), "{}", serve.log_tail());
    let joined = run
        .records
        .iter()
        .find(|r| r["body"]["type"] == "event_joined")
        .expect("the resolved alert joined the run");
    assert_eq!(joined["body"]["status"], "resolved");
    assert_eq!(journal.runs_of("watch").len(), 1, "{}", journal.summary());
}
