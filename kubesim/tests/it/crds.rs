//! CustomResourceDefinitions with the real kubectl: the bundled Gateway API and Istio CRDs and
//! their printer columns, a brand-new CRD served (discovery, Table, scale) and deleted with its
//! objects, and a simulator started without the bundled CRDs.

use kubesim::SimConfig;

use crate::harness::Kube;

/// A namespaced Widget kind with a printer column and the status and scale subresources.
const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names:
    kind: Widget
    plural: widgets
    shortNames: [wd]
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - name: Color
      type: string
      jsonPath: .spec.color
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
"#;

const WIDGET: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata:
  name: red
spec:
  color: red
  replicas: 1
"#;

/// The whitespace-separated words of line `n` of a `kubectl get` table.
fn words(table: &str, n: usize) -> Vec<String> {
    table
        .lines()
        .nth(n)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_crds_are_listed_and_their_kinds_print_their_columns() {
    let k = Kube::start().await;
    let crds = k.kubectl(&["get", "crd"]).await;
    let out = crds.ok();
    assert_eq!(words(out, 0), ["NAME", "CREATED", "AT"]);
    assert!(
        out.contains("httproutes.gateway.networking.k8s.io")
            && out.contains("virtualservices.networking.istio.io"),
        "{out}"
    );
    let established = k
        .kubectl(&[
            "get",
            "crd",
            "httproutes.gateway.networking.k8s.io",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Established")].status} {.status.acceptedNames.kind}"#,
        ])
        .await;
    assert_eq!(established.ok(), "True HTTPRoute");

    k.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web\nspec:\n  \
         hostnames: [web.example.com]\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web\nspec:\n  \
         hosts: [web]\n  gateways: [mesh]\n  http:\n  - route:\n    - destination: {host: web}\n",
    )
    .await
    .ok();
    let routes = k.kubectl(&["get", "httproutes"]).await;
    let out = routes.ok();
    assert_eq!(words(out, 0), ["NAME", "HOSTNAMES", "AGE"]);
    assert_eq!(words(out, 1)[..2], ["web", r#"["web.example.com"]"#]);
    let vs = k.kubectl(&["get", "vs"]).await;
    let out = vs.ok();
    assert_eq!(words(out, 0), ["NAME", "GATEWAYS", "HOSTS", "AGE"]);
    assert_eq!(words(out, 1)[..3], ["web", r#"["mesh"]"#, r#"["web"]"#]);
    // Stored once, served in every version.
    let v1beta1 = k
        .kubectl(&[
            "get",
            "virtualservices.v1beta1.networking.istio.io",
            "web",
            "-o",
            "jsonpath={.apiVersion} {.spec.hosts[0]}",
        ])
        .await;
    assert_eq!(v1beta1.ok(), "networking.istio.io/v1beta1 web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_crd_is_served_until_deleted_and_takes_its_objects_along() {
    let k = Kube::start().await;
    let created = k.kubectl_stdin(&["apply", "-f", "-"], WIDGET_CRD).await;
    assert_eq!(
        created.ok().trim(),
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
    );
    let applied = k.kubectl_stdin(&["apply", "-f", "-"], WIDGET).await;
    assert_eq!(applied.ok().trim(), "widget.example.com/red created");

    let table = k.kubectl(&["get", "widgets"]).await;
    let out = table.ok();
    assert_eq!(words(out, 0), ["NAME", "COLOR", "REPLICAS", "AGE"]);
    assert_eq!(words(out, 1)[..3], ["red", "red", "1"]);
    let resources = k
        .kubectl(&["api-resources", "--api-group=example.com"])
        .await;
    let out = resources.ok();
    assert_eq!(
        words(out, 1),
        ["widgets", "wd", "example.com/v1", "true", "Widget"],
        "{out}"
    );

    // The scale subresource reads and writes the CRD's paths.
    let scaled = k.kubectl(&["scale", "wd/red", "--replicas=3"]).await;
    assert_eq!(scaled.ok().trim(), "widget.example.com/red scaled");
    let replicas = k
        .kubectl(&[
            "get",
            "widget",
            "red",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}",
        ])
        .await;
    assert_eq!(replicas.ok(), "3 2");
    // Custom resources take no strategic merge patch.
    let strategic = k
        .kubectl(&[
            "patch",
            "widget",
            "red",
            "-p",
            r#"{"spec":{"color":"blue"}}"#,
        ])
        .await;
    assert!(
        strategic
            .failed()
            .contains("application/strategic-merge-patch+json is not supported"),
        "{}",
        strategic.stderr
    );

    let deleted = k.kubectl(&["delete", "crd", "widgets.example.com"]).await;
    assert!(deleted.ok().contains("deleted"), "{}", deleted.stdout);
    let gone = k.kubectl(&["get", "widgets"]).await;
    assert!(
        gone.failed()
            .contains(r#"the server doesn't have a resource type "widgets""#),
        "{}",
        gone.stderr
    );
    // A client with discovery cached from before gets the server's 404 for the path.
    let stale = http::Request::get("/apis/example.com/v1/namespaces/default/widgets")
        .body(Vec::new())
        .expect("request builds");
    match k.client().request::<serde_json::Value>(stale).await {
        Err(kube::Error::Api(s)) => assert_eq!(
            (s.code, s.message.as_str()),
            (404, "the server could not find the requested resource")
        ),
        other => panic!("expected a 404 Status, got {other:?}"),
    }
    assert!(
        k.sim()
            .get("example.com/v1", "Widget", Some("default"), "red")
            .is_none()
    );
    // Re-created, the kind is served again, empty: the objects went with the CRD.
    k.kubectl_stdin(&["apply", "-f", "-"], WIDGET_CRD)
        .await
        .ok();
    let empty = k.kubectl(&["get", "widgets", "-A"]).await;
    assert_eq!(empty.ok(), "");
    assert!(
        empty.stderr.contains("No resources found"),
        "{}",
        empty.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_crds_are_refused_with_their_fields() {
    let k = Kube::start().await;
    let bad = WIDGET_CRD
        .replace("name: widgets.example.com", "name: gadgets.example.com")
        .replace("scope: Namespaced", "scope: Global");
    let out = k.kubectl_stdin(&["apply", "-f", "-"], &bad).await;
    let err = out.failed();
    assert!(
        err.contains(r#"metadata.name: Invalid value: "gadgets.example.com": must be spec.names.plural+"."+spec.group"#)
            && err.contains(r#"spec.scope: Unsupported value: "Global": supported values: "Cluster", "Namespaced""#),
        "{err}"
    );
    let typo = WIDGET_CRD.replace("served: true", "servd: true");
    let out = k.kubectl_stdin(&["apply", "-f", "-"], &typo).await;
    assert!(
        out.failed()
            .contains(r#"unknown field "spec.versions[0].servd""#),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bundled_crds_routes_are_served_once_their_crd_is_applied() {
    let k = Kube::start_with(SimConfig {
        bundled_crds: false,
        ..SimConfig::default()
    })
    .await;
    let missing = k.kubectl(&["get", "httproutes"]).await;
    assert!(
        missing
            .failed()
            .contains(r#"the server doesn't have a resource type "httproutes""#),
        "{}",
        missing.stderr
    );
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/gateway.networking.k8s.io_httproutes.yaml"
    );
    let applied = k.kubectl(&["apply", "-f", crd]).await;
    assert_eq!(
        applied.ok().trim(),
        "customresourcedefinition.apiextensions.k8s.io/httproutes.gateway.networking.k8s.io created"
    );
    let routes = k.kubectl(&["get", "httproutes"]).await;
    assert!(
        routes
            .stderr
            .contains("No resources found in default namespace."),
        "{}",
        routes.stderr
    );
    routes.ok();
}
