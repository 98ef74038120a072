//! The traffic connector against kubesim, checked with the real kubectl: HTTPRoute weights and
//! status, VirtualService weights (summing to 100), the replica-ratio canary behind a Service,
//! idempotent re-applies, a backend that does not resolve, a concurrent backend change.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use firebreak_connector::{ActionContext, ActionError, Connector, ErrorKind, Intent};
use firebreak_traffic::TrafficConnector;
use serde_json::{Value, json};

struct Cluster {
    sim: kubesim::SimHandle,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
    traffic: TrafficConnector,
    cx: ActionContext,
    progress: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    async fn start() -> Result<Cluster> {
        let sim = kubesim::Sim::start(kubesim::SimConfig::default()).await?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig)?;
        let config = kube::Config::new(sim.url().parse().context("url")?);
        let client = kube::Client::try_from(config)?;
        let progress = Arc::new(Mutex::new(Vec::new()));
        let sink = progress.clone();
        let cx = ActionContext {
            run_id: "run-1".into(),
            runbook: "test".into(),
            team: "t".into(),
            namespaces: vec!["shop".into()],
            progress: Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_owned())),
        };
        Ok(Cluster {
            sim,
            dir,
            kubeconfig,
            traffic: TrafficConnector::new(client),
            cx,
            progress,
        })
    }

    async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let cache = tempfile::tempdir_in(self.dir.path())?;
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .env("KUBECACHEDIR", cache.path())
                .env("HOME", self.dir.path())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await??;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.push("-o=json");
        Ok(serde_json::from_str(&self.kubectl(&all).await?)?)
    }

    fn map(args: Value) -> serde_json::Map<String, Value> {
        match args {
            Value::Object(m) => m,
            _ => panic!("args must be a map"),
        }
    }

    async fn split(&self, route: &str) -> Result<Value, ActionError> {
        self.traffic
            .call(
                "split",
                Self::map(json!({"ns": "shop", "route": route})),
                &self.cx,
            )
            .await
    }

    async fn plan(&self, action: &str, args: Value) -> Result<Intent, ActionError> {
        self.traffic.plan(action, Self::map(args), &self.cx).await
    }

    async fn apply(
        &self,
        action: &str,
        args: Value,
        intent: &Intent,
    ) -> Result<Value, ActionError> {
        self.traffic
            .apply(action, Self::map(args), intent, &self.cx)
            .await
    }

    /// Plan, then apply.
    async fn run(&self, action: &str, args: Value) -> Result<Value, ActionError> {
        let intent = self.plan(action, args.clone()).await?;
        self.apply(action, args, &intent).await
    }

    fn writes(&self) -> usize {
        self.sim
            .sim()
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count()
    }
}

/// Two Deployments (`web-v1`, `web-v2`, `replicas` each) with Services of their own, a shared
/// Service `web` selecting both, an HTTPRoute `web` and a VirtualService `web` over them.
fn manifests(replicas: u32) -> String {
    let deploy = |v: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-{v}\n  namespace: shop\n\
             spec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: web\n      version: {v}\n  \
             template:\n    metadata:\n      labels:\n        app: web\n        version: {v}\n    spec:\n      \
             containers:\n        - name: web\n          image: registry.example.invalid/web:{v}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: web-{v}\n  namespace: shop\nspec:\n  \
             selector:\n    app: web\n    version: {v}\n  ports:\n    - port: 80\n---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n{}{}\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector:\n    app: web\n  ports:\n    - port: 80\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web\n  namespace: shop\n\
         spec:\n  parentRefs:\n    - name: public\n  rules:\n    - backendRefs:\n        - name: web-v1\n          port: 80\n          weight: 100\n        \
         - name: web-v2\n          port: 80\n          weight: 0\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web-vs\n  namespace: shop\n\
         spec:\n  hosts: [web.shop.svc.cluster.local]\n  http:\n    - route:\n        - destination:\n            host: web-v1.shop.svc.cluster.local\n          weight: 100\n        \
         - destination:\n            host: web-v2.shop.svc.cluster.local\n          weight: 0\n",
        deploy("v1"),
        deploy("v2"),
    )
}

async fn setup(replicas: u32) -> Result<Cluster> {
    let c = Cluster::start().await?;
    c.sim.apply_yaml(&manifests(replicas))?;
    for d in ["web-v1", "web-v2"] {
        c.kubectl(&[
            "-n",
            "shop",
            "rollout",
            "status",
            &format!("deploy/{d}"),
            "--timeout=60s",
        ])
        .await?;
    }
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_is_shifted_checked_and_reset_and_a_replay_writes_nothing() -> Result<()> {
    let c = setup(1).await?;
    let split = c.split("httproute/web").await?;
    assert_eq!(split["weights"], json!({"web-v1": 100, "web-v2": 0}));
    assert_eq!(
        (split["accepted"].clone(), split["resolved"].clone()),
        (json!(true), json!(true))
    );

    let args =
        json!({"ns": "shop", "route": "httproute/web", "weights": {"web-v1": 9, "web-v2": 1}});
    let intent = c.plan("shift", args.clone()).await?;
    assert_eq!(
        intent.get("weights"),
        Some(&json!({"web-v1": 90, "web-v2": 10}))
    );
    assert_eq!(
        intent.summary,
        "shift HTTPRoute shop/web from web-v1=100 web-v2=0 to web-v1=90 web-v2=10"
    );
    let out = c.apply("shift", args.clone(), &intent).await?;
    assert_eq!(out["changed"], true);
    assert_eq!(out["accepted"], true);
    let route = c.json(&["-n", "shop", "get", "httproute", "web"]).await?;
    let weights: Vec<i64> = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_i64().unwrap())
        .collect();
    assert_eq!(weights, [90, 10], "kubectl sees the new weights");
    assert_eq!(route["metadata"]["generation"], 2);
    assert_eq!(
        route["status"]["parents"][0]["conditions"][0]["observedGeneration"], 2,
        "accepted at the new generation"
    );

    // A resume after the write applies the same intent: nothing is written again.
    let before = c.writes();
    let again = c.apply("shift", args, &intent).await?;
    assert_eq!(again["changed"], false);
    assert_eq!(c.writes(), before);

    let out = c
        .run(
            "reset",
            json!({"ns": "shop", "route": "web", "stable": "web-v1"}),
        )
        .await?;
    assert_eq!(out["weights"], json!({"web-v1": 100, "web-v2": 0}));
    assert_eq!(
        c.split("httproute/web").await?["weights"],
        json!({"web-v1": 100, "web-v2": 0})
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_shifts_are_refused_and_a_backend_that_does_not_resolve_fails() -> Result<()> {
    let c = setup(1).await?;
    let err = c
        .plan(
            "shift",
            json!({"ns": "shop", "route": "httproute/web", "weights": {"web-v9": 10}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(
        err.message.contains("no backend [\"web-v9\"]"),
        "{}",
        err.message
    );
    let err = c
        .plan(
            "shift",
            json!({"ns": "shop", "route": "httproute/nope", "weights": {"a": 1}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{}", err.message);

    // Someone points the route at a Service that does not exist; the shift that follows fails
    // naming it, instead of reporting traffic it cannot carry.
    c.kubectl(&[
        "-n",
        "shop",
        "patch",
        "httproute",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/1/name","value":"web-v3"}]"#,
    ])
    .await?;
    let err = c
        .run("shift", json!({"ns": "shop", "route": "httproute/web", "weights": {"web-v1": 50, "web-v3": 50}}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(
        err.message.contains("BackendNotFound") && err.message.contains("web-v3"),
        "{}",
        err.message
    );

    // The backends change between plan and apply: a conflict, their change stands.
    let intent = c
        .plan("shift", json!({"ns": "shop", "route": "httproute/web", "weights": {"web-v1": 80, "web-v3": 20}}))
        .await?;
    c.kubectl(&[
        "-n",
        "shop",
        "patch",
        "httproute",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/1/name","value":"web-v2"}]"#,
    ])
    .await?;
    let err = c
        .apply("shift", json!({"ns": "shop", "route": "httproute/web", "weights": {"web-v1": 80, "web-v3": 20}}), &intent)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{}", err.message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtualservice_gets_weights_that_sum_to_100() -> Result<()> {
    let c = setup(1).await?;
    let out = c
        .run(
            "shift",
            json!({"ns": "shop", "route": "vs/web-vs", "weights": {"web-v1": 2, "web-v2": 1}}),
        )
        .await?;
    assert_eq!(out["weights"], json!({"web-v1": 67, "web-v2": 33}));
    let vs = c
        .json(&["-n", "shop", "get", "virtualservice", "web-vs"])
        .await?;
    let weights: Vec<i64> = vs["spec"]["http"][0]["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["weight"].as_i64().unwrap())
        .collect();
    assert_eq!(weights, [67, 33]);
    assert_eq!(weights.iter().sum::<i64>(), 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_mesh_the_split_is_replicas_behind_one_service() -> Result<()> {
    let c = setup(5).await?;
    let split = c.split("service/web").await?;
    assert_eq!(split["weights"], json!({"web-v1": 50, "web-v2": 50}));
    let out = c
        .run(
            "shift",
            json!({"ns": "shop", "route": "service/web", "weights": {"web-v1": 90, "web-v2": 10}}),
        )
        .await?;
    assert_eq!(out["replicas"], json!({"web-v1": 9, "web-v2": 1}), "{out}");
    assert_eq!(out["weights_now"], json!({"web-v1": 90, "web-v2": 10}));
    for (d, ready) in [("web-v1", "9"), ("web-v2", "1")] {
        let got = c
            .kubectl(&[
                "-n",
                "shop",
                "get",
                "deploy",
                d,
                "-o=jsonpath={.status.readyReplicas}",
            ])
            .await?;
        assert_eq!(got, ready, "{d}");
    }
    let out = c
        .run(
            "reset",
            json!({"ns": "shop", "route": "service/web", "stable": "web-v1"}),
        )
        .await?;
    assert_eq!(out["replicas"], json!({"web-v1": 10, "web-v2": 0}));
    assert!(
        c.progress
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("waiting for replicas")),
        "progress while the pods come and go"
    );
    Ok(())
}
