//! NATS outage: `serve` on JetStream; alerts are posted continuously while nats-server is
//! killed (SIGKILL) for 5 s and restarted on the same port and store, twice. Every alert
//! answered 2xx gets exactly one run (maybe late, never lost, never twice); posts during the
//! outage are answered 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use firebreak_bus::StateStore as _;
use firebreak_bus::testutil::NatsServer;
use futures::StreamExt as _;
use serde_json::json;

use crate::harness::{self, Serve, ServeOpts, wait_for, write_runbooks};

/// How long nats-server stays down.
const OUTAGE: Duration = Duration::from_secs(5);

/// How long a cluster node stays down: long enough for the others to elect new leaders
/// (a few seconds) and take alerts again before it returns.
const CLUSTER_OUTAGE: Duration = Duration::from_secs(12);

/// How many outages one test goes through.
const OUTAGES: usize = 2;

/// Runs to see before the first outage and after each restart: `FIREBREAK_OUTAGE_RUNS`, 40 by
/// default (a full-size check: 700, about 2,000 alerts answered 2xx in all).
fn runs_per_phase() -> usize {
    std::env::var("FIREBREAK_OUTAGE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

/// One POST: which alert, when it was sent and answered, and the status (0: no answer).
#[derive(Debug, Clone)]
struct Post {
    n: u32,
    sent: Instant,
    answered: Instant,
    status: u16,
}

/// When every test alert started (part of its event id).
const ALERT_STARTS_AT: &str = "2026-11-27T03:00:00Z";

fn alert(n: u32) -> String {
    json!({
        "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "{}:{alertname=\"Tick\"}",
        "groupLabels": {"alertname": "Tick"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am.invalid", "truncatedAlerts": 0,
        "alerts": [{"status": "firing",
            "labels": {"alertname": "Tick", "namespace": "shop", "n": n.to_string()},
            "annotations": {}, "startsAt": ALERT_STARTS_AT, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": format!("{n:016x}")}],
    })
    .to_string()
}

/// The `tick` runbook: one run per alert, keyed by its `n` label.
fn tick_runbook(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    tick_runbook_with(tmp, "log(`tick ${ctx.params.n}`);\n")
}

/// The `tick` runbook with `script`.
fn tick_runbook_with(tmp: &tempfile::TempDir, script: &str) -> std::path::PathBuf {
    tick_runbook_more(tmp, "", script)
}

/// The `tick` runbook's manifest: a run per alert, keyed by its `n` label.
const TICK_MANIFEST: &str = "name: tick\nteam: sre\ndescription: one run per tick\nnamespaces: [shop]\n\
    triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"Tick\"']\n\
    params:\n  n: { from: label, key: n, type: string, required: true }\n\
    concurrency: \"{{params.n}}\"\ntimeout: 30s\n";

/// The `tick` runbook with `script` and the manifest lines `more`.
fn tick_runbook_more(tmp: &tempfile::TempDir, more: &str, script: &str) -> std::path::PathBuf {
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            ("tick.yaml", &format!("{TICK_MANIFEST}{more}")),
            ("tick.rhai", script),
        ],
    );
    dir
}

/// A bounded load: four posters, each one alert after another (25 ms apart) until told to
/// stop; a post an outage holds up does not stop the others.
struct Load {
    stop: Arc<AtomicBool>,
    posters: Vec<tokio::task::JoinHandle<Vec<Post>>>,
}

impl Load {
    fn start(serve: &Serve) -> Load {
        Load::start_on(&[serve])
    }

    /// The same load spread over `serves`: poster `i` posts to `serves[i % serves.len()]`.
    fn start_on(serves: &[&Serve]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let posters = (0..4u32)
            .map(|poster| {
                let stop = stop.clone();
                let url = serves[poster as usize % serves.len()].url("/v1/alertmanager");
                tokio::spawn(async move {
                    let client = crate::harness::http_with_timeout(Duration::from_secs(15));
                    // Open loop: a post every 25 ms whether or not the last was answered, so
                    // posts are sent during an outage even while earlier ones are held.
                    let mut sent = Vec::new();
                    let mut n = poster * 100_000;
                    while !stop.load(Ordering::SeqCst) {
                        let (client, url) = (client.clone(), url.clone());
                        sent.push(tokio::spawn(async move {
                            let sent = Instant::now();
                            let status = match client
                                .post(&url)
                                .header("content-type", "application/json")
                                .body(alert(n))
                                .send()
                                .await
                            {
                                Ok(resp) => resp.status().as_u16(),
                                Err(_) => 0,
                            };
                            Post {
                                n,
                                sent,
                                answered: Instant::now(),
                                status,
                            }
                        }));
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    let mut posts = Vec::with_capacity(sent.len());
                    for post in sent {
                        posts.push(post.await.expect("a post task"));
                    }
                    posts
                })
            })
            .collect();
        Load { stop, posters }
    }

    /// Stops the posters; every post they made.
    async fn finish(self) -> Vec<Post> {
        self.stop.store(true, Ordering::SeqCst);
        let mut posts = Vec::new();
        for poster in self.posters {
            posts.extend(poster.await.unwrap());
        }
        posts
    }
}

/// How long the tests on the default ack wait give the alerts answered 2xx to run: a delivery
/// that went down with a node (pulled but never received, or its ack lost) is redelivered once
/// the consumer's ack wait has passed: not lost, but up to that late.
fn redelivered_within() -> Duration {
    firebreak_bus::NatsOptions::default().ack_wait + Duration::from_secs(30)
}

/// Waits until the shared consumer on the NATS at `urls` holds nothing (no event waiting,
/// none delivered and not acked): no delivery can come again after that, so a second run of
/// an alert, if there is one, has started by then.
async fn consumer_settled(urls: &[String], within: Duration, context: impl Fn() -> String) {
    let client = async_nats::ConnectOptions::new()
        .connect(urls.to_vec())
        .await
        .expect("a client of the NATS the replicas use");
    let js = async_nats::jetstream::new(client);
    wait_for(
        "the shared consumer to hold no event (none waiting, none unacked)",
        within,
        context,
        || async {
            let stream = js.get_stream("FIREBREAK_EVENTS").await.ok()?;
            let consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("firebreak-engine").await.ok()?;
            let info = consumer.cached_info();
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        },
    )
    .await;
}

/// Waits until every alert answered 2xx has a run (none lost) and the shared consumer on the
/// NATS at `urls` has nothing left to deliver, checks none ran twice (two runs of one alert,
/// one run started twice, a step done twice), and reports the counts; returns the journal.
async fn every_accepted_alert_ran_once(
    serve: &Serve,
    urls: &[String],
    posts: &[Post],
    what: &str,
    redelivered_within: Duration,
) -> crate::harness::Journal {
    let accepted: Vec<u32> = posts
        .iter()
        .filter(|p| (200..300).contains(&p.status))
        .map(|p| p.n)
        .collect();
    let n_of = |run: &crate::harness::Run<'_>| {
        run.started().unwrap()["body"]["params"]["n"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let missing = |j: &crate::harness::Journal| -> Vec<String> {
        let ran: std::collections::HashSet<String> = j.runs().iter().map(n_of).collect();
        accepted
            .iter()
            .map(u32::to_string)
            .filter(|n| !ran.contains(n))
            .collect()
    };
    // On a timeout: which alerts, and every log line that names one of them (its fingerprint
    // is its number in hex; its event id, the hash of that fingerprint).
    let about_missing = || {
        let missing = missing(&serve.journal());
        let fingerprints: Vec<String> = missing
            .iter()
            .filter_map(|n| n.parse::<u32>().ok())
            .map(|n| format!("{n:016x}"))
            .collect();
        let event_ids: Vec<String> = fingerprints
            .iter()
            .map(|f| firebreak_event::alertmanager::event_id(f, "firing", ALERT_STARTS_AT))
            .collect();
        let lines: Vec<String> = serve
            .log_lines()
            .iter()
            .map(|l| l.to_string())
            .filter(|l| {
                missing.iter().any(|n| l.contains(&format!("tick/{n}\"")))
                    || fingerprints.iter().any(|f| l.contains(f.as_str()))
                    || event_ids.iter().any(|id| l.contains(id.as_str()))
            })
            .collect();
        format!(
            "alerts answered 2xx without a run: {missing:?}\nlog lines naming them:\n{}\n{}",
            lines.join("\n"),
            serve.log_tail()
        )
    };
    crate::harness::wait_for(
        "a run for every alert answered 2xx",
        redelivered_within,
        about_missing,
        || std::future::ready(missing(&serve.journal()).is_empty().then_some(())),
    )
    .await;
    // A delivery whose ack was lost comes again one ack wait later: counted after it.
    consumer_settled(urls, redelivered_within, || serve.log_tail()).await;
    let journal = serve.journal();
    let mut per_alert: std::collections::HashMap<String, usize> = Default::default();
    for run in journal.runs_of("tick") {
        *per_alert.entry(n_of(&run)).or_default() += 1;
    }
    let twice: Vec<_> = per_alert.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "alerts that ran twice: {twice:?}");
    let again = crate::harness::done_twice(&journal.records);
    assert!(again.is_empty(), "done twice: {again:#?}");
    let refused = posts
        .iter()
        .filter(|p| !(200..300).contains(&p.status))
        .count();
    eprintln!(
        "{what}: {} posts, {} answered 2xx, {refused} refused (503 or no answer, retried by \
         Alertmanager), {} runs, 0 lost, 0 twice",
        posts.len(),
        accepted.len(),
        per_alert.len()
    );
    journal
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_answered_2xx_survive_a_nats_outage() {
    let mut nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tick_runbook(&tmp);
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_NATS_URL", nats.url())],
            ..ServeOpts::default()
        },
    )
    .await;

    let load = Load::start(&serve);
    let ok_count = || {
        let journal = serve.journal();
        journal.runs().len()
    };
    wait_for(
        "runs before the outage",
        Duration::from_secs(30 + runs_per_phase() as u64 / 10),
        || serve.log_tail(),
        || std::future::ready((ok_count() >= runs_per_phase()).then_some(())),
    )
    .await;

    let mut outages = Vec::new();
    let mut killed_at = jiff::Timestamp::now();
    for _ in 0..OUTAGES {
        killed_at = jiff::Timestamp::now();
        nats.kill();
        let down = Instant::now();
        tokio::time::sleep(OUTAGE).await;
        nats.restart()
            .expect("nats-server restarts on the same port and store");
        let up = Instant::now();
        outages.push((down, up));
        let runs_at_restart = ok_count();
        wait_for(
            "runs after the restart",
            Duration::from_secs(60 + runs_per_phase() as u64 / 10),
            || serve.log_tail(),
            || std::future::ready((ok_count() >= runs_at_restart + runs_per_phase()).then_some(())),
        )
        .await;
    }
    let posts = load.finish().await;
    // Posts sent while nats-server was down: the ingest holds each one until its publish
    // times out, then answers 503 (Alertmanager retries). None may be answered 2xx while the
    // server is still down.
    for (down, up) in &outages {
        let sent_during: Vec<&Post> = posts
            .iter()
            .filter(|p| p.sent > *down && p.sent < *up)
            .collect();
        assert!(
            sent_during.iter().any(|p| p.status == 503),
            "no post sent during the outage got 503: {sent_during:?}"
        );
        for p in &sent_during {
            assert!(
                !((200..300).contains(&p.status) && p.answered < *up),
                "answered 2xx while nats-server was down: {p:?}"
            );
            assert!(
                p.status == 503 || (200..300).contains(&p.status),
                "a post during the outage got neither 503 nor 2xx: {p:?}"
            );
        }
        assert!(
            posts.iter().any(|p| p.sent > *up && p.status == 202),
            "posts after the restart succeed"
        );
    }

    let journal = every_accepted_alert_ran_once(
        &serve,
        &[nats.url()],
        &posts,
        "nats outage",
        redelivered_within(),
    )
    .await;
    for run in journal.finished("tick") {
        let end = run
            .records
            .iter()
            .find(|r| r["body"]["type"] == "run_finished")
            .unwrap();
        assert_eq!(
            run.status(),
            Some("succeeded"),
            "{end}\n{}",
            serve.log_tail()
        );
    }
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");

    // The audit stream holds every journal line, byte for byte, and nothing else, retries and
    // the outage notwithstanding (a run's last lines may still be on their way: wait for
    // them). At least once, not exactly: a batch whose ack was lost when nats-server was
    // killed is sent again, and the restarted server may store it twice; a reader drops
    // repeats by `seq`.
    // The journal is read again each time: the engine signs a checkpoint every few seconds.
    let journal_lines = || {
        let mut lines: Vec<Vec<u8>> = std::fs::read(serve.journal_path())
            .unwrap()
            .split_inclusive(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        lines.sort();
        lines
    };
    let mut expected = journal_lines();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut mirrored: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        mirrored = crate::audit_stream_lines(&js).await;
        expected = journal_lines();
        mirrored.sort();
        mirrored.dedup();
        if mirrored == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|l| !mirrored.contains(l))
        .map(|l| {
            let r: serde_json::Value = serde_json::from_slice(l).unwrap();
            format!("seq {} {} at {}", r["seq"], r["body"]["type"], r["time"])
        })
        .collect();
    let foreign = mirrored.iter().filter(|l| !expected.contains(l)).count();
    assert!(
        mirrored == expected,
        "{} journal lines, {} distinct in the audit stream ({foreign} not in the journal); \
         nats-server was killed at {killed_at}, missing: {missing:?}",
        expected.len(),
        mirrored.len()
    );
}

/// `serve` starts while NATS is unreachable: it is not ready (`/readyz` 503) and answers
/// alerts 503 so Alertmanager retries, then takes work once nats-server comes up.
#[tokio::test(flavor = "multi_thread")]
async fn serve_starts_without_nats_and_takes_work_once_it_connects() {
    let mut nats = NatsServer::start().expect("nats-server -js");
    let url = nats.url();
    nats.kill();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "tick.yaml",
                "name: tick\nteam: sre\ndescription: d\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    match: ['alertname=\"Tick\"']\n",
            ),
            ("tick.rhai", "log(\"tick\");\n"),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_NATS_URL", url)],
            ..ServeOpts::default()
        },
    )
    .await;
    let (status, _) = serve.get("/readyz", None).await;
    assert_eq!(status, 503, "not ready without NATS");
    let (status, body) = serve.post("/v1/alertmanager", None, alert(1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "bus_unavailable", "{body}");

    nats.restart().expect("nats-server comes up");
    connected(&serve).await;
    let (status, body) = serve.post("/v1/alertmanager", None, alert(2)).await;
    assert_eq!(status, 202, "{body}");
    let journal = serve
        .wait_journal("the run", Duration::from_secs(30), |j| {
            j.finished("tick").len() == 1
        })
        .await;
    assert_eq!(journal.finished("tick")[0].status(), Some("succeeded"));
}

/// Waits until `serve` says it is ready (`/readyz` 200): it has connected to NATS.
async fn connected(serve: &Serve) {
    wait_for(
        "serve to connect to NATS",
        Duration::from_secs(30),
        || serve.log_tail(),
        || async { (serve.get("/readyz", None).await.0 == 200).then_some(()) },
    )
    .await;
}

/// `serve` with the tick runbook on the cluster at `urls`, everything at three replicas.
/// The shared consumer's ack wait in the cluster test: what went down with a node comes back
/// this long after it was delivered.
const CLUSTER_ACK_WAIT: Duration = Duration::from_secs(10);

async fn serve_on_cluster(tmp: &tempfile::TempDir, urls: &[String]) -> Serve {
    serve_on_cluster_with(&tick_runbook(tmp), urls).await
}

/// `serve` on the cluster at `urls`, at three replicas, with the runbooks in `runbooks`.
async fn serve_on_cluster_with(runbooks: &std::path::Path, urls: &[String]) -> Serve {
    Serve::start(
        runbooks,
        ServeOpts {
            env: vec![
                ("FIREBREAK_NATS_URL", urls.join(",")),
                ("FIREBREAK_NATS_REPLICAS", "3".into()),
                (
                    "FIREBREAK_NATS_ACK_WAIT",
                    format!("{}s", CLUSTER_ACK_WAIT.as_secs()),
                ),
            ],
            ..ServeOpts::default()
        },
    )
    .await
}

/// Which node of `nodes` leads `stream` (by `server_name`, `n1`…), once it has a leader.
async fn leader_of(js: &async_nats::jetstream::Context, stream: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = match js.get_stream(stream).await {
            Ok(mut s) => s
                .info()
                .await
                .ok()
                .and_then(|i| i.cluster.clone())
                .and_then(|c| c.leader),
            Err(_) => None,
        };
        if let Some(n) = leader.and_then(|l| l.strip_prefix('n')?.parse::<usize>().ok()) {
            return n - 1;
        }
        assert!(Instant::now() < deadline, "{stream} has no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Past one machine: a three-node JetStream cluster on loopback, firebreak's streams and
/// buckets at three replicas (`nats.storage.replicas: 3`). Under a bounded load, one node is
/// killed (SIGKILL) for a few seconds and brought back, then the node leading the events
/// stream. The cluster keeps accepting alerts through both; no alert answered 2xx is lost and
/// none runs twice (the counts are printed).
#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_cluster_loses_no_alert_when_a_node_or_the_leader_fails() {
    let mut nodes = NatsServer::start_cluster(3).expect("three nats-server nodes");
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let tmp = tempfile::tempdir().unwrap();
    let serve = serve_on_cluster(&tmp, &urls).await;
    let load = Load::start(&serve);
    let runs = || serve.journal().runs().len();
    let grown = |by: usize, what: &'static str| {
        let from = runs();
        let serve = &serve;
        async move {
            wait_for(
                what,
                Duration::from_secs(60),
                || serve.log_tail(),
                || std::future::ready((serve.journal().runs().len() >= from + by).then_some(())),
            )
            .await;
        }
    };
    grown(runs_per_phase(), "runs before the first failure").await;

    let client = async_nats::ConnectOptions::new()
        .connect(urls.clone())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    for name in [
        "FIREBREAK_EVENTS",
        "FIREBREAK_AUDIT",
        "KV_firebreak_runs",
        "KV_firebreak_locks",
    ] {
        let info = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }

    let mut outages = Vec::new();
    for which in ["a follower", "the events stream's leader"] {
        let leader = leader_of(&js, "FIREBREAK_EVENTS").await;
        let victim = if which == "a follower" {
            (leader + 1) % 3
        } else {
            leader
        };
        nodes[victim].kill();
        let down = Instant::now();
        tokio::time::sleep(CLUSTER_OUTAGE).await;
        nodes[victim]
            .restart()
            .expect("the node restarts on its port and store");
        outages.push((which, down, Instant::now()));
        grown(runs_per_phase(), "runs after the node came back").await;
    }
    let posts = load.finish().await;
    // Two of three nodes are a quorum: the cluster keeps accepting while a follower is down.
    // A leader's failure costs its streams an election (nats-server's raft waits 4 to 9 s
    // before electing), answered 503 meanwhile; the counts are printed, and service after the
    // node returns is checked above.
    for (which, down, up) in &outages {
        let during: Vec<&Post> = posts
            .iter()
            .filter(|p| p.sent > *down && p.answered < *up)
            .collect();
        let accepted: Vec<u128> = during
            .iter()
            .filter(|p| (200..300).contains(&p.status))
            .map(|p| p.sent.duration_since(*down).as_millis())
            .collect();
        eprintln!(
            "while {which} was down: {} posts, {} accepted, the first {:?} ms after the kill",
            during.len(),
            accepted.len(),
            accepted.first()
        );
        if *which == "a follower" {
            assert!(
                !accepted.is_empty(),
                "no alert accepted while {which} was down"
            );
        }
    }
    // A delivery that went down with the leader comes back after the ack wait, and may be
    // sent back more than once around a failover (in a CI run that failed on one 60 s ack
    // wait, one event ran at its fourth delivery): three ack waits.
    every_accepted_alert_ran_once(
        &serve,
        &urls,
        &posts,
        "three-node cluster, two node failures",
        CLUSTER_ACK_WAIT * 3 + Duration::from_secs(30),
    )
    .await;
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
}

/// A `once` decision is read from (and written to) the runs bucket's leader. When the node
/// leading it fails in the middle of a run, the bucket has no leader until the others elect
/// one (nats-server's raft waits 4 to 9 s): the run's `once` waits the election out and the
/// run goes on, instead of failing its step as "unavailable" in the middle of an incident.
#[tokio::test(flavor = "multi_thread")]
async fn a_once_decision_taken_while_its_bucket_elects_a_leader_waits_for_it() {
    a_run_through_an_election(false).await;
}

/// The same with the failed node leading the audit stream too: the run's records, published
/// while the stream has no leader, were refused as "no stream for the subject" (what
/// async-nats makes of a publish nothing answered) and failed the run's step at once; the
/// mirror now waits the election out as it waits out a lost connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_runs_records_published_while_the_audit_stream_elects_a_leader_wait_for_it() {
    a_run_through_an_election(true).await;
}

/// A run that decides a `once` value one second in, while the node leading the runs bucket
/// (and the audit stream, or not, as `audit_there` says) is killed: it succeeds.
async fn a_run_through_an_election(audit_there: bool) {
    let tmp = tempfile::tempdir().unwrap();
    // The sleep lets the test kill the leader before the run reaches `once`, well inside the
    // election that follows (at least 4 s).
    let runbooks = tick_runbook_with(
        &tmp,
        "sleep(1000);\nlet v = once(\"blamed\", || `v${ctx.params.n}`);\nlog(`decided ${v}`);\n",
    );
    let (mut nodes, serve, js) = cluster_serving(&runbooks).await;
    let victim = leader_of(&js, "KV_firebreak_runs").await;
    // Were the audit stream led from the victim when `audit_there` is false, the run's `sleep`
    // record would wait for its election and `once` would come after it.
    lead_where(&js, "FIREBREAK_AUDIT", |n| (n == victim) == audit_there).await;

    let killed = start_a_run_and_kill(&serve, &mut nodes, victim).await;
    let journal = first_run_finished(&serve).await;
    let runs = journal.runs();
    let steps: Vec<String> = runs[0]
        .records
        .iter()
        .map(|r| harness::trail_line(r))
        .collect();
    assert_eq!(
        runs[0].status(),
        Some("succeeded"),
        "{steps:?}\n{}\n{}",
        journal.summary(),
        serve.log_tail()
    );
    assert!(
        steps.iter().any(|s| s == "step_finished once:blamed ok"),
        "{steps:?}"
    );
    eprintln!(
        "the run finished {:?} after its runs bucket's leader was killed",
        killed.elapsed()
    );
    nodes[victim].restart().expect("the node restarts");
    let verify = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
}

/// A run's end puts its key in cooldown, then releases its lock. When the node leading the
/// cooldowns and locks buckets fails just before, both wait for the election: the lock is
/// released, and the alert firing again is skipped for the cooldown. (Both were given up with
/// a warning: the next firing could run again at once, and the lock held the key until it
/// expired, the run's timeout and more.)
#[tokio::test(flavor = "multi_thread")]
async fn a_runs_cooldown_and_unlock_wait_for_their_buckets_to_elect_a_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tick_runbook_more(&tmp, "cooldown: 10m\n", "sleep(1000);\nlog(\"done\");\n");
    let (mut nodes, serve, js) = cluster_serving(&runbooks).await;
    let victim = leader_of(&js, "KV_firebreak_cooldowns").await;
    lead_where(&js, "KV_firebreak_locks", |n| n == victim).await;
    // The run's records must not wait for an election of their own: its end would come after
    // the buckets'.
    lead_where(&js, "FIREBREAK_AUDIT", |n| n != victim).await;
    let locks = js.get_key_value("firebreak_locks").await.unwrap();

    let killed = start_a_run_and_kill(&serve, &mut nodes, victim).await;
    let journal = first_run_finished(&serve).await;
    assert_eq!(
        journal.runs()[0].status(),
        Some("succeeded"),
        "{}",
        journal.summary()
    );
    // Two elections (the cooldowns' and the locks' buckets) of 4 to 9 s each at most, a read
    // in flight at the kill timing out after 5 s, and the lock is released at the next try.
    wait_for(
        "the run's lock to be released",
        Duration::from_secs(40).saturating_sub(killed.elapsed()),
        || serve.log_tail(),
        || async {
            let keys: Vec<String> = match locks.keys().await {
                Ok(keys) => keys.filter_map(|k| async { k.ok() }).collect().await,
                Err(_) => return None,
            };
            keys.is_empty().then_some(())
        },
    )
    .await;

    // The alert fires again (another notification, the same key): skipped, in cooldown.
    let mut again: serde_json::Value = serde_json::from_str(&alert(1)).unwrap();
    again["alerts"][0]["fingerprint"] = json!("00000000000000ff");
    wait_for(
        "the alert firing again to be accepted",
        Duration::from_secs(30),
        || serve.log_tail(),
        || async {
            (serve
                .post("/v1/alertmanager", None, again.to_string())
                .await
                .0
                == 202)
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the alert firing again to be skipped",
        Duration::from_secs(30),
        || format!("{}{}", serve.journal().summary(), serve.log_tail()),
        || {
            let journal = serve.journal();
            let skipped = journal.records.iter().any(|r| {
                r["body"]["type"] == "skipped"
                    && r["body"]["reason"]
                        .as_str()
                        .is_some_and(|why| why.contains("in cooldown"))
            });
            std::future::ready(skipped.then_some(()))
        },
    )
    .await;
    assert_eq!(
        serve.journal().runs().len(),
        1,
        "{}",
        serve.journal().summary()
    );
    nodes[victim].restart().expect("the node restarts");
}

/// A three-node cluster and `serve` on it (at three replicas, connected) with `runbooks`, and
/// a JetStream context of the test's own.
async fn cluster_serving(
    runbooks: &std::path::Path,
) -> (Vec<NatsServer>, Serve, async_nats::jetstream::Context) {
    let nodes = NatsServer::start_cluster(3).expect("three nats-server nodes");
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let serve = serve_on_cluster_with(runbooks, &urls).await;
    connected(&serve).await;
    let client = async_nats::ConnectOptions::new()
        .connect(urls)
        .await
        .unwrap();
    (nodes, serve, async_nats::jetstream::new(client))
}

/// Posts alert 1, waits for its run to start and kills node `victim`; when it was killed.
async fn start_a_run_and_kill(serve: &Serve, nodes: &mut [NatsServer], victim: usize) -> Instant {
    let (status, body) = serve.post("/v1/alertmanager", None, alert(1)).await;
    assert_eq!(status, 202, "{body}");
    wait_for(
        "the run to start",
        Duration::from_secs(30),
        || serve.log_tail(),
        || std::future::ready((!serve.journal().runs().is_empty()).then_some(())),
    )
    .await;
    nodes[victim].kill();
    Instant::now()
}

/// The journal once the first run has ended, with that run alone in it.
async fn first_run_finished(serve: &Serve) -> harness::Journal {
    wait_for(
        "the run to finish",
        Duration::from_secs(60),
        || format!("{}{}", serve.journal().summary(), serve.log_tail()),
        || {
            let journal = serve.journal();
            let done = journal.runs().first().is_some_and(|r| r.status().is_some());
            std::future::ready(done.then_some(()))
        },
    )
    .await;
    let journal = serve.journal();
    assert_eq!(journal.runs().len(), 1, "{}", journal.summary());
    journal
}

/// Steps `stream`'s leader down until a node `wanted` leads it (each step-down elects
/// another leader in milliseconds).
async fn lead_where(
    js: &async_nats::jetstream::Context,
    stream: &str,
    wanted: impl Fn(usize) -> bool,
) {
    for _ in 0..30 {
        if wanted(leader_of(js, stream).await) {
            return;
        }
        let answer: serde_json::Value = js
            .request(format!("STREAM.LEADER.STEPDOWN.{stream}"), &json!({}))
            .await
            .unwrap_or_else(|e| panic!("step {stream}'s leader down: {e}"));
        assert_eq!(
            answer["success"], true,
            "step {stream}'s leader down: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("no wanted node came to lead {stream}");
}

/// `audit verify` reads the replica's published checkpoints from the audit stream. While the
/// cluster has no quorum (and so no stream leader), JetStream answers "temporarily
/// unavailable" or nothing: verify waits for the cluster to elect instead of failing at the
/// first answer, and says that it waited.
#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_waits_for_a_cluster_that_is_electing() {
    let mut nodes = NatsServer::start_cluster(3).expect("three nats-server nodes");
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let tmp = tempfile::tempdir().unwrap();
    let serve = serve_on_cluster(&tmp, &urls).await;
    connected(&serve).await;
    let (status, body) = serve.post("/v1/alertmanager", None, alert(1)).await;
    assert_eq!(status, 202, "{body}");
    serve
        .wait_journal("the run", Duration::from_secs(30), |j| {
            j.finished("tick").len() == 1
        })
        .await;
    let before = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(before.stdout.starts_with("ok: "), "{before}");

    // Two of three nodes down, the audit stream's leader among them: the follower left alone
    // cannot elect a leader, so the stream has none from the kill on. (Were the leader the
    // one left, it would answer until it noticed it lost its quorum, after ten seconds or
    // more: verify could finish before that.)
    let js = async_nats::jetstream::new(async_nats::connect(nodes[0].url()).await.unwrap());
    let leader = leader_of(&js, "FIREBREAK_AUDIT").await;
    let kept = (leader + 1) % nodes.len();
    let killed: Vec<usize> = (0..nodes.len()).filter(|&i| i != kept).collect();
    for &i in &killed {
        nodes[i].kill();
    }
    let js = async_nats::jetstream::new(async_nats::connect(nodes[kept].url()).await.unwrap());
    wait_for(
        "the audit stream to have no leader",
        Duration::from_secs(30),
        String::new,
        || async {
            let leaderless = match js.get_stream("FIREBREAK_AUDIT").await {
                Err(_) => true,
                Ok(mut stream) => stream.info().await.is_err(),
            };
            leaderless.then_some(())
        },
    )
    .await;
    let (verify, ()) = tokio::join!(serve.cli(&["audit", "verify"]), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for &i in &killed {
            nodes[i].restart().expect("a killed node restarts");
        }
    });
    let verify = verify.ok("audit verify while the cluster elects");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
    assert!(
        verify.stderr.contains("waiting for JetStream"),
        "verify did not say it waited: {verify}"
    );
}

/// A replica on `nats` with the runbooks in `dir` and run leases of `lease`, connected.
async fn replica_with_lease(dir: &std::path::Path, nats: &NatsServer, lease: &str) -> Serve {
    replica_on(dir, nats, &[("FIREBREAK_NATS_RUN_LEASE", lease)]).await
}

/// A replica on `nats` with the runbooks in `dir` and `env`, connected.
async fn replica_on(
    dir: &std::path::Path,
    nats: &NatsServer,
    env: &[(&'static str, &str)],
) -> Serve {
    let mut all = vec![("FIREBREAK_NATS_URL", nats.url())];
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let serve = Serve::start(
        dir,
        ServeOpts {
            env: all,
            ..ServeOpts::default()
        },
    )
    .await;
    connected(&serve).await;
    serve
}

/// The ack wait of the shared consumer in the kill tests (whole seconds).
const ACK_WAIT: &str = "6s";

fn ack_wait() -> Duration {
    Duration::from_secs(
        ACK_WAIT
            .trim_end_matches('s')
            .parse()
            .expect("whole seconds"),
    )
}

/// Replicas killed under load: three `serve` replicas on one nats-server share a bounded load
/// (the posters spread over them) of alerts whose runs take half a second each. One replica is
/// killed (SIGKILL) with runs in flight and events pulled but not yet handled; the load goes on
/// against the other two. Its runs are taken over once their lease ran out, its pulled events
/// are delivered again after the ack wait. Read from the audit stream, every alert answered 2xx
/// ran, none in two runs, and no run executed a step twice (the counts are printed).
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_under_load_loses_no_alert_and_runs_none_twice() {
    let nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tick_runbook_with(&tmp, "sleep(500);\nlog(`tick ${ctx.params.n}`);\n");
    let mut replicas = Vec::new();
    // A short ack wait: the killed replica's pulled events come back within seconds, and
    // redeliveries (the harsher case for running an alert twice) are many.
    for _ in 0..3 {
        replicas.push(
            replica_on(
                &dir,
                &nats,
                &[
                    ("FIREBREAK_NATS_RUN_LEASE", "2s"),
                    ("FIREBREAK_NATS_ACK_WAIT", ACK_WAIT),
                ],
            )
            .await,
        );
    }
    let load = Load::start_on(&replicas.iter().collect::<Vec<_>>());
    // The replica to kill has runs in flight (started, not finished) among many it ran.
    wait_for(
        "runs in flight on the first replica",
        Duration::from_secs(30),
        || replicas[0].log_tail(),
        || {
            let journal = replicas[0].journal();
            let runs = journal.runs_of("tick");
            let unfinished = runs.iter().filter(|r| r.status().is_none()).count();
            std::future::ready((runs.len() >= 40 && unfinished >= 5).then_some(()))
        },
    )
    .await;
    replicas[0].kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let posts = load.finish().await;
    let accepted: std::collections::HashSet<String> = posts
        .iter()
        .filter(|p| (200..300).contains(&p.status))
        .map(|p| p.n.to_string())
        .collect();

    // The audit stream: every replica's records, the killed one's up to its last mirrored.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let records = || async {
        let mut lines = crate::audit_stream_lines(&js).await;
        // At least once: a batch whose ack was lost is sent again.
        lines.sort();
        lines.dedup();
        lines
            .iter()
            .map(|l| serde_json::from_slice::<serde_json::Value>(l).expect("a record"))
            .collect::<Vec<_>>()
    };
    let n_of_run = |records: &[serde_json::Value]| {
        let mut n_of = std::collections::HashMap::new();
        for r in records {
            if r["body"]["type"] == "run_started" {
                let n = r["body"]["params"]["n"].as_str().unwrap_or("").to_owned();
                n_of.insert(r["run_id"].as_str().unwrap().to_owned(), n);
            }
        }
        n_of
    };
    // Events the killed replica had pulled come again after the consumer's ack wait.
    let within = ack_wait() + Duration::from_secs(30);
    let deadline = Instant::now() + within;
    loop {
        let records = records().await;
        let n_of = n_of_run(&records);
        let finished: std::collections::HashSet<&String> = records
            .iter()
            .filter(|r| r["body"]["type"] == "run_finished")
            .filter_map(|r| n_of.get(r["run_id"].as_str()?))
            .collect();
        let missing: Vec<&String> = accepted.iter().filter(|n| !finished.contains(n)).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            // What the stream and each replica's journal hold of the alerts without a run.
            let about = |records: &[serde_json::Value]| -> Vec<String> {
                let ids: std::collections::HashSet<&str> = n_of
                    .iter()
                    .filter(|(_, n)| missing.contains(n))
                    .map(|(id, _)| id.as_str())
                    .collect();
                records
                    .iter()
                    .filter(|r| r["run_id"].as_str().is_some_and(|id| ids.contains(id)))
                    .map(|r| format!("{} {} {}", r["time"], r["run_id"], r["body"]["type"]))
                    .collect()
            };
            let journals: Vec<Vec<String>> = replicas
                .iter()
                .map(|r| about(&r.journal().records))
                .collect();
            let logs: Vec<String> = replicas
                .iter()
                .flat_map(|r| r.log_lines())
                .filter(|l| missing.iter().any(|n| l.to_string().contains(n.as_str())))
                .map(|l| l.to_string())
                .collect();
            panic!(
                "{} alerts answered 2xx have no finished run {within:?} after the load: \
                 {missing:?}\nin the stream: {:#?}\nin the journals: {journals:#?}\nlogs: {logs:#?}",
                missing.len(),
                about(&records)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A delivery whose ack was lost comes again one ack wait later: counted after it.
    consumer_settled(&[nats.url()], within, || replicas[1].log_tail()).await;
    let records = records().await;
    let n_of = n_of_run(&records);
    let mut runs_of_n: std::collections::HashMap<&String, usize> = Default::default();
    for n in n_of.values() {
        *runs_of_n.entry(n).or_default() += 1;
    }
    let twice: Vec<_> = runs_of_n.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "alerts run twice: {twice:?}");
    let again = crate::harness::done_twice(&records);
    let runs_of = |line: &String| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["run_id"].as_str().is_some_and(|id| line.contains(id)))
            .map(|r| {
                let mut body = r["body"].clone();
                body.as_object_mut().map(|b| b.remove("event"));
                format!("{} seq {} {body}", r["time"], r["seq"])
            })
            .collect()
    };
    assert!(
        again.is_empty(),
        "done twice: {again:?}\n{:#?}",
        again.iter().map(runs_of).collect::<Vec<_>>()
    );
    let failed: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["body"]["type"] == "run_finished" && r["body"]["status"] != "succeeded")
        .collect();
    assert!(failed.is_empty(), "runs that did not succeed: {failed:?}");
    let taken_over = records
        .iter()
        .filter(|r| r["body"]["type"] == "run_taken_over")
        .count();
    assert!(
        taken_over > 0,
        "no run was taken over from the killed replica"
    );
    let refused = posts.len() - accepted.len();
    eprintln!(
        "replica killed under load: {} posts, {} answered 2xx, {refused} refused (the killed \
         replica's, no answer), {} runs, {taken_over} taken over, 0 lost, 0 twice; the last \
         run finished within {:.1} s of the kill",
        posts.len(),
        accepted.len(),
        n_of.len(),
        killed.elapsed().as_secs_f64()
    );
}

/// A replica killed with an event it pulled and had not started (waiting for its one run
/// slot): another replica runs that event once the shared consumer's ack wait is over
/// (`nats.ack_wait`, here 6 s), beside the run it takes over when the lease runs out. Before,
/// the consumer kept the 60 s it was made with and such an event waited a minute.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_a_killed_replica_pulled_and_never_started_runs_after_the_ack_wait() {
    let nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tick_runbook_with(
        &tmp,
        // Sleeps shorter than a park (2 s) hold the run's slot.
        "if ctx.params.n == \"1\" { for i in 0..14 { sleep(1500); } }\nlog(`tick ${ctx.params.n}`);\n",
    );
    let env = |slots| {
        [
            ("FIREBREAK_NATS_RUN_LEASE", "2s"),
            ("FIREBREAK_NATS_ACK_WAIT", ACK_WAIT),
            ("FIREBREAK_MAX_CONCURRENT_RUNS", slots),
        ]
    };
    let mut a = replica_on(&dir, &nats, &env("1")).await;
    assert_eq!(a.post("/v1/alertmanager", None, alert(1)).await.0, 202);
    wait_for(
        "the first run to start on the replica to kill",
        Duration::from_secs(30),
        || a.log_tail(),
        || std::future::ready((!a.journal().runs_of("tick").is_empty()).then_some(())),
    )
    .await;
    assert_eq!(a.post("/v1/alertmanager", None, alert(2)).await.0, 202);
    // The second event is in the replica's hands (pulled, unacked), waiting for the slot.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let in_hand = || async {
        let stream = js.get_stream("FIREBREAK_EVENTS").await.ok()?;
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("firebreak-engine").await.ok()?;
        let info = consumer.cached_info().clone();
        (info.num_ack_pending == 1 && info.num_pending == 0).then_some(info)
    };
    let info = wait_for(
        "the second event pulled and not acked",
        Duration::from_secs(30),
        || a.log_tail(),
        in_hand,
    )
    .await;
    assert_eq!(info.config.ack_wait, ack_wait(), "{info:?}");
    assert_eq!(
        a.journal().runs_of("tick").len(),
        1,
        "the second event started"
    );
    let b = replica_on(&dir, &nats, &env("8")).await;
    // Held past an ack wait: the replica marks what it holds in progress.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        b.journal().runs_of("tick").is_empty(),
        "the other replica ran an event the first still held: {:?}",
        b.journal().records
    );
    a.kill();
    let killed = Instant::now();
    let ran = wait_for(
        "the pulled event to run on the other replica",
        Duration::from_secs(90),
        || b.log_tail(),
        || {
            let journal = b.journal();
            let ran = journal
                .runs_of("tick")
                .iter()
                .any(|r| {
                    r.status() == Some("succeeded")
                        && r.started().and_then(|s| s["body"]["params"]["n"].as_str()) == Some("2")
                })
                .then(|| killed.elapsed());
            std::future::ready(ran)
        },
    )
    .await;
    eprintln!("the killed replica's pulled event ran {ran:?} after the kill (ack wait {ACK_WAIT})");
    assert!(
        ran < ack_wait() + Duration::from_secs(5),
        "ran {ran:?} after the kill"
    );
}

/// An alert whose incident's lock is held by a run another replica took the lock for but never
/// started (it died in between: nothing of the run on the audit stream) is not skipped as
/// "active elsewhere", which would lose it (the takeover only frees such a lock): it comes
/// back, a lease later each time, and runs once the lock is free.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_is_not_skipped_for_a_run_another_replica_never_started() {
    let nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let serve = replica_with_lease(&tick_runbook(&tmp), &nats, "4s").await;
    // A replica that took the incident's lock and died before it journaled the start.
    let ghost = firebreak_bus::NatsBus::connect(
        &nats.url(),
        firebreak_bus::NatsOptions {
            replica: Some("ghost".into()),
            run_lease: Duration::from_secs(60),
            ..firebreak_bus::NatsOptions::default()
        },
    )
    .await
    .expect("connect");
    let ghost = ghost.state_store().await.expect("state store");
    assert!(
        ghost
            .try_lock("tick/7", "never-started", Duration::from_secs(600))
            .await
            .unwrap()
    );

    let (status, answer) = serve.post("/v1/alertmanager", None, alert(7)).await;
    assert_eq!(status, 202, "{answer}");
    // Handled and sent back while the lock is held: no run, no skip.
    wait_for_log(&serve, "the event to be sent back", |l| {
        l["fields"]["message"] == "event not handled yet; it will be redelivered"
    })
    .await;
    // It comes again no sooner than a lease later (the holder starts its run, or the takeover
    // frees the lock, within about that): two looks in 6 s, not one per second of backoff.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let looks = serve
        .log_lines()
        .iter()
        .filter(|l| l["fields"]["message"] == "event not handled yet; it will be redelivered")
        .count();
    assert!(
        looks <= 2,
        "{looks} looks at a lock held by a run not started"
    );
    let journal = serve.journal();
    assert!(journal.runs_of("tick").is_empty(), "{}", journal.summary());
    let skipped: Vec<_> = journal
        .records
        .iter()
        .filter(|r| r["body"]["type"] == "skipped")
        .collect();
    assert!(skipped.is_empty(), "skipped: {skipped:?}");

    // The lock freed (as the takeover does for a run that never started): the alert runs.
    assert!(ghost.unlock("tick/7", "never-started").await.unwrap());
    let journal = serve
        .wait_journal("the alert's run", Duration::from_secs(45), |j| {
            j.finished("tick").len() == 1
        })
        .await;
    assert_eq!(journal.finished("tick")[0].status(), Some("succeeded"));
    assert_eq!(journal.runs_of("tick").len(), 1);
}

/// A replica told to stop (SIGTERM) the moment nats-server dies, with runs whose records wait
/// for the audit stream and starts in flight: it exits well within Kubernetes' 30 s grace,
/// not after the audit mirror's retries (30 s for each batch, one batch after another: a
/// minute and more). The records it could not mirror are in its journal: once nats-server and
/// the replica are back, every alert answered 2xx has run, none twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_stopped_while_nats_is_down_exits_within_the_grace_period() {
    let mut nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tick_runbook_with(&tmp, "sleep(300);\nlog(`tick ${ctx.params.n}`);\n");
    let mut serve = replica_with_lease(&dir, &nats, "15s").await;
    let load = Load::start(&serve);
    serve
        .wait_journal("runs before the outage", Duration::from_secs(30), |j| {
            j.finished("tick").len() >= 40
        })
        .await;
    load.stop.store(true, Ordering::SeqCst);
    nats.kill();
    // The runs in their sleep wake up to journal their step; the mirror cannot take it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stopping = Instant::now();
    let code = serve.terminate().await;
    let took = stopping.elapsed();
    eprintln!(
        "stopped {:.2} s after SIGTERM with nats-server down",
        took.as_secs_f64()
    );
    assert_eq!(code, Some(0), "{}", serve.log_tail());
    // 0.1 to 10 s here: requests in flight as the connection went wait out their timeout.
    // Within the stop's own bound (25 s), inside Kubernetes' 30 s grace.
    assert!(
        took < Duration::from_secs(25),
        "a stop with NATS down took {took:?}\n{}",
        serve.log_tail()
    );

    let posts = load.finish().await;
    nats.restart()
        .expect("nats-server restarts on the same port and store");
    serve.restart().await;
    connected(&serve).await;
    every_accepted_alert_ran_once(
        &serve,
        &[nats.url()],
        &posts,
        "stopped with NATS down",
        redelivered_within(),
    )
    .await;
    // What the mirror gave up on at the stop reached the audit stream after the restart: the
    // stream holds the replica's journal as one chain from its first record, not two with the
    // stop's records missing between them.
    the_stream_holds_the_journal_as_one_chain(&serve).await;
}

/// NATS away for longer than the audit mirror retries (1 s here, 30 s by default) while runs
/// journal their steps: those appends fail, their records stay in the journal only. Once NATS
/// is back the mirror's next batch brings the stream what it gave up on first: `audit verify
/// --stream` holds the replica's journal as one chain to its end (before: two chains, the
/// outage's records missing between them, for good).
#[tokio::test(flavor = "multi_thread")]
async fn what_the_mirror_gave_up_on_in_an_outage_reaches_the_stream_once_nats_is_back() {
    let mut nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tick_runbook_with(&tmp, "sleep(300);\nlog(`tick ${ctx.params.n}`);\n");
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![
                ("FIREBREAK_NATS_URL", nats.url()),
                ("FIREBREAK_NATS_AUDIT_MIRROR_RETRY", "1s".into()),
            ],
            ..ServeOpts::default()
        },
    )
    .await;
    connected(&serve).await;
    for n in 0..10 {
        let (status, answer) = serve.post("/v1/alertmanager", None, alert(n)).await;
        assert_eq!(status, 202, "{answer}");
    }
    serve
        .wait_journal("the runs to start", Duration::from_secs(20), |j| {
            j.runs_of("tick").len() == 10
        })
        .await;
    // Killed while the runs sleep: their steps' appends wait for the stream, then fail.
    nats.kill();
    wait_for_log(&serve, "the mirror to give a batch up", |l| {
        l["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("audit mirror did not take record"))
    })
    .await;
    nats.restart()
        .expect("nats-server restarts on the same port and store");
    connected(&serve).await;
    // The next batch (a new alert's run) goes after what the mirror gave up on.
    let (status, answer) = serve.post("/v1/alertmanager", None, alert(77)).await;
    assert_eq!(status, 202, "{answer}");
    serve
        .wait_journal("the new alert's run", Duration::from_secs(30), |j| {
            j.runs_of("tick")
                .iter()
                .any(|r| r.started().unwrap()["body"]["params"]["n"] == "77")
        })
        .await;
    the_stream_holds_the_journal_as_one_chain(&serve).await;
}

/// Waits (20 s at most) until `audit verify --stream` says the stream holds `serve`'s journal as
/// one chain from seq 1 to where the journal ended when called.
async fn the_stream_holds_the_journal_as_one_chain(serve: &Serve) {
    let last_seq = serve.journal().records.last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let mut central = None;
    for _ in 0..40 {
        let verified = serve
            .cli(&["audit", "verify", "--stream"])
            .await
            .ok("audit verify --stream");
        let whole = one_chain_to(&verified.stdout, last_seq);
        central = Some((whole, verified));
        if whole {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (whole, central) = central.unwrap();
    assert!(
        whole,
        "the journal ends at seq {last_seq}; the stream should hold it as one chain from seq 1 \
         to there: {central}"
    );
}

/// Waits (20 s at most) until `serve` logs a line for which `pred` holds.
async fn wait_for_log(serve: &Serve, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    wait_for(
        what,
        Duration::from_secs(20),
        || serve.log_tail(),
        || std::future::ready(serve.log_lines().iter().any(&pred).then_some(())),
    )
    .await;
}

/// Whether `audit verify --stream` said the stream holds one journal, as one chain from seq 1
/// to `last_seq` or past it.
fn one_chain_to(stdout: &str, last_seq: u64) -> bool {
    let chain = stdout
        .lines()
        .find_map(|l| l.strip_prefix("journal: seq 1–"))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|last| last.parse::<u64>().ok());
    stdout.starts_with("ok: ")
        && stdout.contains("from 1 journal(s)")
        && chain.is_some_and(|last| last >= last_seq)
}
