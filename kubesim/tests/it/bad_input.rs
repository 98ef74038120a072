//! Every kind of bad request kubesim handles gets the apiserver's `Status` (code and reason),
//! checked over HTTP with kube-rs' raw client.

use serde_json::{Value, json};

use crate::harness::Kube;

/// Sends a request and returns the Status of the expected failure.
async fn fail(
    k: &Kube,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body.to_vec())
        .expect("request builds");
    match k.client().request::<Value>(req).await {
        Ok(v) => panic!("{method} {path} unexpectedly succeeded: {v}"),
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone(), s.message.clone()),
        Err(other) => panic!("{method} {path}: expected a Status, got {other}"),
    }
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const JSON: &str = "application/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_bad_request() {
    let k = Kube::start().await;
    let cm = |name: &str| {
        serde_json::to_vec(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}),
        )
        .unwrap()
    };
    k.sim()
        .apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n")
        .unwrap();

    let cases: Vec<(&str, String, &str, Vec<u8>, &str)> = vec![
        (
            "POST",
            CMS.into(),
            JSON,
            b"{not json".to_vec(),
            "error decoding JSON",
        ),
        (
            "POST",
            CMS.into(),
            JSON,
            serde_json::to_vec(
                &json!({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
            )
            .unwrap(),
            "does not match the expected API version",
        ),
        (
            "POST",
            CMS.into(),
            JSON,
            serde_json::to_vec(&json!({"kind": "Secret", "metadata": {"name": "x"}})).unwrap(),
            "does not match the expected kind",
        ),
        (
            "POST",
            CMS.into(),
            JSON,
            serde_json::to_vec(&json!({"metadata": {"name": "x", "namespace": "other"}})).unwrap(),
            "does not match the namespace",
        ),
        (
            "PUT",
            format!("{CMS}/c"),
            JSON,
            cm("d"),
            "does not match the name on the URL",
        ),
        (
            "GET",
            format!("{CMS}?fieldSelector=data.a%3D1"),
            JSON,
            Vec::new(),
            "field label not supported: data.a",
        ),
        (
            "GET",
            format!("{CMS}?labelSelector=a%20in%20b"),
            JSON,
            Vec::new(),
            "unable to parse requirement",
        ),
        (
            "GET",
            format!("{CMS}?limit=lots"),
            JSON,
            Vec::new(),
            "invalid limit",
        ),
        (
            "GET",
            format!("{CMS}?limit=1&continue=zz"),
            JSON,
            Vec::new(),
            "continue key is not valid",
        ),
        (
            "GET",
            format!("{CMS}?watch=true&resourceVersion=abc"),
            JSON,
            Vec::new(),
            "invalid resource version",
        ),
        (
            "GET",
            format!("{CMS}?watch=true&timeoutSeconds=-1"),
            JSON,
            Vec::new(),
            "invalid timeoutSeconds",
        ),
        (
            "DELETE",
            format!("{CMS}/c"),
            JSON,
            serde_json::to_vec(&json!({"propagationPolicy": "Sideways"})).unwrap(),
            "Unsupported value",
        ),
        (
            "PATCH",
            format!("{CMS}/c"),
            "application/merge-patch+json",
            b"[1]".to_vec(),
            "cannot unmarshal",
        ),
        (
            "PATCH",
            format!("{CMS}/c"),
            "application/json-patch+json",
            b"{\"op\":1}".to_vec(),
            "error decoding JSON patch",
        ),
        (
            "PATCH",
            format!("{CMS}/c"),
            "application/apply-patch+yaml",
            b"data: {}".to_vec(),
            "fieldManager: Required value",
        ),
        (
            "PATCH",
            format!("{CMS}/c?fieldManager=t"),
            "application/apply-patch+yaml",
            b"metadata: x".to_vec(),
            "an apply patch must be an object",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/p/eviction".into(),
            JSON,
            serde_json::to_vec(&json!({"kind": "Pod"})).unwrap(),
            "expected an Eviction",
        ),
        (
            "POST",
            "/_sim/version".into(),
            JSON,
            serde_json::to_vec(&json!({"gitVersion": "1.30"})).unwrap(),
            "gitVersion must look like",
        ),
        (
            "POST",
            "/_sim/clock".into(),
            JSON,
            serde_json::to_vec(&json!({"set": "yesterday"})).unwrap(),
            "RFC 3339",
        ),
        (
            "POST",
            "/_sim/faults".into(),
            JSON,
            serde_json::to_vec(&json!({"image": "x", "fault": "explode"})).unwrap(),
            "unknown fault",
        ),
        (
            "POST",
            "/_sim/config".into(),
            JSON,
            serde_json::to_vec(&json!({"podReadyDelayMs": -5})).unwrap(),
            "non-negative integer",
        ),
        (
            "POST",
            "/_sim/nodes/kubesim-node-1/ready".into(),
            JSON,
            b"{}".to_vec(),
            "ready must be a boolean",
        ),
        (
            "POST",
            "/_sim/apply".into(),
            "application/yaml",
            b"kind: Widget\napiVersion: v9\n".to_vec(),
            "no resource for apiVersion",
        ),
    ];
    for (method, path, ct, body, want) in cases {
        let (code, reason, message) = fail(&k, method, &path, ct, &body).await;
        assert_eq!(
            (code, reason.as_str()),
            (400, "BadRequest"),
            "{method} {path}: {message}"
        );
        assert!(
            message.contains(want),
            "{method} {path}: {message:?} should mention {want:?}"
        );
    }
    // Nothing was created or changed by the refused requests.
    let list: Value = k
        .client()
        .request(http::Request::get(CMS).body(Vec::new()).unwrap())
        .await
        .unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_bodies_and_paths_get_their_codes() {
    let k = Kube::start().await;
    k.sim()
        .apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n")
        .unwrap();
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        // `{}` is not an enveloped protobuf object.
        (
            "POST",
            CMS.into(),
            "application/vnd.kubernetes.protobuf",
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            format!("{CMS}/c"),
            "text/plain",
            415,
            "UnsupportedMediaType",
        ),
        (
            "PATCH",
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/r".into(),
            "application/strategic-merge-patch+json",
            415,
            "UnsupportedMediaType",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/widgets".into(),
            JSON,
            404,
            "NotFound",
        ),
        ("GET", "/apis/apps/v9".into(), JSON, 404, "NotFound"),
        ("GET", format!("{CMS}/c/status"), JSON, 404, "NotFound"),
        ("PUT", format!("{CMS}/missing"), JSON, 404, "NotFound"),
        (
            "DELETE",
            "/api/v1/namespaces/default".into(),
            JSON,
            403,
            "Forbidden",
        ),
        ("POST", format!("{CMS}/c"), JSON, 405, "MethodNotAllowed"),
        ("GET", "/_sim/nope".into(), JSON, 404, "NotFound"),
    ];
    for (method, path, ct, code, reason) in cases {
        let body = if method == "GET" {
            Vec::new()
        } else {
            b"{}".to_vec()
        };
        let got = fail(&k, method, &path, ct, &body).await;
        assert_eq!(
            (got.0, got.1.as_str()),
            (code, reason),
            "{method} {path}: {}",
            got.2
        );
    }
}

/// An enveloped protobuf body: `k8s\0`, then runtime.Unknown {typeMeta {apiVersion, kind}, raw}.
fn protobuf_body(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
        let len = u8::try_from(bytes.len()).expect("short test fields");
        [vec![(n << 3) | 2, len], bytes.to_vec()].concat()
    }
    let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
    [b"k8s\0".to_vec(), field(1, &type_meta), field(2, raw)].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_bodies_kubesim_cannot_read_are_refused_and_nothing_is_stored() {
    let k = Kube::start().await;
    const PB: &str = "application/vnd.kubernetes.protobuf";
    let meta = [vec![0x0a, 1], b"c".to_vec()].concat(); // ObjectMeta { name: "c" }
    let cm = |raw: &[u8]| protobuf_body("v1", "ConfigMap", raw);
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        // A field number ConfigMap does not have: refused, not dropped.
        (
            cm(&[&[0x0a, 3][..], &meta, &[0xfa, 0x01, 1, b'x']].concat()),
            400,
            "BadRequest",
            "field 31 of k8s.io.api.core.v1.ConfigMap is not known to kubesim",
        ),
        // Truncated.
        (cm(&[0x0a, 9, 0x0a]), 400, "BadRequest", "truncated"),
        // A kind kubesim has no schema for.
        (
            protobuf_body("example.com/v1", "Widget", &[]),
            415,
            "UnsupportedMediaType",
            "kubesim cannot decode protobuf example.com/v1 Widget",
        ),
    ];
    for (body, code, reason, message) in cases {
        let got = fail(&k, "POST", CMS, PB, &body).await;
        assert_eq!((got.0, got.1.as_str()), (code, reason), "{}", got.2);
        assert!(got.2.contains(message), "{}", got.2);
    }
    let listed = k.kubectl(&["get", "configmaps", "-o", "name"]).await;
    assert_eq!(listed.ok().trim(), "", "nothing was stored");
}
