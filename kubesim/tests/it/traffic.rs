//! Traffic: an HTTPRoute set up and reweighted with the real kubectl gets the status a gateway
//! controller writes, and kubesim's `/metrics` counts the requests as the route splits them,
//! with each version's error rate (Istio's and the application's series).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::Kube;

/// Two Deployments (`web-v1` healthy, `web-v2` failing half its requests) behind Services of
/// their own, an HTTPRoute at `v1`/`v2` weights carrying 200 requests a second, and a
/// VirtualService over the same Services carrying 100.
fn manifests(v1: u32, v2: u32) -> String {
    let deploy = |version: &str, annotations: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-{version}\n  namespace: shop\n\
             spec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: web\n      version: {version}\n  \
             template:\n    metadata:\n      labels:\n        app: web\n        version: {version}\n      \
             annotations:\n{annotations}    spec:\n      containers:\n        - name: web\n          \
             image: registry.example.invalid/web:{version}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: web-{version}\n  namespace: shop\n\
             spec:\n  selector:\n    app: web\n    version: {version}\n  ports:\n    - port: 80\n      targetPort: 8080\n---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n{}{}\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web\n  namespace: shop\n  \
         annotations:\n    kubesim.io/rps: \"200\"\nspec:\n  parentRefs:\n    - name: public\n      namespace: infra\n  \
         rules:\n    - backendRefs:\n        - name: web-v1\n          port: 80\n          weight: {v1}\n        \
         - name: web-v2\n          port: 80\n          weight: {v2}\n",
        deploy("v1", "        kubesim.io/latency-ms: \"40\"\n"),
        deploy(
            "v2",
            "        kubesim.io/error-rate: \"0.5\"\n        kubesim.io/latency-ms: \"400\"\n"
        ),
    )
}

/// `istio_requests_total` by (workload, response code), from one scrape of `/metrics`.
async fn requests(kube: &Kube) -> BTreeMap<(String, String), f64> {
    let text = kube.kubectl(&["get", "--raw", "/metrics"]).await;
    let text = text.ok();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        let label = |name: &str| {
            let key = format!("{name}=\"");
            let start = line.find(&key).unwrap() + key.len();
            line[start..start + line[start..].find('"').unwrap()].to_owned()
        };
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        out.insert(
            (label("destination_workload"), label("response_code")),
            value,
        );
    }
    out
}

fn delta(
    a: &BTreeMap<(String, String), f64>,
    b: &BTreeMap<(String, String), f64>,
    workload: &str,
    code: &str,
) -> f64 {
    let key = (workload.to_owned(), code.to_owned());
    b.get(&key).copied().unwrap_or(0.0) - a.get(&key).copied().unwrap_or(0.0)
}

async fn route(kube: &Kube) -> Value {
    serde_json::from_str(
        kube.kubectl(&["-n", "shop", "get", "httproute", "web", "-o", "json"])
            .await
            .ok(),
    )
    .unwrap()
}

/// The route's conditions for its one parent, as `type=status(reason)@observedGeneration`.
fn conditions(route: &Value) -> Vec<String> {
    route["status"]["parents"][0]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    format!(
                        "{}={}({})@{}",
                        c["type"].as_str().unwrap(),
                        c["status"].as_str().unwrap(),
                        c["reason"].as_str().unwrap(),
                        c["observedGeneration"]
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_split_by_weights_is_served_and_counted_with_each_versions_errors() {
    let kube = Kube::start().await;
    kube.kubectl_stdin(&["apply", "-f", "-"], &manifests(90, 10))
        .await
        .ok();
    for d in ["web-v1", "web-v2"] {
        kube.kubectl(&[
            "-n",
            "shop",
            "rollout",
            "status",
            &format!("deploy/{d}"),
            "--timeout=60s",
        ])
        .await
        .ok();
    }
    let r = route(&kube).await;
    assert_eq!(r["metadata"]["generation"], 1);
    assert_eq!(
        conditions(&r),
        [
            "Accepted=True(Accepted)@1",
            "ResolvedRefs=True(ResolvedRefs)@1"
        ]
    );
    assert_eq!(
        r["status"]["parents"][0]["controllerName"],
        "kubesim.io/gateway-controller"
    );

    let before = requests(&kube).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = requests(&kube).await;
    let v1 = delta(&before, &after, "web-v1", "200") + delta(&before, &after, "web-v1", "500");
    let v2_ok = delta(&before, &after, "web-v2", "200");
    let v2_err = delta(&before, &after, "web-v2", "500");
    let v2 = v2_ok + v2_err;
    let share = v2 / (v1 + v2);
    assert!(
        (0.07..=0.13).contains(&share),
        "v2 got {share} of {v1} + {v2}"
    );
    assert_eq!(
        delta(&before, &after, "web-v1", "500"),
        0.0,
        "v1 is healthy"
    );
    let error_rate = v2_err / v2;
    assert!(
        (0.3..=0.7).contains(&error_rate),
        "v2 fails half: {v2_err}/{v2}"
    );

    // Reweighted with kubectl (a JSON patch, as kubectl sends to a custom resource): the
    // status follows the new generation and all traffic goes to v1.
    kube.kubectl(&[
        "-n",
        "shop",
        "patch",
        "httproute",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/0/weight","value":100},{"op":"replace","path":"/spec/rules/0/backendRefs/1/weight","value":0}]"#,
    ])
    .await
    .ok();
    let r = route(&kube).await;
    assert_eq!(r["metadata"]["generation"], 2);
    assert_eq!(
        conditions(&r),
        [
            "Accepted=True(Accepted)@2",
            "ResolvedRefs=True(ResolvedRefs)@2"
        ]
    );
    let before = requests(&kube).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = requests(&kube).await;
    assert_eq!(
        delta(&before, &after, "web-v2", "200") + delta(&before, &after, "web-v2", "500"),
        0.0,
        "nothing reaches v2 at weight 0"
    );
    assert!(delta(&before, &after, "web-v1", "200") > 100.0);

    // A backend that does not exist: ResolvedRefs False, BackendNotFound, naming it.
    kube.kubectl(&[
        "-n",
        "shop",
        "patch",
        "httproute",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/1/name","value":"web-v3"}]"#,
    ])
    .await
    .ok();
    let r = route(&kube).await;
    assert_eq!(
        conditions(&r),
        [
            "Accepted=True(Accepted)@3",
            "ResolvedRefs=False(BackendNotFound)@3"
        ]
    );
    assert!(
        r["status"]["parents"][0]["conditions"][1]["message"]
            .as_str()
            .unwrap()
            .contains("shop/web-v3")
    );

    // The application's own series, per pod, as Flagger's generic queries read them.
    let text = kube.kubectl(&["get", "--raw", "/metrics"]).await;
    let text = text.ok();
    assert!(
        text.lines().any(|l| l.starts_with(
            "http_request_duration_seconds_count{kubernetes_namespace=\"shop\",kubernetes_pod_name=\"web-v2-"
        ) && l.contains("status=\"500\"")),
        "{text}"
    );
    assert!(text.contains("istio_request_duration_milliseconds_bucket{reporter=\"destination\",destination_workload=\"web-v2\""));
}
