//! The real kubectl against kubesim: exit codes and the key output a real cluster gives.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Kube;

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: nginx:1.0
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
"#;

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs:
    - {name: web-stable, port: 80, weight: 90}
    - {name: web-canary, port: 80, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web, subset: stable}
      weight: 100
"#;

const EXTRAS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data: {a: "1", b: "2"}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
spec:
  podSelector: {}
---
apiVersion: v1
kind: ResourceQuota
metadata:
  name: quota
spec:
  hard: {pods: "10"}
---
apiVersion: v1
kind: Pod
metadata:
  name: solo
  labels: {app: solo}
spec:
  containers:
  - name: main
    image: busybox:1.36
"#;

async fn with_web() -> Kube {
    let k = Kube::start().await;
    let out = k.kubectl_stdin(&["apply", "-f", "-"], WEB).await;
    let stdout = out.ok();
    assert!(stdout.contains("deployment.apps/web created"), "{stdout}");
    assert!(stdout.contains("service/web created"), "{stdout}");
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_then_get_and_describe_every_resource() {
    let k = with_web().await;
    k.kubectl_stdin(&["apply", "-f", "-"], ROUTES).await.ok();
    k.kubectl_stdin(&["apply", "-f", "-"], EXTRAS).await.ok();

    let gen_replicas = k
        .kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation} {.spec.replicas} {.spec.strategy.type}",
        ])
        .await;
    assert_eq!(gen_replicas.ok(), "1 3 RollingUpdate");

    // Re-applying the same manifest changes nothing.
    let again = k.kubectl_stdin(&["apply", "-f", "-"], WEB).await;
    assert!(
        again.ok().contains("deployment.apps/web unchanged"),
        "{}",
        again.stdout
    );

    let table = k.kubectl(&["get", "deploy"]).await;
    let header = table
        .ok()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    let svc = k.kubectl(&["get", "svc", "web", "-o", "wide"]).await;
    assert!(svc.ok().contains("ClusterIP"), "{}", svc.stdout);
    assert!(
        svc.stdout.contains("80/TCP") && svc.stdout.contains("app=web"),
        "{}",
        svc.stdout
    );

    for kind in [
        "pods",
        "deployments",
        "replicasets",
        "services",
        "endpoints",
        "configmaps",
        "events",
        "nodes",
        "namespaces",
        "networkpolicies",
        "resourcequotas",
        "httproutes",
        "virtualservices",
        "events.v1.events.k8s.io",
        "virtualservices.v1beta1.networking.istio.io",
    ] {
        k.kubectl(&["get", kind]).await.ok();
    }
    for (kind, name) in [
        ("deployment", "web"),
        ("service", "web"),
        ("configmap", "settings"),
        ("networkpolicy", "deny-all"),
        ("resourcequota", "quota"),
        ("pod", "solo"),
        ("node", "kubesim-node-1"),
        ("namespace", "default"),
        ("httproute", "web"),
        ("virtualservice", "web"),
    ] {
        let out = k.kubectl(&["describe", kind, name]).await;
        assert!(
            out.ok().contains(name),
            "describe {kind} {name}: {}",
            out.stdout
        );
    }
    let cm = k.kubectl(&["get", "cm", "settings"]).await;
    assert!(
        cm.ok()
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("2")),
        "{}",
        cm.stdout
    );
    let np = k.kubectl(&["get", "netpol", "deny-all"]).await;
    assert!(np.ok().contains("<none>"), "{}", np.stdout);
    let nodes = k.kubectl(&["get", "nodes"]).await;
    assert!(
        nodes.ok().contains("kubesim-node-1") && nodes.stdout.contains("Ready"),
        "{}",
        nodes.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_annotate_and_all_three_patch_types() {
    let k = with_web().await;
    assert_eq!(
        k.kubectl(&["label", "deploy", "web", "tier=front"])
            .await
            .ok()
            .trim(),
        "deployment.apps/web labeled"
    );
    assert_eq!(
        k.kubectl(&["annotate", "deploy", "web", "note=hello"])
            .await
            .ok()
            .trim(),
        "deployment.apps/web annotated"
    );
    let selected = k
        .kubectl(&[
            "get",
            "deploy",
            "-l",
            "tier in (front),app!=api",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(selected.ok().trim(), "deployment.apps/web");
    let none = k
        .kubectl(&["get", "deploy", "-l", "!tier", "-o", "name"])
        .await;
    assert_eq!(none.ok().trim(), "");

    let strategic = k
        .kubectl(&[
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"nginx:2.0"}]}}}}"#,
        ])
        .await;
    assert_eq!(strategic.ok().trim(), "deployment.apps/web patched");
    let merge = k
        .kubectl(&[
            "patch",
            "deploy",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ])
        .await;
    assert_eq!(merge.ok().trim(), "deployment.apps/web patched");
    let json = k
        .kubectl(&[
            "patch",
            "deploy",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/minReadySeconds","value":5}]"#,
        ])
        .await;
    assert_eq!(json.ok().trim(), "deployment.apps/web patched");

    let got = k
        .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.replicas} {.spec.minReadySeconds} {.metadata.labels.tier} {.metadata.annotations.note} {.metadata.generation}"])
        .await;
    // Strategic merge kept the port; label does not bump generation, annotation and the
    // three spec patches do.
    assert_eq!(got.ok(), "nginx:2.0 80 2 5 front hello 5");

    let failing = k
        .kubectl(&[
            "patch",
            "deploy",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
        ])
        .await;
    assert!(
        failing.failed().contains("The request is invalid"),
        "{}",
        failing.stderr
    );
    let missing = k
        .kubectl(&["patch", "deploy", "nope", "--type=merge", "-p", "{}"])
        .await;
    assert!(
        missing
            .failed()
            .contains(r#"deployments.apps "nope" not found"#),
        "{}",
        missing.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_take_merge_and_json_patches_but_refuse_strategic() {
    let k = Kube::start().await;
    k.kubectl_stdin(&["apply", "-f", "-"], ROUTES).await.ok();
    let merge = k
        .kubectl(&["patch", "httproute", "web", "--type=merge", "-p", r#"{"spec":{"rules":[{"backendRefs":[{"name":"web-stable","port":80,"weight":50},{"name":"web-canary","port":80,"weight":50}]}]}}"#])
        .await;
    assert_eq!(
        merge.ok().trim(),
        "httproute.gateway.networking.k8s.io/web patched"
    );
    let weights = k
        .kubectl(&[
            "get",
            "httproute",
            "web",
            "-o",
            "jsonpath={.spec.rules[0].backendRefs[*].weight}",
        ])
        .await;
    assert_eq!(weights.ok(), "50 50");

    let strategic = k
        .kubectl(&[
            "patch",
            "httproute",
            "web",
            "-p",
            r#"{"spec":{"rules":[]}}"#,
        ])
        .await;
    assert_eq!(
        strategic.failed().trim(),
        "error: application/strategic-merge-patch+json is not supported by gateway.networking.k8s.io/v1, Kind=HTTPRoute: \
         the body of the request was in an unknown format - accepted media types include: \
         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    );

    let json = k
        .kubectl(&[
            "patch",
            "vs",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/http/0/route/0/weight","value":90}]"#,
        ])
        .await;
    assert_eq!(
        json.ok().trim(),
        "virtualservice.networking.istio.io/web patched"
    );
    let v1beta1 = k
        .kubectl(&[
            "get",
            "virtualservices.v1beta1.networking.istio.io",
            "web",
            "-o",
            "jsonpath={.apiVersion} {.spec.http[0].route[0].weight}",
        ])
        .await;
    assert_eq!(v1beta1.ok(), "networking.istio.io/v1beta1 90");
}

/// A ConfigMap manifest controlled by the Deployment `web` with `uid`.
fn owned(name: &str, uid: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences:\n  - apiVersion: apps/v1\n    kind: Deployment\n    name: web\n    uid: {uid}\n    controller: true\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collects_garbage_by_owner_references() {
    let k = with_web().await;
    let uid = k
        .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.metadata.uid}"])
        .await
        .ok()
        .to_string();
    k.kubectl_stdin(&["apply", "-f", "-"], &owned("owned", &uid))
        .await
        .ok();
    let deleted = k.kubectl(&["delete", "deploy", "web"]).await;
    assert_eq!(deleted.ok().trim(), r#"deployment.apps "web" deleted"#);
    let gone = k.kubectl(&["get", "cm", "owned"]).await;
    assert_eq!(
        gone.failed().trim(),
        r#"Error from server (NotFound): configmaps "owned" not found"#
    );

    // --cascade=orphan keeps dependents and strips the owner reference.
    k.kubectl_stdin(&["apply", "-f", "-"], WEB).await.ok();
    let uid = k
        .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.metadata.uid}"])
        .await
        .ok()
        .to_string();
    k.kubectl_stdin(&["apply", "-f", "-"], &owned("kept", &uid))
        .await
        .ok();
    k.kubectl(&["delete", "deploy", "web", "--cascade=orphan"])
        .await
        .ok();
    let refs = k
        .kubectl(&[
            "get",
            "cm",
            "kept",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ])
        .await;
    assert_eq!(refs.ok(), "");
    let svc_gone = k.kubectl(&["delete", "svc", "web"]).await;
    assert_eq!(svc_gone.ok().trim(), r#"service "web" deleted"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_sees_a_change() {
    let k = with_web().await;
    let mut watch = k.kubectl_spawn(&["get", "deploy", "web", "-w"]);
    watch
        .line_matching(
            |l| l.starts_with("web "),
            Duration::from_secs(30),
            "the initial row",
        )
        .await;
    k.kubectl(&["scale", "deploy", "web", "--replicas=1"])
        .await
        .ok();
    watch
        .line_matching(
            |l| l.starts_with("web") && l.contains("/1 "),
            Duration::from_secs(30),
            "the scaled row",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_and_uncordon_a_node() {
    let k = Kube::start().await;
    assert_eq!(
        k.kubectl(&["cordon", "kubesim-node-1"]).await.ok().trim(),
        "node/kubesim-node-1 cordoned"
    );
    let nodes = k.kubectl(&["get", "nodes"]).await;
    assert!(
        nodes.ok().contains("Ready,SchedulingDisabled"),
        "{}",
        nodes.stdout
    );
    assert_eq!(
        k.kubectl(&["cordon", "kubesim-node-1"]).await.ok().trim(),
        "node/kubesim-node-1 already cordoned"
    );
    assert_eq!(
        k.kubectl(&["uncordon", "kubesim-node-1"]).await.ok().trim(),
        "node/kubesim-node-1 uncordoned"
    );
    let flag = k
        .kubectl(&[
            "get",
            "node",
            "kubesim-node-1",
            "-o",
            "jsonpath={.spec.unschedulable}",
        ])
        .await;
    assert_eq!(flag.ok(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_stale_object_is_a_conflict() {
    let k = with_web().await;
    let old = k
        .kubectl(&["get", "deploy", "web", "-o", "yaml"])
        .await
        .ok()
        .to_string();
    k.kubectl(&["label", "deploy", "web", "bump=1"]).await.ok();
    let replaced = k.kubectl_stdin(&["replace", "-f", "-"], &old).await;
    assert_eq!(
        replaced.failed().trim(),
        "Error from server (Conflict): error when replacing \"STDIN\": Operation cannot be fulfilled on deployments.apps \"web\": \
         the object has been modified; please apply your changes to the latest version and try again"
    );
    // With the current resourceVersion a replace works (a ConfigMap: no controller writes it
    // between the read and the replace).
    k.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata: {a: \"1\"}\n",
    )
    .await
    .ok();
    let fresh = k
        .kubectl(&["get", "cm", "c", "-o", "yaml"])
        .await
        .ok()
        .replace("a: \"1\"", "a: \"2\"");
    assert_eq!(
        k.kubectl_stdin(&["replace", "-f", "-"], &fresh)
            .await
            .ok()
            .trim(),
        "configmap/c replaced"
    );
    let data = k
        .kubectl(&["get", "cm", "c", "-o", "jsonpath={.data.a}"])
        .await;
    assert_eq!(data.ok(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_rejected_with_field_causes() {
    let k = Kube::start().await;
    let bad = WEB
        .split("---")
        .next()
        .unwrap_or_default()
        .replace("replicas: 3", "replicas: -1")
        .replace(
            "    matchLabels: {app: web}",
            "    matchLabels: {app: other}",
        );
    let out = k.kubectl_stdin(&["apply", "-f", "-"], &bad).await;
    assert_eq!(
        out.failed().trim(),
        "The Deployment \"web\" is invalid: \n\
         * spec.replicas: Invalid value: -1: must be greater than or equal to 0\n\
         * spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`"
    );
    let no_selector = WEB
        .split("---")
        .next()
        .unwrap_or_default()
        .replace("  selector:\n    matchLabels: {app: web}\n", "");
    let out = k.kubectl_stdin(&["create", "-f", "-"], &no_selector).await;
    assert!(
        out.failed().contains("* spec.selector: Required value"),
        "{}",
        out.stderr
    );
    let bad_name = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n";
    let out = k.kubectl_stdin(&["apply", "-f", "-"], bad_name).await;
    assert!(
        out.failed().starts_with("The ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
        "{}",
        out.stderr
    );
    let missing = k.kubectl(&["get", "deploy", "nope"]).await;
    assert_eq!(
        missing.failed().trim(),
        r#"Error from server (NotFound): deployments.apps "nope" not found"#
    );
    let bad_selector = k.kubectl(&["get", "pods", "-l", "app in web"]).await;
    assert!(
        bad_selector
            .failed()
            .contains("unable to parse requirement"),
        "{}",
        bad_selector.stderr
    );
}

/// Whether every value `sent` sets is in `stored` (which also has the server's defaults).
fn contains(stored: &Value, sent: &Value, at: &str, diffs: &mut Vec<String>) {
    match (stored, sent) {
        (Value::Object(stored), Value::Object(sent)) => {
            for (k, v) in sent {
                contains(
                    stored.get(k).unwrap_or(&Value::Null),
                    v,
                    &format!("{at}.{k}"),
                    diffs,
                );
            }
        }
        (Value::Array(stored), Value::Array(sent)) if stored.len() == sent.len() => {
            for (i, (a, b)) in stored.iter().zip(sent).enumerate() {
                contains(a, b, &format!("{at}[{i}]"), diffs);
            }
        }
        // What Go's JSON writes for an unset time or an empty struct carries nothing.
        (_, Value::Null) => {}
        (_, Value::Object(sent)) if sent.is_empty() => {}
        (stored, sent) if stored == sent => {}
        (stored, sent) => diffs.push(format!("{at}: sent {sent}, stored {stored}")),
    }
}

/// kubectl 1.32's imperative commands send protobuf (KUBESIM-NOTES §3). Each one creates what
/// the same command prints with `--dry-run=client -o json`: every field it sets is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imperative_commands_send_protobuf_and_store_what_they_mean() {
    let k = Kube::start().await;
    let ns = ["-n", "team-a"];
    let commands: Vec<Vec<&str>> = vec![
        vec!["create", "namespace", "team-a"],
        vec![
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--replicas=2",
            "--port=8080",
        ],
        vec![
            "create",
            "deployment",
            "idle",
            "--image=nginx:1.27",
            "--replicas=0",
        ],
        vec![
            "create",
            "configmap",
            "cm",
            "--from-literal=a=b",
            "--from-literal=empty=",
        ],
        vec![
            "create",
            "secret",
            "generic",
            "s",
            "--from-literal=password=hunter2",
        ],
        vec!["create", "serviceaccount", "bot"],
        vec!["create", "service", "clusterip", "api", "--tcp=80:8080"],
        vec![
            "run",
            "one",
            "--image=busybox",
            "--env=A=1",
            "--labels=x=y",
            "--",
            "sleep",
            "10",
        ],
        vec![
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods,deployments.apps",
        ],
        vec![
            "create",
            "rolebinding",
            "bot-reads",
            "--role=reader",
            "--serviceaccount=team-a:bot",
        ],
        vec![
            "create",
            "clusterrole",
            "nodes",
            "--verb=get",
            "--resource=nodes",
        ],
        vec![
            "create",
            "clusterrolebinding",
            "bob-nodes",
            "--clusterrole=nodes",
            "--user=bob",
        ],
        vec!["create", "quota", "q", "--hard=pods=10,requests.cpu=2"],
        vec![
            "create",
            "pdb",
            "web",
            "--selector=app=web",
            "--min-available=1",
        ],
        vec![
            "create",
            "pdb",
            "half",
            "--selector=app=web",
            "--max-unavailable=50%",
        ],
    ];
    for command in commands {
        // Flags go before a `--` (what follows it is the container's command).
        let split = command
            .iter()
            .position(|a| *a == "--")
            .unwrap_or(command.len());
        let (head, tail) = command.split_at(split);
        let args = [head, &ns, tail].concat();
        let preview = k
            .kubectl(&[head, &ns, &["--dry-run=client", "-o", "json"], tail].concat())
            .await;
        let mut sent: Value = serde_json::from_str(preview.ok()).unwrap();
        // The server owns status; a create's status is dropped.
        sent.as_object_mut().unwrap().remove("status");
        let created = k.kubectl(&args).await;
        created.ok();
        let kind = sent["kind"].as_str().unwrap().to_ascii_lowercase();
        let name = sent["metadata"]["name"].as_str().unwrap();
        let stored = k
            .kubectl(&[&["get", &kind, name, "-o", "json"][..], &ns].concat())
            .await;
        let stored: Value = serde_json::from_str(stored.ok()).unwrap();
        let mut diffs = Vec::new();
        contains(&stored, &sent, "", &mut diffs);
        assert!(
            diffs.is_empty(),
            "kubectl {}: {diffs:#?}",
            command.join(" ")
        );
    }
    // The Deployment's controller acts on what was decoded.
    let replicas = k
        .kubectl(&[
            "get",
            "deploy",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.items[*].spec.replicas}",
        ])
        .await;
    assert_eq!(replicas.ok().trim(), "0 2");
    // Access reviews come as protobuf too.
    let can = k
        .kubectl(&[
            "auth",
            "can-i",
            "list",
            "pods",
            "-n",
            "team-a",
            "--as=system:serviceaccount:team-a:bot",
        ])
        .await;
    assert_eq!(can.ok().trim(), "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_creates_then_updates() {
    let k = Kube::start().await;
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: q\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  policyTypes: [Ingress]\n";
    assert_eq!(
        k.kubectl_stdin(&["apply", "--server-side", "-f", "-"], np)
            .await
            .ok()
            .trim(),
        "networkpolicy.networking.k8s.io/q serverside-applied"
    );
    let changed = np.replace("app: web", "app: api");
    k.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &changed)
        .await
        .ok();
    let sel = k
        .kubectl(&[
            "get",
            "netpol",
            "q",
            "-o",
            "jsonpath={.spec.podSelector.matchLabels.app} {.metadata.generation}",
        ])
        .await;
    assert_eq!(sel.ok(), "api 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_events_are_served() {
    let k = Kube::start().await;
    k.kubectl_stdin(&["apply", "-f", "-"], EXTRAS).await.ok();
    let all = k.kubectl(&["logs", "solo"]).await;
    let lines = all.ok().lines().count();
    assert!(lines >= 1, "{}", all.stdout);
    let tail = k.kubectl(&["logs", "solo", "--tail=1"]).await;
    assert_eq!(tail.ok().lines().count(), 1);
    let wrong = k.kubectl(&["logs", "solo", "-c", "nope"]).await;
    assert!(
        wrong
            .failed()
            .contains("container nope is not valid for pod solo"),
        "{}",
        wrong.stderr
    );

    let uid = k
        .kubectl(&["get", "pod", "solo", "-o", "jsonpath={.metadata.uid}"])
        .await
        .ok()
        .to_string();
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: solo.1\ninvolvedObject:\n  apiVersion: v1\n  kind: Pod\n  name: solo\n  namespace: default\n  uid: {uid}\nreason: Drill\nmessage: practice event\ntype: Warning\nsource:\n  component: firebreak\ncount: 1\nfirstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\n"
    );
    k.kubectl_stdin(&["apply", "-f", "-"], &event).await.ok();
    let describe = k.kubectl(&["describe", "pod", "solo"]).await;
    assert!(
        describe.ok().contains("practice event"),
        "{}",
        describe.stdout
    );
    let events = k
        .kubectl(&["get", "events", "--field-selector", "reason=Drill"])
        .await;
    assert!(
        events.ok().contains("pod/solo") && events.stdout.contains("Warning"),
        "{}",
        events.stdout
    );
    let note = k
        .kubectl(&[
            "get",
            "events.v1.events.k8s.io",
            "solo.1",
            "-o",
            "jsonpath={.note} {.regarding.name}",
        ])
        .await;
    assert_eq!(note.ok(), "practice event solo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_aggregated_for_kubectl_and_legacy_for_plain_json() {
    let k = with_web().await;
    let before = k.sim().requests().len();
    let out = k.kubectl(&["get", "deploy", "-o", "name"]).await;
    assert_eq!(out.ok().trim(), "deployment.apps/web");
    let sent: Vec<_> = k.sim().requests().into_iter().skip(before).collect();
    assert!(
        sent.iter()
            .any(|r| r.path == "/apis" && r.accept.contains("v=v2;as=APIGroupDiscoveryList")),
        "{sent:?}"
    );
    assert!(
        !sent
            .iter()
            .any(|r| r.path == "/apis/apps/v1" || r.path == "/api/v1"),
        "no per-group discovery needed: {sent:?}"
    );

    let client = k.client();
    let groups: serde_json::Value = client
        .request(
            http::Request::get("/apis")
                .header("accept", "application/json")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(groups["kind"], "APIGroupList");
    let core: serde_json::Value = client
        .request(http::Request::get("/api").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(core["kind"], "APIVersions");
    let list: serde_json::Value = client
        .request(http::Request::get("/api/v1").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert!(
        list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods/log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_27_and_1_33_work_too() {
    let k = with_web().await;
    for (server, client) in [("v1.27.3", "v1.27."), ("v1.33.0", "v1.33.")] {
        k.admin("/_sim/version", serde_json::json!({"gitVersion": server}))
            .await;
        let v = k.kubectl(&["version", "-o", "json"]).await;
        assert!(
            v.ok().contains(&format!("\"gitVersion\": \"{client}")),
            "{}",
            v.stdout
        );
        let got = k
            .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .await;
        assert_eq!(got.ok(), "3", "kubectl for {server}");
        let patched = k
            .kubectl(&[
                "patch",
                "deploy",
                "web",
                "--type=merge",
                "-p",
                &format!(
                    r#"{{"metadata":{{"labels":{{"seen-by":"{}"}}}}}}"#,
                    server.replace('.', "-")
                ),
            ])
            .await;
        assert_eq!(
            patched.ok().trim(),
            "deployment.apps/web patched",
            "kubectl for {server}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_version_picks_the_dispatched_kubectl() {
    let k = Kube::start().await;
    k.admin(
        "/_sim/version",
        serde_json::json!({"gitVersion": "v1.30.5"}),
    )
    .await;
    let out = k.kubectl(&["version", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(out.ok()).expect("kubectl version prints JSON");
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.30.5");
    assert!(
        v["clientVersion"]["gitVersion"]
            .as_str()
            .is_some_and(|c| c.starts_with("v1.30.")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_evicts_pods_and_they_wait_for_a_schedulable_node() {
    let k = with_web().await;
    let status = k
        .kubectl(&["rollout", "status", "deploy/web", "--timeout=30s"])
        .await;
    assert!(
        status.ok().contains("successfully rolled out"),
        "{}",
        status.stdout
    );
    let before = k
        .kubectl(&["get", "pods", "-l", "app=web", "-o", "name"])
        .await
        .ok()
        .to_string();
    let drained = k
        .kubectl(&[
            "drain",
            "kubesim-node-1",
            "--ignore-daemonsets",
            "--timeout=30s",
        ])
        .await;
    let out = drained.ok();
    assert!(
        out.contains("node/kubesim-node-1 cordoned")
            && out.trim_end().ends_with("node/kubesim-node-1 drained"),
        "{out}"
    );
    for pod in before.lines() {
        assert!(
            out.contains(&format!("{pod} evicted")),
            "{pod} evicted: {out}"
        );
    }
    let phases = k
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ])
        .await;
    assert_eq!(
        phases.ok(),
        "Pending Pending Pending",
        "replacements cannot be scheduled on a cordoned node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_lines_as_the_clock_moves() {
    let k = with_web().await;
    k.kubectl(&["rollout", "status", "deploy/web", "--timeout=30s"])
        .await
        .ok();
    let pod = k
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .await
        .ok()
        .to_string();
    let mut follow = k.kubectl_spawn(&["logs", "-f", &pod, "--tail=1"]);
    let first = follow
        .line_matching(|_| true, Duration::from_secs(30), "the last line so far")
        .await;
    k.admin("/_sim/clock", serde_json::json!({"advanceSeconds": 30}))
        .await;
    let next = follow
        .line_matching(
            |l| l != first,
            Duration::from_secs(30),
            "a line written after the clock moved",
        )
        .await;
    let stamp = |l: &str| l.split_whitespace().next().unwrap_or_default().to_string();
    assert!(stamp(&next) > stamp(&first), "{first:?} then {next:?}");
}

/// Polls `kubectl args` until its stdout satisfies `pred` (bounded), returning the last output.
async fn eventually(k: &Kube, args: &[&str], pred: impl Fn(&str) -> bool, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = k.kubectl(args).await;
        if out.code == 0 && pred(&out.stdout) {
            return out.stdout;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "waited 30s for {what}; last output: {:?} {:?}",
                out.stdout, out.stderr
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_drive_node_readiness_and_image_faults() {
    let k = with_web().await;
    k.admin(
        "/_sim/nodes/kubesim-node-1/ready",
        serde_json::json!({"ready": false}),
    )
    .await;
    eventually(
        &k,
        &["get", "nodes"],
        |o| o.contains("NotReady"),
        "the node to turn NotReady",
    )
    .await;
    k.admin(
        "/_sim/nodes/kubesim-node-1/ready",
        serde_json::json!({"ready": true}),
    )
    .await;
    eventually(
        &k,
        &["get", "nodes"],
        |o| o.contains(" Ready ") && !o.contains("NotReady"),
        "the node to be Ready again",
    )
    .await;

    let state = k
        .admin(
            "/_sim/faults",
            serde_json::json!({"image": "nginx:9.9", "fault": "never-ready"}),
        )
        .await;
    assert!(state["imageFaults"]["nginx:9.9"].is_string(), "{state}");
    k.kubectl(&["set", "image", "deploy/web", "app=nginx:9.9"])
        .await
        .ok();
    eventually(
        &k,
        &["get", "pods", "-l", "app=web"],
        |o| o.contains("ErrImagePull") || o.contains("ImagePullBackOff"),
        "a pod of the faulty image failing to pull",
    )
    .await;
    let state = k
        .admin(
            "/_sim/config",
            serde_json::json!({"podReadyDelayMs": 50, "podStartDelayMs": 0}),
        )
        .await;
    assert_eq!(state["podReadyDelayMs"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_conflicts_with_another_manager_unless_forced() {
    let k = with_web().await;
    let deploy = WEB.split("---").next().unwrap_or_default();
    // Same values as the client-side apply: no conflict, kubectl takes co-ownership.
    let same = k
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], deploy)
        .await;
    assert_eq!(same.ok().trim(), "deployment.apps/web serverside-applied");
    let changed = deploy.replace("replicas: 3", "replicas: 4");
    let conflict = k
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], &changed)
        .await;
    assert!(
        conflict.failed().contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        ),
        "{}",
        conflict.stderr
    );
    let replicas = k
        .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
        .await;
    assert_eq!(replicas.ok(), "3", "a refused apply changes nothing");
    let forced = k
        .kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &changed,
        )
        .await;
    assert_eq!(forced.ok().trim(), "deployment.apps/web serverside-applied");
    let managed = k
        .kubectl(&[
            "get",
            "deploy",
            "web",
            "--show-managed-fields",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.managedFields[*].manager}",
        ])
        .await;
    assert_eq!(
        managed.ok(),
        "4 kubectl-client-side-apply kubectl-last-applied kubectl"
    );
    // Managed fields stay hidden by default, as on a real cluster.
    let yaml = k.kubectl(&["get", "deploy", "web", "-o", "yaml"]).await;
    assert!(!yaml.ok().contains("managedFields"), "{}", yaml.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_by_strict_field_validation() {
    let k = Kube::start().await;
    let typo = WEB
        .split("---")
        .next()
        .unwrap_or_default()
        .replace("replicas: 3", "replicaz: 3");
    let out = k.kubectl_stdin(&["apply", "-f", "-"], &typo).await;
    assert_eq!(
        out.failed().trim(),
        "Error from server (BadRequest): error when creating \"STDIN\": Deployment in version \"v1\" cannot be handled as a Deployment: \
         strict decoding error: unknown field \"spec.replicaz\""
    );
    let missing = k.kubectl(&["get", "deploy", "web"]).await;
    assert!(
        missing.failed().contains("not found"),
        "nothing was created: {}",
        missing.stderr
    );
    // With `--validate=false` (fieldValidation=Ignore) the create goes through.
    let lax = k
        .kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &typo)
        .await;
    assert_eq!(lax.ok().trim(), "deployment.apps/web created");
}

/// kubectl 1.27 and 1.28 read `/openapi/v2` (as protobuf) before `apply`, `create -f` and
/// `diff`; without it they fail. Each supported client applies, re-applies, changes, diffs
/// and gets the server's strict field validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_create_and_diff_work_from_kubectl_1_27_to_1_32() {
    let k = Kube::start().await;
    for server in ["v1.27.3", "v1.28.15", "v1.32.4"] {
        k.admin("/_sim/version", serde_json::json!({"gitVersion": server}))
            .await;
        let name = format!("web-{}", &server[3..5]);
        let manifest = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers: [{{name: app, image: nginx}}]\n"
        );
        let created = k.kubectl_stdin(&["apply", "-f", "-"], &manifest).await;
        assert_eq!(
            created.ok().trim(),
            format!("deployment.apps/{name} created"),
            "{server}"
        );
        let again = k.kubectl_stdin(&["apply", "-f", "-"], &manifest).await;
        assert_eq!(
            again.ok().trim(),
            format!("deployment.apps/{name} unchanged"),
            "{server}"
        );
        let scaled = manifest.replace("replicas: 1", "replicas: 2");
        let diff = k.kubectl_stdin(&["diff", "-f", "-"], &scaled).await;
        assert_eq!(
            diff.code, 1,
            "{server}: diff finds the change: {}",
            diff.stderr
        );
        assert!(
            diff.stdout.contains("+  replicas: 2"),
            "{server}: {}",
            diff.stdout
        );
        let changed = k.kubectl_stdin(&["apply", "-f", "-"], &scaled).await;
        assert_eq!(
            changed.ok().trim(),
            format!("deployment.apps/{name} configured"),
            "{server}"
        );
        let replicas = k
            .kubectl(&["get", "deploy", &name, "-o", "jsonpath={.spec.replicas}"])
            .await;
        assert_eq!(replicas.ok(), "2", "{server}");
        // The server validates fields (the client saw `fieldValidation` in the document).
        let bogus = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\nbogus: 1\n";
        let refused = k.kubectl_stdin(&["create", "-f", "-"], bogus).await;
        assert!(
            refused
                .failed()
                .contains(r#"strict decoding error: unknown field "bogus""#),
            "{server}: {}",
            refused.stderr
        );
    }
}
