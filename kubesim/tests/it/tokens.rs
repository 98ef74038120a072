//! ServiceAccount tokens: issued by the TokenRequest API (`kubectl create token`), then every
//! request made with one is authorized by RBAC from the applied Roles and bindings, with the
//! apiserver's 401 and 403 answers. Requests go through kube-rs' raw client with the token as
//! a bearer header (kubectl sends no credentials to an `http://` server).

use serde_json::{Value, json};

use crate::harness::Kube;

const SETUP: &[&[&str]] = &[
    &["create", "namespace", "a"],
    &["create", "namespace", "b"],
    &["create", "serviceaccount", "bot", "-n", "a"],
    &[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list,watch",
        "--resource=pods",
        "-n",
        "a",
    ],
    &[
        "create",
        "rolebinding",
        "bot-reads",
        "--role=pod-reader",
        "--serviceaccount=a:bot",
        "-n",
        "a",
    ],
    &["run", "p", "--image=nginx", "-n", "a"],
    &["run", "p", "--image=nginx", "-n", "b"],
];

/// Sends `method path` with `token`; returns the HTTP code and the body.
async fn call(
    k: &Kube,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
        .unwrap();
    match k.client().request::<Value>(req).await {
        Ok(v) => (200, v),
        Err(kube::Error::Api(s)) => (s.code, json!({"reason": s.reason, "message": s.message})),
        Err(other) => panic!("{method} {path}: {other}"),
    }
}

async fn token(k: &Kube, sa: &str, ns: &str) -> String {
    let out = k.kubectl(&["create", "token", sa, "-n", ns]).await;
    out.ok().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_gets_exactly_what_rbac_grants() {
    let k = Kube::start().await;
    for args in SETUP {
        k.kubectl(args).await.ok();
    }
    let t = token(&k, "bot", "a").await;
    // JWT-shaped, naming the ServiceAccount.
    assert_eq!(t.split('.').count(), 3, "{t}");

    let (code, pods) = call(&k, &t, "GET", "/api/v1/namespaces/a/pods", None).await;
    assert_eq!(code, 200, "{pods}");
    assert_eq!(pods["items"][0]["metadata"]["name"], "p");
    assert_eq!(
        call(&k, &t, "GET", "/api/v1/namespaces/a/pods/p", None)
            .await
            .0,
        200
    );

    let refused = [
        (
            "GET",
            "/api/v1/namespaces/b/pods",
            r#"pods is forbidden: User "system:serviceaccount:a:bot" cannot list resource "pods" in API group "" in the namespace "b""#,
        ),
        (
            "DELETE",
            "/api/v1/namespaces/a/pods/p",
            r#"pods "p" is forbidden: User "system:serviceaccount:a:bot" cannot delete resource "pods" in API group "" in the namespace "a""#,
        ),
        (
            "GET",
            "/api/v1/namespaces/a/pods/p/log",
            r#"pods "p" is forbidden: User "system:serviceaccount:a:bot" cannot get resource "pods/log" in API group "" in the namespace "a""#,
        ),
        (
            "GET",
            "/apis/apps/v1/deployments",
            r#"deployments.apps is forbidden: User "system:serviceaccount:a:bot" cannot list resource "deployments" in API group "apps" at the cluster scope"#,
        ),
        (
            "GET",
            "/_sim/state",
            r#"forbidden: User "system:serviceaccount:a:bot" cannot get path "/_sim/state""#,
        ),
    ];
    for (method, path, message) in refused {
        let (code, status) = call(&k, &t, method, path, None).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (403, Some("Forbidden")),
            "{method} {path}"
        );
        assert_eq!(status["message"], message, "{method} {path}");
    }
    // The pod the refused DELETE named is still there.
    k.kubectl(&["get", "pod", "p", "-n", "a"]).await.ok();

    // What every authenticated user may do: discovery, version, asking about itself.
    for path in [
        "/api",
        "/apis",
        "/api/v1",
        "/apis/apps/v1",
        "/version",
        "/openapi/v3",
    ] {
        assert_eq!(call(&k, &t, "GET", path, None).await.0, 200, "{path}");
    }
    let ask = |verb: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"namespace": "a", "verb": verb, "resource": "pods"}}})
    };
    let review = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let (_, list) = call(&k, &t, "POST", review, Some(ask("list"))).await;
    assert_eq!(list["status"]["allowed"], true, "{list}");
    let (_, delete) = call(&k, &t, "POST", review, Some(ask("delete"))).await;
    assert_eq!(delete["status"]["allowed"], false, "{delete}");

    // A grant takes effect at once: bind the Role in b too.
    k.kubectl(&[
        "create",
        "role",
        "pod-reader",
        "--verb=list",
        "--resource=pods",
        "-n",
        "b",
    ])
    .await
    .ok();
    k.kubectl(&[
        "create",
        "rolebinding",
        "bot-reads",
        "--role=pod-reader",
        "--serviceaccount=a:bot",
        "-n",
        "b",
    ])
    .await
    .ok();
    assert_eq!(
        call(&k, &t, "GET", "/api/v1/namespaces/b/pods", None)
            .await
            .0,
        200
    );
    // kubectl without a token is still the admin.
    k.kubectl(&["delete", "pod", "p", "-n", "b"]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_expired_and_orphaned_tokens_are_unauthorized() {
    let k = Kube::start().await;
    for args in SETUP {
        k.kubectl(args).await.ok();
    }
    let unauthorized = |(code, status): (u16, Value)| {
        assert_eq!(code, 401, "{status}");
        assert_eq!(status["reason"], "Unauthorized");
    };
    unauthorized(call(&k, "not-a-token", "GET", "/api/v1/namespaces/a/pods", None).await);
    let issued = k
        .kubectl(&["create", "token", "bot", "-n", "a", "--duration=10m"])
        .await;
    let t = issued.ok().trim().to_owned();
    assert_eq!(
        call(&k, &t, "GET", "/api/v1/namespaces/a/pods", None)
            .await
            .0,
        200
    );
    // Ten minutes later, on kubesim's clock, it has expired.
    k.admin("/_sim/clock", json!({"advanceSeconds": 601})).await;
    unauthorized(call(&k, &t, "GET", "/api/v1/namespaces/a/pods", None).await);
    // A token outlives nothing: its ServiceAccount deleted, it is dead even if the name
    // comes back.
    let t = token(&k, "bot", "a").await;
    k.kubectl(&["delete", "serviceaccount", "bot", "-n", "a"])
        .await
        .ok();
    k.kubectl(&["create", "serviceaccount", "bot", "-n", "a"])
        .await
        .ok();
    unauthorized(call(&k, &t, "GET", "/api/v1/namespaces/a/pods", None).await);
    // A token for a ServiceAccount that does not exist is not issued; too short a life is
    // refused.
    let missing = k.kubectl(&["create", "token", "ghost", "-n", "a"]).await;
    assert!(
        missing
            .failed()
            .contains(r#"serviceaccounts "ghost" not found"#),
        "{}",
        missing.stderr
    );
    let short = k
        .kubectl(&["create", "token", "bot", "-n", "a", "--duration=5m"])
        .await;
    assert!(
        short
            .failed()
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        short.stderr
    );
}
