//! `deploy/monitoring/` checked with the real tools: the alert rules with `promtool check rules`
//! and `promtool test rules`; the Grafana dashboard's queries against the real Prometheus
//! scraping a `firebreak serve` that has run, refused and timed things: every query is valid,
//! the core panels have data, and every firebreak metric the rules and the dashboard name is
//! one firebreak exports.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Cluster, Prometheus, Serve, ServeOpts, repo_root, scrape_checked, wait_for, write_runbooks,
};

fn monitoring() -> std::path::PathBuf {
    repo_root().join("deploy/monitoring")
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(monitoring())
            .output()
            .expect("promtool (installed with prometheus)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `firebreak_*` and `process_*` metric names in a PromQL text, without histogram suffixes.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &promql[i..];
        if (rest.starts_with("firebreak_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_queries_firebreak_metrics_that_exist_and_answer() {
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "look.yaml",
                "name: look\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
                 params:\n  ns: { type: string, default: shop }\n",
            ),
            ("look.rhai", "k8s::pods(ctx.params.ns, \"app=web\");\n"),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![(
                "FIREBREAK_KUBECONFIG",
                cluster.kubeconfig.display().to_string(),
            )],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await;
    // One run that looks (a connector step); one trigger refused outside its namespaces.
    for (ns, answer) in [("shop", 202), ("elsewhere", 403)] {
        let (status, body) = serve
            .post(
                "/v1/trigger",
                None,
                json!({"runbook": "look", "params": {"ns": ns}}).to_string(),
            )
            .await;
        assert_eq!(status, answer, "{body}");
    }
    serve
        .wait_journal("the run and the refusal", Duration::from_secs(30), |j| {
            j.finished("look").len() == 1 && !j.refusals().is_empty()
        })
        .await;
    let scraped = scrape_checked(&serve).await;
    let exported: BTreeSet<String> = scraped
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();

    let addr = serve.base.trim_start_matches("http://").parse().unwrap();
    let prom = Prometheus::start(&[("firebreak", addr)], "groups: []\n", None).await;
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");

    // Every metric the rules and the dashboard name is exported.
    let rules = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    let mut named = metric_names(&rules);
    for (_, expr) in &exprs {
        named.extend(metric_names(expr));
    }
    let missing: Vec<&String> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/monitoring but not exported: {missing:?}\n{scraped}"
    );

    // Every query is valid PromQL, and the core panels have data once Prometheus has scraped.
    let query = |expr: String| {
        let url = format!("{}/api/v1/query", prom.base);
        async move {
            let expr = expr.replace("$__rate_interval", "1m");
            let answer: Value = crate::harness::http()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string([("query", expr.as_str())]).unwrap())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer
        }
    };
    let with_data = [
        "Journal writing",
        "Runs ended, by outcome",
        "Connector actions p99",
        "Refusals, by reason",
        "Journal sync p99",
        "Memory and CPU",
    ];
    for (title, expr) in &exprs {
        let answer = wait_for(
            &format!("panel {title:?} to answer"),
            Duration::from_secs(30),
            || prom.log_tail(),
            || {
                let ask = query(expr.clone());
                async move {
                    let answer = ask.await;
                    assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
                    let has_data = answer["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty());
                    (has_data || !with_data.contains(&title.as_str())).then_some(answer)
                }
            },
        )
        .await;
        assert_eq!(answer["status"], "success");
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(firebreak_bus_lag_seconds_bucket{job=\"firebreak\"}[1m]))) / process_cpu_seconds_total"
        ),
        BTreeSet::from([
            "firebreak_bus_lag_seconds".to_owned(),
            "process_cpu_seconds_total".to_owned()
        ])
    );
}

/// The counters an alert rule or a `rate()` is written against are exported at zero from the
/// start, as the README says, so a rule sees them before they first move: the ingest and
/// redelivery counters, and the three of run leases between replicas.
#[tokio::test(flavor = "multi_thread")]
async fn the_counters_rules_watch_are_exported_at_zero_from_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    crate::harness::write_note_runbook(&dir);
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    let scraped = scrape_checked(&serve).await;
    for counter in [
        "firebreak_ingest_alerts_received_total",
        "firebreak_bus_redeliveries_total",
        "firebreak_events_parked_total",
        "firebreak_run_lease_renewals_total",
        "firebreak_run_leases_lost_total",
        "firebreak_runs_taken_over_total",
    ] {
        assert!(
            scraped.lines().any(|l| l == format!("{counter} 0")),
            "{counter} is not exported at zero:\n{scraped}"
        );
    }
}
