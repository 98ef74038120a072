//! Run takeover between replicas on one nats-server: three `firebreak serve` replicas share
//! the events, the KV store and the audit stream. The replica running scenario 1's rollback is
//! killed (SIGKILL) while the run waits for the rollout; another replica takes the run over
//! once its lease ran out; that one is then told to stop (SIGTERM) mid-wait and the third takes
//! the run over at once and finishes it, without rolling back twice. The killed replica,
//! started again, does not run it again.

use std::time::{Duration, Instant};

use firebreak_bus::testutil::NatsServer;
use serde_json::Value;

use crate::harness::{
    Cluster, Serve, ServeOpts, copy_shipped_runbooks, fraud_model_at_v2, latency_alert, wait_for,
};

const ROLLBACK: &str = "model-latency-rollback";
/// The run lease the replicas use (production: 15 s).
const LEASE: Duration = Duration::from_secs(3);
/// How long a rolled-out pod takes to be Ready: the rollout wait the replica dies in.
const POD_READY: Duration = Duration::from_secs(6);

async fn replica(cluster: &Cluster, nats: &NatsServer, runbooks: &std::path::Path) -> Serve {
    Serve::start(
        runbooks,
        ServeOpts {
            env: vec![
                ("FIREBREAK_NATS_URL", nats.url()),
                ("FIREBREAK_NATS_RUN_LEASE", format!("{}s", LEASE.as_secs())),
                (
                    "FIREBREAK_KUBECONFIG",
                    cluster.kubeconfig.display().to_string(),
                ),
            ],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await
}

/// The records of run `run_id` in `serve`'s journal.
fn records_of(serve: &Serve, run_id: &str) -> Vec<Value> {
    serve
        .journal()
        .records
        .into_iter()
        .filter(|r| r["run_id"] == run_id)
        .collect()
}

fn replica_id(serve: &Serve) -> String {
    std::fs::read_to_string(serve.data_dir.join("replica-id"))
        .expect("the replica's id in its data dir")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_in_the_rollout_wait_has_its_run_finished_by_another() {
    let nats = NatsServer::start().expect("nats-server -js");
    let cluster = Cluster::start(kubesim::ControllerConfig {
        pod_ready_delay: POD_READY,
        ..kubesim::ControllerConfig::default()
    })
    .await;
    fraud_model_at_v2(&cluster).await;
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    copy_shipped_runbooks(&runbooks);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&cluster, &nats, &runbooks).await);
    }

    let (status, body) = replicas[0]
        .post("/v1/alertmanager", None, latency_alert())
        .await;
    assert_eq!(status, 202, "{body}");

    // Whichever replica the shared consumer gave the alert to: wait until its run is in the
    // rollout wait, after the rollback's write.
    let (owner, run_id) = wait_for(
        "a replica's run to wait for the rollout",
        Duration::from_secs(60),
        || replicas.iter().map(Serve::log_tail).collect::<String>(),
        || {
            let found = replicas.iter().enumerate().find_map(|(i, serve)| {
                serve.journal().records.iter().find_map(|r| {
                    (r["body"]["type"] == "step_started"
                        && r["body"]["name"] == "k8s::wait_rollout")
                        .then(|| (i, r["run_id"].as_str().unwrap().to_owned()))
                })
            });
            std::future::ready(found)
        },
    )
    .await;
    assert_eq!(
        cluster.fraud_model_revisions().await,
        vec![2, 3],
        "the rollback's write happened before the kill"
    );
    let dead_replica = replica_id(&replicas[owner]);
    replicas[owner].kill();
    let killed = Instant::now();
    let dead_records = records_of(&replicas[owner], &run_id);

    // Another replica takes the run over once the lease ran out and finishes it.
    let (taker, taken_after) = wait_for(
        "another replica to take the run over",
        LEASE + Duration::from_secs(15),
        || replicas.iter().map(Serve::log_tail).collect::<String>(),
        || {
            let found = (0..3).filter(|i| *i != owner).find(|i| {
                records_of(&replicas[*i], &run_id)
                    .iter()
                    .any(|r| r["body"]["type"] == "run_taken_over")
            });
            std::future::ready(found.map(|i| (i, killed.elapsed())))
        },
    )
    .await;
    eprintln!(
        "taken over by replica {taker} {:.1} s after the kill (lease {} s)",
        taken_after.as_secs_f64(),
        LEASE.as_secs()
    );
    assert!(
        taken_after < LEASE + Duration::from_secs(5),
        "taken over within the lease plus a few seconds: {taken_after:?}"
    );
    // The taker is told to stop (SIGTERM, as Kubernetes does) while it waits for the rollout:
    // it suspends the run at once and lets the lease go, and the third replica takes the run
    // over without waiting for the lease to run out.
    let first_taker = taker;
    wait_for(
        "the taker to wait for the rollout",
        Duration::from_secs(20),
        || replicas[first_taker].log_tail(),
        || {
            let waiting = records_of(&replicas[first_taker], &run_id).iter().any(|r| {
                r["body"]["type"] == "step_started" && r["body"]["name"] == "k8s::wait_rollout"
            });
            std::future::ready(waiting.then_some(()))
        },
    )
    .await;
    let stopping = Instant::now();
    let code = replicas[first_taker].terminate().await;
    let stopped_in = stopping.elapsed();
    assert_eq!(code, Some(0), "{}", replicas[first_taker].log_tail());
    assert!(
        stopped_in < Duration::from_secs(5),
        "stopped at once, mid-wait: {stopped_in:?}"
    );
    let stopped = Instant::now();
    let taker = 3 - owner - first_taker;
    let handed_over = wait_for(
        "the third replica to take the run over",
        LEASE + Duration::from_secs(10),
        || replicas[taker].log_tail(),
        || {
            let taken = records_of(&replicas[taker], &run_id)
                .iter()
                .any(|r| r["body"]["type"] == "run_taken_over");
            std::future::ready(taken.then(|| stopped.elapsed()))
        },
    )
    .await;
    eprintln!(
        "replica {first_taker} stopped in {:.1} s mid-wait; replica {taker} took the run over {:.1} s later",
        stopped_in.as_secs_f64(),
        handed_over.as_secs_f64()
    );
    assert!(
        handed_over < LEASE - Duration::from_secs(1),
        "a released lease is taken over without waiting for it to run out: {handed_over:?}"
    );
    let handed = records_of(&replicas[taker], &run_id)
        .into_iter()
        .find(|r| r["body"]["type"] == "run_taken_over")
        .unwrap();
    assert_eq!(
        handed["body"]["from_replica"],
        replica_id(&replicas[first_taker]).as_str()
    );
    let stopped_records = records_of(&replicas[first_taker], &run_id);
    assert_eq!(
        handed["body"]["last_hash"],
        stopped_records.last().unwrap()["hash"],
        "linked to the stopped replica's last record of the run: {handed}\nthe stopped replica's: {}",
        stopped_records
            .iter()
            .map(|r| format!("{} {} {}", r["seq"], r["body"]["type"], r["hash"]))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The taking replica's journal holds the run from its takeover on (no `run_started`).
    let end = wait_for(
        "the taken-over run to finish",
        Duration::from_secs(60),
        || replicas[taker].log_tail(),
        || {
            let end = records_of(&replicas[taker], &run_id)
                .into_iter()
                .find(|r| r["body"]["type"] == "run_finished");
            std::future::ready(end)
        },
    )
    .await;
    assert_eq!(
        end["body"]["status"],
        "succeeded",
        "{}",
        replicas[taker].log_tail()
    );
    eprintln!(
        "finished {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );

    // The first takeover links, by hash, to the dead replica's last record of the run that
    // reached the stream. Killed at any instant, it may have held one last record it had made
    // durable but not yet published; whatever reached the stream is its journal's records in
    // order.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let on_stream: Vec<Value> = crate::audit_stream_lines(&js)
        .await
        .iter()
        .map(|line| serde_json::from_slice::<Value>(line).unwrap())
        .filter(|r| r["run_id"] == run_id)
        .take_while(|r| r["body"]["type"] != "run_taken_over")
        .collect();
    assert!(
        !on_stream.is_empty() && dead_records.starts_with(&on_stream),
        "the stream holds the dead replica's records in its journal's order"
    );
    eprintln!(
        "the dead replica journaled {} records of the run, the stream held {}",
        dead_records.len(),
        on_stream.len()
    );
    let last_before = on_stream.last().unwrap();
    let records = records_of(&replicas[first_taker], &run_id);
    let link = records
        .iter()
        .find(|r| r["body"]["type"] == "run_taken_over")
        .unwrap();
    assert_eq!(link["body"]["from_replica"], dead_replica.as_str());
    assert_eq!(
        link["body"]["by_replica"],
        replica_id(&replicas[first_taker]).as_str()
    );
    assert_eq!(link["body"]["last_hash"], last_before["hash"], "{link}");
    assert_eq!(link["body"]["last_seq"], last_before["seq"]);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["body"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(&kinds[..2], ["run_taken_over", "run_resumed"], "{kinds:?}");
    // The rollback is not repeated: it started once, on the dead replica; here it replays.
    let rollbacks_started: usize = replicas
        .iter()
        .map(|serve| {
            records_of(serve, &run_id)
                .iter()
                .filter(|r| {
                    r["body"]["type"] == "step_started" && r["body"]["name"] == "k8s::rollback"
                })
                .count()
        })
        .sum();
    assert_eq!(rollbacks_started, 1, "one rollback action in all journals");
    assert_eq!(
        cluster.fraud_model_revisions().await,
        vec![2, 3],
        "exactly one rollback in kubectl rollout history"
    );
    assert!(cluster.fraud_model_image().await.ends_with(":v1"));
    let verify = replicas[taker]
        .cli(&["audit", "verify"])
        .await
        .ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
    // The taking replica's API (and run console) shows the run with its takeover.
    let (status, shown) = replicas[taker]
        .get(&format!("/v1/runs/{run_id}"), None)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
    assert!(
        shown["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["body"]["type"] == "run_taken_over"),
        "{shown}"
    );
    // The central stream: three journals interleaved, the takeover's link checked.
    let central = replicas[taker]
        .cli(&["audit", "verify", "--stream"])
        .await
        .ok("audit verify --stream");
    assert!(central.stdout.starts_with("ok: "), "{central}");
    assert!(
        central.stdout.contains(&format!(
            "taken over: run {run_id} from {dead_replica} by {}",
            replica_id(&replicas[first_taker])
        )) && central.stdout.contains(&format!(
            "taken over: run {run_id} from {} by {}",
            replica_id(&replicas[first_taker]),
            replica_id(&replicas[taker])
        )),
        "{central}"
    );

    // The killed replica comes back: it finds the run ended on the other replica, closes it
    // in its own journal and does nothing to the cluster.
    replicas[owner].restart().await;
    let closed = replicas[owner]
        .wait_journal(
            "the restarted replica to close the run",
            Duration::from_secs(30),
            |j| !j.finished(ROLLBACK).is_empty(),
        )
        .await;
    let end = closed.finished(ROLLBACK)[0]
        .records
        .last()
        .cloned()
        .cloned()
        .unwrap();
    assert_eq!(end["body"]["status"], "succeeded", "{end}");
    assert!(
        end["body"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("took the run over")),
        "{end}"
    );
    assert!(
        !records_of(&replicas[owner], &run_id)
            .iter()
            .any(|r| r["body"]["type"] == "run_resumed"),
        "not resumed by the replica that came back"
    );
    assert_eq!(cluster.fraud_model_revisions().await, vec![2, 3]);
}

/// The same incident handled twice by two replicas (the alert fired again after the cooldown,
/// and the shared consumer gave it to another replica): the second run gets the version the
/// first one blamed through the state they share, finds the Deployment no longer runs it, and
/// does nothing. Decided again on the second replica, it would blame the rollback's revision
/// and roll the rollback back (v2 → v1 → v2).
#[tokio::test(flavor = "multi_thread")]
async fn an_incidents_later_run_on_another_replica_keeps_the_first_runs_decision() {
    let nats = NatsServer::start().expect("nats-server -js");
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    copy_shipped_runbooks(&runbooks);
    // A cooldown and a duplicate window short enough to send the alert again.
    let manifest = runbooks.join(format!("{ROLLBACK}.yaml"));
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    assert!(yaml.contains("cooldown: 10m"));
    std::fs::write(&manifest, yaml.replace("cooldown: 10m", "cooldown: 1s")).unwrap();
    // Without its `version` label: the blamed version is the revision running when the
    // incident began, decided by the first run.
    let mut alert: Value = serde_json::from_str(&latency_alert()).unwrap();
    alert["alerts"][0]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("version");
    let alert = alert.to_string();
    let start = || {
        Serve::start(
            &runbooks,
            ServeOpts {
                env: vec![
                    ("FIREBREAK_NATS_URL", nats.url()),
                    ("FIREBREAK_NATS_DUPLICATE_WINDOW", "1s".into()),
                    (
                        "FIREBREAK_KUBECONFIG",
                        cluster.kubeconfig.display().to_string(),
                    ),
                ],
                kubernetes: true,
                ..ServeOpts::default()
            },
        )
    };
    let finished = |serve: &Serve| serve.journal().finished(ROLLBACK).len();

    let first = start().await;
    let (status, body) = first.post("/v1/alertmanager", None, alert.clone()).await;
    assert_eq!(status, 202, "{body}");
    first
        .wait_journal("the first run", Duration::from_secs(60), |j| {
            !j.finished(ROLLBACK).is_empty()
        })
        .await;
    assert_eq!(finished(&first), 1);
    assert_eq!(cluster.fraud_model_revisions().await, vec![2, 3]);
    assert!(cluster.fraud_model_image().await.ends_with(":v1"));
    let first_run = first.journal().finished(ROLLBACK)[0].run_id.clone();
    let mut first = first;
    assert_eq!(first.terminate().await, Some(0));

    let second = start().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = second.post("/v1/alertmanager", None, alert).await;
    assert_eq!(status, 202, "{body}");
    let journal = second
        .wait_journal("the second run", Duration::from_secs(60), |j| {
            !j.finished(ROLLBACK).is_empty()
        })
        .await;
    let run = &journal.finished(ROLLBACK)[0];
    let trail: Vec<String> = run
        .records
        .iter()
        .map(|r| crate::harness::trail_line(r))
        .collect();
    let decided = run
        .records
        .iter()
        .find(|r| r["body"]["type"] == "step_finished" && r["body"]["name"] == "once:blamed")
        .unwrap_or_else(|| panic!("{trail:#?}"));
    assert_eq!(
        decided["body"]["inputs"]["decided_by_run"],
        first_run.as_str(),
        "{trail:#?}"
    );
    assert!(
        run.records
            .iter()
            .any(|r| r.to_string().contains("nothing rolled back")),
        "{trail:#?}"
    );
    assert_eq!(
        cluster.fraud_model_revisions().await,
        vec![2, 3],
        "not rolled back again"
    );
    assert!(cluster.fraud_model_image().await.ends_with(":v1"));
}

/// A run that ends between a lease renewal's look at the runs in flight and its own renewal
/// has released its lock: that is its end, not a lease another replica took. One replica,
/// short runs ending all the time, a renewal every third of a second: no run's lease is
/// reported lost (each report is a warning an operator is paged for, and a metric).
#[tokio::test(flavor = "multi_thread")]
async fn runs_ending_during_a_lease_renewal_are_not_reported_as_lost() {
    let nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    crate::harness::write_runbooks(
        &runbooks,
        &[
            (
                "probe.yaml",
                "name: probe\nteam: sre\ndescription: a short run per alert\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"Probe\"']\n\
                 params:\n  fp: { from: event, key: fingerprint, type: string, required: true }\n\
                 concurrency: \"{{params.fp}}\"\n",
            ),
            ("probe.rhai", "sleep(40);\n"),
        ],
    );
    let serve = Serve::start(
        &runbooks,
        ServeOpts {
            env: vec![
                ("FIREBREAK_NATS_URL", nats.url()),
                ("FIREBREAK_NATS_RUN_LEASE", "1s".into()),
            ],
            ..ServeOpts::default()
        },
    )
    .await;
    // 100 webhooks of 8 alerts each, one every 30 ms: about 250 runs a second, each 40 ms
    // long, so runs are in flight at every moment and every renewal (every 333 ms) finds about
    // ten, several of which end before their turn. (Bursts of 40 every 150 ms left gaps of
    // 100 ms with nothing in flight, and once every renewal fell into one.)
    let (webhooks, per_webhook) = (100, 8);
    for w in 0..webhooks {
        let alerts: Vec<Value> = (0..per_webhook)
            .map(|a| {
                serde_json::json!({"status": "firing",
                    "labels": {"alertname": "Probe", "namespace": "shop", "n": format!("{w}-{a}")},
                    "annotations": {}, "startsAt": "2026-11-27T03:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                    "fingerprint": format!("{:016x}", w * 1000 + a)})
            })
            .collect();
        let body = serde_json::json!({
            "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": format!("g{w}"),
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
            "alerts": alerts,
        });
        let (status, answer) = serve.post("/v1/alertmanager", None, body.to_string()).await;
        assert_eq!(status, 202, "{answer}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let journal = serve
        .wait_journal("every run finished", Duration::from_secs(60), |j| {
            j.finished("probe").len() == webhooks * per_webhook
        })
        .await;
    let succeeded = journal
        .finished("probe")
        .iter()
        .filter(|r| r.status() == Some("succeeded"))
        .count();
    assert_eq!(succeeded, webhooks * per_webhook, "{}", serve.log_tail());
    // Two more renewals after the last run, so a late report would be counted too.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let lost: Vec<Value> = serve
        .log_lines()
        .into_iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("run lease lost"))
        })
        .collect();
    let metrics = crate::harness::scrape_checked(&serve).await;
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    };
    // Renewals did run while runs were in flight (else nothing was tested).
    let renewed = sum("firebreak_run_lease_renewals_total");
    assert!(renewed >= 10.0, "{renewed} lease renewals");
    let counted = sum("firebreak_run_leases_lost_total");
    assert!(
        lost.is_empty() && counted == 0.0,
        "{} runs reported as lost ({counted} counted), on one replica: {:#?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// A TCP proxy to nats-server that can be paused: while paused it forwards nothing either way
/// (what was sent waits), as a network partition between one replica and NATS does, with
/// both ends alive.
struct Partition {
    url: String,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn to(nats: &NatsServer) -> Partition {
        use std::sync::atomic::{AtomicBool, Ordering};
        let upstream = nats.url().trim_start_matches("nats://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let paused = std::sync::Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let paused = paused.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    for (mut from, mut to) in
                        [(client_read, server_write), (server_read, client_write)].map(|(r, w)| {
                            (
                                Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                                w,
                            )
                        })
                    {
                        let paused = paused.clone();
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                            let mut buf = vec![0; 64 << 10];
                            loop {
                                let n = match from.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                while paused.load(Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                                if to.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                }
            }
        });
        Partition { url, paused, task }
    }

    fn cut(&self, cut: bool) {
        self.paused.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A replica cut off from NATS (alive, its connection hanging) just before its run's rollback:
/// the run's lease runs out, another replica takes the run over and rolls back. When the
/// partition heals, the first replica's write-ahead record of the rollback gets through at
/// last, and the replica must not roll back again (a rollback without a precondition flips the
/// Deployment back): the run stops before the write. One rollback in `kubectl rollout history`.
/// Here the lease renewal's answer usually comes first and stops the run (the build before the
/// fence passed 3 of 3 tries too); the fence holds the other order, which
/// `a_mutation_whose_lease_is_not_known_to_hold_is_not_applied_and_the_run_suspends` and
/// `a_replica_knows_its_lease_holds_only_while_it_renews_it` pin down.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_cut_off_from_nats_past_its_lease_does_not_write_once_it_is_back() {
    let nats = NatsServer::start().expect("nats-server -js");
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    std::fs::write(
        runbooks.join("undo.yaml"),
        "name: undo\nteam: ml-platform\ndescription: rolls back after a pause\n\
         namespaces: [ml-serving]\ntriggers:\n  - source: alertmanager\n    status: firing\n    \
         match: ['alertname=\"ModelLatencyHigh\"']\nparams:\n  namespace: { from: label, key: namespace, type: string, required: true }\n  \
         deployment: { from: label, key: deployment, type: string, required: true }\n\
         concurrency: \"{{params.namespace}}/{{params.deployment}}\"\n",
    )
    .unwrap();
    // No precondition: a second rollback would roll the first one back.
    std::fs::write(
        runbooks.join("undo.rhai"),
        "sleep(3000);\nlog(\"computing\");\nlet x = 0;\nfor i in 0..2000000 { x += i; }\n\
         let undo = k8s::rollback(ctx.params.namespace, ctx.params.deployment, 0, \"\");\n\
         log(`rolled back: ${undo.rolled_back}`);\n",
    )
    .unwrap();
    let partition = Partition::to(&nats).await;
    let replica_on = |url: String| {
        Serve::start(
            &runbooks,
            ServeOpts {
                env: vec![
                    ("FIREBREAK_NATS_URL", url),
                    ("FIREBREAK_NATS_RUN_LEASE", format!("{}s", LEASE.as_secs())),
                    (
                        "FIREBREAK_KUBECONFIG",
                        cluster.kubeconfig.display().to_string(),
                    ),
                ],
                kubernetes: true,
                ..ServeOpts::default()
            },
        )
    };
    let cut_off = replica_on(partition.url.clone()).await;
    let (status, body) = cut_off
        .post("/v1/alertmanager", None, latency_alert())
        .await;
    assert_eq!(status, 202, "{body}");
    let run_id = wait_for(
        "the run to sleep",
        Duration::from_secs(30),
        || cut_off.log_tail(),
        || {
            let found = cut_off.journal().records.iter().find_map(|r| {
                (r["body"]["type"] == "step_started" && r["body"]["name"] == "sleep")
                    .then(|| r["run_id"].as_str().unwrap().to_owned())
            });
            std::future::ready(found)
        },
    )
    .await;
    // Cut while the script computes after its sleep: the rollback's write-ahead record is the
    // first record that meets the partition.
    let cut_at = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(cut_off.log_path())
        .unwrap_or_default()
        .contains("computing")
    {
        assert!(std::time::Instant::now() < cut_at, "{}", cut_off.log_tail());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    partition.cut(true);

    let other = replica_on(nats.url()).await;
    wait_for(
        "the other replica to take the run over and finish it",
        LEASE * 4 + Duration::from_secs(20),
        || other.log_tail(),
        || {
            let done = records_of(&other, &run_id)
                .iter()
                .any(|r| r["body"]["type"] == "run_finished");
            std::future::ready(done.then_some(()))
        },
    )
    .await;
    let taken = records_of(&other, &run_id);
    assert!(
        taken.iter().any(|r| r["body"]["type"] == "run_taken_over"),
        "{taken:?}"
    );
    assert_eq!(cluster.fraud_model_revisions().await, vec![2, 3]);

    // Meanwhile the cut-off replica's sleep ended too: its rollback's write-ahead record is in
    // its journal, waiting for the stream.
    wait_for(
        "the cut-off replica to journal the rollback's intent",
        Duration::from_secs(30),
        || {
            let records: Vec<String> = cut_off
                .journal()
                .records
                .iter()
                .map(|r| format!("{} {} {}", r["seq"], r["body"]["type"], r["body"]["name"]))
                .collect();
            format!("{records:?}\n{}", cut_off.log_tail())
        },
        || {
            let journaled = records_of(&cut_off, &run_id).iter().any(|r| {
                r["body"]["type"] == "step_started" && r["body"]["name"] == "k8s::rollback"
            });
            std::future::ready(journaled.then_some(()))
        },
    )
    .await;
    // The partition heals: that record reaches the stream now.
    partition.cut(false);
    // Whichever NATS answers first once it is back stops the run before the write: the
    // mirror's (then the run's lease is not known to hold: the fence) or the lease renewal's
    // (another replica took the run over). Before the fence, the first order rolled back again.
    let fenced = "suspending the run before its write";
    let lost = "run lease lost";
    wait_for(
        "the cut-off replica's run to stop or to roll back",
        Duration::from_secs(30),
        || cut_off.log_tail(),
        || {
            let log = std::fs::read_to_string(cut_off.log_path()).unwrap_or_default();
            let wrote = records_of(&cut_off, &run_id).iter().any(|r| {
                r["body"]["type"] == "step_finished" && r["body"]["name"] == "k8s::rollback"
            });
            std::future::ready(
                (wrote || log.contains("run suspended") || log.contains(fenced)).then_some(()),
            )
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        cluster.fraud_model_revisions().await,
        vec![2, 3],
        "one rollback: the cut-off replica did not write"
    );
    let log = std::fs::read_to_string(cut_off.log_path()).unwrap_or_default();
    assert!(
        log.contains(fenced) || log.contains(lost),
        "{}",
        cut_off.log_tail()
    );
    let mine = records_of(&cut_off, &run_id);
    assert!(
        mine.iter().any(|r| r["body"]["type"] == "step_started"
            && r["body"]["name"] == "k8s::rollback"
            && !r["body"]["intent"].is_null()),
        "{mine:?}"
    );
    assert!(
        !mine
            .iter()
            .any(|r| r["body"]["type"] == "step_finished" && r["body"]["name"] == "k8s::rollback"),
        "{mine:?}"
    );
}

/// A run's records are on the audit stream under the team its runbook had when it started. A
/// replica started after the runbook moved to another team (it never loaded the runbook under
/// its old team, and no teams file names that team) takes the run over from a replica that
/// died: it finds the records by the team the run's lock carries and finishes the run. It used
/// to look under the teams it knew, find nothing, and release the lock as a lock whose run
/// never started: the run was left unfinished for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_is_taken_over_by_a_replica_that_only_knows_its_runbooks_new_team() {
    use firebreak_bus::{NatsBus, NatsOptions, RunLeases};

    let nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = |team: &str| {
        let dir = tmp.path().join(team);
        let manifest = format!(
            "name: hold\nteam: {team}\ndescription: holds its incident for a while\n\
             namespaces: [shop]\ntriggers:\n  - source: alertmanager\n    status: firing\n    \
             match: ['alertname=\"Hold\"']\nparams:\n  fp: {{ from: event, key: fingerprint, \
             type: string, required: true }}\nconcurrency: \"{{{{params.fp}}}}\"\n"
        );
        crate::harness::write_runbooks(
            &dir,
            &[
                ("hold.yaml", manifest.as_str()),
                ("hold.rhai", "sleep(4000);\nlog(\"held to the end\");\n"),
            ],
        );
        dir
    };
    let (before, after) = (runbooks("data-science"), runbooks("ml-platform"));
    let start = |dir: std::path::PathBuf| {
        let url = nats.url();
        async move {
            Serve::start(
                &dir,
                ServeOpts {
                    env: vec![
                        ("FIREBREAK_NATS_URL", url),
                        ("FIREBREAK_NATS_RUN_LEASE", "2s".into()),
                    ],
                    ..ServeOpts::default()
                },
            )
            .await
        }
    };

    let mut first = start(before).await;
    let alert = serde_json::json!({
        "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "g",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
        "alerts": [{"status": "firing",
            "labels": {"alertname": "Hold", "namespace": "shop"},
            "annotations": {}, "startsAt": "2026-12-07T03:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
            "fingerprint": "00000000000000e1"}],
    });
    let (status, body) = first
        .post("/v1/alertmanager", None, alert.to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    let journal = first
        .wait_journal("the run to start", Duration::from_secs(30), |j| {
            j.runs_of("hold").iter().any(|r| r.started().is_some())
        })
        .await;
    let run_id = journal.runs_of("hold")[0].run_id.clone();
    // Its start is on the audit stream, under its team then.
    let reader = NatsBus::connect(&nats.url(), NatsOptions::default())
        .await
        .expect("connect")
        .state_store()
        .await
        .expect("state store");
    let (reader, id) = (&reader, &run_id);
    wait_for(
        "the run's start on the audit stream",
        Duration::from_secs(10),
        || first.log_tail(),
        move || async move {
            let lines = reader
                .run_lines(id, &["data-science".to_owned()])
                .await
                .ok()?;
            (!lines.is_empty()).then_some(())
        },
    )
    .await;
    first.kill();

    let second = start(after).await;
    let finished = |r: &Value| r["body"]["type"] == "run_finished";
    second
        .wait_journal(
            "the other replica to finish the run",
            Duration::from_secs(30),
            |j| {
                j.records
                    .iter()
                    .any(|r| r["run_id"] == run_id && finished(r))
            },
        )
        .await;
    let records = records_of(&second, &run_id);
    let trail: Vec<String> = records.iter().map(crate::harness::trail_line).collect();
    assert_eq!(
        records.iter().find(|r| finished(r)).unwrap()["body"]["status"],
        "succeeded",
        "{trail:#?}"
    );
    assert_eq!(records[0]["body"]["type"], "run_taken_over", "{trail:#?}");
    assert!(
        records
            .iter()
            .any(|r| r.to_string().contains("held to the end")),
        "{trail:#?}"
    );
}
