//! End-to-end controller scenarios on the in-memory [`FakeCluster`]: a Deployment created, rolled,
//! rolled back, paused, scaled, crash-looping and recreated, with the clock moved by hand and the
//! rollout bounds checked after every reconcile.

use std::time::Duration;

use serde_json::{Value, json};

use super::deployment_util::{self as util, REVISION_ANNOTATION, REVISION_HISTORY_ANNOTATION};
use super::testing::FakeCluster;
use super::{ControllerConfig, obj, reconcile};
use crate::cluster::{Cluster, Kind};

fn cfg() -> ControllerConfig {
    ControllerConfig::default()
}

fn set_image(c: &mut FakeCluster, name: &str, image: &str) {
    c.edit_deployment(name, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    });
}

fn condition(d: &Value, type_: &str) -> Value {
    util::get_condition(d.get("status").unwrap_or(&Value::Null), type_)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `kubectl rollout status`'s notion of done.
fn rolled_out(d: &Value) -> bool {
    let spec = util::DeploymentSpec::from_deployment(d);
    let s = |k: &str| obj::int_at(d, &["status", k]);
    obj::generation(d) <= obj::i64_at(d, &["status", "observedGeneration"]).unwrap_or(0)
        && s("updatedReplicas") == spec.replicas
        && s("replicas") == s("updatedReplicas")
        && s("availableReplicas") == s("updatedReplicas")
}

/// Reconciles, checks `invariant`, advances the clock by `step_ms`, until `done` or `max_steps`.
fn run_until(
    c: &mut FakeCluster,
    cfg: &ControllerConfig,
    step_ms: i64,
    max_steps: usize,
    mut invariant: impl FnMut(&FakeCluster),
    done: impl Fn(&FakeCluster) -> bool,
) {
    for _ in 0..max_steps {
        reconcile(c, cfg);
        invariant(c);
        if done(c) {
            return;
        }
        c.advance(step_ms);
    }
    panic!(
        "not done after {max_steps} steps: {:#}",
        c.deployment("web")
    );
}

fn roll_out(c: &mut FakeCluster, cfg: &ControllerConfig) {
    run_until(
        c,
        cfg,
        100,
        200,
        |_| {},
        |c| rolled_out(&c.deployment("web")),
    );
}

fn pods_of(c: &FakeCluster, rs: &Value) -> Vec<Value> {
    c.list(Kind::Pod, Some("default"))
        .into_iter()
        .filter(|p| obj::controller_uid(p) == Some(obj::uid(rs)))
        .collect()
}

fn event_messages(c: &FakeCluster, reason: &str) -> Vec<String> {
    c.events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn create_makes_revision_one_and_ready_pods() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 3, "nginx:1.0");
    reconcile(&mut c, &cfg());
    let rses = c.replica_sets("web");
    assert_eq!(rses.len(), 1);
    let rs = &rses[0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(obj::name(rs), format!("web-{hash}"));
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash.as_str()
    );
    assert_eq!(obj::annotation(rs, REVISION_ANNOTATION), Some("1"));
    assert_eq!(
        obj::annotation(rs, util::DESIRED_REPLICAS_ANNOTATION),
        Some("3")
    );
    assert_eq!(
        obj::annotation(rs, util::MAX_REPLICAS_ANNOTATION),
        Some("4")
    );
    let owner = &rs["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(owner["controller"], true);
    let pods = pods_of(&c, rs);
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert!(obj::name(p).starts_with(&format!("web-{hash}-")));
        assert_eq!(obj::name(p).len(), format!("web-{hash}-").len() + 5);
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash.as_str());
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["spec"]["nodeName"], "kubesim-node");
        assert_eq!(
            condition(p, "Ready")["status"],
            "False",
            "ready only after the delay"
        );
    }
    let d = c.deployment("web");
    assert_eq!(obj::annotation(&d, REVISION_ANNOTATION), Some("1"));
    assert_eq!(condition(&d, "Available")["status"], "False");
    assert_eq!(condition(&d, "Progressing")["reason"], "ReplicaSetUpdated");
    assert_eq!(
        obj::generation(&d),
        1,
        "the revision annotation goes through /status"
    );

    c.advance(1_000);
    reconcile(&mut c, &cfg());
    assert!(
        !rolled_out(&c.deployment("web")),
        "the delay counts from the end of the start second"
    );
    c.advance(200);
    reconcile(&mut c, &cfg());
    let d = c.deployment("web");
    assert!(rolled_out(&d), "{d:#}");
    assert_eq!(
        condition(&d, "Available")["reason"],
        "MinimumReplicasAvailable"
    );
    let progressing = condition(&d, "Progressing");
    assert_eq!(progressing["reason"], "NewReplicaSetAvailable");
    assert_eq!(
        progressing["message"],
        format!("ReplicaSet \"web-{hash}\" has successfully progressed.")
    );
    let types: Vec<&str> = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Available", "Progressing"]);
    assert_eq!(d["status"]["readyReplicas"], 3);
    assert_eq!(d["status"].get("unavailableReplicas"), None);
    assert_eq!(
        event_messages(&c, "ScalingReplicaSet"),
        [format!("Scaled up replica set web-{hash} from 0 to 3")]
    );
    assert_eq!(event_messages(&c, "SuccessfulCreate").len(), 3);
    assert_eq!(event_messages(&c, "Scheduled").len(), 3);
    assert_eq!(event_messages(&c, "Started").len(), 3);
    let pod = &pods_of(&c, &c.replica_sets("web")[0])[0];
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["image"], "docker.io/library/nginx:1.0");
    assert_eq!(cs["ready"], true);
    assert!(
        pod["status"]["podIP"]
            .as_str()
            .unwrap()
            .starts_with("10.244.")
    );
    let node = c.get(Kind::Node, None, "kubesim-node").unwrap();
    assert_eq!(condition(&node, "Ready")["status"], "True");
}

#[test]
fn reconcile_is_quiet_once_in_sync() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 3, "nginx:1.0");
    roll_out(&mut c, &cfg());
    let before = c.writes;
    reconcile(&mut c, &cfg());
    c.advance(60_000);
    reconcile(&mut c, &cfg());
    assert_eq!(c.writes, before, "a cluster in sync costs no writes");
}

#[test]
fn rolling_update_respects_surge_and_unavailable_at_every_step() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 4, "nginx:1.0");
    roll_out(&mut c, &cfg());
    set_image(&mut c, "web", "nginx:2.0");
    // 4 replicas, 25%/25%: at most 5 pods, at least 3 available.
    let mut saw_both = false;
    run_until(
        &mut c,
        &cfg(),
        100,
        300,
        |c| {
            let rses = c.replica_sets("web");
            let spec_total: i32 = rses.iter().map(util::rs_replicas).sum();
            let pods: usize = rses.iter().map(|rs| pods_of(c, rs).len()).sum();
            let available: i32 = rses
                .iter()
                .map(|rs| obj::int_at(rs, &["status", "availableReplicas"]))
                .sum();
            assert!(spec_total <= 5, "surge exceeded: {spec_total}");
            assert!(pods <= 5, "surge exceeded: {pods} pods");
            assert!(available >= 3, "too many unavailable: {available}");
            saw_both |= rses.iter().filter(|rs| util::rs_replicas(rs) > 0).count() == 2;
        },
        |c| rolled_out(&c.deployment("web")),
    );
    assert!(saw_both, "old and new ran side by side");
    let rses = c.replica_sets("web");
    assert_eq!(rses.len(), 2);
    assert_eq!(util::rs_replicas(&rses[0]), 0);
    assert_eq!(obj::annotation(&rses[0], REVISION_ANNOTATION), Some("1"));
    assert_eq!(obj::annotation(&rses[1], REVISION_ANNOTATION), Some("2"));
    let d = c.deployment("web");
    assert_eq!(obj::annotation(&d, REVISION_ANNOTATION), Some("2"));
    assert_eq!(
        condition(&d, "Progressing")["reason"],
        "NewReplicaSetAvailable"
    );
    let scaled = event_messages(&c, "ScalingReplicaSet");
    let new_name = obj::name(&rses[1]);
    assert!(
        scaled.contains(&format!("Scaled up replica set {new_name} from 0 to 1")),
        "{scaled:?}"
    );
    assert!(
        scaled.iter().any(|m| m.starts_with(&format!(
            "Scaled down replica set {} from 4 to",
            obj::name(&rses[0])
        ))),
        "{scaled:?}"
    );
}

/// What `kubectl rollout undo` sends: the target RS template without the hash label (as the
/// typed client serialises it) and the Deployment's skip-list annotations.
fn undo_to(c: &mut FakeCluster, revision: &str) {
    let target = c
        .replica_sets("web")
        .into_iter()
        .find(|rs| obj::annotation(rs, REVISION_ANNOTATION) == Some(revision))
        .expect("revision exists");
    let mut template = target["spec"]["template"].clone();
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("pod-template-hash");
    template["metadata"]["creationTimestamp"] = Value::Null;
    template["spec"]["containers"][0]["resources"] = json!({});
    c.edit_deployment("web", |d| {
        let current = obj::annotation(d, REVISION_ANNOTATION).unwrap().to_owned();
        d["spec"]["template"] = template;
        d["metadata"]["annotations"] = json!({REVISION_ANNOTATION: current});
    });
}

#[test]
fn rollback_reuses_the_old_replica_set_with_the_next_revision() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 3, "nginx:1.0");
    roll_out(&mut c, &cfg());
    set_image(&mut c, "web", "nginx:2.0");
    roll_out(&mut c, &cfg());
    let v1 = obj::name(&c.replica_sets("web")[0]).to_owned();

    undo_to(&mut c, "1");
    roll_out(&mut c, &cfg());
    let rses = c.replica_sets("web");
    assert_eq!(rses.len(), 2, "no new ReplicaSet on rollback");
    assert_eq!(obj::name(&rses[0]), v1);
    assert_eq!(obj::annotation(&rses[0], REVISION_ANNOTATION), Some("3"));
    assert_eq!(
        obj::annotation(&rses[0], REVISION_HISTORY_ANNOTATION),
        Some("1")
    );
    assert_eq!(util::rs_replicas(&rses[0]), 3);
    assert_eq!(util::rs_replicas(&rses[1]), 0);
    assert_eq!(
        obj::annotation(&c.deployment("web"), REVISION_ANNOTATION),
        Some("3")
    );

    undo_to(&mut c, "2");
    roll_out(&mut c, &cfg());
    let rses = c.replica_sets("web");
    assert_eq!(rses.len(), 2);
    assert_eq!(obj::annotation(&rses[1], REVISION_ANNOTATION), Some("4"));
    assert_eq!(
        obj::annotation(&rses[1], REVISION_HISTORY_ANNOTATION),
        Some("2")
    );
    assert_eq!(util::rs_replicas(&rses[1]), 3);
    assert_eq!(
        obj::annotation(&c.deployment("web"), REVISION_ANNOTATION),
        Some("4")
    );
}

#[test]
fn change_cause_is_copied_to_the_new_replica_set() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 2, "nginx:1.0");
    roll_out(&mut c, &cfg());
    c.edit_deployment("web", |d| {
        d["metadata"]["annotations"]["kubernetes.io/change-cause"] =
            json!("kubectl set image deploy/web app=nginx:2.0 --record=true");
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2.0");
    });
    roll_out(&mut c, &cfg());
    let rses = c.replica_sets("web");
    assert_eq!(
        obj::annotation(&rses[0], "kubernetes.io/change-cause"),
        None
    );
    assert_eq!(
        obj::annotation(&rses[1], "kubernetes.io/change-cause"),
        Some("kubectl set image deploy/web app=nginx:2.0 --record=true")
    );
}

#[test]
fn revision_history_limit_deletes_the_oldest_scaled_down_replica_sets() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 2, "nginx:1.0");
    c.edit_deployment("web", |d| d["spec"]["revisionHistoryLimit"] = json!(2));
    roll_out(&mut c, &cfg());
    for v in 2..=5 {
        set_image(&mut c, "web", &format!("nginx:{v}.0"));
        roll_out(&mut c, &cfg());
    }
    let revisions: Vec<String> = c
        .replica_sets("web")
        .iter()
        .map(|rs| {
            obj::annotation(rs, REVISION_ANNOTATION)
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(revisions, ["3", "4", "5"]);
    let pods = c.list(Kind::Pod, Some("default"));
    assert_eq!(pods.len(), 2, "the deleted ReplicaSets left no pods behind");
}

#[test]
fn pause_stops_the_rollout_and_resume_finishes_it() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 3, "nginx:1.0");
    roll_out(&mut c, &cfg());
    c.edit_deployment("web", |d| d["spec"]["paused"] = json!(true));
    set_image(&mut c, "web", "nginx:2.0");
    for _ in 0..5 {
        reconcile(&mut c, &cfg());
        c.advance(1_000);
    }
    let d = c.deployment("web");
    assert_eq!(
        c.replica_sets("web").len(),
        1,
        "no new ReplicaSet while paused"
    );
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );
    let progressing = condition(&d, "Progressing");
    assert_eq!(
        (
            progressing["status"].as_str(),
            progressing["reason"].as_str()
        ),
        (Some("Unknown"), Some("DeploymentPaused"))
    );
    assert_eq!(progressing["message"], "Deployment is paused");
    assert_eq!(
        d["status"]["updatedReplicas"],
        Value::Null,
        "0 updated, omitted"
    );

    c.edit_deployment("web", |d| {
        d["spec"].as_object_mut().unwrap().remove("paused");
    });
    reconcile(&mut c, &cfg());
    assert_eq!(c.replica_sets("web").len(), 2);
    roll_out(&mut c, &cfg());
    assert_eq!(
        condition(&c.deployment("web"), "Progressing")["reason"],
        "NewReplicaSetAvailable"
    );
}

#[test]
fn scaling_updates_the_active_replica_set_and_its_annotations() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 3, "nginx:1.0");
    roll_out(&mut c, &cfg());
    c.edit_deployment("web", |d| d["spec"]["replicas"] = json!(5));
    roll_out(&mut c, &cfg());
    let rs = &c.replica_sets("web")[0];
    assert_eq!(util::rs_replicas(rs), 5);
    assert_eq!(
        obj::annotation(rs, util::DESIRED_REPLICAS_ANNOTATION),
        Some("5")
    );
    assert_eq!(
        obj::annotation(rs, util::MAX_REPLICAS_ANNOTATION),
        Some("7")
    );
    let name = obj::name(rs).to_owned();
    assert!(
        event_messages(&c, "ScalingReplicaSet")
            .contains(&format!("Scaled up replica set {name} from 3 to 5"))
    );
    c.edit_deployment("web", |d| d["spec"]["replicas"] = json!(1));
    roll_out(&mut c, &cfg());
    assert_eq!(pods_of(&c, &c.replica_sets("web")[0]).len(), 1);
    assert!(
        event_messages(&c, "ScalingReplicaSet")
            .contains(&format!("Scaled down replica set {name} from 5 to 1"))
    );
    assert_eq!(event_messages(&c, "SuccessfulDelete").len(), 4);
}

#[test]
fn scaling_mid_rollout_is_proportional() {
    let mut c = FakeCluster::new();
    let slow = ControllerConfig {
        pod_ready_delay: Duration::from_secs(3600),
        ..cfg()
    };
    c.create_deployment("web", 10, "nginx:1.0");
    roll_out(&mut c, &cfg());
    set_image(&mut c, "web", "nginx:2.0");
    // New pods never become ready: the rollout holds at 3 new (surge) and 8 old (unavailable 2).
    reconcile(&mut c, &slow);
    let sizes = |c: &FakeCluster| {
        c.replica_sets("web")
            .iter()
            .map(util::rs_replicas)
            .collect::<Vec<_>>()
    };
    assert_eq!(sizes(&c), [8, 5]);
    c.edit_deployment("web", |d| d["spec"]["replicas"] = json!(20));
    reconcile(&mut c, &slow);
    // 20 + 5 surge = 25 spread over 8:5 → 15:10 (8*25/13 = 15.4, 5*25/13 = 9.6, leftovers to the largest).
    let after = sizes(&c);
    assert_eq!(after.iter().sum::<i32>(), 25);
    assert_eq!(after, [15, 10]);
    let rs = &c.replica_sets("web")[1];
    assert_eq!(
        obj::annotation(rs, util::DESIRED_REPLICAS_ANNOTATION),
        Some("20")
    );
}

#[test]
fn crashloop_stalls_the_rollout_until_the_progress_deadline() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 3, "model:v1");
    c.edit_deployment("web", |d| d["spec"]["progressDeadlineSeconds"] = json!(30));
    roll_out(&mut c, &cfg());
    set_image(&mut c, "web", "model:v2-crashloop");
    let start = c.now;
    run_until(
        &mut c,
        &cfg(),
        1_000,
        120,
        |c| {
            let rses = c.replica_sets("web");
            assert_eq!(
                obj::int_at(&rses[0], &["status", "availableReplicas"]),
                3,
                "the old pods keep serving"
            );
        },
        |c| condition(&c.deployment("web"), "Progressing")["reason"] == "ProgressDeadlineExceeded",
    );
    let waited = c.now.as_second() - start.as_second();
    assert!((30..=33).contains(&waited), "deadline after {waited}s");
    let d = c.deployment("web");
    let new_rs = &c.replica_sets("web")[1];
    let progressing = condition(&d, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(
        progressing["message"],
        format!(
            "ReplicaSet \"{}\" has timed out progressing.",
            obj::name(new_rs)
        )
    );
    assert_eq!(condition(&d, "Available")["status"], "True");
    let pod = &pods_of(&c, new_rs)[0];
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(
        cs["state"]["waiting"]["reason"], "CrashLoopBackOff",
        "{cs:#}"
    );
    assert!(cs["restartCount"].as_i64().unwrap() >= 2);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
    let backoffs = c
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "BackOff")
        .collect::<Vec<_>>();
    assert!(!backoffs.is_empty());
    assert_eq!(backoffs[0]["type"], "Warning");
    assert!(
        backoffs[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Back-off restarting failed container app in pod ")
    );
    // The condition sticks: more time does not flip it back.
    c.advance(60_000);
    reconcile(&mut c, &cfg());
    assert_eq!(
        condition(&c.deployment("web"), "Progressing")["reason"],
        "ProgressDeadlineExceeded"
    );
    // Logs of a crashed container end in errors.
    let logs = super::kubelet::pod_logs(&pods_of(&c, new_rs)[0], c.now, Some(1));
    assert!(logs[0].contains("ERROR"), "{logs:?}");
}

#[test]
fn recreate_never_runs_old_and_new_pods_together() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 3, "nginx:1.0");
    c.edit_deployment("web", |d| {
        d["spec"]["strategy"] = json!({"type": "Recreate"})
    });
    roll_out(&mut c, &cfg());
    set_image(&mut c, "web", "nginx:2.0");
    run_until(
        &mut c,
        &cfg(),
        100,
        100,
        |c| {
            let rses = c.replica_sets("web");
            let with_pods = rses.iter().filter(|rs| !pods_of(c, rs).is_empty()).count();
            assert!(with_pods <= 1, "old and new pods together");
        },
        |c| rolled_out(&c.deployment("web")),
    );
    let rses = c.replica_sets("web");
    assert_eq!(
        rses.iter().map(util::rs_replicas).collect::<Vec<_>>(),
        [0, 3]
    );
}

#[test]
fn never_ready_images_back_off_pulling() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 1, "model:never-ready");
    reconcile(&mut c, &cfg());
    let pod = &c.list(Kind::Pod, None)[0];
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ErrImagePull"
    );
    c.advance(6_000);
    reconcile(&mut c, &cfg());
    let pod = &c.list(Kind::Pod, None)[0];
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ImagePullBackOff"
    );
    let failed = event_messages(&c, "Failed");
    assert!(failed.contains(&"Error: ErrImagePull".to_owned()));
    assert!(failed.contains(&"Error: ImagePullBackOff".to_owned()));
}

#[test]
fn slow_ready_and_oomkilled_faults() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 1, "nginx:1.0");
    c.edit_deployment("web", |d| {
        d["spec"]["template"]["metadata"]["annotations"] =
            json!({"kubesim.io/fault": "slow-ready=5000"});
    });
    reconcile(&mut c, &cfg());
    c.advance(5_500);
    reconcile(&mut c, &cfg());
    assert_eq!(c.deployment("web")["status"].get("readyReplicas"), None);
    c.advance(500);
    reconcile(&mut c, &cfg());
    assert_eq!(c.deployment("web")["status"]["readyReplicas"], 1);

    let mut c = FakeCluster::new();
    let oom = ControllerConfig {
        image_faults: [("model:v1".to_owned(), super::Fault::OomKilled)].into(),
        ..cfg()
    };
    c.create_deployment("web", 1, "model:v1");
    reconcile(&mut c, &oom);
    c.advance(47_000);
    reconcile(&mut c, &oom);
    let pod = &c.list(Kind::Pod, None)[0];
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["reason"], "OOMKilled");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137);
    assert_eq!(cs["restartCount"], 1);
    assert_eq!(cs["ready"], true, "ready again after the restart");
}

#[test]
fn a_not_ready_node_turns_its_pods_unready_then_evicts_them() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 2, "nginx:1.0");
    roll_out(&mut c, &cfg());
    let mut node = c.get(Kind::Node, None, "kubesim-node").unwrap();
    node["metadata"]["annotations"]["kubesim.io/not-ready"] = json!("true");
    c.update(Kind::Node, node).unwrap();
    reconcile(&mut c, &cfg());
    let node = c.get(Kind::Node, None, "kubesim-node").unwrap();
    assert_eq!(condition(&node, "Ready")["status"], "False");
    assert!(
        node["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready")
    );
    let not_ready = event_messages(&c, "NodeNotReady");
    assert_eq!(
        not_ready.len(),
        3,
        "the node's and one per pod: {not_ready:?}"
    );
    assert!(not_ready.contains(&"Node kubesim-node status is now: NodeNotReady".to_owned()));
    let d = c.deployment("web");
    assert_eq!(d["status"].get("availableReplicas"), None);
    assert_eq!(condition(&d, "Available")["status"], "False");
    // After the 300 s toleration the pods are evicted; with no Ready node the new ones wait.
    c.advance(301_000);
    reconcile(&mut c, &cfg());
    assert!(!event_messages(&c, "TaintManagerEviction").is_empty());
    let pods = c.list(Kind::Pod, None);
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(condition(p, "PodScheduled")["reason"], "Unschedulable");
    }
    assert!(!event_messages(&c, "FailedScheduling").is_empty());
}

#[test]
fn deleting_a_deployment_collects_its_replica_sets_and_pods() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 2, "nginx:1.0");
    roll_out(&mut c, &cfg());
    c.delete(Kind::Deployment, Some("default"), "web").unwrap();
    reconcile(&mut c, &cfg());
    assert!(c.list(Kind::ReplicaSet, None).is_empty());
    assert!(c.list(Kind::Pod, None).is_empty());
}

#[test]
fn services_get_endpoints_of_ready_pods() {
    let mut c = FakeCluster::new();
    c.create_deployment("web", 2, "nginx:1.0");
    c.create(Kind::Service, json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}))
        .unwrap();
    reconcile(&mut c, &cfg());
    let ep = c.get(Kind::Endpoints, Some("default"), "web").unwrap();
    assert_eq!(
        ep["subsets"][0]["notReadyAddresses"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    roll_out(&mut c, &cfg());
    let ep = c.get(Kind::Endpoints, Some("default"), "web").unwrap();
    assert_eq!(ep["subsets"][0]["addresses"].as_array().unwrap().len(), 2);
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
}

#[test]
fn orphans_matching_the_selector_are_adopted() {
    let mut c = FakeCluster::new();
    // A bare pod with the app label exists before its ReplicaSet does.
    c.create(Kind::Pod, json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "stray", "namespace": "default", "labels": {"app": "web", "pod-template-hash": "x"}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.0"}]}}))
        .unwrap();
    c.create(Kind::ReplicaSet, json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-x", "namespace": "default", "labels": {"app": "web", "pod-template-hash": "x"}},
        "spec": {"replicas": 2,
                 "selector": {"matchLabels": {"app": "web", "pod-template-hash": "x"}},
                 "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "x"}},
                              "spec": {"containers": [{"name": "app", "image": "nginx:1.0"}]}}}}))
        .unwrap();
    c.create_deployment("web", 2, "nginx:1.0");
    roll_out(&mut c, &cfg());
    let rses = c.replica_sets("web");
    assert_eq!(
        rses.len(),
        1,
        "the orphan RS with the same template is the new RS"
    );
    assert_eq!(obj::name(&rses[0]), "web-x");
    assert_eq!(obj::annotation(&rses[0], REVISION_ANNOTATION), Some("1"));
    let pods = pods_of(&c, &rses[0]);
    assert_eq!(pods.len(), 2);
    assert!(
        pods.iter().any(|p| obj::name(p) == "stray"),
        "the stray pod was adopted"
    );
    let d = c.deployment("web");
    assert!(
        d["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Progressing"),
        "{d:#}"
    );
}
