//! kube-rs 5 against kubesim over TCP: selectors, pagination, watcher with a re-list after an
//! in-stream 410, server-side apply, Status errors.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::harness::Kube;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": name}}),
    )
    .expect("configmap")
}

fn names(list: &kube::api::ObjectList<ConfigMap>) -> Vec<String> {
    let mut v: Vec<String> = list
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .filter(|n| n != "kube-root-ca.crt")
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_label_and_field_selectors_and_pages() {
    let k = Kube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(k.client(), "default");
    let pp = PostParams::default();
    api.create(&pp, &cm("a", json!({"app": "web", "tier": "front"})))
        .await
        .unwrap();
    api.create(&pp, &cm("b", json!({"app": "api"})))
        .await
        .unwrap();
    api.create(&pp, &cm("c", json!({"app": "db", "tier": "back"})))
        .await
        .unwrap();

    let by = |sel: &str| ListParams::default().labels(sel);
    assert_eq!(names(&api.list(&by("app=web")).await.unwrap()), ["a"]);
    assert_eq!(
        names(&api.list(&by("app in (web,api)")).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(&api.list(&by("app notin (web)")).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(names(&api.list(&by("!tier")).await.unwrap()), ["b"]);
    assert_eq!(names(&api.list(&by("tier,app!=db")).await.unwrap()), ["a"]);
    let field = ListParams::default().fields("metadata.name=c");
    assert_eq!(names(&api.list(&field).await.unwrap()), ["c"]);

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first), ["a", "b"]);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rest = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&rest), ["c"]);
    assert!(
        rest.metadata
            .continue_
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );

    let err = api.list(&by("app in web")).await.unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest")),
        other => panic!("expected a Status error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_errors_map_to_kube_errors() {
    let k = Kube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(k.client(), "default");
    let missing = api.get("nope").await.unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{missing}"
    );
    let made = api
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .unwrap();
    let dup = api
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&dup, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{dup}"
    );
    let mut stale = made.clone();
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .unwrap();
    stale.data = Some([("k".to_string(), "stale".to_string())].into());
    let conflict = api
        .replace("x", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{conflict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_creates_when_missing() {
    let k = Kube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(k.client(), "default");
    let pp = PatchParams::apply("firebreak").force();
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "snap"}, "data": {"a": "1"}});
    let created = api.patch("snap", &pp, &Patch::Apply(&body)).await.unwrap();
    assert_eq!(created.data.unwrap()["a"], "1");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "snap"}, "data": {"a": "2"}});
    let updated = api.patch("snap", &pp, &Patch::Apply(&body)).await.unwrap();
    assert_eq!(updated.data.unwrap()["a"], "2");
    let missing = api
        .patch("other", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404),
        "{missing}"
    );
}

/// Waits for the next watcher event that `pred` accepts; fails naming `what`.
async fn next_matching<S>(
    stream: &mut S,
    what: &str,
    pred: impl Fn(&watcher::Event<ConfigMap>) -> bool,
) -> watcher::Event<ConfigMap>
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    let wait = async {
        loop {
            match stream.next().await {
                Some(Ok(ev)) if pred(&ev) => return ev,
                Some(_) => continue,
                None => panic!("watcher ended before {what}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no watcher event for {what} within 30s"))
}

fn is_named(ev: &watcher::Event<ConfigMap>, kind: &str, name: &str, value: Option<&str>) -> bool {
    let (k, obj) = match ev {
        watcher::Event::Apply(o) => ("apply", o),
        watcher::Event::Delete(o) => ("delete", o),
        watcher::Event::InitApply(o) => ("init-apply", o),
        _ => return false,
    };
    k == kind
        && obj.metadata.name.as_deref() == Some(name)
        && value.is_none_or(|v| {
            obj.data
                .as_ref()
                .and_then(|d| d.get("k"))
                .map(String::as_str)
                == Some(v)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_changes_and_relists_after_410() {
    let k = Kube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(k.client(), "default");
    api.create(&PostParams::default(), &cm("before", json!({"app": "w"})))
        .await
        .unwrap();
    let cfg = watcher::Config::default().labels("app=w");
    let mut stream = watcher(api.clone(), cfg).boxed();
    next_matching(&mut stream, "the initial object", |e| {
        is_named(e, "init-apply", "before", None)
    })
    .await;
    next_matching(&mut stream, "the end of the initial list", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;

    api.create(&PostParams::default(), &cm("live", json!({"app": "w"})))
        .await
        .unwrap();
    next_matching(&mut stream, "the added object", |e| {
        is_named(e, "apply", "live", Some("live"))
    })
    .await;
    api.patch(
        "live",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v2"}})),
    )
    .await
    .unwrap();
    next_matching(&mut stream, "the modified object", |e| {
        is_named(e, "apply", "live", Some("v2"))
    })
    .await;
    // A label change that leaves the selector is a delete for this watch.
    api.patch(
        "before",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}})),
    )
    .await
    .unwrap();
    next_matching(&mut stream, "the object leaving the selector", |e| {
        is_named(e, "delete", "before", None)
    })
    .await;
    api.delete("live", &DeleteParams::default()).await.unwrap();
    next_matching(&mut stream, "the deleted object", |e| {
        is_named(e, "delete", "live", None)
    })
    .await;

    // Forget the change log and end open watches: the watcher resumes from its last
    // resourceVersion, gets an in-stream 410 and must list again.
    let lists_before = list_requests(&k);
    api.create(&PostParams::default(), &cm("after", json!({"app": "w"})))
        .await
        .unwrap();
    next_matching(&mut stream, "the object created before compaction", |e| {
        is_named(e, "apply", "after", None)
    })
    .await;
    k.admin("/_sim/compact", json!({})).await;
    next_matching(&mut stream, "a re-list after 410", |e| {
        is_named(e, "init-apply", "after", None)
    })
    .await;
    next_matching(&mut stream, "the end of the re-list", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    assert!(list_requests(&k) > lists_before, "the watcher listed again");
    let watches: Vec<_> = k
        .sim()
        .requests()
        .into_iter()
        .filter(|r| r.query.contains("watch=true"))
        .collect();
    assert!(watches.len() >= 2, "the watcher watched again: {watches:?}");

    let left = api
        .list(&ListParams::default().labels("app=w"))
        .await
        .unwrap();
    assert_eq!(names(&left), ["after"]);
}

fn list_requests(k: &Kube) -> usize {
    k.sim()
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET" && r.path.ends_with("/configmaps") && !r.query.contains("watch=true")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_from_a_compacted_version_gets_an_in_stream_410() {
    let k = Kube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(k.client(), "default");
    let made = api
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .unwrap();
    let rv = made.metadata.resource_version.clone().unwrap();
    k.admin("/_sim/compact", json!({})).await;
    let events: Vec<_> = api
        .watch(&kube::api::WatchParams::default().timeout(5), &rv)
        .await
        .expect("the watch request itself is answered 200")
        .try_collect()
        .await
        .expect("the stream is well-formed");
    match events.as_slice() {
        [kube::api::WatchEvent::Error(e)] => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected one ERROR 410 event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_ends_its_initial_events_with_a_bookmark() {
    let k = Kube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(k.client(), "default");
    api.create(&PostParams::default(), &cm("one", json!({"app": "s"})))
        .await
        .unwrap();
    let mut stream = watcher(
        api.clone(),
        watcher::Config::default().labels("app=s").streaming_lists(),
    )
    .boxed();
    next_matching(&mut stream, "the initial object", |e| {
        is_named(e, "init-apply", "one", None)
    })
    .await;
    // Without the `k8s.io/initial-events-end` bookmark the watcher would wait here forever.
    next_matching(&mut stream, "the end of the initial events", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    api.create(&PostParams::default(), &cm("two", json!({"app": "s"})))
        .await
        .unwrap();
    next_matching(&mut stream, "a live event", |e| {
        is_named(e, "apply", "two", None)
    })
    .await;
    let requests = k.sim().requests();
    assert_eq!(
        list_requests(&k),
        0,
        "a streaming list sends no LIST: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.query.contains("sendInitialEvents=true")),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_send_bookmarks_when_allowed() {
    let cfg = kubesim::SimConfig {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let k = Kube::start_with(cfg).await;
    let api: Api<ConfigMap> = Api::namespaced(k.client(), "default");
    let made = api
        .create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let rv = made.metadata.resource_version.clone().unwrap();
    let mut events = api
        .watch(&kube::api::WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("a bookmark within 10s")
        .expect("stream open")
        .expect("event decodes");
    match first {
        kube::api::WatchEvent::Bookmark(b) => {
            assert_eq!(b.types.kind, "ConfigMap");
            assert!(
                b.metadata.resource_version.parse::<u64>().unwrap() >= rv.parse::<u64>().unwrap()
            );
        }
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_discovery_finds_every_group_and_subresource() {
    let k = Kube::start().await;
    for aggregated in [false, true] {
        check_discovery(&k, aggregated).await;
    }
    let sent = k.sim().requests();
    assert!(
        sent.iter()
            .any(|r| r.path == "/apis" && r.accept.contains("APIGroupDiscoveryList")),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|r| r.path == "/apis/apps/v1"),
        "the legacy run read each group-version: {sent:?}"
    );
}

/// Runs kube-rs discovery (legacy or aggregated) and checks what it found.
async fn check_discovery(k: &Kube, aggregated: bool) {
    let run = kube::Discovery::new(k.client());
    let discovery = if aggregated {
        run.run_aggregated().await
    } else {
        run.run().await
    };
    let discovery =
        discovery.unwrap_or_else(|e| panic!("discovery (aggregated: {aggregated}) fails: {e}"));
    let gvk = kube::api::GroupVersionKind::gvk("apps", "v1", "Deployment");
    let (ar, caps) = discovery
        .resolve_gvk(&gvk)
        .expect("deployments are discovered");
    assert_eq!(ar.plural, "deployments");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let subs: Vec<&str> = caps
        .subresources
        .iter()
        .map(|(r, _)| r.plural.as_str())
        .collect();
    assert!(
        subs.iter().any(|s| s.ends_with("scale")) && subs.iter().any(|s| s.ends_with("status")),
        "{subs:?}"
    );
    for (group, version, kind) in [
        ("", "v1", "Pod"),
        ("events.k8s.io", "v1", "Event"),
        ("networking.k8s.io", "v1", "NetworkPolicy"),
        ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        ("networking.istio.io", "v1beta1", "VirtualService"),
    ] {
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        assert!(
            discovery.resolve_gvk(&gvk).is_some(),
            "{gvk:?} discovered (aggregated: {aggregated})"
        );
    }
}
