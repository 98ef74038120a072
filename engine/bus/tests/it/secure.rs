//! The bus on a nats-server that authenticates and authorizes: accounts, users with the
//! permission sets shipped in `deploy/nats/permissions.conf` (read here at compile time, so the
//! documented sets are the tested ones), a token server, NKey users, and a TLS listener that
//! verifies client certificates (made with the `openssl` CLI).
//!
//! Each way in is tested both ways: the right credentials pass the suite, the wrong ones are
//! refused at once with an error that names the server and says it refused authorization.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use firebreak_bus::testutil::{NatsServer, TlsFiles};
use firebreak_bus::{
    Bus, BusError, BusErrorKind, NatsAuth, NatsBus, NatsOptions, NatsSecurity, NatsTls, StateStore,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::nats::Nats;
use crate::suite::{self, event, next};

/// The shipped permission sets (`FIREBREAK_ENGINE`, `FIREBREAK_INGEST`).
const PERMISSIONS: &str = include_str!("../../../../deploy/nats/permissions.conf");

const ENGINE_PASSWORD: &str = "engine-pw";
const BRIDGE_PASSWORD: &str = "bridge-pw";

/// Accounts as an operator would set them up: firebreak's own account with an engine user
/// and an Alertmanager bridge (each with its shipped permission set), optionally an NKey
/// engine user, and another tenant's account beside it. `extra` is appended (a `tls` block).
fn accounts_config(nkey_user: Option<&str>, extra: &str) -> String {
    let nkey = nkey_user
        .map(|public| format!("      {{ nkey: {public}, permissions: $FIREBREAK_ENGINE }}\n"))
        .unwrap_or_default();
    format!(
        "include ./permissions.conf\n\
         accounts: {{\n\
           FIREBREAK: {{\n\
             jetstream: enabled\n\
             users: [\n\
               {{ user: engine, password: {ENGINE_PASSWORD}, permissions: $FIREBREAK_ENGINE }}\n\
               {{ user: alert-bridge, password: {BRIDGE_PASSWORD}, permissions: $FIREBREAK_INGEST }}\n\
         {nkey}\
             ]\n\
           }}\n\
           OTHER: {{ jetstream: enabled, users: [ {{ user: other, password: other-pw }} ] }}\n\
         }}\n\
         {extra}"
    )
}

fn accounts_server(nkey_user: Option<&str>, extra: &str) -> NatsServer {
    let config = accounts_config(nkey_user, extra);
    NatsServer::start_with_config(&config, &[("permissions.conf", PERMISSIONS)])
        .unwrap_or_else(|e| panic!("nats-server with accounts: {e}\n{config}"))
}

fn secured(auth: NatsAuth, tls: NatsTls, ack_wait: Duration) -> NatsOptions {
    NatsOptions {
        ack_wait,
        fetch_batch: 10,
        security: NatsSecurity { auth, tls },
        ..NatsOptions::default()
    }
}

fn engine_user(password: &str) -> NatsAuth {
    NatsAuth::UserPassword {
        user: "engine".into(),
        password: password.into(),
    }
}

/// The harness as the engine user, with nothing but the shipped engine permissions.
fn engine(ack_wait: Duration) -> Nats {
    Nats::on(
        accounts_server(None, ""),
        secured(engine_user(ENGINE_PASSWORD), NatsTls::default(), ack_wait),
    )
}

const ACK_WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn engine_permissions_suffice_to_publish_consume_and_ack() {
    suite::publish_consume_ack(&mut engine(ACK_WAIT)).await;
}

#[tokio::test]
async fn engine_permissions_suffice_to_nak_and_mark_in_progress() {
    suite::unacked_is_redelivered_after_ack_wait_and_nak(&mut engine(Duration::from_secs(1))).await;
    suite::in_progress_extends_the_ack_wait(&mut engine(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn engine_permissions_suffice_for_audit_and_state() {
    let mut h = engine(ACK_WAIT);
    suite::audit_publish_is_accepted(&mut h).await;
    suite::locks(&mut h).await;
    suite::cooldowns_and_budgets_survive_restart(&mut h).await;
}

/// Run takeover with only the engine's permissions: listing the lock bucket for leases that
/// ran out, taking one over, and reading the run's lines back from the audit stream.
#[tokio::test]
async fn engine_permissions_suffice_for_run_takeover() {
    use firebreak_bus::{AuditMessage, Decision, RunLeases};
    let mut h = engine(ACK_WAIT);
    h.opts.run_lease = Duration::from_secs(1);
    h.opts.replica = Some("a".into());
    let a_bus = h.connect().await;
    let a = a_bus.state_store().await.expect("a's state store");
    h.opts.replica = Some("b".into());
    let b = h
        .connect()
        .await
        .state_store()
        .await
        .expect("b's state store");
    assert!(
        a.try_lock_run("rb/key", "run-9", "team-a", Duration::from_secs(600))
            .await
            .unwrap()
    );
    // The run's `once` decisions: the first stands, the second replica reads it back.
    let (first, second) = (
        Decision {
            run_id: "run-9".into(),
            value: serde_json::json!("v1"),
        },
        Decision {
            run_id: "run-8".into(),
            value: serde_json::json!("v2"),
        },
    );
    assert_eq!(
        a.decide("rb/key/blamed", first.clone()).await.unwrap(),
        first
    );
    assert_eq!(b.decide("rb/key/blamed", second).await.unwrap(), first);
    assert_eq!(b.decision("rb/key/blamed").await.unwrap(), Some(first));
    a_bus
        .publish_audit(vec![AuditMessage {
            subject: firebreak_bus::nats::audit_run_subject("team-a", "run-9"),
            id: "run-9-1".into(),
            payload: bytes::Bytes::from_static(b"{\"line\":1}\n"),
        }])
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let orphans = b.orphans().await.expect("listing the locks");
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert!(
        b.take_over(&orphans[0], Duration::from_secs(600))
            .await
            .unwrap()
    );
    let team = orphans[0]
        .team
        .clone()
        .expect("the lock names the run's team");
    for teams in [vec![team], Vec::new()] {
        let lines = b
            .run_lines("run-9", &teams)
            .await
            .expect("reading the audit stream");
        assert_eq!(lines, vec![bytes::Bytes::from_static(b"{\"line\":1}\n")]);
    }
    assert!(b.unlock("rb/key", "run-9").await.unwrap());
}

/// Connects, expecting a refusal; returns the error and how long it took.
async fn refused(url: &str, opts: NatsOptions) -> (BusError, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), NatsBus::connect(url, opts))
        .await
        .expect("connect returns, it does not hang");
    (result.err().expect("refused"), started.elapsed())
}

/// The error and its causes, one line.
fn chain(err: &BusError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Refused at once (no retry loop), as `Unauthorized`, naming the URL, the method, and what
/// the server said.
fn assert_unauthorized(err: &BusError, took: Duration, url: &str, method: &str) {
    let text = chain(err);
    assert!(
        matches!(err, BusError::Unauthorized { .. }),
        "not Unauthorized: {text}"
    );
    assert_eq!(err.kind(), BusErrorKind::Permanent, "{text}");
    assert!(
        text.contains(url) && text.contains("refused authorization") && text.contains(method),
        "{text}"
    );
    assert!(
        text.to_lowercase().contains("authorization violation"),
        "the server's answer is kept: {text}"
    );
    assert!(took < Duration::from_secs(3), "refused after {took:?}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_at_once() {
    let server = accounts_server(None, "");
    let (err, took) = refused(
        &server.url(),
        secured(
            engine_user("not-the-password"),
            NatsTls::default(),
            ACK_WAIT,
        ),
    )
    .await;
    assert_unauthorized(&err, took, &server.url(), "user/password");
    // No credentials at all, on a server that wants them.
    let (err, took) = refused(
        &server.url(),
        secured(NatsAuth::None, NatsTls::default(), ACK_WAIT),
    )
    .await;
    assert_unauthorized(&err, took, &server.url(), "none");
}

#[tokio::test]
async fn token_auth_passes_and_a_wrong_token_is_refused() {
    let server = NatsServer::start_with_config("authorization { token: \"t0ken-s3cret\" }\n", &[])
        .expect("nats-server with a token");
    let url = server.url();
    let (err, took) = refused(
        &url,
        secured(
            NatsAuth::Token("wrong".into()),
            NatsTls::default(),
            ACK_WAIT,
        ),
    )
    .await;
    assert_unauthorized(&err, took, &url, "token");
    let mut h = Nats::on(
        server,
        secured(
            NatsAuth::Token("t0ken-s3cret".into()),
            NatsTls::default(),
            ACK_WAIT,
        ),
    );
    suite::publish_consume_ack(&mut h).await;
}

#[tokio::test]
async fn nkey_auth_passes_and_an_unknown_key_is_refused() {
    let user = nkeys::KeyPair::new_user();
    let server = accounts_server(Some(&user.public_key()), "");
    let url = server.url();
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let (err, took) = refused(
        &url,
        secured(
            NatsAuth::NKey { seed: stranger },
            NatsTls::default(),
            ACK_WAIT,
        ),
    )
    .await;
    assert_unauthorized(&err, took, &url, "nkey");
    let seed = user.seed().unwrap();
    let mut h = Nats::on(
        server,
        secured(NatsAuth::NKey { seed }, NatsTls::default(), ACK_WAIT),
    );
    suite::publish_consume_ack(&mut h).await;
    suite::locks(&mut h).await;
}

#[tokio::test]
async fn tls_with_a_client_certificate_passes_and_an_untrusted_side_is_refused() {
    let certs = TlsFiles::generate().expect("test certificates (needs the openssl CLI)");
    let server = accounts_server(None, &certs.server_block());
    let url = server.url();
    let tls = |ca: &str, client: bool| NatsTls {
        ca_file: Some(certs.path(ca)),
        client_cert: client.then(|| (certs.path("client.pem"), certs.path("client.key"))),
        required: true,
    };
    let user = || engine_user(ENGINE_PASSWORD);

    // The server's certificate is not signed by the CA we trust.
    let (err, _) = refused(&url, secured(user(), tls("other-ca.pem", true), ACK_WAIT)).await;
    let text = chain(&err);
    assert!(matches!(err, BusError::Tls { .. }), "{text}");
    assert!(text.contains(&url) && text.contains("TLS"), "{text}");
    assert_eq!(err.kind(), BusErrorKind::Permanent);

    // No client certificate, to a server that verifies clients.
    let (err, _) = refused(&url, secured(user(), tls("ca.pem", false), ACK_WAIT)).await;
    // The server answers with a `bad certificate` alert.
    assert!(matches!(err, BusError::Tls { .. }), "{}", chain(&err));

    // A plain-text client: the server requires TLS, so async-nats upgrades with the system
    // roots, which do not know our CA.
    let (err, _) = refused(&url, secured(user(), NatsTls::default(), ACK_WAIT)).await;
    assert!(matches!(err, BusError::Tls { .. }), "{}", chain(&err));

    let mut h = Nats::on(server, secured(user(), tls("ca.pem", true), ACK_WAIT));
    suite::publish_consume_ack(&mut h).await;
}

#[tokio::test]
async fn tls_required_refuses_a_plain_text_server() {
    let server = NatsServer::start().expect("nats-server");
    let certs = TlsFiles::generate().expect("test certificates (needs the openssl CLI)");
    let (err, took) = refused(
        &server.url(),
        secured(
            NatsAuth::None,
            NatsTls {
                ca_file: Some(certs.path("ca.pem")),
                ..NatsTls::default()
            },
            ACK_WAIT,
        ),
    )
    .await;
    assert!(matches!(err, BusError::Tls { .. }), "{}", chain(&err));
    assert!(took < Duration::from_secs(3), "refused after {took:?}");
}

/// A plain async-nats client as `user`, with a short JetStream timeout (a refused publish
/// gets no PubAck), and the server's errors (permission violations) sent to the receiver.
async fn client_as(
    url: &str,
    user: &str,
    password: &str,
) -> (
    jetstream::Context,
    async_nats::Client,
    mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    // The engine user may read replies on firebreak's inbox prefix only.
    let inbox = if user == "engine" {
        firebreak_bus::nats::INBOX_PREFIX
    } else {
        "_INBOX"
    };
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(inbox)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client.clone());
    (js, client, rx)
}

/// Waits (bounded) for the server to report a permissions violation naming `subject`.
async fn violation(rx: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        rx.recv(),
    )
    .await
    {
        if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
            return;
        }
        seen.push(e);
    }
    panic!("no permissions violation for {subject}; the server said: {seen:?}");
}

/// An Alertmanager bridge with the ingest-only set can put Alertmanager events on the stream
/// and nothing else: no manual trigger, no audit record, no KV entry, no reading events or
/// firebreak's replies. And an event whose payload claims another source than its subject is
/// not taken as that source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_set_publishes_alertmanager_events_and_nothing_else() {
    let server = accounts_server(None, "");
    let url = server.url();
    let bus = NatsBus::connect(
        &url,
        secured(engine_user(ENGINE_PASSWORD), NatsTls::default(), ACK_WAIT),
    )
    .await
    .expect("engine connects");
    let state = bus.state_store().await.expect("engine opens the buckets");
    let mut deliveries = bus.consume().await.expect("consume");

    let (js, client, mut errors) = client_as(&url, "alert-bridge", BRIDGE_PASSWORD).await;
    let alert = event("from-the-bridge");
    js.publish(
        "firebreak.events.alertmanager.firing",
        serde_json::to_vec(&alert).unwrap().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("the bridge gets its PubAck");
    let d = next(&mut deliveries).await;
    assert_eq!(*d.event, alert);
    d.ack().await.unwrap();

    let mut manual = event("forged-trigger");
    manual.source = "manual".into();
    manual.kind = "trigger".into();
    let payload = serde_json::to_vec(&manual).unwrap();
    for subject in [
        "firebreak.events.manual.trigger",
        "firebreak.audit.sre.run-1",
        "$KV.firebreak_locks.team-a/fraud-model",
    ] {
        let acked = match js.publish(subject, payload.clone().into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!acked, "{subject} was accepted from the ingest user");
        violation(&mut errors, subject).await;
    }
    // It cannot read the stream or pull events...
    assert!(js.get_stream("FIREBREAK_EVENTS").await.is_err());
    violation(&mut errors, "$JS.API.STREAM.INFO.FIREBREAK_EVENTS").await;
    client
        .publish(
            "$JS.API.CONSUMER.MSG.NEXT.FIREBREAK_EVENTS.firebreak-engine",
            "1".into(),
        )
        .await
        .unwrap();
    violation(&mut errors, "$JS.API.CONSUMER.MSG.NEXT").await;
    // ... nor listen to firebreak's replies.
    let _sub = client.subscribe("_INBOX_firebreak.>").await.unwrap();
    violation(&mut errors, "_INBOX_firebreak.>").await;

    // A forged manual trigger on its own subject is parked as unprocessable, not run.
    js.publish("firebreak.events.alertmanager.firing", payload.into())
        .await
        .expect("publish")
        .await
        .expect("the subject is allowed");
    let d = next(&mut deliveries).await;
    assert_eq!(
        d.event.kind,
        firebreak_event::KIND_UNPROCESSABLE,
        "{:?}",
        d.event
    );
    assert!(
        d.event.data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("firebreak.events.manual.trigger")),
        "{}",
        d.event.data
    );
    d.ack().await.unwrap();
    suite::assert_quiet(&mut deliveries).await;
    assert_eq!(
        state.lock_holder("team-a/fraud-model").await.unwrap(),
        None,
        "no lock was written"
    );
}

/// The engine set is least privilege too: an engine replica cannot delete or purge the
/// streams, nor reach another account's.
#[tokio::test]
async fn the_engine_set_cannot_delete_or_purge_streams_but_sweeps_its_buckets() {
    let server = accounts_server(None, "");
    let url = server.url();
    let bus = NatsBus::connect(
        &url,
        secured(engine_user(ENGINE_PASSWORD), NatsTls::default(), ACK_WAIT),
    )
    .await
    .expect("engine connects and creates the streams");
    // It may sweep its own lock and cooldown buckets, and nothing more.
    let state = bus.state_store().await.expect("the buckets");
    assert!(state.try_lock("rb/k", "run-1", ACK_WAIT).await.unwrap());
    assert!(state.unlock("rb/k", "run-1").await.unwrap());
    assert_eq!(state.sweep(jiff::Timestamp::now()).await.unwrap(), 1);
    let (js, _client, mut errors) = client_as(&url, "engine", ENGINE_PASSWORD).await;
    assert!(js.delete_stream("FIREBREAK_AUDIT").await.is_err());
    violation(&mut errors, "$JS.API.STREAM.DELETE.FIREBREAK_AUDIT").await;
    let mut stream = js
        .get_stream("FIREBREAK_EVENTS")
        .await
        .expect("stream info is allowed");
    assert!(stream.purge().await.is_err());
    violation(&mut errors, "$JS.API.STREAM.PURGE.FIREBREAK_EVENTS").await;
    assert!(stream.info().await.is_ok(), "the stream is still there");

    // Another tenant on the same server sees none of firebreak's streams.
    let (other, _c, _e) = client_as(&url, "other", "other-pw").await;
    assert!(other.get_stream("FIREBREAK_EVENTS").await.is_err());
    let names: Vec<String> = other
        .stream_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// A creds file that is not one is refused before connecting, naming the file.
#[tokio::test]
async fn a_malformed_creds_file_is_refused_naming_it() {
    let server = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.creds");
    std::fs::write(&path, "-----BEGIN NATS USER JWT-----\nnot a jwt\n").unwrap();
    let (err, took) = refused(
        &server.url(),
        secured(
            NatsAuth::CredsFile(path.clone()),
            NatsTls::default(),
            ACK_WAIT,
        ),
    )
    .await;
    let text = chain(&err);
    assert!(matches!(err, BusError::Credentials { .. }), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(took < Duration::from_secs(1));
}

/// A base64url (no padding) encoding, as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A NATS JWT (v2) for `subject`, signed by `issuer`: what `nsc` writes.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{name}-{}", std::process::id()),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", base64url(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).expect("sign the JWT");
    format!("{body}.{}", base64url(&signature))
}

fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// A server in operator (decentralized JWT) mode, as `nsc` sets one up: an operator, the
/// firebreak account (JetStream on) preloaded in a memory resolver, and a `.creds` file for an
/// engine user the account signed. The replica logs in with the creds file and passes the
/// suite; a user signed by an account the operator does not know is refused.
#[tokio::test]
async fn an_engine_replica_logs_in_with_a_creds_file_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "firebreak-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "FIREBREAK",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_claims = serde_json::json!({
        "type": "user", "version": 2, "pub": {}, "sub": {},
        "subs": -1, "data": -1, "payload": -1
    });
    let user_jwt = nats_jwt(&account, &user.public_key(), "engine", user_claims.clone());
    // JetStream needs the server's system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let config = format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {sys}: {system_jwt}\n  {acc}: {account_jwt}\n}}\n",
        sys = system.public_key(),
        acc = account.public_key()
    );
    let server = NatsServer::start_with_config(&config, &[])
        .unwrap_or_else(|e| panic!("nats-server in operator mode: {e}\n{config}"));
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("engine.creds");
    std::fs::write(&creds, creds_file(&user_jwt, &user.seed().unwrap())).unwrap();
    let mut h = Nats::on(
        server,
        secured(NatsAuth::CredsFile(creds), NatsTls::default(), ACK_WAIT),
    );
    suite::publish_consume_ack(&mut h).await;

    // A user of an account the operator never signed.
    let stranger = nkeys::KeyPair::new_account();
    let intruder = nkeys::KeyPair::new_user();
    let forged = nats_jwt(&stranger, &intruder.public_key(), "intruder", user_claims);
    let path = dir.path().join("intruder.creds");
    std::fs::write(&path, creds_file(&forged, &intruder.seed().unwrap())).unwrap();
    let (err, took) = refused(
        &h.server.url(),
        secured(NatsAuth::CredsFile(path), NatsTls::default(), ACK_WAIT),
    )
    .await;
    let text = chain(&err);
    assert!(matches!(err, BusError::Unauthorized { .. }), "{text}");
    assert!(text.contains("creds file"), "{text}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}
