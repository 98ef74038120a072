//! Tenancy: a runbook owned by team-a that acts in team-b's namespace is refused (audited) and
//! team-b's Deployment is untouched; a team-b member cannot trigger team-a's runbook (403,
//! audited).

use std::time::Duration;

use serde_json::json;

use crate::harness::{Cluster, Serve, ServeOpts, write_runbooks};

const TEAMS: &str = "teams:\n  - name: team-a\n    namespaces: [team-a]\n    members:\n      \
                     - name: alice\n        tokens: [alice-token-0001]\n  - name: team-b\n    \
                     namespaces: [team-b]\n    members:\n      - name: bob\n        tokens: [bob-token-0002]\n";

fn web(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: apps/v1\nkind: Deployment\n\
         metadata:\n  name: web\n  namespace: {ns}\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: web\n  \
         template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n        \
         - name: web\n          image: registry.example.invalid/web:1\n"
    )
}

async fn replicas(cluster: &Cluster, ns: &str) -> String {
    cluster
        .kubectl(&[
            "-n",
            ns,
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await
        .ok("kubectl get deploy")
        .stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_cannot_act_in_or_trigger_for_another_team() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    cluster.sim.apply_yaml(&web("team-a")).expect("team-a web");
    cluster.sim.apply_yaml(&web("team-b")).expect("team-b web");

    let tmp = tempfile::tempdir().unwrap();
    let teams = tmp.path().join("teams.yaml");
    std::fs::write(&teams, TEAMS).unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "scale-web.yaml",
                "name: scale-web\nteam: team-a\ndescription: scales web\nnamespaces: [team-a]\ntimeout: 30s\n",
            ),
            (
                "scale-web.rhai",
                "k8s::scale(\"team-a\", \"web\", 2);\nk8s::scale(\"team-b\", \"web\", 0);\nlog(\"unreachable\");\n",
            ),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![
                (
                    "FIREBREAK_KUBECONFIG",
                    cluster.kubeconfig.display().to_string(),
                ),
                ("FIREBREAK_TEAMS", teams.display().to_string()),
            ],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await;
    let trigger = json!({"runbook": "scale-web", "params": {}, "actor": "someone"}).to_string();

    // bob (team-b) may not start team-a's runbook; the refusal is journaled.
    let (status, body) = serve
        .post("/v1/trigger", Some("bob-token-0002"), trigger.clone())
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let journal = serve
        .wait_journal(
            "the refused trigger in the journal",
            Duration::from_secs(20),
            |j| {
                j.refusals()
                    .iter()
                    .any(|r| r["body"]["action"] == "trigger")
            },
        )
        .await;
    let refusal = journal
        .refusals()
        .into_iter()
        .find(|r| r["body"]["action"] == "trigger")
        .unwrap();
    assert_eq!(refusal["runbook"], "scale-web");
    assert_eq!(refusal["team"], "team-a");
    assert!(
        refusal["body"]["reason"].as_str().unwrap().contains("bob"),
        "{refusal}"
    );
    assert!(
        journal.runs().is_empty(),
        "nothing ran: {}",
        journal.summary()
    );
    // No token at all: 401.
    let (status, body) = serve.post("/v1/trigger", None, trigger.clone()).await;
    assert_eq!(status, 401, "{body}");

    // alice may; the script's action in team-b is refused and audited, team-b is untouched.
    let (status, body) = serve
        .post("/v1/trigger", Some("alice-token-0001"), trigger)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["actor"], "alice");
    let journal = serve
        .wait_journal(
            "the scale-web run to finish",
            Duration::from_secs(30),
            |j| j.finished("scale-web").len() == 1,
        )
        .await;
    let run = &journal.finished("scale-web")[0];
    assert_eq!(run.status(), Some("failed"), "{}", journal.summary());
    let refused = run
        .records
        .iter()
        .find(|r| r["body"]["type"] == "refusal")
        .unwrap_or_else(|| panic!("no refusal in the run: {}", journal.summary()));
    assert_eq!(refused["body"]["action"], "k8s::scale", "{refused}");
    assert!(
        refused["body"]["reason"]
            .as_str()
            .unwrap()
            .contains("team-b"),
        "{refused}"
    );
    assert!(
        !run.records.iter().any(|r| r["body"]["name"] == "log"),
        "the script stopped at the refusal"
    );
    assert_eq!(
        replicas(&cluster, "team-a").await,
        "2",
        "team-a's own action went through"
    );
    assert_eq!(
        replicas(&cluster, "team-b").await,
        "1",
        "team-b's Deployment is untouched"
    );

    let show = serve
        .cli(&["audit", "show", &run.run_id])
        .await
        .ok("audit show");
    assert!(
        show.stdout.contains("refused k8s::scale"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("run FAILED"), "{}", show.stdout);
}

/// Requests without a valid token cost no write each: fifty of them end up as one journaled
/// refusal (written at the latest when the engine stops). Refusals are listed as refused, never
/// as running runs, and a restart does not try to resume them.
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_triggers_are_journaled_together_and_refusals_are_not_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let teams = tmp.path().join("teams.yaml");
    std::fs::write(&teams, TEAMS).unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "note.yaml",
                "name: note\nteam: team-a\ndescription: logs\nnamespaces: [team-a]\ntimeout: 30s\n",
            ),
            ("note.rhai", "log(\"hi\");\n"),
        ],
    );
    let mut serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_TEAMS", teams.display().to_string())],
            ..ServeOpts::default()
        },
    )
    .await;
    let trigger = json!({"runbook": "note", "params": {}}).to_string();
    for i in 0..50 {
        let token = format!("guess-{i}");
        let (status, body) = serve
            .post("/v1/trigger", Some(&token), trigger.clone())
            .await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, body) = serve
        .post("/v1/trigger", Some("bob-token-0002"), trigger.clone())
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(serve.terminate().await, Some(0), "{}", serve.log_tail());

    let journal = serve.journal();
    let refusals = journal.refusals();
    let unauthenticated: Vec<_> = refusals
        .iter()
        .filter(|r| r["actor"] == "unauthenticated")
        .collect();
    assert_eq!(unauthenticated.len(), 1, "{}", journal.summary());
    assert!(
        unauthenticated[0]["body"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("50 trigger request(s) without a valid token (note: 50)"),
        "{}",
        unauthenticated[0]
    );
    assert_eq!(refusals.len(), 2, "one for bob: {}", journal.summary());

    let list = serve.cli(&["audit", "list"]).await.ok("audit list");
    let statuses: Vec<&str> = list
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(statuses, vec!["refused", "refused"], "{list}");

    serve.restart().await;
    serve.terminate().await;
    assert!(
        !serve.log_lines().iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("resume"))),
        "refusals are never resumed: {}",
        serve.log_tail()
    );
}

/// The teams file is reloaded like the runbooks: a token removed from it stops working within
/// seconds, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_stops_working_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let teams = tmp.path().join("teams.yaml");
    std::fs::write(&teams, TEAMS).unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "note.yaml",
                "name: note\nteam: team-a\ndescription: notes\nnamespaces: [team-a]\ntimeout: 30s\n",
            ),
            ("note.rhai", "log(\"noted\");\n"),
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
    let trigger = json!({"runbook": "note", "params": {}}).to_string();
    let (status, body) = serve
        .post("/v1/trigger", Some("alice-token-0001"), trigger.clone())
        .await;
    assert_eq!(status, 202, "{body}");
    std::fs::write(
        &teams,
        TEAMS.replace("alice-token-0001", "alice-token-0003"),
    )
    .unwrap();
    crate::harness::wait_for(
        "the revoked token to be refused",
        Duration::from_secs(10),
        || serve.log_tail(),
        || async {
            let (status, _) = serve
                .post("/v1/trigger", Some("alice-token-0001"), trigger.clone())
                .await;
            (status == 401).then_some(())
        },
    )
    .await;
    let (status, body) = serve
        .post("/v1/trigger", Some("alice-token-0003"), trigger.clone())
        .await;
    assert_eq!(status, 202, "the new token works: {body}");
}

/// One central audit, each team's view of it: a member's token lists and opens only its
/// team's runs (another team's run is not found, asking for another team is forbidden), the
/// operator's `auth.api_token` sees both, no token sees nothing; `audit list --team` filters.
#[tokio::test(flavor = "multi_thread")]
async fn each_team_reads_only_its_own_runs_and_the_operator_reads_all() {
    let tmp = tempfile::tempdir().unwrap();
    let teams = tmp.path().join("teams.yaml");
    std::fs::write(&teams, TEAMS).unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "note-a.yaml",
                "name: note-a\nteam: team-a\ndescription: logs\nnamespaces: [team-a]\ntimeout: 30s\n",
            ),
            ("note-a.rhai", "log(\"a\");\n"),
            (
                "note-b.yaml",
                "name: note-b\nteam: team-b\ndescription: logs\nnamespaces: [team-b]\ntimeout: 30s\n",
            ),
            ("note-b.rhai", "log(\"b\");\n"),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![
                ("FIREBREAK_TEAMS", teams.display().to_string()),
                ("FIREBREAK_API_TOKEN", "operator-token-9".into()),
            ],
            ..ServeOpts::default()
        },
    )
    .await;
    for (runbook, token) in [("note-a", "alice-token-0001"), ("note-b", "bob-token-0002")] {
        let body = json!({"runbook": runbook}).to_string();
        let (status, answer) = serve.post("/v1/trigger", Some(token), body).await;
        assert_eq!(status, 202, "{answer}");
    }
    serve
        .wait_journal("both runs", Duration::from_secs(30), |j| {
            j.finished("note-a").len() == 1 && j.finished("note-b").len() == 1
        })
        .await;

    let teams_of = |answer: &serde_json::Value| -> Vec<String> {
        answer["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["team"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, alice) = serve.get("/v1/runs", Some("alice-token-0001")).await;
    assert_eq!(status, 200, "{alice}");
    assert_eq!(teams_of(&alice), vec!["team-a"], "{alice}");
    let (status, all) = serve.get("/v1/runs", Some("operator-token-9")).await;
    assert_eq!(status, 200, "{all}");
    let mut both = teams_of(&all);
    both.sort();
    assert_eq!(both, vec!["team-a", "team-b"]);
    let (status, only_b) = serve
        .get(
            "/v1/runs?team=team-b&status=succeeded",
            Some("operator-token-9"),
        )
        .await;
    assert_eq!(
        (status, teams_of(&only_b)),
        (200, vec!["team-b".to_owned()])
    );

    let (status, body) = serve
        .get("/v1/runs?team=team-b", Some("alice-token-0001"))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = serve.get("/v1/runs", None).await;
    assert_eq!(status, 401);
    let (status, _) = serve.get("/v1/runs", Some("guess-0000")).await;
    assert_eq!(status, 401);

    let b_run = only_b["runs"][0]["run_id"].as_str().unwrap().to_owned();
    let (status, run) = serve
        .get(&format!("/v1/runs/{b_run}"), Some("bob-token-0002"))
        .await;
    assert_eq!(status, 200, "{run}");
    assert!(
        run["records"].as_array().is_some_and(|r| r.len() >= 3),
        "{run}"
    );
    let (status, _) = serve
        .get(&format!("/v1/runs/{b_run}"), Some("alice-token-0001"))
        .await;
    assert_eq!(status, 404, "another team's run is not found");

    // The same runs in the metrics, by runbook, team and outcome; promtool finds them clean.
    let metrics = crate::harness::scrape_checked(&serve).await;
    for line in [
        r#"firebreak_runs_total{runbook="note-a",team="team-a",outcome="succeeded"} 1"#,
        r#"firebreak_runs_total{runbook="note-b",team="team-b",outcome="succeeded"} 1"#,
        r#"firebreak_run_duration_seconds_count{runbook="note-a"} 1"#,
        "firebreak_runs_in_progress 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }

    let list = serve
        .cli(&["audit", "list", "--team", "team-a"])
        .await
        .ok("audit list --team");
    let teams_listed: Vec<&str> = list
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(teams_listed, vec!["team-a"], "{}", list.stdout);
}
