//! `k8s::rollback` against kubesim, compared with what the real `kubectl rollout undo` does
//! to an identical Deployment.

use anyhow::Result;
use firebreak_connector::ErrorKind;
use serde_json::{Value, json};

use crate::harness::{Cluster, context};

const RS_COLUMNS: &str = "-o=custom-columns=NAME:.metadata.name,\
REVISION:.metadata.annotations.deployment\\.kubernetes\\.io/revision,\
HISTORY:.metadata.annotations.deployment\\.kubernetes\\.io/revision-history,\
DESIRED:.spec.replicas,IMAGE:.spec.template.spec.containers[0].image";

/// Deploys web:1 then `kubectl set image` web:2, in `ns`.
async fn v1_then_v2(c: &Cluster, ns: &str) -> Result<()> {
    c.deploy_web(ns, "web:1").await?;
    c.kubectl(&["set", "image", "deploy/web", "app=web:2", "-n", ns])
        .await?;
    c.rollout_status(ns).await
}

async fn json_of(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.push("-o=json");
    Ok(serde_json::from_str(&c.kubectl(&all).await?)?)
}

#[tokio::test]
async fn rollback_leaves_the_cluster_as_kubectl_rollout_undo_does() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, progress) = context(false);
    v1_then_v2(&c, "by-kubectl").await?;
    v1_then_v2(&c, "by-firebreak").await?;

    c.kubectl(&["rollout", "undo", "deploy/web", "-n", "by-kubectl"])
        .await?;
    c.rollout_status("by-kubectl").await?;

    let out = c
        .call(
            &cx,
            "rollback",
            json!({"ns": "by-firebreak", "deploy": "web"}),
        )
        .await?;
    assert_eq!(out["rolled_back"], true, "{out}");
    assert_eq!(out["from_revision"], 2);
    assert_eq!(out["to_revision"], 1);
    assert_eq!(out["from_images"], json!(["app=web:2"]));
    assert_eq!(out["to_images"], json!(["app=web:1"]));
    let waited = c
        .call(
            &cx,
            "wait_rollout",
            json!({"ns": "by-firebreak", "deploy": "web", "timeout": "60s"}),
        )
        .await?;
    assert_eq!(waited["status"], "complete");
    assert_eq!(waited["revision"], 3);
    assert_eq!(
        progress.lock().unwrap().last().map(String::as_str),
        Some("deployment \"web\" successfully rolled out")
    );

    // `rollout history` and the ReplicaSets read the same in both namespaces ...
    let history = |ns: &'static str| {
        let c = &c;
        async move {
            c.kubectl(&["rollout", "history", "deploy/web", "-n", ns])
                .await
        }
    };
    let (hk, hf) = (history("by-kubectl").await?, history("by-firebreak").await?);
    assert_eq!(hk, hf);
    let rs = |ns: &'static str| {
        let c = &c;
        async move {
            c.kubectl(&[
                "get",
                "rs",
                "-n",
                ns,
                RS_COLUMNS,
                "--sort-by=.metadata.name",
            ])
            .await
        }
    };
    let (rk, rf) = (rs("by-kubectl").await?, rs("by-firebreak").await?);
    assert_eq!(rk, rf);
    // ... and that is: the v1 ReplicaSet reused as revision 3 (history "1"), no third RS.
    let rows: Vec<Vec<&str>> = rf
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{rf}");
    let v1 = rows
        .iter()
        .find(|r| r[4] == "web:1")
        .expect("v1 replicaset");
    assert_eq!(&v1[1..4], ["3", "1", "3"], "{rf}");
    let v2 = rows
        .iter()
        .find(|r| r[4] == "web:2")
        .expect("v2 replicaset");
    assert_eq!(&v2[1..4], ["2", "<none>", "0"], "{rf}");
    assert!(
        hf.contains("\n2 ") && hf.contains("\n3 ") && !hf.contains("\n1 "),
        "{hf}"
    );

    // The Deployment's template and annotations match too; the Service is untouched.
    let dk = json_of(&c, &["get", "deploy/web", "-n", "by-kubectl"]).await?;
    let df = json_of(&c, &["get", "deploy/web", "-n", "by-firebreak"]).await?;
    assert_eq!(dk["spec"]["template"], df["spec"]["template"]);
    assert_eq!(dk["metadata"]["annotations"], df["metadata"]["annotations"]);
    assert_eq!(
        df["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    let svc = json_of(&c, &["get", "svc/web", "-n", "by-firebreak"]).await?;
    assert_eq!(svc["spec"]["selector"], json!({"app": "web"}));
    // kubectl's own `rollout status` agrees the rollout finished.
    c.rollout_status("by-firebreak").await?;
    Ok(())
}

#[tokio::test]
async fn rollback_to_a_given_revision_reuses_that_replicaset() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    v1_then_v2(&c, "app").await?;
    c.kubectl(&[
        "set",
        "image",
        "deploy/web",
        "app=web:3",
        "-n",
        "app",
        "--record",
    ])
    .await?;
    c.rollout_status("app").await?;
    let out = c
        .call(
            &cx,
            "rollback",
            json!({"ns": "app", "deploy": "web", "revision": 1}),
        )
        .await?;
    assert_eq!(out["to_revision"], 1);
    assert_eq!(out["from_images"], json!(["app=web:3"]));
    c.rollout_status("app").await?;
    let history = c
        .call(
            &cx,
            "rollout_history",
            json!({"ns": "app", "deploy": "web"}),
        )
        .await?;
    let revs: Vec<(i64, String)> = history["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().unwrap(),
                r["images"][0].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        revs,
        [
            (2, "app=web:2".to_owned()),
            (3, "app=web:3".to_owned()),
            (4, "app=web:1".to_owned())
        ]
    );
    assert_eq!(history["current_revision"], 4);
    // The same rows as `kubectl rollout history`.
    let table = c
        .kubectl(&["rollout", "history", "deploy/web", "-n", "app"])
        .await?;
    let theirs: Vec<(i64, String)> = table
        .lines()
        .filter_map(|l| {
            let (rev, cause) = l.split_once(char::is_whitespace)?;
            Some((rev.parse().ok()?, cause.trim().to_owned()))
        })
        .collect();
    let ours: Vec<(i64, String)> = history["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().unwrap(),
                r["change_cause"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(ours, theirs, "{table}");
    assert!(
        ours.iter().any(|(_, cause)| cause.contains("app=web:3")),
        "{table}"
    );
    Ok(())
}

#[tokio::test]
async fn a_deployment_changed_between_read_and_write_is_not_overwritten() -> Result<()> {
    let c = Cluster::start().await?;
    v1_then_v2(&c, "app").await?;
    let (cx, _) = context(false);
    let args = json!({"ns": "app", "deploy": "web"});
    let planned = c.plan(&cx, "rollback", args.clone()).await?;
    // Someone else ships web:3 while the runbook is between its read and its write.
    c.kubectl(&["set", "image", "deploy/web", "app=web:3", "-n", "app"])
        .await?;
    let err = c.apply(&cx, "rollback", args, &planned).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{}", err.message);
    assert!(
        err.message
            .contains("changed since the rollback was planned"),
        "{}",
        err.message
    );
    let d = json_of(&c, &["get", "deploy/web", "-n", "app"]).await?;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:3"
    );
    Ok(())
}

#[tokio::test]
async fn refusals_use_kubectl_messages_and_kinds() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    c.deploy_web("app", "web:1").await?;

    let err = c
        .call(&cx, "rollback", json!({"ns": "app", "deploy": "web"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert_eq!(
        err.message,
        "no rollout history found for deployment \"web\""
    );
    let (ok, _, stderr) = c
        .kubectl_raw(&["rollout", "undo", "deploy/web", "-n", "app"])
        .await?;
    assert!(!ok && stderr.contains(&err.message), "{stderr}");

    c.kubectl(&["set", "image", "deploy/web", "app=web:2", "-n", "app"])
        .await?;
    c.rollout_status("app").await?;
    let err = c
        .call(
            &cx,
            "rollback",
            json!({"ns": "app", "deploy": "web", "revision": 9}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert_eq!(
        err.message,
        "unable to find specified revision 9 in history"
    );
    let (_, _, stderr) = c
        .kubectl_raw(&[
            "rollout",
            "undo",
            "deploy/web",
            "-n",
            "app",
            "--to-revision=9",
        ])
        .await?;
    assert!(stderr.contains(&err.message), "{stderr}");

    c.kubectl(&["rollout", "pause", "deploy/web", "-n", "app"])
        .await?;
    let err = c
        .call(&cx, "rollback", json!({"ns": "app", "deploy": "web"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    let (_, _, stderr) = c
        .kubectl_raw(&["rollout", "undo", "deploy/web", "-n", "app"])
        .await?;
    assert!(
        stderr.contains(&err.message),
        "kubectl: {stderr} / ours: {}",
        err.message
    );
    assert!(
        err.message
            .starts_with("you cannot rollback a paused deployment")
    );

    let err = c
        .call(&cx, "rollback", json!({"ns": "app", "deploy": "nope"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{}", err.message);
    let err = c
        .call(
            &cx,
            "rollback",
            json!({"ns": "app", "deploy": "web", "revison": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(err.message.contains("unknown field"), "{}", err.message);
    Ok(())
}

#[tokio::test]
async fn dry_run_plans_the_rollback_and_writes_nothing() -> Result<()> {
    let c = Cluster::start().await?;
    v1_then_v2(&c, "app").await?;
    let before = json_of(&c, &["get", "deploy/web", "-n", "app"]).await?;
    let (cx, _) = context(true);
    let out = c
        .call(&cx, "rollback", json!({"ns": "app", "deploy": "web"}))
        .await?;
    assert_eq!(out["dry_run"], true);
    assert_eq!(out["changed"], false);
    assert_eq!(
        out["would"],
        "roll app/web back from revision 2 (app=web:2) to the template of revision 1 (app=web:1)"
    );
    assert_eq!(out["to_images"], json!(["app=web:1"]));
    let after = json_of(&c, &["get", "deploy/web", "-n", "app"]).await?;
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    Ok(())
}

#[tokio::test]
async fn rollback_skips_when_the_target_is_already_running() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    v1_then_v2(&c, "app").await?;
    let out = c
        .call(
            &cx,
            "rollback",
            json!({"ns": "app", "deploy": "web", "revision": 2}),
        )
        .await?;
    assert_eq!(out["rolled_back"], false);
    assert_eq!(
        out["message"],
        "deployment.apps/web skipped rollback (current template already matches revision 2)"
    );
    Ok(())
}

/// Builds by hand what the Deployment controller leaves after `web:1` then `web:2`: the
/// Deployment at revision 2 and two ReplicaSets it controls. Independent of the simulated
/// controller, so it pins down exactly what the rollback writes.
async fn hand_made_history(c: &Cluster, ns: &str) -> Result<()> {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    c.create_namespace(ns).await?;
    let template = |image: &str, hash: Option<&str>| {
        let mut labels = json!({"app": "web"});
        if let Some(h) = hash {
            labels["pod-template-hash"] = json!(h);
        }
        json!({"metadata": {"labels": labels},
               "spec": {"containers": [{"name": "app", "image": image}]}})
    };
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(c.client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns,
                     "annotations": {"deployment.kubernetes.io/revision": "2", "team": "a"}},
        // Paused, so the live controller creates no ReplicaSet of its own meanwhile.
        "spec": {"replicas": 0, "paused": true, "selector": {"matchLabels": {"app": "web"}},
                 "template": template("web:2", None)}
    }))?;
    let d = deployments.create(&Default::default(), &d).await?;
    let uid = d.metadata.uid.clone().unwrap();
    let replicasets: kube::Api<ReplicaSet> = kube::Api::namespaced(c.client.clone(), ns);
    for (rev, image, hash) in [("1", "web:1", "7c5d9b4f8"), ("2", "web:2", "6b8f4d7c9")] {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{hash}"), "namespace": ns,
                         "labels": {"app": "web", "pod-template-hash": hash},
                         "annotations": {"deployment.kubernetes.io/revision": rev,
                                         "kubernetes.io/change-cause": format!("deploy {image}")},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                             "name": "web", "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"replicas": 0,
                     "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
                     "template": template(image, Some(hash))}
        }))?;
        replicasets.create(&Default::default(), &rs).await?;
    }
    // Resumed, the controller finds the revision-2 ReplicaSet as the Deployment's own.
    deployments
        .patch(
            "web",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"spec": {"paused": null}})),
        )
        .await?;
    let owned = c.kubectl(&["get", "rs", "-n", ns, "-o=name"]).await?;
    assert_eq!(
        owned.lines().count(),
        2,
        "the controller made a ReplicaSet of its own: {owned}"
    );
    Ok(())
}

#[tokio::test]
async fn rollback_writes_what_kubectl_rollout_undo_writes() -> Result<()> {
    let c = Cluster::start().await?;
    let (cx, _) = context(false);
    hand_made_history(&c, "by-kubectl").await?;
    hand_made_history(&c, "by-firebreak").await?;
    c.kubectl(&["rollout", "undo", "deploy/web", "-n", "by-kubectl"])
        .await?;
    let mark = c.sim.sim().requests().len();
    let out = c
        .call(
            &cx,
            "rollback",
            json!({"ns": "by-firebreak", "deploy": "web"}),
        )
        .await?;
    assert_eq!(out["to_revision"], 1, "{out}");
    // On the wire: the plan reads the Deployment and lists its ReplicaSets by selector; the
    // apply reads both again (is the intent already there?) and makes one guarded write.
    let wire: Vec<(String, String)> = c.sim.sim().requests()[mark..]
        .iter()
        .map(|r| (r.method.clone(), format!("{}?{}", r.path, r.query)))
        .collect();
    assert_eq!(wire.len(), 5, "{wire:?}");
    assert_eq!(wire[..2], wire[2..4], "apply reads what the plan read");
    let wire = wire[2..].to_vec();
    assert_eq!(wire[0].0, "GET");
    assert!(
        wire[0]
            .1
            .starts_with("/apis/apps/v1/namespaces/by-firebreak/deployments/web?"),
        "{wire:?}"
    );
    assert_eq!(wire[1].0, "GET");
    assert!(
        wire[1].1.contains("/namespaces/by-firebreak/replicasets?")
            && wire[1].1.contains("labelSelector=app%3Dweb"),
        "{wire:?}"
    );
    assert_eq!(wire[2].0, "PUT", "{wire:?}");
    assert!(
        wire[2]
            .1
            .starts_with("/apis/apps/v1/namespaces/by-firebreak/deployments/web?"),
        "{wire:?}"
    );
    assert_eq!(out["to_images"], json!(["app=web:1"]));
    assert_eq!(out["message"], "deployment.apps/web rolled back");

    let dk = json_of(&c, &["get", "deploy/web", "-n", "by-kubectl"]).await?;
    let df = json_of(&c, &["get", "deploy/web", "-n", "by-firebreak"]).await?;
    assert_eq!(dk["spec"]["template"], df["spec"]["template"]);
    assert_eq!(
        df["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    // pod-template-hash is not copied into the Deployment.
    assert_eq!(
        df["spec"]["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );
    // Annotations as kubectl computes them: revision kept, change-cause from the RS, the
    // Deployment's own "team" dropped.
    assert_eq!(dk["metadata"]["annotations"], df["metadata"]["annotations"]);
    assert_eq!(
        df["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "deploy web:1"
    );
    assert!(df["metadata"]["annotations"].get("team").is_none());
    Ok(())
}

#[tokio::test]
async fn a_hand_made_deployment_changed_before_the_write_is_a_conflict() -> Result<()> {
    let c = Cluster::start().await?;
    hand_made_history(&c, "app").await?;
    let (cx, _) = context(false);
    let planned = c
        .plan(&cx, "rollback", json!({"ns": "app", "deploy": "web"}))
        .await?;
    c.kubectl(&["set", "image", "deploy/web", "app=web:3", "-n", "app"])
        .await?;
    let err = c
        .apply(
            &cx,
            "rollback",
            json!({"ns": "app", "deploy": "web"}),
            &planned,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{}", err.message);
    let d = json_of(&c, &["get", "deploy/web", "-n", "app"]).await?;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:3"
    );

    // A change to status only (the controller's bookkeeping) is not someone else's edit:
    // the write goes through. Let the controller finish its own bookkeeping of web:3 first
    // (it writes the revision annotation through /status, which is more than a status change).
    c.kubectl(&[
        "rollout",
        "status",
        "deploy/web",
        "-n",
        "app",
        "--timeout=60s",
    ])
    .await?;
    let args = json!({"ns": "app", "deploy": "web", "revision": 1});
    let planned = c.plan(&cx, "rollback", args.clone()).await?;
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(c.client.clone(), "app");
    let read = api.get("web").await?.metadata.resource_version;
    api.patch_status(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"observedGeneration": 99}})),
    )
    .await?;
    let moved = api.get("web").await?.metadata.resource_version;
    assert_ne!(moved, read, "status patch did not bump the resourceVersion");
    c.apply(&cx, "rollback", args, &planned).await?;
    let d = json_of(&c, &["get", "deploy/web", "-n", "app"]).await?;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    Ok(())
}

/// The REVISION column of `kubectl rollout history deploy/web`.
async fn history(c: &Cluster, ns: &str) -> Result<Vec<i64>> {
    let out = c
        .kubectl(&["rollout", "history", "deploy/web", "-n", ns])
        .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect())
}

/// The image `deploy/web` runs, as kubectl reads it.
async fn image(c: &Cluster, ns: &str) -> Result<String> {
    c.kubectl(&[
        "get",
        "deploy/web",
        "-n",
        ns,
        "-o=jsonpath={.spec.template.spec.containers[0].image}",
    ])
    .await
}

/// A rollback applied twice (a retry after a lost answer, or a resume after a crash between
/// the write and the step's end) does not roll the rollback back: the second apply of the
/// same journaled intent finds the target template there and writes nothing.
#[tokio::test]
async fn a_replayed_rollback_does_not_undo_itself() -> Result<()> {
    let c = Cluster::start().await?;
    v1_then_v2(&c, "app").await?;
    let (cx, _) = context(false);
    let args = json!({"ns": "app", "deploy": "web"});
    let intent = c.plan(&cx, "rollback", args.clone()).await?;
    let first = c.apply(&cx, "rollback", args.clone(), &intent).await?;
    assert_eq!(first["changed"], true, "{first}");
    c.rollout_status("app").await?;
    let revisions = history(&c, "app").await?;
    assert_eq!(image(&c, "app").await?, "web:1");

    let again = c.apply(&cx, "rollback", args, &intent).await?;
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(
        image(&c, "app").await?,
        "web:1",
        "not flipped back to web:2"
    );
    assert_eq!(history(&c, "app").await?, revisions, "no new revision");
    Ok(())
}

/// A second, separate run for the same incident (the alert fired again after the cooldown)
/// blames what the incident blamed (web:2): the Deployment no longer runs it, so the plan is
/// a no-op that says so, and nothing is written.
#[tokio::test]
async fn a_rollback_from_a_version_no_longer_running_does_nothing() -> Result<()> {
    let c = Cluster::start().await?;
    v1_then_v2(&c, "app").await?;
    let (cx, _) = context(false);
    let args = json!({"ns": "app", "deploy": "web", "from": "web:2"});
    let first = c.call(&cx, "rollback", args.clone()).await?;
    assert_eq!(first["changed"], true, "{first}");
    c.rollout_status("app").await?;
    let revisions = history(&c, "app").await?;

    let intent = c.plan(&cx, "rollback", args.clone()).await?;
    assert!(intent.noop, "{intent:?}");
    assert!(
        intent.summary.contains("no longer runs \"web:2\""),
        "{}",
        intent.summary
    );
    let second = c.apply(&cx, "rollback", args, &intent).await?;
    assert_eq!(second["rolled_back"], false, "{second}");
    assert_eq!(image(&c, "app").await?, "web:1");
    assert_eq!(history(&c, "app").await?, revisions);

    // Blame by pod-template-hash works the same way: the current ReplicaSet's hash is blamed,
    // so it rolls back; a hash no longer running is a no-op.
    let rs: Value =
        serde_json::from_str(&c.kubectl(&["get", "rs", "-n", "app", "-o=json"]).await?)?;
    let hash_of = |img: &str| {
        rs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["spec"]["template"]["spec"]["containers"][0]["image"] == img)
            .and_then(|r| r["metadata"]["labels"]["pod-template-hash"].as_str())
            .unwrap()
            .to_owned()
    };
    let stale = c
        .plan(
            &cx,
            "rollback",
            json!({"ns": "app", "deploy": "web", "from": hash_of("web:2")}),
        )
        .await?;
    assert!(stale.noop);
    let live = c
        .plan(
            &cx,
            "rollback",
            json!({"ns": "app", "deploy": "web", "from": hash_of("web:1")}),
        )
        .await?;
    assert!(!live.noop, "web:1 runs now: blaming it rolls back to web:2");
    Ok(())
}

/// The two races of defect 11, between the plan's read and the apply: an autoscaler changing
/// the replicas leaves the intent valid (the rollback goes through and keeps their replicas,
/// as `kubectl rollout undo` does); someone changing the template is refused.
#[tokio::test]
async fn a_replica_change_before_the_write_is_kept_and_a_template_change_is_refused() -> Result<()>
{
    let c = Cluster::start().await?;
    v1_then_v2(&c, "app").await?;
    let (cx, _) = context(false);
    let args = json!({"ns": "app", "deploy": "web"});
    let intent = c.plan(&cx, "rollback", args.clone()).await?;
    c.kubectl(&["scale", "deploy/web", "--replicas=5", "-n", "app"])
        .await?;
    let out = c.apply(&cx, "rollback", args.clone(), &intent).await?;
    assert_eq!(out["changed"], true, "{out}");
    let d = json_of(&c, &["get", "deploy/web", "-n", "app"]).await?;
    assert_eq!(
        d["spec"]["replicas"], 5,
        "the autoscaler's replicas are kept"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    c.rollout_status("app").await?;

    let intent = c.plan(&cx, "rollback", args.clone()).await?;
    c.kubectl(&["set", "image", "deploy/web", "app=web:3", "-n", "app"])
        .await?;
    let err = c.apply(&cx, "rollback", args, &intent).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{}", err.message);
    assert_eq!(image(&c, "app").await?, "web:3", "their change stands");
    Ok(())
}
