//! `firebreak serve` on a nats-server that authenticates: an engine replica with the shipped
//! engine permissions (`deploy/nats/permissions.conf`) logs in with a user and a password from
//! a file, takes a real Alertmanager notification and runs it end to end; the same replica with
//! a wrong password exits at once saying the server refused authorization; and one logs in
//! with an NKey seed over TLS with a client certificate, every setting from `FIREBREAK_NATS_*`.

use std::time::{Duration, Instant};

use firebreak_bus::testutil::{NatsServer, TlsFiles};

use crate::harness::{Serve, ServeOpts, firebreak, write_runbooks};

const PERMISSIONS: &str = include_str!("../../../deploy/nats/permissions.conf");
const RUN_WAIT: Duration = Duration::from_secs(30);

/// firebreak's account with an engine user (password `engine-pw`) and, if given, an NKey
/// engine user, both with the shipped engine permissions, and an ingest-only bridge user;
/// `extra` is appended (a `tls` block).
fn server(nkey_user: Option<&str>, extra: &str) -> NatsServer {
    let nkey = nkey_user
        .map(|public| format!("{{ nkey: {public}, permissions: $FIREBREAK_ENGINE }}"))
        .unwrap_or_default();
    let config = format!(
        "include ./permissions.conf\n\
         accounts: {{\n  FIREBREAK: {{\n    jetstream: enabled\n    users: [\n\
         {{ user: engine, password: engine-pw, permissions: $FIREBREAK_ENGINE }}\n\
         {{ user: alert-bridge, password: bridge-pw, permissions: $FIREBREAK_INGEST }}\n{nkey}\n    ]\n  }}\n}}\n{extra}"
    );
    NatsServer::start_with_config(&config, &[("permissions.conf", PERMISSIONS)])
        .unwrap_or_else(|e| panic!("nats-server with accounts: {e}\n{config}"))
}

/// A runbook for the recorded Alertmanager notification (`ModelErrorRateHigh` on
/// team-a/fraud-model).
fn runbooks(dir: &std::path::Path) {
    write_runbooks(
        dir,
        &[
            (
                "model-errors.yaml",
                "name: model-errors\nteam: ml-platform\ndescription: notes a model's error rate\n\
                 namespaces: [team-a]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"ModelErrorRateHigh\"']\n\
                 params:\n  deployment: { from: label, key: deployment, type: string, required: true }\n\
                 concurrency: \"{{params.deployment}}\"\ntimeout: 30s\n",
            ),
            (
                "model-errors.rhai",
                "log(`errors on ${ctx.params.deployment}`);\n",
            ),
        ],
    );
}

/// A notification Alertmanager 0.25 sent (recorded).
fn notification() -> String {
    std::fs::read_to_string(
        crate::harness::crate_dir().join("fixtures/alertmanager-webhook-firing.json"),
    )
    .expect("fixture")
}

/// Posts the notification and waits for its run to succeed.
async fn runs_end_to_end(serve: &Serve) {
    let (status, answer) = serve.post("/v1/alertmanager", None, notification()).await;
    assert_eq!(status, 202, "{answer}\n{}", serve.log_tail());
    let journal = serve
        .wait_journal("the alert's run finished", RUN_WAIT, |j| {
            !j.finished("model-errors").is_empty()
        })
        .await;
    let run = &journal.finished("model-errors")[0];
    assert_eq!(run.status(), Some("succeeded"), "{}", journal.summary());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_replica_logs_in_with_a_password_file_and_runs_an_alert() {
    let nats = server(None, "");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    runbooks(&dir);
    let password = tmp.path().join("nats-password");
    std::fs::write(&password, "engine-pw\n").unwrap();
    let serve = Serve::start(
        &dir,
        ServeOpts {
            config: Some(format!(
                "nats:\n  url: {}\n  user: engine\n  password_file: {}\n",
                nats.url(),
                password.display()
            )),
            ..ServeOpts::default()
        },
    )
    .await;
    runs_end_to_end(&serve).await;

    // The run's audit records reached the audit stream through the engine's permissions
    // (read back as the engine user, on its inbox prefix).
    let client =
        async_nats::ConnectOptions::with_user_and_password("engine".into(), "engine-pw".into())
            .custom_inbox_prefix(firebreak_bus::nats::INBOX_PREFIX)
            .connect(nats.url())
            .await
            .expect("engine user connects");
    let js = async_nats::jetstream::new(client);
    let mut audit = js
        .get_stream("FIREBREAK_AUDIT")
        .await
        .expect("audit stream");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = audit
            .info()
            .await
            .expect("audit stream info")
            .state
            .messages;
        if messages > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the audit stream stays empty\n{}",
            serve.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_a_wrong_password_exits_saying_authorization_was_refused() {
    let nats = server(None, "");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    runbooks(&dir);
    let started = Instant::now();
    let out = firebreak(
        &["serve"],
        &[
            ("FIREBREAK_LISTEN", "127.0.0.1:0".into()),
            (
                "FIREBREAK_DATA_DIR",
                tmp.path().join("data").display().to_string(),
            ),
            ("FIREBREAK_RUNBOOKS", dir.display().to_string()),
            ("FIREBREAK_KUBERNETES_DISABLED", "1".into()),
            ("FIREBREAK_NATS_URL", nats.url()),
            ("FIREBREAK_NATS_USER", "engine".into()),
            ("FIREBREAK_NATS_PASSWORD", "not-the-password".into()),
        ],
    )
    .await;
    assert!(!out.success(), "serve ran with a wrong password: {out}");
    assert!(
        out.stderr.contains(&nats.url())
            && out.stderr.contains("refused authorization")
            && out.stderr.contains("user/password")
            && out
                .stderr
                .to_lowercase()
                .contains("authorization violation"),
        "{out}"
    );
    assert!(
        !out.stderr.contains("not-the-password"),
        "the password is not printed: {out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_replica_logs_in_with_an_nkey_over_tls_with_a_client_certificate() {
    let certs = TlsFiles::generate().expect("test certificates (needs the openssl CLI)");
    let user = nkeys::KeyPair::new_user();
    let nats = server(Some(&user.public_key()), &certs.server_block());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    runbooks(&dir);
    let seed = tmp.path().join("engine.nk");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    let path = |name: &str| certs.path(name).display().to_string();
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![
                ("FIREBREAK_NATS_URL", nats.url()),
                ("FIREBREAK_NATS_NKEY_FILE", seed.display().to_string()),
                ("FIREBREAK_NATS_TLS_CA", path("ca.pem")),
                ("FIREBREAK_NATS_TLS_CERT", path("client.pem")),
                ("FIREBREAK_NATS_TLS_KEY", path("client.key")),
            ],
            ..ServeOpts::default()
        },
    )
    .await;
    runs_end_to_end(&serve).await;
    let ready = serve
        .log_lines()
        .into_iter()
        .find(|l| l["fields"]["message"] == "nats bus ready")
        .expect("the bus logged that it is ready");
    assert_eq!(ready["fields"]["auth"], "nkey", "{ready}");
    assert_eq!(ready["fields"]["tls"], true, "{ready}");
}
