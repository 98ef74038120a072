//! Test harness: a kubesim on a random loopback port, a kube-rs client for it, the real
//! kubectl pointed at it (fresh `KUBECACHEDIR` per call), and an `ActionContext` that
//! records progress lines.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use firebreak_connector::{ActionContext, ActionError, Connector, Effect, Intent};
use firebreak_kubernetes::KubernetesConnector;
use serde_json::{Value, json};

/// A running kubesim plus everything a test needs to talk to it.
pub struct Cluster {
    /// The simulator (dropping it stops the server).
    pub sim: kubesim::SimHandle,
    pub kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    pub client: kube::Client,
    pub k8s: KubernetesConnector,
}

impl Cluster {
    pub async fn start() -> Result<Self> {
        Self::start_with(kubesim::SimConfig::default()).await
    }

    pub async fn start_with(config: kubesim::SimConfig) -> Result<Self> {
        let sim = kubesim::Sim::start(config)
            .await
            .context("starting kubesim")?;
        let url = sim.url().to_string();
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig)?;
        let config = kube::Config::new(url.parse().context("kubesim url")?);
        let client = kube::Client::try_from(config).context("building kube client")?;
        Ok(Self {
            sim,
            kubeconfig,
            dir,
            k8s: KubernetesConnector::new(client.clone()),
            client,
        })
    }

    /// Runs the real kubectl against the simulator with a fresh cache dir; returns stdout,
    /// or fails with stderr. Bounded by 60 s.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_raw(args).await?;
        if !out.0 {
            bail!("kubectl {} failed: {}", args.join(" "), out.2);
        }
        Ok(out.1)
    }

    /// kubectl returning (success, stdout, stderr).
    pub async fn kubectl_raw(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let cache = tempfile::tempdir_in(self.dir.path())?;
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", cache.path())
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .with_context(|| format!("kubectl {} did not finish within 60s", args.join(" ")))?
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Calls a `k8s::` action as the runtime would: an observing action once; a mutating one
    /// planned, then (unless the run is a dry run, which answers the intent) applied.
    pub async fn call(&self, cx: &Cx, action: &str, args: Value) -> Result<Value, ActionError> {
        let Value::Object(map) = args else {
            panic!("args must be an object")
        };
        let effect = self
            .k8s
            .actions()
            .into_iter()
            .find(|a| a.name == action)
            .map(|a| a.effect);
        if effect != Some(Effect::Mutate) {
            return self.k8s.call(action, map, &cx.action).await;
        }
        let intent = self.k8s.plan(action, map.clone(), &cx.action).await?;
        if cx.dry_run {
            return Ok(intent.dry_run_answer());
        }
        self.k8s.apply(action, map, &intent, &cx.action).await
    }

    /// A mutating action's first half alone.
    pub async fn plan(&self, cx: &Cx, action: &str, args: Value) -> Result<Intent, ActionError> {
        let Value::Object(map) = args else {
            panic!("args must be an object")
        };
        self.k8s.plan(action, map, &cx.action).await
    }

    /// A mutating action's second half alone, for a journaled `intent`.
    pub async fn apply(
        &self,
        cx: &Cx,
        action: &str,
        args: Value,
        intent: &Intent,
    ) -> Result<Value, ActionError> {
        let Value::Object(map) = args else {
            panic!("args must be an object")
        };
        self.k8s.apply(action, map, intent, &cx.action).await
    }

    /// Creates a namespace, a Deployment `web` (3 replicas, image `image`, label app=web)
    /// and a Service `web` selecting app=web, then waits for the rollout.
    pub async fn deploy_web(&self, ns: &str, image: &str) -> Result<()> {
        self.create_namespace(ns).await?;
        let deploy: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns, "labels": {"app": "web"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}
        }))?;
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(self.client.clone(), ns);
        api.create(&Default::default(), &deploy)
            .await
            .context("creating deployment web")?;
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))?;
        let api: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(self.client.clone(), ns);
        api.create(&Default::default(), &svc)
            .await
            .context("creating service web")?;
        self.rollout_status(ns).await
    }

    pub async fn create_namespace(&self, ns: &str) -> Result<()> {
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(self.client.clone());
        let obj: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )?;
        api.create(&Default::default(), &obj)
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
        Ok(())
    }

    /// `kubectl rollout status deploy/web` (bounded).
    pub async fn rollout_status(&self, ns: &str) -> Result<()> {
        self.kubectl(&["rollout", "status", "deploy/web", "-n", ns, "--timeout=60s"])
            .await?;
        Ok(())
    }
}

/// What the runtime knows about a call: the connector's context, and whether the run is dry.
pub struct Cx {
    pub action: ActionContext,
    pub dry_run: bool,
}

/// A context for run `run-1` allowed in every namespace, recording progress lines.
pub fn context(dry_run: bool) -> (Cx, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let action = ActionContext {
        run_id: "run-1".into(),
        runbook: "test".into(),
        team: "team-a".into(),
        namespaces: vec!["*".into()],
        progress: Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_owned())),
    };
    (Cx { action, dry_run }, lines)
}
