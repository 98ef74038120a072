//! Scenario 2 as a closed loop of real parts: kubesim's traffic model (a route splitting 200
//! requests a second between `recommender-primary` and `recommender-canary`, each pod's error
//! rate and latency from its template), the real Prometheus scraping kubesim's `/metrics` every
//! second and evaluating an error-rate rule on the canary, the real Alertmanager sending the
//! alert to `firebreak serve` on JetStream, and the real `kubectl` making the canary bad and
//! reading the result.
//!
//! - the rollback (`canary-rollback`): the alert fires, firebreak sends every request to the
//!   primary and scales the canary to zero, the primary's pods are never touched, the error
//!   rate falls, the alert resolves; for an HTTPRoute, a VirtualService and a plain Service
//!   (replica ratio, no mesh);
//! - the progressive canary (`canary-progressive`): a healthy canary is stepped up through its
//!   gates and promoted; a canary without traffic is held, never promoted; a restart in the
//!   middle neither shifts twice nor loses the analysis.

use std::time::Duration;

use firebreak_bus::testutil::NatsServer;
use serde_json::{Value, json};

use crate::harness::{
    Alertmanager, Cluster, Journal, Prometheus, Serve, ServeOpts, copy_shipped_runbooks, crate_dir,
    wait_for,
};

const NS: &str = "ml-serving";
const PRIMARY: &str = "recommender-primary";
const CANARY: &str = "recommender-canary";
const V1: &str = "registry.example.invalid/ml/recommender:v1";
const V2: &str = "registry.example.invalid/ml/recommender:v2";

/// How the traffic is split.
#[derive(Clone, Copy, Debug)]
enum Mesh {
    /// Gateway API HTTPRoute (the shipped manifest).
    HttpRoute,
    /// Istio VirtualService.
    VirtualService,
    /// No mesh: one Service over both Deployments, split by ready replicas.
    Replicas,
}

impl Mesh {
    fn route(self) -> &'static str {
        match self {
            Mesh::HttpRoute => "httproute/recommender",
            Mesh::VirtualService => "virtualservice/recommender",
            Mesh::Replicas => "service/recommender",
        }
    }

    /// The shipped scenario-2 manifest, its HTTPRoute swapped for this mesh's router.
    fn manifest(self) -> String {
        let shipped = std::fs::read_to_string(crate_dir().join("demo/recommender-canary.yaml"))
            .expect("demo/recommender-canary.yaml");
        let (objects, _route) = shipped
            .split_once("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute")
            .expect("the manifest ends with its HTTPRoute");
        match self {
            Mesh::HttpRoute => shipped,
            Mesh::VirtualService => format!(
                "{objects}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  \
                 name: recommender\n  namespace: {NS}\n  annotations:\n    kubesim.io/rps: \"200\"\n\
                 spec:\n  hosts: [recommender]\n  http:\n    - route:\n        - destination:\n            \
                 host: {PRIMARY}.{NS}.svc.cluster.local\n          weight: 90\n        - destination:\n            \
                 host: {CANARY}\n          weight: 10\n"
            ),
            // Three primary pods and one canary pod: a quarter of the requests.
            Mesh::Replicas => format!(
                "{}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: recommender\n  namespace: {NS}\n  \
                 annotations:\n    kubesim.io/rps: \"200\"\nspec:\n  selector:\n    app: recommender\n  \
                 ports:\n    - name: http\n      port: 80\n      targetPort: http\n",
                objects.replacen("replicas: 2", "replicas: 3", 1)
            ),
        }
    }
}

/// The error-rate rule on the canary, as a team would write it: the labels tell firebreak
/// which route and backends it is about.
fn rules(mesh: Mesh) -> String {
    let sel = format!(
        "reporter=\"destination\",destination_workload_namespace=\"{NS}\",destination_workload=\"{CANARY}\""
    );
    format!(
        r#"groups:
  - name: canary
    interval: 1s
    rules:
      - alert: CanaryErrorRateHigh
        expr: |
          sum(rate(istio_requests_total{{{sel},response_code=~"5.."}}[10s]))
            / sum(rate(istio_requests_total{{{sel}}}[10s])) > 0.05
        labels:
          severity: page
          namespace: {NS}
          route: {route}
          stable: {PRIMARY}
          canary: {CANARY}
        annotations:
          summary: "canary error rate {{{{ $value }}}}"
          window: 10s
          recovery_timeout: 2m
"#,
        route = mesh.route()
    )
}

/// The loop: kubesim, nats-server, firebreak serve (JetStream, the shipped runbooks, the
/// Kubernetes, Prometheus and Alertmanager connectors), Alertmanager and Prometheus.
struct Loop {
    cluster: Cluster,
    serve: Serve,
    am: Alertmanager,
    prom: Prometheus,
    _nats: NatsServer,
    _runbooks: tempfile::TempDir,
}

impl Loop {
    async fn start(mesh: Mesh, extra: &[&str]) -> Loop {
        let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
        let manifest = tempfile::NamedTempFile::new().expect("temp manifest");
        std::fs::write(manifest.path(), mesh.manifest()).expect("write manifest");
        cluster
            .kubectl(&["apply", "-f", manifest.path().to_str().unwrap()])
            .await
            .ok("kubectl apply the scenario-2 manifest");
        for extra in extra {
            let args: Vec<&str> = extra.split(' ').collect();
            cluster.kubectl(&args).await.ok(extra);
        }
        for deploy in [PRIMARY, CANARY] {
            cluster
                .kubectl(&[
                    "-n",
                    NS,
                    "rollout",
                    "status",
                    &format!("deployment/{deploy}"),
                    "--timeout=60s",
                ])
                .await
                .ok("rollout status");
        }
        let nats = NatsServer::start().expect("nats-server -js");
        // Alertmanager needs the webhook's address before serve starts, and serve needs
        // Alertmanager's and Prometheus's: serve's port is chosen first.
        let port = firebreak_bus::port::free_loopback_port().expect("free port");
        let am = Alertmanager::start(
            &format!("http://127.0.0.1:{port}/v1/alertmanager"),
            "1h",
            None,
        )
        .await;
        let prom = Prometheus::start(
            &[("kubesim", cluster.sim.addr())],
            &rules(mesh),
            Some(&am.base),
        )
        .await;
        let runbooks = tempfile::tempdir().expect("runbooks dir");
        copy_shipped_runbooks(runbooks.path());
        let serve = Serve::start(
            runbooks.path(),
            ServeOpts {
                env: vec![
                    ("FIREBREAK_LISTEN", format!("127.0.0.1:{port}")),
                    ("FIREBREAK_NATS_URL", nats.url()),
                    (
                        "FIREBREAK_KUBECONFIG",
                        cluster.kubeconfig.display().to_string(),
                    ),
                    ("FIREBREAK_PROMETHEUS_URL", prom.base.clone()),
                    ("FIREBREAK_ALERTMANAGER_URL", am.base.clone()),
                ],
                kubernetes: true,
                ..ServeOpts::default()
            },
        )
        .await;
        Loop {
            cluster,
            serve,
            am,
            prom,
            _nats: nats,
            _runbooks: runbooks,
        }
    }

    fn context(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.serve.journal().summary(),
            self.serve.log_tail(),
            self.prom.log_tail(),
            self.am.log_tail()
        )
    }

    /// Waits until Prometheus has seen `workload` serve requests (a rate above 0).
    async fn wait_traffic(&self, workload: &str) {
        let q = format!(
            "sum(rate(istio_requests_total{{reporter=\"destination\",destination_workload=\"{workload}\"}}[5s]))"
        );
        wait_for(
            &format!("Prometheus to see {workload} serve"),
            Duration::from_secs(30),
            || self.context(),
            || async { self.prom.value(&q).await.filter(|v| *v > 0.0) },
        )
        .await;
    }

    async fn kubectl_json(&self, args: &[&str]) -> Value {
        let out = self.cluster.kubectl(args).await.ok(&args.join(" "));
        serde_json::from_str(&out.stdout).expect("kubectl -o json")
    }

    /// backend → weight, as kubectl reads the route (or replicas for a Service).
    async fn weights(&self, mesh: Mesh) -> Vec<(String, i64)> {
        match mesh {
            Mesh::HttpRoute => {
                let r = self
                    .kubectl_json(&["-n", NS, "get", "httproute", "recommender", "-o", "json"])
                    .await;
                r["spec"]["rules"][0]["backendRefs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        (
                            b["name"].as_str().unwrap().to_owned(),
                            b["weight"].as_i64().unwrap(),
                        )
                    })
                    .collect()
            }
            Mesh::VirtualService => {
                let r = self
                    .kubectl_json(&[
                        "-n",
                        NS,
                        "get",
                        "virtualservice",
                        "recommender",
                        "-o",
                        "json",
                    ])
                    .await;
                r["spec"]["http"][0]["route"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| {
                        let host = d["destination"]["host"].as_str().unwrap();
                        (
                            host.split('.').next().unwrap().to_owned(),
                            d["weight"].as_i64().unwrap_or(0),
                        )
                    })
                    .collect()
            }
            Mesh::Replicas => {
                let mut out = Vec::new();
                for d in [PRIMARY, CANARY] {
                    out.push((d.to_owned(), self.replicas(d).await));
                }
                out
            }
        }
    }

    async fn replicas(&self, deploy: &str) -> i64 {
        self.kubectl_json(&["-n", NS, "get", "deploy", deploy, "-o", "json"])
            .await["spec"]["replicas"]
            .as_i64()
            .unwrap()
    }

    async fn image(&self, deploy: &str) -> String {
        self.kubectl_json(&["-n", NS, "get", "deploy", deploy, "-o", "json"])
            .await["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `(name, uid, restarts)` of the primary's pods.
    async fn primary_pods(&self) -> Vec<(String, String, i64)> {
        let pods = self
            .kubectl_json(&["-n", NS, "get", "pods", "-l", "role=primary", "-o", "json"])
            .await;
        let mut out: Vec<_> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["metadata"]["uid"].as_str().unwrap().to_owned(),
                    p["status"]["containerStatuses"][0]["restartCount"]
                        .as_i64()
                        .unwrap_or(0),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Starts `canary-progressive` through `POST /v1/trigger`.
    async fn progressive(&self, mesh: Mesh, params: Value) {
        let mut all = json!({
            "namespace": NS, "route": mesh.route(), "stable": PRIMARY, "canary": CANARY,
            "steps": "10,50,100", "interval": "3s", "window": "5s", "min_requests": 20,
        });
        for (k, v) in params.as_object().unwrap() {
            all[k] = v.clone();
        }
        let (status, body) = self
            .serve
            .post(
                "/v1/trigger",
                None,
                json!({"runbook": "canary-progressive", "params": all}).to_string(),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    async fn finished(&self, runbook: &str, limit: Duration) -> Journal {
        self.serve
            .wait_journal(&format!("a finished {runbook} run"), limit, |j| {
                !j.finished(runbook).is_empty()
            })
            .await
    }
}

/// The `step_finished` outputs of `name` steps in a runbook's runs, in order.
fn outputs<'a>(journal: &'a Journal, runbook: &str, name: &str) -> Vec<&'a Value> {
    journal
        .runs_of(runbook)
        .iter()
        .flat_map(|r| r.records.iter().copied())
        .filter(|r| r["body"]["type"] == "step_finished" && r["body"]["name"] == name)
        .map(|r| &r["body"]["outputs"])
        .collect()
}

/// The evidence records named `prefix...` of a runbook's runs, in order.
fn evidence<'a>(journal: &'a Journal, runbook: &str, prefix: &str) -> Vec<&'a Value> {
    journal
        .runs_of(runbook)
        .iter()
        .flat_map(|r| r.records.iter().copied())
        .filter(|r| {
            r["body"]["type"] == "evidence"
                && r["body"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .map(|r| &r["body"]["data"])
        .collect()
}

/// A bad canary, end to end: alert → shift back → canary at zero → recovery → resolved.
async fn bad_canary_is_rolled_back(mesh: Mesh) {
    let lp = Loop::start(mesh, &[]).await;
    lp.wait_traffic(CANARY).await;
    let primary_before = lp.primary_pods().await;
    assert!(!primary_before.is_empty());

    // v2 goes bad: 40% of its answers are errors (a new template, as a bad build would be).
    lp.cluster
        .kubectl(&[
            "-n",
            NS,
            "patch",
            "deployment",
            CANARY,
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"metadata":{"annotations":{"kubesim.io/error-rate":"0.4"}}}}}"#,
        ])
        .await
        .ok("kubectl patch: canary goes bad");

    let journal = lp
        .finished("canary-rollback", Duration::from_secs(150))
        .await;
    let runs = journal.finished("canary-rollback");
    assert_eq!(runs.len(), 1, "one rollback run\n{}", lp.context());
    assert_eq!(
        runs[0].status(),
        Some("succeeded"),
        "the run saw the recovery\n{}",
        lp.context()
    );

    // Every request to the primary, the canary stopped, the primary's pods untouched.
    let weights = lp.weights(mesh).await;
    let to = |name: &str| weights.iter().find(|(n, _)| n == name).map(|(_, w)| *w);
    match mesh {
        Mesh::Replicas => {
            assert_eq!(to(CANARY), Some(0), "{weights:?}");
            assert_eq!(to(PRIMARY), Some(4), "all four pods on v1: {weights:?}");
        }
        _ => {
            assert_eq!(to(PRIMARY), Some(100), "{weights:?}");
            assert_eq!(to(CANARY), Some(0), "{weights:?}");
            assert_eq!(lp.replicas(CANARY).await, 0, "the canary is scaled to zero");
        }
    }
    assert_eq!(lp.image(PRIMARY).await, V1);
    let primary_after = lp.primary_pods().await;
    for pod in &primary_before {
        assert!(
            primary_after.contains(pod),
            "primary pod {pod:?} was replaced or restarted: {primary_after:?}"
        );
    }

    // The error rate fell and the alert resolved (Prometheus and Alertmanager both say so).
    let route_errors = format!(
        "sum(rate(istio_requests_total{{destination_workload_namespace=\"{NS}\",response_code=~\"5..\"}}[10s])) \
         / sum(rate(istio_requests_total{{destination_workload_namespace=\"{NS}\"}}[10s]))"
    );
    let rate = lp.prom.value(&route_errors).await;
    assert!(
        rate.is_some_and(|r| r < 0.05),
        "route error rate after: {rate:?}"
    );
    assert!(
        !lp.prom
            .alerts()
            .await
            .iter()
            .any(|(name, state)| name == "CanaryErrorRateHigh" && state == "firing"),
        "the alert still fires in Prometheus"
    );
    assert!(
        !lp.am
            .active()
            .await
            .iter()
            .any(|l| l["alertname"] == "CanaryErrorRateHigh"),
        "Alertmanager still holds the alert"
    );

    // The audit holds the decisions with their numbers.
    let reset = outputs(&journal, "canary-rollback", "traffic::reset");
    assert_eq!(reset.len(), 1, "{reset:?}");
    assert_eq!(reset[0]["weights"][PRIMARY], 100);
    assert!(
        reset[0]["from"][CANARY].as_i64().unwrap() > 0,
        "{}",
        reset[0]
    );
    let silence = outputs(&journal, "canary-rollback", "am::silence");
    assert_eq!(silence.len(), 1);
    assert!(silence[0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(outputs(&journal, "canary-rollback", "am::expire").len(), 1);
    let checks = outputs(&journal, "canary-rollback", "prom::check");
    let last = checks.last().expect("recovery checks");
    assert_eq!(last["verdict"], "pass", "{last}");
    assert!(last["value"].as_f64().unwrap() < 0.05, "{last}");
    let summary = evidence(&journal, "canary-rollback", "canary rollback");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["recovered"], true);
    let breach = outputs(&journal, "canary-rollback", "prom::query");
    assert!(
        breach.first().is_some_and(|b| b["result"][0]["value"]
            .as_f64()
            .or_else(|| b["result"][0]["value"][1].as_str()?.parse().ok())
            .is_some_and(|v| v > 0.05)),
        "the canary's error rate at the breach is evidence: {breach:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_canary_behind_an_httproute_is_shifted_back_and_scaled_to_zero() {
    bad_canary_is_rolled_back(Mesh::HttpRoute).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_canary_behind_a_virtualservice_is_shifted_back_and_scaled_to_zero() {
    bad_canary_is_rolled_back(Mesh::VirtualService).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_canary_without_a_mesh_loses_its_replicas_to_the_primary() {
    bad_canary_is_rolled_back(Mesh::Replicas).await;
}

/// The weights the analysis checked at, interval by interval, and each decision.
fn intervals(journal: &Journal) -> Vec<(i64, String)> {
    evidence(journal, "canary-progressive", "canary interval ")
        .iter()
        .map(|e| {
            (
                e["weight"].as_i64().unwrap(),
                e["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_canary_is_stepped_up_through_its_gates_and_promoted() {
    let lp = Loop::start(Mesh::HttpRoute, &[]).await;
    lp.wait_traffic(CANARY).await;
    lp.progressive(Mesh::HttpRoute, json!({})).await;
    let journal = lp
        .finished("canary-progressive", Duration::from_secs(120))
        .await;
    let run = &journal.finished("canary-progressive")[0];
    assert_eq!(run.status(), Some("succeeded"), "{}", lp.context());

    let seen = intervals(&journal);
    let passed: Vec<i64> = seen
        .iter()
        .filter(|(_, d)| d == "pass")
        .map(|(w, _)| *w)
        .collect();
    assert_eq!(passed, vec![10, 50, 100], "intervals: {seen:?}");
    for e in evidence(&journal, "canary-progressive", "canary interval ") {
        for check in e["checks"].as_array().unwrap() {
            if check["verdict"] == "pass" {
                assert!(check["value"].as_f64().is_some(), "{check}");
                assert!(check["requests"].as_f64().unwrap() >= 20.0, "{check}");
            }
        }
    }
    // Promoted as Flagger does: the primary runs v2, takes every request; the canary is at 0.
    assert_eq!(lp.image(PRIMARY).await, V2);
    assert_eq!(
        lp.weights(Mesh::HttpRoute).await,
        vec![(PRIMARY.to_owned(), 100), (CANARY.to_owned(), 0)]
    );
    assert_eq!(lp.replicas(CANARY).await, 0);
    let history = lp
        .cluster
        .kubectl(&[
            "-n",
            NS,
            "rollout",
            "history",
            &format!("deployment/{PRIMARY}"),
        ])
        .await
        .ok("rollout history");
    assert_eq!(
        history
            .stdout
            .lines()
            .filter(|l| l
                .split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<u32>().is_ok()))
            .count(),
        2,
        "the promotion is the primary's second revision: {history}"
    );

    // The run console draws the analysis from its evidence (a real headless Chromium): one
    // point per interval at its weight, coloured by its decision, and where it ended.
    let browser = crate::harness::browser::Browser::start().await;
    let run_id = run.records[0]["run_id"].as_str().unwrap();
    browser
        .goto(&lp.serve.url(&format!("/ui#/runs/{run_id}")))
        .await;
    let drawn = wait_for(
        "the canary chart",
        Duration::from_secs(30),
        || lp.context(),
        || async {
            let drawn = browser
                .exec(
                    "const c = document.querySelector('#canary-chart'); if (!c) return null; \
                     return {points: [...c.querySelectorAll('circle.interval')].map((p) => \
                       [Number(p.dataset.weight), p.dataset.decision]), \
                     outcome: c.querySelector('text.outcome')?.textContent, \
                     gates: c.querySelectorAll('polyline.gate').length}",
                    json!([]),
                )
                .await;
            (!drawn.is_null()).then_some(drawn)
        },
    )
    .await;
    let points: Vec<(i64, String)> = drawn["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(points, seen, "one point per interval, as journaled");
    assert_eq!(drawn["outcome"], "100% promoted", "{drawn}");
    assert_eq!(drawn["gates"], 2, "error rate and p99: {drawn}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_without_traffic_is_held_never_promoted() {
    let lp = Loop::start(
        Mesh::HttpRoute,
        &["-n ml-serving annotate httproute recommender kubesim.io/rps=0 --overwrite"],
    )
    .await;
    lp.progressive(
        Mesh::HttpRoute,
        json!({"interval": "2s", "inconclusive_limit": 3}),
    )
    .await;
    let journal = lp
        .finished("canary-progressive", Duration::from_secs(60))
        .await;
    let seen = intervals(&journal);
    assert_eq!(
        seen,
        vec![
            (10, "inconclusive".to_owned()),
            (10, "inconclusive".to_owned()),
            (10, "inconclusive".to_owned())
        ],
        "{}",
        lp.context()
    );
    let summary = evidence(&journal, "canary-progressive", "canary");
    let last = summary.last().unwrap();
    assert_eq!(last["outcome"], "halted", "{last}");
    assert_eq!(lp.image(PRIMARY).await, V1, "never promoted");
    assert_eq!(
        lp.weights(Mesh::HttpRoute).await,
        vec![(PRIMARY.to_owned(), 90), (CANARY.to_owned(), 10)],
        "held at its weight"
    );
}

/// PUTs kubesim saw on the HTTPRoute.
fn route_writes(cluster: &Cluster) -> usize {
    cluster
        .sim
        .sim()
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/httproutes/recommender"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_mid_canary_resumes_at_the_same_weight_without_shifting_twice() {
    let mut lp = Loop::start(Mesh::HttpRoute, &[]).await;
    lp.wait_traffic(CANARY).await;
    lp.progressive(Mesh::HttpRoute, json!({"interval": "4s"}))
        .await;
    // Killed (SIGKILL) while the analysis waits at 50%.
    lp.serve
        .wait_journal("the shift to 50%", Duration::from_secs(60), |j| {
            outputs(j, "canary-progressive", "traffic::shift")
                .iter()
                .any(|o| o["weights"][CANARY] == 50)
        })
        .await;
    let writes_before = route_writes(&lp.cluster);
    assert_eq!(writes_before, 1, "10% was already set; 50% is one write");
    lp.serve.restart().await;
    let journal = lp
        .finished("canary-progressive", Duration::from_secs(120))
        .await;
    let run = &journal.finished("canary-progressive")[0];
    assert_eq!(run.status(), Some("succeeded"), "{}", lp.context());
    assert_eq!(
        run.records
            .iter()
            .filter(|r| r["body"]["type"] == "run_resumed")
            .count(),
        1,
        "the run was resumed once after the kill"
    );
    // 50% (before the kill), 100%, and back to the primary after the promotion: three writes.
    assert_eq!(route_writes(&lp.cluster), 3, "{}", lp.context());
    let passed: Vec<i64> = intervals(&journal)
        .iter()
        .filter(|(_, d)| d == "pass")
        .map(|(w, _)| *w)
        .collect();
    assert_eq!(passed, vec![10, 50, 100]);
    assert_eq!(lp.image(PRIMARY).await, V2);
}
