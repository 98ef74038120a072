//! The NATS JetStream bus and its KV state store. Works with nats-server 2.9 and later: it uses
//! only streams, durable pull consumers, `Nats-Msg-Id` dedupe, expected-last-subject-sequence
//! publishes (KV create/update) and direct get, all present in 2.9.
//!
//! - Events: stream `FIREBREAK_EVENTS` on `firebreak.events.>`, file storage, work-queue
//!   retention (an acked event is removed), a duplicate window for `Nats-Msg-Id`. One durable
//!   pull consumer (`firebreak-engine`) is shared by every replica, so replicas split the work.
//! - Audit: stream `FIREBREAK_AUDIT` on `firebreak.audit.>`, limits retention, kept forever by
//!   default.
//! - State: KV buckets `firebreak_locks`, `firebreak_cooldowns`, `firebreak_budgets`,
//!   `firebreak_runs` (the runs' `once` decisions) and `firebreak_replicas` (each replica's
//!   heartbeat) ([`NatsStateStore`]).
//!
//! `publish` sends every event first and then awaits every PubAck (pipelined). While the client
//! is not connected it fails at once with [`BusError::NotConnected`], so ingest answers 503 and
//! the sender retries. So do, through [`crate::DeferredNats`] (as `serve` uses it), state
//! store calls (their callers retry). A delivery's acks and naks are queued in the client
//! while it reconnects (a nak then brings the message back soon, not after the ack wait), for
//! a bounded time: a full queue held a stop with NATS down past its grace period.
//!
//! Start at [`NatsBus::connect`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::{self, AckPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use firebreak_event::Event;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::Cause;
use crate::own_events::OwnEvents;
use crate::security::NatsSecurity;
use crate::state::{BUDGET_RETENTION, check_key};
use crate::{
    AckHandle, AuditMessage, Bus, BusError, BusErrorKind, Decision, Delivery, LockValue, Orphan,
    RunLeases, StateStore,
};

/// The inbox prefix of firebreak's NATS client: the engine's permissions subscribe to
/// `_INBOX_firebreak.>` only (see `deploy/nats/permissions.conf`).
pub const INBOX_PREFIX: &str = "_INBOX_firebreak";

/// Settings of the JetStream bus. `Default` gives production values.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Events stream name. Default `FIREBREAK_EVENTS`.
    pub events_stream: String,
    /// Audit stream name. Default `FIREBREAK_AUDIT`.
    pub audit_stream: String,
    /// The durable consumer every replica shares. Default `firebreak-engine`.
    pub consumer: String,
    /// How long a delivery may stay unacked before redelivery: what a replica that died had
    /// pulled and not started comes to another one this long after it was pulled. A replica
    /// alive marks each delivery it holds in progress every third of it, one message each:
    /// with thousands waiting for run slots a short one floods the server (15 s, tried under
    /// an overload, made the replicas thrash). Default 60 s.
    pub ack_wait: Duration,
    /// Deliveries before the server gives up on an event (-1: never). Default -1.
    pub max_deliver: i64,
    /// Window in which a re-published id is dropped by the server. Default 2 min.
    pub duplicate_window: Duration,
    /// Events asked for per pull request. Default 256.
    pub fetch_batch: usize,
    /// Bound on each JetStream request and PubAck wait. Default 5 s.
    pub request_timeout: Duration,
    /// Age after which audit records are dropped (zero: never). Default zero.
    pub audit_max_age: Duration,
    /// Age after which a run's `once` decision is dropped. Default 7 days.
    pub run_retention: Duration,
    /// Copies of every stream and bucket kept by a NATS cluster (1, 3 or 5). Default 1; use 3
    /// on a three-node cluster so a node can fail without losing or stopping anything.
    pub replicas: usize,
    /// Bytes the events stream may hold (-1: unlimited). When it is full a new alert is
    /// refused (answered 503, so Alertmanager retries); nothing accepted is ever discarded.
    pub events_max_bytes: i64,
    /// Bytes the audit stream keeps (-1: unlimited); past it the oldest records go (the
    /// engines' local journals stay whole).
    pub audit_max_bytes: i64,
    /// Credentials and TLS. Default none: a server without authorization, plain text unless
    /// the server asks for TLS.
    pub security: NatsSecurity,
    /// This replica's name in the run leases it holds ([`crate::RunLeases`]). `None`: locks
    /// carry no lease (a single engine, or a tool that only reads).
    pub replica: Option<String>,
    /// How long a run lease lasts unless renewed: after a replica dies, others take its runs
    /// over this long after its last renewal. Default 15 s.
    pub run_lease: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            events_stream: "FIREBREAK_EVENTS".into(),
            audit_stream: "FIREBREAK_AUDIT".into(),
            consumer: "firebreak-engine".into(),
            ack_wait: Duration::from_secs(60),
            // Unlimited: an accepted event stays until it is acked. One that can never be
            // processed is parked in the audit journal and acked, not dropped by a counter.
            max_deliver: -1,
            duplicate_window: Duration::from_secs(120),
            fetch_batch: 256,
            request_timeout: Duration::from_secs(5),
            audit_max_age: Duration::ZERO,
            run_retention: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
            events_max_bytes: -1,
            audit_max_bytes: -1,
            security: NatsSecurity::default(),
            replica: None,
            run_lease: Duration::from_secs(15),
        }
    }
}

/// The JetStream bus; see the module docs. Cheap to share behind an `Arc`.
pub struct NatsBus {
    client: async_nats::Client,
    js: Context,
    url: String,
    setup: Setup,
    closed: CancellationToken,
    /// What this process published, until its own consumer is handed it (not decoded again).
    own: Arc<OwnEvents>,
    disconnects: Disconnects,
}

/// How many times the client lost its connection: a wait for an answer the lost connection
/// was to carry (a PubAck) ends with it, not at its timeout. The server sends an answer on the
/// connection the request came on; with that one gone, the publish is retried (its message id
/// keeps the stream from storing it twice).
#[derive(Clone)]
struct Disconnects(tokio::sync::watch::Receiver<u64>);

impl Disconnects {
    fn seen(&self) -> u64 {
        *self.0.borrow()
    }

    /// Resolves once the connection is lost after `seen` (at once if it already was).
    async fn since(&self, seen: u64) {
        let mut changes = self.0.clone();
        if changes.wait_for(|n| *n != seen).await.is_err() {
            // The client is gone; its own errors end the wait.
            std::future::pending::<()>().await;
        }
    }
}

/// Creates (or finds) the streams and the shared consumer. Kept apart from [`NatsBus`] so a
/// consumer stream can recreate them if they vanish (a wiped or replaced nats-server).
#[derive(Clone)]
struct Setup {
    js: Context,
    opts: NatsOptions,
    /// The shared consumer's ack wait as the server has it, in milliseconds: the configured
    /// one once this replica set it, else what the consumer kept. Deliveries are marked in
    /// progress every third of it.
    ack_wait_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Maps a publish failure to a kind: no server answer means the bus is unavailable.
fn publish_kind(kind: PublishErrorKind) -> BusErrorKind {
    match kind {
        // "No stream for the subject" is what async-nats makes of a publish nothing answered
        // ("no responders"), and a stream whose leader's node failed has nothing listening on
        // its subjects until the cluster elects another (nats-server's raft waits 4 to 9 s):
        // worth waiting for, like a timeout. A stream really gone is recreated (events) or
        // given up on after the retries (the audit mirror, `nats.audit_mirror_retry`).
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => BusErrorKind::Unavailable,
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => BusErrorKind::Permanent,
        _ => BusErrorKind::Transient,
    }
}

/// A subject token from a free-form string: NATS subjects cannot hold `.`, `*`, `>` or spaces
/// inside a token.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

/// A run's subject on the audit stream: `firebreak.audit.<team>.<run_id>`.
pub fn audit_run_subject(team: &str, run_id: &str) -> String {
    format!(
        "firebreak.audit.{}.{}",
        audit_token(team),
        audit_token(run_id)
    )
}

/// A subject token for the audit stream (only what NATS cannot carry in a token is replaced,
/// so team names and run ids stay readable).
pub fn audit_token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' => '_',
            c => c,
        })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

/// Where the audit journal's own records (checkpoints, relinks: no run) are mirrored.
pub const JOURNAL_SUBJECT_PREFIX: &str = "firebreak.audit._journal";

/// Where the journal records of `replica` that belong to no run go, by kind
/// (`firebreak.audit._journal.<replica>.<kind>`): each replica's own, so `audit verify` of one
/// replica's journal reads that replica's newest signed checkpoint.
pub fn journal_subject(replica: &str, kind: &str) -> String {
    format!(
        "{JOURNAL_SUBJECT_PREFIX}.{}.{}",
        audit_token(replica),
        audit_token(kind)
    )
}

/// Where `replica`'s journal mirrors its signed checkpoints; `audit verify` reads the newest.
pub fn checkpoint_subject(replica: &str) -> String {
    journal_subject(replica, "checkpoint")
}

/// The subject an event is published on: `firebreak.events.<source>.<type>`.
pub fn event_subject(event: &Event) -> String {
    format!(
        "firebreak.events.{}.{}",
        token(&event.source),
        token(&event.kind)
    )
}

/// Names an authorization refusal and a TLS failure; anything else is the server not reachable.
fn connect_error(url: &str, method: &'static str, e: async_nats::ConnectError) -> BusError {
    use async_nats::ConnectErrorKind as Kind;
    let url = url.to_owned();
    match e.kind() {
        // `Authentication`: async-nats could not sign the server's nonce with the seed.
        Kind::AuthorizationViolation | Kind::Authentication => BusError::Unauthorized {
            url,
            method,
            source: Box::new(e),
        },
        Kind::Tls => BusError::Tls {
            url,
            source: Box::new(e),
        },
        // A failed handshake comes as an I/O error holding the rustls error.
        Kind::Io if tls_failure(&e) => BusError::Tls {
            url,
            source: Box::new(e),
        },
        _ => BusError::Connect {
            url,
            source: Box::new(e),
        },
    }
}

/// Whether a rustls error is among the causes of `e`.
fn tls_failure(e: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if cause.is::<async_nats::rustls::Error>()
            || inner.is_some_and(|i| i.is::<async_nats::rustls::Error>())
        {
            return true;
        }
        source = cause.source();
    }
    false
}

impl NatsBus {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`) with `opts.security`, and creates the
    /// events and audit streams and the shared consumer if they do not exist. Fails if the
    /// server cannot be reached now, and at once ([`BusError::Unauthorized`], no retry) if it
    /// refuses the credentials; once connected, the client reconnects by itself forever.
    pub async fn connect(url: &str, opts: NatsOptions) -> Result<NatsBus, BusError> {
        let method = opts.security.auth.method();
        let (lost, disconnects) = tokio::sync::watch::channel(0u64);
        let lost = Arc::new(lost);
        let client = opts
            .security
            .apply(async_nats::ConnectOptions::new())
            .await?
            .name("firebreak")
            // Replies to firebreak (JetStream answers, pulled events, KV values) apart from
            // other clients' `_INBOX.>`: a publisher allowed that cannot read them.
            .custom_inbox_prefix(INBOX_PREFIX)
            .connection_timeout(opts.request_timeout)
            .request_timeout(Some(opts.request_timeout))
            // Reconnect quickly: while disconnected, ingest answers 503.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            })
            .event_callback(move |event| {
                let lost = lost.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => info!("nats connected"),
                        async_nats::Event::Disconnected => {
                            lost.send_modify(|n| *n += 1);
                            warn!("nats disconnected");
                        }
                        // A permissions violation (a subject the user may not use) or a refused
                        // reconnect: the server says what it refused; the request waiting for an
                        // answer only times out.
                        async_nats::Event::ServerError(e) => {
                            error!(error = %e, "nats server error")
                        }
                        async_nats::Event::ClientError(e) => warn!(error = %e, "nats client error"),
                        other => debug!(event = %other, "nats event"),
                    }
                }
            })
            // A cluster's servers, comma-separated; the client also learns the others from
            // the one it reaches, and fails over between them.
            .connect(
                url.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<String>>(),
            )
            .await
            .map_err(|e| connect_error(url, method, e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.request_timeout)
            .build(client.clone());
        let setup = Setup {
            js: js.clone(),
            ack_wait_ms: Arc::new(std::sync::atomic::AtomicU64::new(millis(opts.ack_wait))),
            opts,
        };
        setup.events_consumer().await?;
        setup.audit_stream().await?;
        info!(url, auth = method, tls = setup.opts.security.tls.wanted(), stream = %setup.opts.events_stream, consumer = %setup.opts.consumer, "nats bus ready");
        let server = client.server_info().version;
        if setup.opts.replicas > 1 && !serializes_compare_and_set(&server) {
            warn!(server = %server, "this nats-server checks a compare-and-set before it goes through the cluster's raft log (nats-server#4320, fixed upstream in 2023, 2.10 and later): firebreak confirms each run takeover and each expired lock it takes, at two more round trips each; use a current nats-server for a cluster");
        }
        let bus = NatsBus {
            client,
            js,
            url: url.to_owned(),
            setup,
            closed: CancellationToken::new(),
            own: Arc::default(),
            disconnects: Disconnects(disconnects),
        };
        Ok(bus)
    }

    /// Opens the KV state store on this connection, creating its buckets if needed.
    pub async fn state_store(&self) -> Result<NatsStateStore, BusError> {
        NatsStateStore::open(self.js.clone(), &self.setup.opts).await
    }

    /// The server URL this bus connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The newest message the audit stream holds on `subject` (e.g. [`checkpoint_subject`]),
    /// if any.
    pub async fn last_audit_message(
        &self,
        subject: &str,
    ) -> Result<Option<bytes::Bytes>, BusError> {
        let stream = self
            .js
            .get_stream(&self.setup.opts.audit_stream)
            .await
            .map_err(|e| BusError::nats("get the audit stream", BusErrorKind::Unavailable, e))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(BusError::nats(
                format!("read the last message on {subject}"),
                BusErrorKind::Unavailable,
                e,
            )),
        }
    }

    /// Every message the audit stream holds, oldest first (one request each: for `audit
    /// verify --stream`, not for a hot path).
    pub async fn audit_messages(&self) -> Result<Vec<bytes::Bytes>, BusError> {
        read_subject(&self.js, &self.setup.opts.audit_stream, "firebreak.audit.>").await
    }

    fn check_connected(&self) -> Result<(), BusError> {
        if self.client.connection_state() == State::Connected {
            Ok(())
        } else {
            Err(BusError::NotConnected {
                url: self.url.clone(),
            })
        }
    }
}

/// How long a one-off reader (the `audit` commands) waits out a JetStream cluster that cannot
/// answer: nats-server's raft takes 4 to 9 s to elect a stream's leader after its node fails.
pub const ELECTION_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `attempt` until it succeeds, fails for good, or `patience` has passed. JetStream
/// answering "temporarily unavailable" (a cluster electing), a request timing out and a lost
/// connection are waited out, with `waiting` told of each such failure (to say so); a server
/// nothing answered on ([`BusError::Connect`]) and refused credentials fail at once.
pub async fn wait_out_elections<T, Fut>(
    patience: Duration,
    waiting: impl FnMut(&BusError),
    attempt: impl FnMut() -> Fut,
) -> Result<T, BusError>
where
    Fut: std::future::Future<Output = Result<T, BusError>>,
{
    wait_out_elections_until(patience, std::future::pending(), waiting, attempt).await
}

/// [`wait_out_elections`] that also stops waiting once `until` is ready (the engine stopping):
/// the attempt under way ends as it ends, and a failure after `until` is the answer.
pub async fn wait_out_elections_until<T, Fut>(
    patience: Duration,
    until: impl std::future::Future<Output = ()>,
    mut waiting: impl FnMut(&BusError),
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, BusError>
where
    Fut: std::future::Future<Output = Result<T, BusError>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut until = std::pin::pin!(futures::FutureExt::fuse(until));
    loop {
        match attempt().await {
            Err(e)
                if !matches!(e, BusError::Connect { .. })
                    && e.kind() != BusErrorKind::Permanent
                    && tokio::time::Instant::now() < deadline =>
            {
                waiting(&e);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = &mut until => return Err(e),
                }
            }
            done => return done,
        }
    }
}

/// Creates a stream, or brings an existing one to `config`'s replicas and limits (changed in
/// firebreak.yaml since it was created): the server keeps what it holds and applies the new
/// settings from then on.
async fn ensure_stream(js: &Context, config: stream::Config) -> Result<stream::Stream, Cause> {
    let mut stream = js.get_or_create_stream(config.clone()).await?;
    let current = stream.info().await?.config.clone();
    // The server writes "unlimited" as -1 where a config may say 0.
    let bytes = |b: i64| if b <= 0 { -1 } else { b };
    let changed = current.num_replicas != config.num_replicas
        || bytes(current.max_bytes) != bytes(config.max_bytes)
        || current.max_age != config.max_age
        || current.discard != config.discard;
    if changed {
        tracing::info!(
            stream = %config.name,
            replicas = config.num_replicas,
            max_bytes = config.max_bytes,
            max_age_s = config.max_age.as_secs(),
            "updating the stream's replicas and limits"
        );
        js.update_stream(config.clone()).await?;
        stream = js.get_stream(&config.name).await?;
    }
    Ok(stream)
}

impl Setup {
    async fn events_stream(&self) -> Result<stream::Stream, BusError> {
        let name = &self.opts.events_stream;
        ensure_stream(
            &self.js,
            stream::Config {
                name: name.clone(),
                description: Some("firebreak events, one per alert or trigger".into()),
                subjects: vec!["firebreak.events.>".into()],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                duplicate_window: self.opts.duplicate_window,
                num_replicas: self.opts.replicas,
                max_bytes: self.opts.events_max_bytes,
                // Full: refuse the new event, never drop an accepted one.
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            BusError::nats(
                format!("create stream {name}"),
                BusErrorKind::Unavailable,
                e,
            )
        })
    }

    async fn audit_stream(&self) -> Result<stream::Stream, BusError> {
        let name = &self.opts.audit_stream;
        ensure_stream(
            &self.js,
            stream::Config {
                name: name.clone(),
                description: Some("firebreak audit records, by team and run".into()),
                subjects: vec!["firebreak.audit.>".into()],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                max_age: self.opts.audit_max_age,
                max_bytes: self.opts.audit_max_bytes,
                duplicate_window: self.opts.duplicate_window,
                num_replicas: self.opts.replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            BusError::nats(
                format!("create stream {name}"),
                BusErrorKind::Unavailable,
                e,
            )
        })
    }

    async fn events_consumer(&self) -> Result<consumer::Consumer<pull::Config>, BusError> {
        let stream = self.events_stream().await?;
        let name = &self.opts.consumer;
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some("shared by every firebreak engine replica".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.opts.ack_wait,
            max_deliver: self.opts.max_deliver,
            max_ack_pending: 20_000,
            ..Default::default()
        };
        let unavailable = |what: &str, e| {
            BusError::nats(
                format!("{what} consumer {name}"),
                BusErrorKind::Unavailable,
                e,
            )
        };
        let mut consumer = stream
            .get_or_create_consumer(name, config.clone())
            .await
            .map_err(|e| unavailable("create", e))?;
        // A consumer keeps the ack wait it was made with (an earlier version's 60 s, another
        // setting): what a dead replica had pulled would come back only after that.
        let kept = consumer.cached_info().config.ack_wait;
        if kept != self.opts.ack_wait {
            match stream.update_consumer(config).await {
                Ok(updated) => {
                    info!(consumer = %name, from = ?kept, to = ?self.opts.ack_wait, "set the shared consumer's ack wait (nats.ack_wait)");
                    consumer = updated;
                }
                Err(e) => {
                    warn!(consumer = %name, kept = ?kept, wanted = ?self.opts.ack_wait, error = %e, "cannot change the shared consumer's ack wait; keeping its own");
                }
            }
        }
        let effective = consumer.cached_info().config.ack_wait;
        self.ack_wait_ms
            .store(millis(effective), std::sync::atomic::Ordering::Relaxed);
        Ok(consumer)
    }

    /// The shared consumer's ack wait as last read from the server.
    fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// `d` in whole milliseconds (at least 1).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The `op` of a publish that found no stream for its subject.
const STREAM_MISSING: &str = "publish (no stream for the subject)";

impl NatsBus {
    /// [`Bus::publish`]. Its future is built on the stack and moved into a box for every
    /// publish, so what only a rare path needs is boxed apart (`a_publish_future_stays_small`).
    async fn publish_events(&self, events: Vec<Event>) -> Result<(), BusError> {
        if events.is_empty() {
            return Ok(());
        }
        crate::error::check_ids(&events)?;
        self.check_connected()?;
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        match self.publish_all(&events).await {
            // The stream is gone (a wiped server): recreate it and try once more. (While its
            // leader is elected the set-up finds it, and the second try answers unavailable.)
            Err(BusError::Nats { ref op, .. }) if op == STREAM_MISSING => {
                warn!(stream = %self.setup.opts.events_stream, "events stream missing; recreating it");
                // Inline, the stream and consumer set-up would make every publish's future
                // kilobytes larger.
                Box::pin(self.setup.events_consumer()).await?;
                self.publish_all(&events).await
            }
            other => other,
        }
    }

    /// Sends every event, then awaits every ack: one round trip for the batch, not one each.
    async fn publish_all(&self, events: &[Arc<Event>]) -> Result<(), BusError> {
        let failed = |stage: &'static str, kind: PublishErrorKind| match kind {
            PublishErrorKind::StreamNotFound => STREAM_MISSING,
            _ => stage,
        };
        // Encode and size-check everything first, so an oversized event refuses the batch
        // before any of it is sent.
        let max = self.client.server_info().max_payload;
        let mut payloads = Vec::with_capacity(events.len());
        for event in events {
            let payload = event.keep_json();
            // Headers (Nats-Msg-Id) need room too.
            if max > 0 && payload.len() + 256 > max {
                return Err(BusError::EventTooLarge {
                    id: event.id.clone(),
                    size: payload.len(),
                    max,
                });
            }
            payloads.push(payload);
        }
        // Kept before they are sent: the delivery may come back before the publish's ack.
        for (event, payload) in events.iter().zip(&payloads) {
            self.own.keep(event.clone(), payload.clone());
        }
        let seen = self.disconnects.seen();
        let sent = async {
            let mut acks = Vec::with_capacity(events.len());
            for (event, payload) in events.iter().zip(payloads) {
                let ack = self
                    .js
                    .send_publish(
                        event_subject(event),
                        PublishMessage::build()
                            .payload(payload)
                            .message_id(&event.id),
                    )
                    .await
                    .map_err(|e| {
                        BusError::nats(failed("publish", e.kind()), publish_kind(e.kind()), e)
                    })?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(|e| {
                    BusError::nats(failed("publish ack", e.kind()), publish_kind(e.kind()), e)
                })?;
            }
            Ok(())
        };
        let sent = tokio::select! {
            biased;
            sent = sent => sent,
            () = self.disconnects.since(seen) => Err(BusError::NotConnected {
                url: self.url.clone(),
            }),
        };
        if sent.is_err() {
            self.own.forget(events.iter().map(|e| e.id.as_str()));
        }
        sent
    }
}

impl Bus for NatsBus {
    fn publish(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.publish_events(events))
    }

    fn consume(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, BusError>>, BusError>> {
        Box::pin(async move {
            let consumer = self.setup.events_consumer().await?;
            let messages = open_messages(&consumer, self.setup.opts.fetch_batch).await?;
            let state = PullState {
                setup: self.setup.clone(),
                messages: Some(messages),
                closed: self.closed.clone(),
                own: self.own.clone(),
            };
            let stream = futures::stream::unfold(state, |mut state| async move {
                let delivery = state.next().await?;
                Some((Ok(delivery), state))
            });
            Ok(Box::pin(stream) as BoxStream<'static, _>)
        })
    }

    fn publish_audit(
        &self,
        records: Vec<AuditMessage>,
    ) -> BoxFuture<'_, Result<crate::AuditStored, BusError>> {
        Box::pin(async move {
            self.check_connected()?;
            let seen = self.disconnects.seen();
            let sending = async {
                let mut acks = Vec::with_capacity(records.len());
                for record in records {
                    let ack = self
                        .js
                        .send_publish(
                            record.subject,
                            PublishMessage::build()
                                .payload(record.payload)
                                .message_id(record.id),
                        )
                        .await
                        .map_err(|e| BusError::nats("publish audit", publish_kind(e.kind()), e))?;
                    acks.push(ack);
                }
                Ok::<_, BusError>(acks)
            };
            // Bounded: with the connection just lost the client queues what is sent, and a
            // full queue holds the sender (the journal's appends wait for this one).
            let acks = tokio::time::timeout(self.setup.opts.request_timeout, sending)
                .await
                .map_err(|_| BusError::NotConnected {
                    url: self.url.clone(),
                })??;
            let (disconnects, url) = (self.disconnects.clone(), self.url.clone());
            let setup = self.setup.clone();
            Ok(Box::pin(async move {
                let acked = async {
                    for ack in acks {
                        match ack.await {
                            Ok(_) => {}
                            // No stream took it: one electing a leader, or one gone (a wiped
                            // or replaced server). Make sure it exists (while it elects, the
                            // stream is found, or the request fails) for the caller's next try.
                            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                                if let Err(ensure) = setup.audit_stream().await {
                                    debug!(error = %ensure, "audit stream not found and not made again (yet)");
                                }
                                return Err(BusError::nats(
                                    "publish audit ack (no stream for the subject)",
                                    BusErrorKind::Unavailable,
                                    e,
                                ));
                            }
                            Err(e) => {
                                return Err(BusError::nats(
                                    "publish audit ack",
                                    publish_kind(e.kind()),
                                    e,
                                ));
                            }
                        }
                    }
                    Ok(())
                };
                tokio::select! {
                    biased;
                    acked = acked => acked,
                    () = disconnects.since(seen) => Err(BusError::NotConnected { url }),
                }
            }) as crate::AuditStored)
        })
    }

    fn ready(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Ends every consumer stream of this handle and flushes what the client still buffers
    /// (acks). Publishing keeps working until the bus is dropped.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closed.cancel();
            if self.client.connection_state() != State::Connected {
                // A flush would wait for a reconnect; the process is on its way out.
                warn!("nats is not connected at close; acks not yet sent mean redeliveries");
                return;
            }
            // Bounded: with the server gone (not noticed yet) a flush waits for the reconnect.
            let timeout = self.setup.opts.request_timeout;
            match tokio::time::timeout(timeout, self.client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "could not flush the nats client on close"),
                Err(_) => warn!("nats flush on close timed out; unflushed acks mean redeliveries"),
            }
        })
    }
}

async fn open_messages(
    consumer: &consumer::Consumer<pull::Config>,
    batch: usize,
) -> Result<pull::Stream, BusError> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| BusError::nats("pull from consumer", BusErrorKind::Unavailable, e))
}

/// One consumer stream: a pull subscription, reopened (recreating the stream and consumer if
/// they vanished) when it ends.
struct PullState {
    setup: Setup,
    messages: Option<pull::Stream>,
    closed: CancellationToken,
    own: Arc<OwnEvents>,
}

impl PullState {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                tokio::select! {
                    () = self.closed.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let reopened = match self.setup.events_consumer().await {
                    Ok(consumer) => open_messages(&consumer, self.setup.opts.fetch_batch).await,
                    Err(e) => Err(e),
                };
                match reopened {
                    Ok(m) => self.messages = Some(m),
                    Err(e) => warn!(error = %e, "cannot reopen the events pull; retrying"),
                }
                continue;
            };
            let item = tokio::select! {
                () = self.closed.cancelled() => return None,
                item = messages.next() => item,
            };
            match item {
                Some(Ok(message)) => {
                    let opts = &self.setup.opts;
                    if let Some(delivery) = decode(
                        message,
                        &self.own,
                        self.setup.ack_wait(),
                        opts.request_timeout,
                    )
                    .await
                    {
                        return Some(delivery);
                    }
                }
                // The consumer is gone: reopen, which recreates it.
                Some(Err(e)) if e.kind() == pull::MessagesErrorKind::ConsumerDeleted => {
                    warn!("events consumer deleted; recreating it");
                    self.messages = None;
                }
                // Missed heartbeats and similar: the pull stream keeps going (and re-pulls after
                // a reconnect), so log and wait for the next item.
                Some(Err(e)) => warn!(error = %e, "events pull reported an error"),
                None => {
                    warn!("events pull ended; reopening");
                    self.messages = None;
                }
            }
        }
    }
}

/// Turns a JetStream message into a delivery. A payload that is not an event, or an event
/// published on another subject than its own source and type, can never be processed: it is delivered as a [`firebreak_event::unprocessable`] event, for the consumer
/// to park (keep in the audit journal) and ack, so it is neither lost nor redelivered forever.
/// An event this process published, delivered as the bytes it went out as, is not decoded
/// again ([`OwnEvents`]).
async fn decode(
    message: jetstream::Message,
    own: &OwnEvents,
    ack_wait: Duration,
    timeout: Duration,
) -> Option<Delivery> {
    let (attempt, published) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
            Timestamp::from_nanosecond(info.published.unix_timestamp_nanos())
                .unwrap_or_else(|_| Timestamp::now()),
        ),
        Err(_) => (1, Timestamp::now()),
    };
    let ack = NatsAck {
        client: message.context.client(),
        reply: message.reply.clone(),
        timeout,
    };
    let message = message.message;
    let kept = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|id| own.take(id.as_str(), &message.payload));
    let parsed = match kept {
        Some(event) => Ok(event),
        None => serde_json::from_slice::<Event>(&message.payload)
            .map(Arc::new)
            .map_err(|e| e.to_string()),
    }
    .and_then(|event| {
        // Who may publish on which subject is the server's permissions; the event must
        // say the same source and type as its subject, or a publisher allowed only
        // `firebreak.events.alertmanager.>` could send a manual trigger.
        let expected = event_subject(&event);
        if message.subject.as_str() == expected {
            Ok(event)
        } else {
            Err(format!(
                "published on {} but its source and type belong on {expected}",
                message.subject
            ))
        }
    });
    match parsed {
        Ok(event) => Some(Delivery::new(
            event,
            attempt,
            published,
            ack_wait,
            Box::new(ack),
        )),
        Err(e) => {
            error!(subject = %message.subject, error = %e, "a message that is not an event of its subject; handing it on to be parked");
            let event =
                firebreak_event::unprocessable(message.subject.as_str(), &e, &message.payload);
            Some(Delivery::new(
                Arc::new(event),
                attempt,
                published,
                ack_wait,
                Box::new(ack),
            ))
        }
    }
}

/// Acks a delivery on its reply subject. Not `Acker`: its double ack subscribes to a new
/// inbox for each ack (a SUB and an UNSUB per event, and nats-server's subject cache rebuilt
/// each time); a request on the client's shared inbox waits for the same confirmation.
struct NatsAck {
    client: async_nats::Client,
    reply: Option<async_nats::Subject>,
    /// The most an ack waits (see [`NatsAck::send`]).
    timeout: Duration,
}

impl NatsAck {
    fn reply(&self, op: &'static str) -> Result<async_nats::Subject, BusError> {
        self.reply.clone().ok_or_else(|| {
            BusError::nats(
                op,
                BusErrorKind::Permanent,
                "not a JetStream message (no reply subject)",
            )
        })
    }

    /// Bounded by `timeout`. While the client reconnects it queues the ack and sends it once
    /// connected (a nak then still brings the message back soon, not after the ack wait), but
    /// a full queue holds the caller until then: a stop with NATS down waited on the naks of
    /// its suspended runs until it was killed.
    async fn send(&self, op: &'static str, kind: AckKind) -> Result<(), BusError> {
        let reply = self.reply(op)?;
        match tokio::time::timeout(self.timeout, self.client.publish(reply, kind.into())).await {
            Ok(sent) => sent.map_err(|e| BusError::nats(op, BusErrorKind::Transient, e)),
            Err(_) => Err(BusError::nats(
                op,
                BusErrorKind::Transient,
                "the nats client's queue stayed full (not connected)",
            )),
        }
    }
}

impl AckHandle for NatsAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>> {
        // Double ack: Ok only once the server confirmed, so an acked run is not redelivered.
        Box::pin(async move {
            let request = self.client.request(self.reply("ack")?, AckKind::Ack.into());
            match tokio::time::timeout(self.timeout, request).await {
                Ok(answered) => answered
                    .map(drop)
                    .map_err(|e| BusError::nats("ack", BusErrorKind::Transient, e)),
                Err(_) => Err(BusError::nats(
                    "ack",
                    BusErrorKind::Transient,
                    "no confirmation in time",
                )),
            }
        })
    }

    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.send("nak", AckKind::Nak(Some(delay))))
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.send("in progress", AckKind::Progress))
    }
}

/// Encodes a free-form key for KV: letters, digits, `-`, `_` and `/` stay, every other byte
/// becomes `=XX` (so `.` never splits a subject and no two keys collide).
fn kv_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'/' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Whether nats-server `version` checks a write's expected revision inside its raft log on a
/// cluster (2.10 and later; nats-server#4320), so concurrent compare-and-sets of one key
/// cannot both pass. Unparsable versions are taken as current.
pub fn serializes_compare_and_set(version: &str) -> bool {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (2, 10),
        _ => true,
    }
}

/// How many times a compare-and-set loop re-reads after losing a race before it gives up.
const CAS_ATTEMPTS: usize = 16;

/// [`StateStore`] on JetStream KV; see the module docs. Locks use revision-checked create and
/// update, so two replicas never both hold one.
pub struct NatsStateStore {
    locks: kv::Store,
    cooldowns: kv::Store,
    budgets: kv::Store,
    runs: kv::Store,
    /// The locks this process took: kv key → what it last wrote there, so that releasing one
    /// is a single conditional delete instead of a read and a delete (only a hint: the
    /// revision check on the server decides), and so that a run knows until when its lease
    /// holds ([`RunLeases::holds`]).
    held: std::sync::Mutex<std::collections::HashMap<String, Held>>,
    /// This replica's name and lease length, written into every lock it takes.
    replica: Option<(String, Duration)>,
    /// For reading a run's journal lines back ([`RunLeases::run_lines`]).
    js: Context,
    audit_stream: String,
    /// Replicas' heartbeats (see [`Beat`]).
    replicas: kv::Store,
    /// This process's heartbeat key and incarnation (see [`Beat`]).
    beat_key: String,
    incarnation: String,
    /// The heartbeat as it is to be written: until when, and how many leases were given up.
    beat: std::sync::Mutex<(i64, u64)>,
    /// Heartbeat writes go one at a time, each with the newest state: a later write never
    /// lands before an earlier one, and releases that come while one is under way share the
    /// next ([`Self::count_release`]).
    beat_writing: tokio::sync::Mutex<()>,
    /// Lease scans: how many so far, and what the last one that read the locks saw.
    scans: std::sync::Mutex<(u64, Seen)>,
    /// Unlocks and lease releases NATS failed, `(key, owner, unlock)`: retried before each
    /// heartbeat ([`RunLeases::beat`]), since a lock this replica no longer renews would
    /// otherwise keep its incident's key held with no heartbeat ending to have it found.
    dangling: std::sync::Mutex<Vec<(String, String, bool)>>,
    /// The buckets are replicated (a NATS cluster) on a server that checks a compare-and-set
    /// outside its raft log ([`serializes_compare_and_set`]): a run takeover and a lock taken
    /// over from an expired one are confirmed ([`Self::still_ours_after_writes_in_flight`]).
    confirm_takes: bool,
    /// Writes to one lock from this process go one at a time ([`Self::one_at_a_time`]).
    writing: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// This process's last write of a lock (see `NatsStateStore::held`).
struct Held {
    owner: String,
    revision: u64,
    /// The lease that write gave this replica (unix ms; `i64::MAX` without leases).
    lease_ms: i64,
}

/// A replica's heartbeat in the `firebreak_replicas` bucket, under `<replica>/<incarnation>`.
///
/// Replicas do not follow each other's lock writes (a watch of the lock bucket per replica
/// cost a delivery of every lock write to every replica, which with many replicas becomes the
/// cluster's limit; `docs/SCALING.md`). Instead each replica renews one heartbeat, after a
/// round in which it renewed every lease it holds, so a lease can run out only once its
/// replica's heartbeat has; and a lease scan reads the lock bucket only when a heartbeat ended,
/// when a replica gave a lease up (`released` changed), and now and then ([`SAFETY_EVERY`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Beat {
    replica: String,
    incarnation: String,
    /// Until when the replica vouches for its leases (unix ms); 0 once it left.
    until_ms: i64,
    /// How many leases this incarnation gave up so far.
    #[serde(default)]
    released: u64,
}

/// What lease scans remember of the other replicas' heartbeats (see
/// [`NatsStateStore::must_read_locks`]).
#[derive(Debug, Default)]
struct Seen {
    /// Each incarnation's `released` count.
    released: std::collections::HashMap<String, u64>,
    /// Each ended heartbeat's next round to read the locks for, and the gap after that.
    ended: std::collections::HashMap<String, (u64, u64)>,
}

/// A lease scan of every [`SAFETY_EVERY`]th round reads the lock bucket even with every
/// heartbeat live, on one replica (the one whose heartbeat key sorts first), for a lease that
/// ran out with no heartbeat ending: a lock an engine without heartbeats left, or one whose
/// run ended while NATS failed its unlock. Not at every replica's start: the bucket holds a
/// delete marker per run until the sweep, and run starts wait behind a listing of them.
const SAFETY_EVERY: u64 = 20;

/// How long a heartbeat nobody deleted stays (its replica left, and no replica scanned since;
/// or its locks could not be taken over for that long, and the safety scans take over).
const BEAT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A name for this process's run of a replica: a restarted replica (the same name) is a new
/// incarnation, so its old heartbeat ends while the new one goes on.
fn incarnation() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:x}-{:x}-{n}",
        Timestamp::now().as_nanosecond(),
        std::process::id()
    )
}

fn kv_err(op: &str, e: impl Into<Cause>) -> BusError {
    BusError::nats(op.to_owned(), BusErrorKind::Transient, e)
}

fn codec(what: &str, source: serde_json::Error) -> BusError {
    BusError::Codec {
        what: what.to_owned(),
        source,
    }
}

/// Reads `key` (already a KV key) from `store` as JSON, from the bucket's leader; `what` names
/// it in errors. A direct get may be answered by a follower that has not applied the newest
/// write yet: a cooldown set as a run ended read as none by the next alert's start on another
/// replica, which then runs inside it (see also `NatsStateStore::lock_entry`).
async fn kv_get_json<T: serde::de::DeserializeOwned>(
    store: &kv::Store,
    key: String,
    what: &str,
) -> Result<Option<T>, BusError> {
    Ok(kv_entry_json(store, &key, what)
        .await?
        .map(|(value, _)| value))
}

/// [`kv_get_json`], with the entry's revision (for a compare-and-set); `None` when the key
/// holds nothing, or a delete.
async fn kv_entry_json<T: serde::de::DeserializeOwned>(
    store: &kv::Store,
    key: &str,
    what: &str,
) -> Result<Option<(T, u64)>, BusError> {
    let subject = format!("{}{key}", store.prefix);
    let message = match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => message,
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(kv_err(&format!("kv get {what}"), e)),
    };
    let put = message
        .headers
        .get("KV-Operation")
        .is_none_or(|op| op.as_str() == "PUT");
    if !put {
        // Deleted or purged.
        return Ok(None);
    }
    serde_json::from_slice(&message.payload)
        .map(|value| Some((value, message.sequence)))
        .map_err(|e| codec(what, e))
}

/// Writes `value` as JSON under `key` (already a KV key); `what` names it in errors.
async fn kv_put_json<T: Serialize>(
    store: &kv::Store,
    key: String,
    value: &T,
    what: &str,
) -> Result<(), BusError> {
    let bytes = serde_json::to_vec(value).map_err(|e| codec(what, e))?;
    store
        .put(key, bytes.into())
        .await
        .map_err(|e| kv_err(&format!("kv put {what}"), e))?;
    Ok(())
}

/// How long after its expiry a lock nobody released is swept away.
pub const LOCK_GRACE: Duration = Duration::from_secs(3600);

/// Purges every key of `store` whose last entry is a tombstone or whose value `live` says is
/// dead, up to that entry: one purge per key removed, from one listing of the keys' last
/// entries (a key read again before its purge would double the requests, and the lock bucket
/// holds a delete marker per run until this sweep).
async fn sweep_bucket(store: &kv::Store, live: impl Fn(&[u8]) -> bool) -> Result<u64, BusError> {
    let what = format!("sweep {}", store.name);
    // Purged as listed, so that the keys are not held: a key written again since its entry
    // was listed keeps the newer entry (the purge stops at the listed one).
    last_entries(store, &what)
        .await?
        .try_filter(|entry| {
            std::future::ready(entry.operation != Operation::Put || !live(&entry.value))
        })
        .map_ok(|entry| {
            let what = &what;
            async move {
                store
                    .stream
                    .purge()
                    .filter(format!("{}{}", store.prefix, entry.key))
                    .sequence(entry.revision + 1)
                    .await
                    .map_err(|e| {
                        BusError::nats(
                            format!("{what}: purge"),
                            BusErrorKind::Unavailable,
                            Box::new(e),
                        )
                    })
            }
        })
        // Several in flight: one after the other, each waits a round trip.
        .try_buffer_unordered(PURGES_IN_FLIGHT)
        .try_fold(0, |purged, _| std::future::ready(Ok(purged + 1)))
        .await
}

/// Purges the sweep keeps in flight.
const PURGES_IN_FLIGHT: usize = 64;

impl NatsStateStore {
    /// How many failed unlocks and lease releases wait for the next heartbeat to be retried.
    #[cfg(feature = "test-util")]
    pub fn releases_to_retry(&self) -> usize {
        self.dangling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Opens the five buckets, creating them if needed.
    pub async fn open(js: Context, opts: &NatsOptions) -> Result<NatsStateStore, BusError> {
        let server = js.client().server_info().version;
        // `Context::create_key_value` first asks for account info, whose 2.9 answer async-nats
        // 0.51 cannot parse; so create the bucket's stream ourselves, with the stream config a
        // KV bucket has (the one async-nats would send), then bind to it.
        let bucket = |name: &str, description: &str, max_age: Duration| {
            let js = js.clone();
            let config = stream::Config {
                name: format!("KV_{name}"),
                description: Some(description.to_owned()),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: opts.replicas,
                ..Default::default()
            };
            let name = name.to_owned();
            async move {
                let unavailable = |e: Cause| {
                    BusError::nats(
                        format!("create bucket {name}"),
                        BusErrorKind::Unavailable,
                        e,
                    )
                };
                ensure_stream(&js, config).await.map_err(unavailable)?;
                js.get_key_value(name.as_str())
                    .await
                    .map_err(|e| unavailable(Box::new(e)))
            }
        };
        let mut store = NatsStateStore {
            locks: bucket("firebreak_locks", "run concurrency locks", Duration::ZERO).await?,
            cooldowns: bucket("firebreak_cooldowns", "runbook cooldowns", Duration::ZERO).await?,
            budgets: bucket(
                "firebreak_budgets",
                "remediation budget counters",
                BUDGET_RETENTION,
            )
            .await?,
            runs: bucket("firebreak_runs", "once decisions", opts.run_retention).await?,
            replicas: bucket("firebreak_replicas", "replica heartbeats", BEAT_RETENTION).await?,
            held: Default::default(),
            replica: opts.replica.clone().map(|r| (r, opts.run_lease)),
            js,
            audit_stream: opts.audit_stream.clone(),
            beat_key: String::new(),
            incarnation: incarnation(),
            beat: Default::default(),
            beat_writing: Default::default(),
            scans: Default::default(),
            dangling: Default::default(),
            confirm_takes: opts.replicas > 1 && !serializes_compare_and_set(&server),
            writing: Default::default(),
        };
        store.beat_key = kv_key(&format!("{}/{}", store.replica(), store.incarnation));
        // Before this replica takes its first lock: a lease can only run out after this ends.
        if store.replica.is_some() {
            store
                .write_beat(Some(crate::now_ms() + opts.run_lease.as_millis() as i64))
                .await?;
        }
        Ok(store)
    }

    /// Writes this replica's heartbeat, valid `until` (unix ms; keeps the last one when
    /// `None`), after any write under way.
    async fn write_beat(&self, until: Option<i64>) -> Result<(), BusError> {
        if let Some(until) = until {
            self.beat.lock().unwrap_or_else(|p| p.into_inner()).0 = until;
        }
        let writing = self.beat_writing.lock().await;
        self.put_beats(writing).await
    }

    /// Counts one more lease given up and gets the count into the heartbeat. A release that
    /// finds a heartbeat write under way leaves its count to that writer (see
    /// [`Self::put_beats`]): a replica stopping with thousands of runs gives their leases up
    /// with a handful of heartbeat writes, not one each.
    async fn count_release(&self) -> Result<(), BusError> {
        self.beat.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
        match self.beat_writing.try_lock() {
            Ok(writing) => self.put_beats(writing).await,
            Err(_) => Ok(()),
        }
    }

    /// Puts the heartbeat as it stands, holding `writing`; again while releases counted
    /// meanwhile left their count to this writer. It looks after letting go, so a release
    /// counted during a put is either seen here or finds nobody writing and writes itself.
    async fn put_beats(
        &self,
        mut writing: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<(), BusError> {
        loop {
            let beat = {
                let beat = self.beat.lock().unwrap_or_else(|p| p.into_inner());
                Beat {
                    replica: self.replica().to_owned(),
                    incarnation: self.incarnation.clone(),
                    until_ms: beat.0,
                    released: beat.1,
                }
            };
            kv_put_json(&self.replicas, self.beat_key.clone(), &beat, "heartbeat").await?;
            drop(writing);
            if self.beat.lock().unwrap_or_else(|p| p.into_inner()).1 == beat.released {
                return Ok(());
            }
            writing = match self.beat_writing.try_lock() {
                Ok(writing) => writing,
                Err(_) => return Ok(()),
            };
        }
    }

    /// Every replica's heartbeat but this one's: (key, revision, beat).
    async fn beats(&self) -> Result<Vec<(String, u64, Beat)>, BusError> {
        let mut beats = Vec::new();
        for (key, revision, value) in list_bucket(&self.replicas, "kv list heartbeats").await? {
            if key == self.beat_key {
                continue;
            }
            if let Ok(beat) = serde_json::from_slice::<Beat>(&value) {
                beats.push((key, revision, beat));
            }
        }
        Ok(beats)
    }

    /// Whether this lease scan must read the lock bucket, given the other replicas' `beats`:
    /// when a replica gave a lease up since the last scan, when a heartbeat ended, and every
    /// [`SAFETY_EVERY`]th round on the live replica whose key sorts first. An ended heartbeat
    /// is read for at once and at the next scan (its leases run out just after it), then
    /// after gaps that double up to [`SAFETY_EVERY`] rounds: its locks stay while no replica
    /// can resume their runs (none has their runbook), and every replica listing every lock
    /// every round for as long would cost the cluster what the heartbeats save. With it, what
    /// to remember once the locks were read ([`Self::saw`]): a listing that fails leaves the
    /// old, so the next scan reads again.
    fn must_read_locks(&self, beats: &[(String, u64, Beat)], now: i64) -> (bool, Seen) {
        let mut scans = self.scans.lock().unwrap_or_else(|p| p.into_inner());
        let (round, seen) = &mut *scans;
        *round += 1;
        let mut read = false;
        let mut now_seen = Seen::default();
        for (key, _, beat) in beats {
            // A replica first seen here may have given a lease up before this scan saw it.
            read |= seen
                .released
                .get(key)
                .map_or(beat.released > 0, |&released| released != beat.released);
            now_seen.released.insert(key.clone(), beat.released);
            if beat.until_ms <= now {
                let (next, gap) = seen.ended.get(key).copied().unwrap_or((*round, 1));
                let due = *round >= next;
                read |= due;
                let later = if due {
                    (*round + gap, (2 * gap).min(SAFETY_EVERY))
                } else {
                    (next, gap)
                };
                now_seen.ended.insert(key.clone(), later);
            }
        }
        let first_live = beats
            .iter()
            .filter(|(_, _, beat)| beat.until_ms > now)
            .all(|(key, _, _)| *key > self.beat_key);
        (read || (*round % SAFETY_EVERY == 0 && first_live), now_seen)
    }

    /// Remembers what a scan acted on.
    fn saw(&self, seen: Seen) {
        self.scans.lock().unwrap_or_else(|p| p.into_inner()).1 = seen;
    }

    /// Writes this replica's heartbeat again if it ended (NATS was away for a lease, and
    /// another replica may have deleted it), before this replica takes a lock: a lock must
    /// never be written under no heartbeat.
    async fn revive_beat(&self) -> Result<(), BusError> {
        let Some((_, lease)) = &self.replica else {
            return Ok(());
        };
        let now = crate::now_ms();
        let ended = self.beat.lock().unwrap_or_else(|p| p.into_inner()).0 <= now;
        if ended {
            self.write_beat(Some(now + lease.as_millis() as i64))
                .await?;
        }
        Ok(())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes this process's write of `owner`'s lock at `key` (a kv key), answered with
    /// `revision`, made with the clock at `now`.
    fn wrote(&self, key: &str, owner: &str, revision: u64, now: i64) {
        let lease_ms = self.lease_until(now).unwrap_or(i64::MAX);
        self.held().insert(
            key.to_owned(),
            Held {
                owner: owner.to_owned(),
                revision,
                lease_ms,
            },
        );
    }

    /// Writes `value` at `key` if the key is absent (`revision` None) or still at `revision`.
    /// The new revision, or `None` when another writer got there first.
    async fn cas(
        store: &kv::Store,
        key: &str,
        value: Vec<u8>,
        revision: Option<u64>,
    ) -> Result<Option<u64>, BusError> {
        match revision {
            None => match store.create(key, value.into()).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(kv_err("kv create", e)),
            },
            Some(revision) => match store.update(key, value.into(), revision).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(kv_err("kv update", e)),
            },
        }
    }

    /// Keeps an unlock (or, `unlock` false, a lease release) that failed with `result`, to be
    /// retried before the next heartbeat.
    fn keep_dangling<T>(
        &self,
        key: &str,
        owner: &str,
        unlock: bool,
        result: Result<T, BusError>,
    ) -> Result<T, BusError> {
        if self.replica.is_none() {
            return result;
        }
        let mut dangling = self.dangling.lock().unwrap_or_else(|p| p.into_inner());
        let is = |(k, o, u): &(String, String, bool)| k == key && o == owner && *u == unlock;
        match &result {
            // Kept once: a release retried through an election fails many times over, and the
            // heartbeat retries each kept one before it beats.
            Err(e) if e.kind() != BusErrorKind::Permanent && !dangling.iter().any(is) => {
                dangling.push((key.to_owned(), owner.to_owned(), unlock));
            }
            // Done (a retry went through): nothing left for the heartbeat.
            Ok(_) if !dangling.is_empty() => dangling.retain(|d| !is(d)),
            _ => {}
        }
        drop(dangling);
        result
    }

    /// Until when (unix ms) a lock written with the clock at `now` gives this replica its
    /// lease; `None` without leases.
    fn lease_until(&self, now: i64) -> Option<i64> {
        self.replica
            .as_ref()
            .map(|(_, lease)| now + lease.as_millis() as i64)
    }

    /// A lock's stored form: `owner` until `expires_ms`, with this replica's lease from `now`.
    fn lock_value(
        &self,
        owner: &str,
        team: Option<&str>,
        expires_ms: i64,
        now: i64,
    ) -> Result<Vec<u8>, BusError> {
        let value = LockValue {
            owner: owner.to_owned(),
            expires_ms,
            replica: self.replica.as_ref().map(|(name, _)| name.clone()),
            lease_ms: self.lease_until(now),
            incarnation: self.replica.as_ref().map(|_| self.incarnation.clone()),
            team: team.map(str::to_owned),
        };
        serde_json::to_vec(&value).map_err(|e| codec("lock", e))
    }

    /// Whether `lock` is `owner`'s here: the same owner and, where the lock names a replica
    /// and this store is one, the same replica (a run another replica took over is not ours).
    fn ours(&self, lock: &LockValue, owner: &str) -> bool {
        let replica = self.replica.as_ref().map(|(name, _)| name.as_str());
        lock.owner == owner
            && match (lock.replica.as_deref(), replica) {
                (Some(theirs), Some(mine)) => theirs == mine,
                _ => true,
            }
    }

    /// Runs `write`, a read and compare-and-set of the lock at `key`, after any other this
    /// process started on it. nats-server 2.9 on a cluster let two compare-and-sets expecting
    /// the same revision both pass when they arrived together: a run's end deleted its lock
    /// while the lease renewal racing it wrote the lock back, and the finished run's incident
    /// stayed locked (10 to 13 of 300 such races in
    /// `a_run_that_ends_during_its_renewal_leaves_no_lock_on_a_cluster`; none on one server).
    /// Between replicas, a lock taken from another is confirmed where the server needs it
    /// ([`Self::confirmed`]).
    async fn one_at_a_time<T>(&self, key: &str, write: impl std::future::Future<Output = T>) -> T {
        let turn = {
            let mut writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            writing.entry(key.to_owned()).or_default().clone()
        };
        let done = {
            let _turn = turn.lock().await;
            write.await
        };
        let mut writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and this one: nobody else waits.
        if Arc::strong_count(&turn) == 2 {
            writing.remove(key);
        }
        done
    }

    /// Rewrites the lock at `key` (a KV key) while `keep` says the current value may be
    /// replaced, with `make(current, now)` as the new value: its new revision, `None` when
    /// `keep` refuses.
    async fn update_lock(
        &self,
        key: &str,
        keep: impl Fn(&LockValue, i64) -> bool,
        make: impl Fn(&LockValue, i64) -> Result<Vec<u8>, BusError>,
    ) -> Result<Option<u64>, BusError> {
        self.one_at_a_time(key, async {
            for _ in 0..CAS_ATTEMPTS {
                let (current, revision) = self.lock_entry(key).await?;
                let Some(current) = current else {
                    return Ok(None);
                };
                let now = crate::now_ms();
                if !keep(&current, now) {
                    return Ok(None);
                }
                let value = make(&current, now)?;
                if let Some(revision) = Self::cas(&self.locks, key, value, revision).await? {
                    self.wrote(key, &current.owner, revision, now);
                    return Ok(Some(revision));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Whether the lock write that got `revision` at `key` is still the lock once every write
    /// proposed before it was answered is applied. On a cluster, nats-server before 2.10
    /// checks a write's expected revision before the write goes through the stream's raft
    /// log, not in it (nats-server#4320): two replicas' takeovers of one lock, both expecting
    /// its old revision, can both pass (65 of 300 on three 2.9.10 nodes), and the later one is
    /// the lock. A write of our own to the same stream after ours was answered is ordered after
    /// any such write in the log, and the leader applies in log order: once it is answered,
    /// the lock read from the leader says who came last. A write proposed later is checked
    /// against ours and refused.
    async fn still_ours_after_writes_in_flight(
        &self,
        key: &str,
        revision: u64,
    ) -> Result<bool, BusError> {
        // `.` never occurs in a lock's key (`kv_key` escapes it): no lock is ever here.
        let barrier = format!("barrier.{}", kv_key(self.replica()));
        self.locks
            .put(barrier, bytes::Bytes::new())
            .await
            .map_err(|e| {
                BusError::nats(
                    "kv put lock barrier",
                    BusErrorKind::Unavailable,
                    Box::new(e),
                )
            })?;
        let (_, now) = self.lock_entry(key).await?;
        Ok(now == Some(revision))
    }

    /// The live lock at `key`: its value and revision (`None` if absent or deleted), read from
    /// the bucket's leader. A direct get may be answered by a follower that has not applied the
    /// newest write yet, and a compare-and-set on what it answered fails: an unlock that lost
    /// to a renewal then gave up and left an ended run's lock held (on three nodes, 17 to 31
    /// of 20,000 runs).
    async fn lock_entry(&self, key: &str) -> Result<(Option<LockValue>, Option<u64>), BusError> {
        let subject = format!("{}{key}", self.locks.prefix);
        match self
            .locks
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => {
                let put = message
                    .headers
                    .get("KV-Operation")
                    .is_none_or(|op| op.as_str() == "PUT");
                if !put {
                    // A delete marker still has a revision; `create` handles it.
                    return Ok((None, None));
                }
                // An unreadable lock value is treated as expired, so it cannot wedge the key.
                let value = serde_json::from_slice::<LockValue>(&message.payload).ok();
                Ok((value, Some(message.sequence)))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok((None, None))
            }
            Err(e) => Err(kv_err("kv get lock", e)),
        }
    }

    async fn set_lock(
        &self,
        key: &str,
        owner: &str,
        team: Option<&str>,
        ttl: Duration,
        take: bool,
    ) -> Result<bool, BusError> {
        check_key(key)?;
        self.revive_beat().await?;
        let key = kv_key(key);
        self.one_at_a_time(&key, async {
            let lock = |team: Option<&str>, now: i64| {
                self.lock_value(owner, team, now + ttl.as_millis() as i64, now)
            };
            if take {
                // The common case, a free key: one create, no read first.
                let now = crate::now_ms();
                if let Some(revision) = Self::cas(&self.locks, &key, lock(team, now)?, None).await?
                {
                    // A create is checked where it is applied, on every server: no one else's
                    // passed beside it.
                    self.wrote(&key, owner, revision, now);
                    return Ok(true);
                }
            }
            for _ in 0..CAS_ATTEMPTS {
                let (current, revision) = self.lock_entry(&key).await?;
                let now = crate::now_ms();
                let ours = current.as_ref().is_some_and(|l| self.ours(l, owner));
                let free = current.as_ref().is_none_or(|l| l.expires_ms <= now);
                if !(ours || (take && free)) {
                    return Ok(false);
                }
                // A refresh, or a take of our own lock, keeps the team the lock names: the
                // run's team when it started, where its records are.
                let team = current
                    .as_ref()
                    .filter(|_| ours)
                    .and_then(|l| l.team.as_deref())
                    .or(team);
                if let Some(revision) =
                    Self::cas(&self.locks, &key, lock(team, now)?, revision).await?
                {
                    self.wrote(&key, owner, revision, now);
                    if ours {
                        return Ok(true);
                    }
                    // Taken over from an expired lock: two replicas doing so at once both
                    // passed in 81 of 300 on three 2.9.10 nodes.
                    let confirmed = self.confirmed(&key, owner, revision).await;
                    if confirmed.is_err() {
                        // No run starts under it: it goes (if it is still ours).
                        let _ = self.delete_lock(&key, Some(revision)).await;
                    }
                    return confirmed;
                }
            }
            Ok(false)
        })
        .await
    }

    /// Whether the lock `owner` just took from someone else at `key` with `revision` is its:
    /// where the server checks a compare-and-set outside its raft log, only once that is
    /// confirmed ([`Self::still_ours_after_writes_in_flight`]); a lock lost that way, or not
    /// confirmed (an error), is forgotten here and left to the caller.
    async fn confirmed(&self, key: &str, owner: &str, revision: u64) -> Result<bool, BusError> {
        if !self.confirm_takes {
            return Ok(true);
        }
        let confirmed = self.still_ours_after_writes_in_flight(key, revision).await;
        if !matches!(confirmed, Ok(true)) {
            self.held().remove(key);
        }
        if let Ok(false) = confirmed {
            info!(key = %kv_key_decode(key), run_id = %owner, "another replica took this lock at the same time, after us; it is theirs");
        }
        confirmed
    }

    /// Releases `owner`'s lock at `key` (not yet a KV key).
    async fn unlock_now(&self, key: &str, owner: &str) -> Result<bool, BusError> {
        let key = kv_key(key);
        self.one_at_a_time(&key, async {
            let known = match self.held().remove(&key) {
                Some(held) if held.owner == owner => Some(held.revision),
                _ => None,
            };
            // Our own last write: one conditional delete.
            if let Some(revision) = known
                && self.delete_lock(&key, Some(revision)).await?
            {
                return Ok(true);
            }
            // Written since (a renewal of this very run racing its end): delete what is there now.
            for _ in 0..CAS_ATTEMPTS {
                let (current, revision) = self.lock_entry(&key).await?;
                if current.is_none_or(|l| !self.ours(&l, owner)) {
                    return Ok(false);
                }
                if self.delete_lock(&key, revision).await? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    /// Ends this replica's lease on `owner`'s lock at `key` (not yet a KV key), keeping the
    /// lock; counts it in the heartbeat so the others read the locks at their next scan.
    async fn release_now(&self, key: &str, owner: &str) -> Result<bool, BusError> {
        let released = self
            .update_lock(
                &kv_key(key),
                |lock, _| self.ours(lock, owner),
                |lock, _| {
                    let released = LockValue {
                        lease_ms: Some(0),
                        ..lock.clone()
                    };
                    serde_json::to_vec(&released).map_err(|e| codec("lock", e))
                },
            )
            .await?
            .is_some();
        // The release holds without the heartbeat: its count goes out with the next one.
        if released && let Err(e) = self.count_release().await {
            warn!(key = %key, error = %e, "cannot count a lease given up in the heartbeat; the next heartbeat does");
        }
        Ok(released)
    }

    /// Deletes the lock at `key` if it is still at `revision`.
    /// Housekeeping: removes what no longer means anything from the lock and cooldown
    /// buckets, tombstones included (a deleted KV key leaves a marker that lives as long as the
    /// bucket): released locks, locks that expired more than [`LOCK_GRACE`] ago, cooldowns
    /// that ended. Each subject is purged only up to the entry read, so a write racing the sweep
    /// survives. Returns how many keys were removed.
    pub async fn sweep(&self, now: jiff::Timestamp) -> Result<u64, BusError> {
        let now_ms = now.as_millisecond();
        let grace_ms = i64::try_from(LOCK_GRACE.as_millis()).unwrap_or(i64::MAX);
        let locks = sweep_bucket(&self.locks, |payload| {
            serde_json::from_slice::<LockValue>(payload)
                .is_ok_and(|lock| lock.expires_ms.saturating_add(grace_ms) > now_ms)
        })
        .await?;
        let cooldowns = sweep_bucket(&self.cooldowns, |payload| {
            serde_json::from_slice::<jiff::Timestamp>(payload).is_ok_and(|until| until > now)
        })
        .await?;
        Ok(locks + cooldowns)
    }

    async fn delete_lock(&self, key: &str, revision: Option<u64>) -> Result<bool, BusError> {
        match self.locks.delete_expect_revision(key, revision).await {
            Ok(()) => Ok(true),
            // Someone changed it since: it is no longer ours to release.
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(kv_err("kv delete lock", e)),
        }
    }
}

impl StateStore for NatsStateStore {
    fn try_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        Box::pin(async move { self.set_lock(&key, &owner, None, ttl, true).await })
    }

    fn try_lock_run(
        &self,
        key: &str,
        run_id: &str,
        team: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let (key, run_id, team) = (key.to_owned(), run_id.to_owned(), team.to_owned());
        Box::pin(async move { self.set_lock(&key, &run_id, Some(&team), ttl, true).await })
    }

    fn refresh_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        Box::pin(async move { self.set_lock(&key, &owner, None, ttl, false).await })
    }

    fn lock_holder(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, BusError>> {
        let key = key.to_owned();
        Box::pin(async move {
            check_key(&key)?;
            let (current, _) = self.lock_entry(&kv_key(&key)).await?;
            Ok(current
                .filter(|l| l.expires_ms > crate::now_ms())
                .map(|l| l.owner))
        })
    }

    fn unlock(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        Box::pin(async move {
            check_key(&key)?;
            let unlocked = self.unlock_now(&key, &owner).await;
            self.keep_dangling(&key, &owner, true, unlocked)
        })
    }

    fn set_cooldown(&self, key: &str, until: Timestamp) -> BoxFuture<'_, Result<(), BusError>> {
        let key = key.to_owned();
        Box::pin(async move {
            check_key(&key)?;
            kv_put_json(&self.cooldowns, kv_key(&key), &until, "cooldown").await
        })
    }

    fn cooldown(&self, key: &str) -> BoxFuture<'_, Result<Option<Timestamp>, BusError>> {
        let key = key.to_owned();
        Box::pin(async move {
            check_key(&key)?;
            let until: Option<Timestamp> =
                kv_get_json(&self.cooldowns, kv_key(&key), "cooldown").await?;
            Ok(until.filter(|until| *until > Timestamp::now()))
        })
    }

    fn record_run(&self, key: &str, at: Timestamp) -> BoxFuture<'_, Result<(), BusError>> {
        let key = key.to_owned();
        Box::pin(async move {
            check_key(&key)?;
            let key = kv_key(&key);
            let cutoff = crate::now_ms() - BUDGET_RETENTION.as_millis() as i64;
            for _ in 0..CAS_ATTEMPTS {
                // From the leader: a follower's older answer only makes the write fail.
                let entry: Option<(Vec<i64>, u64)> =
                    kv_entry_json(&self.budgets, &key, "budget").await?;
                let (mut times, revision) = match entry {
                    Some((times, revision)) => (times, Some(revision)),
                    None => (Vec::new(), None),
                };
                times.retain(|t| *t >= cutoff);
                times.push(at.as_millisecond());
                let bytes = serde_json::to_vec(&times).map_err(|e| codec("budget", e))?;
                if Self::cas(&self.budgets, &key, bytes, revision)
                    .await?
                    .is_some()
                {
                    return Ok(());
                }
            }
            Err(BusError::nats(
                "record run",
                BusErrorKind::Transient,
                "too many concurrent updates of one budget key",
            ))
        })
    }

    fn runs_since(&self, key: &str, since: Timestamp) -> BoxFuture<'_, Result<u32, BusError>> {
        let key = key.to_owned();
        Box::pin(async move {
            check_key(&key)?;
            let times: Vec<i64> = kv_get_json(&self.budgets, kv_key(&key), "budget")
                .await?
                .unwrap_or_default();
            let since = since.as_millisecond();
            Ok(times.iter().filter(|t| **t >= since).count() as u32)
        })
    }
}

/// Decodes [`kv_key`].
fn kv_key_decode(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'=' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every message of `stream` on `subject` (wildcards allowed), oldest first, as far as the
/// subject's last message when the read began.
///
/// That last message is asked for first (the stream's index of subjects has it) and the read
/// stops there: asking nats-server 2.9 for the next message after a subject's last one makes
/// it search the rest of the stream. On a stream of 302,000 runs that search took 1.4–1.9 ms
/// on average and up to 78–320 ms, the last message 0.34 ms (`docs/BENCHMARKS.md`, "Reading
/// a run back from the audit stream"); a takeover reads every run it takes over this way.
/// Reading from sequence 1 is the fast start: from a sequence inside the stream the first
/// read took longer (1.6–7.9 ms).
async fn read_subject(
    js: &Context,
    stream: &str,
    subject: &str,
) -> Result<Vec<bytes::Bytes>, BusError> {
    let unavailable = |what: &str, e: Cause| {
        BusError::nats(
            format!("read {subject} from stream {stream}: {what}"),
            BusErrorKind::Unavailable,
            e,
        )
    };
    let stream = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| unavailable("stream", Box::new(e)))?;
    let last = match stream
        .raw_message_builder()
        .last_by_subject(subject.to_owned())
        .send()
        .await
    {
        Ok(message) => message.sequence,
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(unavailable("last message", Box::new(e))),
    };
    let mut messages = Vec::new();
    let mut next = 1;
    loop {
        match stream
            .raw_message_builder()
            .next_by_subject(subject.to_owned())
            .sequence(next)
            .send()
            .await
        {
            Ok(message) if message.sequence <= last => {
                next = message.sequence + 1;
                messages.push(message.payload);
                if message.sequence == last {
                    return Ok(messages);
                }
            }
            // Past the last one, or none left: the last was removed meanwhile (the stream's
            // limits).
            Ok(_) => return Ok(messages),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(messages);
            }
            Err(e) => return Err(unavailable("message", Box::new(e))),
        }
    }
}

/// Whether `stream` holds a message on `subject` (a literal subject or a wildcard).
///
/// A literal subject: its last message, found through the stream's index of subjects. A stream
/// info filtered by the subject, the other way to ask, walks every subject the stream holds
/// when the subject is there: on nats-server 2.9.10 with 50,000 subjects, 2.0 ms of the
/// server's time a lookup against 0.25 ms for the last message (0.13 and 0.10 ms when the
/// subject is not there). A wildcard: the stream info, which matches every subject the stream
/// holds against it (6 ms there), but reads no message; the last message by a wildcard reads
/// blocks of the stream until one matches (every block, for a subject it does not hold).
async fn holds_subject(js: &Context, stream: &str, subject: &str) -> Result<bool, BusError> {
    let unavailable = |e: Cause| {
        BusError::nats(
            format!("look up {subject} in stream {stream}"),
            BusErrorKind::Unavailable,
            e,
        )
    };
    let stream = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| unavailable(Box::new(e)))?;
    let wildcard = subject.split('.').any(|token| token == "*" || token == ">");
    if !wildcard {
        return match stream
            .raw_message_builder()
            .last_by_subject(subject.to_owned())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(unavailable(Box::new(e))),
        };
    }
    let mut subjects = stream
        .info_with_subjects(subject)
        .await
        .map_err(|e| unavailable(Box::new(e)))?;
    Ok(subjects
        .try_next()
        .await
        .map_err(|e| unavailable(Box::new(e)))?
        .is_some())
}

/// How long a bucket's listing ([`last_entries`]) waits for its next entry.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every live key of `store`: (key, revision, value), its newest entry a put. `what` names
/// the listing in errors.
async fn list_bucket(
    store: &kv::Store,
    what: &str,
) -> Result<Vec<(String, u64, bytes::Bytes)>, BusError> {
    let live = last_entries(store, what)
        .await?
        .try_fold(
            std::collections::HashMap::new(),
            |mut live, entry| async move {
                // A key written during the listing comes again, newer.
                if entry.operation == Operation::Put {
                    live.insert(entry.key, (entry.revision, entry.value));
                } else {
                    live.remove(&entry.key);
                }
                Ok(live)
            },
        )
        .await?;
    Ok(live
        .into_iter()
        .map(|(key, (revision, value))| (key, revision, value))
        .collect())
}

/// The last entry of every key of `store`, delete markers included, as they come; `what` names
/// the listing in errors. The wait for each entry is bounded, not the whole listing: a bucket
/// of two million delete markers takes longer than [`LIST_TIMEOUT`] to list, and is listed
/// all the same.
async fn last_entries<'a>(
    store: &'a kv::Store,
    what: &'a str,
) -> Result<BoxStream<'a, Result<kv::Entry, BusError>>, BusError> {
    // Fresh stream info (a bound bucket's status is its info when bound): a watch of an empty
    // bucket would wait for its first entry.
    let info = store.stream.get_info().await.map_err(|e| kv_err(what, e))?;
    if info.state.messages == 0 {
        return Ok(futures::stream::empty().boxed());
    }
    // The newest entry of every key, then stop once caught up (`delta` 0).
    let watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| kv_err(what, e))?;
    Ok(
        futures::stream::unfold(Some(watch), move |watch| async move {
            let mut watch = watch?;
            let entry = match tokio::time::timeout(LIST_TIMEOUT, watch.next()).await {
                Err(_) => Err(BusError::nats(
                    what.to_owned(),
                    BusErrorKind::Unavailable,
                    "timed out",
                )),
                Ok(None) => return None,
                Ok(Some(entry)) => entry.map_err(|e| kv_err(what, e)),
            };
            // After an error or the last entry, nothing more.
            let more = matches!(&entry, Ok(e) if e.delta > 0);
            Some((entry, more.then_some(watch)))
        })
        .boxed(),
    )
}

impl NatsStateStore {
    /// The audit stream's subject holding run `run_id`'s lines: the first of `teams`' that
    /// holds any, each looked up by its literal subject (a fraction of a millisecond of the
    /// server's time). With no team given, the one under any team, found by a wildcard that
    /// nats-server matches against every subject the stream holds (6 ms of its time at
    /// 50,000 runs, growing with the stream): thousands of those, from redeliveries after a
    /// replica died under load, held nats-server's read loop for seconds at a time. `None`:
    /// nothing of the run there.
    async fn run_subject(
        &self,
        run_id: &str,
        teams: &[String],
    ) -> Result<Option<String>, BusError> {
        if teams.is_empty() {
            let any = format!("firebreak.audit.*.{}", audit_token(run_id));
            return Ok(holds_subject(&self.js, &self.audit_stream, &any)
                .await?
                .then_some(any));
        }
        for team in teams {
            let own = audit_run_subject(team, run_id);
            if holds_subject(&self.js, &self.audit_stream, &own).await? {
                return Ok(Some(own));
            }
        }
        Ok(None)
    }
}

impl RunLeases for NatsStateStore {
    fn replica(&self) -> &str {
        self.replica.as_ref().map_or("", |(name, _)| name.as_str())
    }

    fn lease(&self) -> Duration {
        self.replica
            .as_ref()
            .map_or(Duration::ZERO, |(_, lease)| *lease)
    }

    fn holds(&self, key: &str, owner: &str) -> bool {
        // A third of the lease to spare: for the other replicas' clocks, which judge when it
        // ran out, and for the write the caller is about to make.
        let spare = (self.lease() / 3).as_millis() as i64;
        let now = crate::now_ms();
        self.held()
            .get(&kv_key(key))
            .is_some_and(|held| held.owner == owner && held.lease_ms.saturating_sub(spare) > now)
    }

    fn renew(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        let (key, owner) = (kv_key(key), owner.to_owned());
        Box::pin(async move {
            self.update_lock(
                &key,
                |lock, _| self.ours(lock, &owner),
                |lock, now| self.lock_value(&owner, lock.team.as_deref(), lock.expires_ms, now),
            )
            .await
            .map(|revision| revision.is_some())
        })
    }

    fn release(&self, key: &str, owner: &str) -> BoxFuture<'_, Result<bool, BusError>> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        Box::pin(async move {
            let released = self.release_now(&key, &owner).await;
            self.keep_dangling(&key, &owner, false, released)
        })
    }

    fn orphans(&self) -> BoxFuture<'_, Result<Vec<Orphan>, BusError>> {
        Box::pin(async move {
            let now = crate::now_ms();
            // Heartbeats that cannot be read (their bucket has no leader yet): read the locks.
            let (beats, mut seen) = match self.beats().await {
                Ok(beats) => {
                    let (read, seen) = self.must_read_locks(&beats, now);
                    if !read {
                        self.saw(seen);
                        return Ok(Vec::new());
                    }
                    (beats, Some(seen))
                }
                Err(e) => {
                    debug!(error = %e, "cannot read the heartbeats; reading the locks");
                    (Vec::new(), None)
                }
            };
            let locks: Vec<(String, LockValue)> = list_bucket(&self.locks, "kv list locks")
                .await?
                .into_iter()
                .filter_map(|(key, _, value)| Some((key, serde_json::from_slice(&value).ok()?)))
                .collect();
            // A heartbeat that ended goes once no lock of its incarnation is left (taken over,
            // released, or never taken); until then its locks are read for (see
            // `must_read_locks`), at the next scan while one of its leases still runs (a lock
            // taken after its last heartbeat runs out up to a renewal round after it).
            for (key, revision, beat) in beats.iter().filter(|(_, _, b)| b.until_ms <= now) {
                let (mut left, mut running) = (false, false);
                for (_, lock) in &locks {
                    if lock.incarnation.as_deref() == Some(&beat.incarnation) {
                        left = true;
                        running |= lock.lease_ms.is_some_and(|l| l > now);
                    }
                }
                if running && let Some(seen) = &mut seen {
                    seen.ended.insert(key.clone(), (0, 1));
                }
                if !left
                    && let Err(e) = self
                        .replicas
                        .delete_expect_revision(key, Some(*revision))
                        .await
                {
                    debug!(key = %key, error = %e, "an ended heartbeat was not deleted");
                }
            }
            if let Some(seen) = seen {
                self.saw(seen);
            }
            Ok(locks
                .iter()
                .filter_map(|(key, lock)| match (&lock.replica, lock.lease_ms) {
                    (Some(replica), Some(lease_ms)) if lease_ms <= now => Some(Orphan {
                        key: kv_key_decode(key),
                        run_id: lock.owner.clone(),
                        replica: replica.clone(),
                        lease_ended: Timestamp::from_millisecond(lease_ms)
                            .unwrap_or(Timestamp::UNIX_EPOCH),
                        team: lock.team.clone(),
                    }),
                    _ => None,
                })
                .collect())
        })
    }

    fn beat(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let dangling =
                std::mem::take(&mut *self.dangling.lock().unwrap_or_else(|p| p.into_inner()));
            for (key, owner, unlock) in dangling {
                let done = if unlock {
                    self.unlock_now(&key, &owner).await
                } else {
                    self.release_now(&key, &owner).await
                };
                match self.keep_dangling(&key, &owner, unlock, done) {
                    Ok(_) => {
                        info!(key = %key, run_id = %owner, unlock, "a lock release NATS failed earlier is done")
                    }
                    Err(e) => {
                        debug!(key = %key, error = %e, "a lock release NATS failed still fails")
                    }
                }
            }
            let until = crate::now_ms() + self.lease().as_millis() as i64;
            self.write_beat(Some(until)).await
        })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { self.write_beat(Some(0)).await })
    }

    fn take_over(&self, orphan: &Orphan, ttl: Duration) -> BoxFuture<'_, Result<bool, BusError>> {
        let orphan = orphan.clone();
        Box::pin(async move {
            self.revive_beat().await?;
            let key = kv_key(&orphan.key);
            let Some(revision) = self
                .update_lock(
                    &key,
                    |lock, now| {
                        lock.owner == orphan.run_id
                            && lock.replica.as_deref() == Some(orphan.replica.as_str())
                            && lock.lease_ms.is_some_and(|l| l <= now)
                    },
                    |lock, now| {
                        let expires = lock.expires_ms.max(now + ttl.as_millis() as i64);
                        self.lock_value(&orphan.run_id, lock.team.as_deref(), expires, now)
                    },
                )
                .await?
            else {
                return Ok(false);
            };
            let confirmed = self.confirmed(&key, &orphan.run_id, revision).await;
            if confirmed.is_err() {
                // Taken, maybe not last: give the lease up, so that whoever can confirm takes
                // the run over (a failed release is retried before each heartbeat).
                let _ = RunLeases::release(self, &orphan.key, &orphan.run_id).await;
            }
            confirmed
        })
    }

    fn run_lines(
        &self,
        run_id: &str,
        teams: &[String],
    ) -> BoxFuture<'_, Result<Vec<bytes::Bytes>, BusError>> {
        // A literal subject is found through the stream's subject index; a wildcard one makes
        // nats-server match every subject it holds, for every message read (two replicas took
        // 11 runs over in 30 s on a stream of 30,000 runs that way; README, "Replicas take over
        // each other's runs"). Each team's subject is read at once: a lookup before it (a
        // stream info filtered by the subject) cost nats-server as much as the read
        // (`scripts/takeover-bench`: 14–15 s of its CPU against 7 s for some 3,400 runs taken
        // over, 3,000 of them after 16 s against all), and reading a subject the stream does
        // not hold costs what looking it up does (its last message is not there). Only with
        // no team given is the run looked up under every team.
        let (run_id, teams) = (run_id.to_owned(), teams.to_vec());
        Box::pin(async move {
            for team in &teams {
                let own = audit_run_subject(team, &run_id);
                let lines = read_subject(&self.js, &self.audit_stream, &own).await?;
                if !lines.is_empty() {
                    return Ok(lines);
                }
            }
            if !teams.is_empty() {
                return Ok(Vec::new());
            }
            match self.run_subject(&run_id, &[]).await? {
                Some(subject) => read_subject(&self.js, &self.audit_stream, &subject).await,
                None => Ok(Vec::new()),
            }
        })
    }

    fn has_run_records(
        &self,
        run_id: &str,
        teams: &[String],
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let (run_id, teams) = (run_id.to_owned(), teams.to_vec());
        Box::pin(async move { Ok(self.run_subject(&run_id, &teams).await?.is_some()) })
    }

    fn decision(&self, key: &str) -> BoxFuture<'_, Result<Option<Decision>, BusError>> {
        let key = key.to_owned();
        Box::pin(async move {
            check_key(&key)?;
            kv_get_json(&self.runs, decision_key(&key), "decision").await
        })
    }

    fn decide(&self, key: &str, decision: Decision) -> BoxFuture<'_, Result<Decision, BusError>> {
        let key = key.to_owned();
        Box::pin(async move {
            check_key(&key)?;
            let bytes = serde_json::to_vec(&decision).map_err(|e| codec("decision", e))?;
            match self.runs.create(decision_key(&key), bytes.into()).await {
                Ok(_) => Ok(decision),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    kv_get_json(&self.runs, decision_key(&key), "decision")
                        .await?
                        .ok_or_else(|| {
                            kv_err(
                                "kv get decision",
                                std::io::Error::other("a decision that existed is gone"),
                            )
                        })
                }
                Err(e) => Err(kv_err("kv create decision", e)),
            }
        })
    }
}

/// Where decision `key` lives in the runs bucket (the bucket once held run records too, under
/// keys with no `.`, see [`kv_key`]: the prefix kept the two apart).
fn decision_key(key: &str) -> String {
    format!("{DECISION_PREFIX}{}", kv_key(key))
}

const DECISION_PREFIX: &str = "decision.";

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish's future is moved into its box on every publish: it stays about a kilobyte,
    /// not the 9 KB that the stream and consumer set-up (needed only after a wiped server)
    /// made it.
    #[tokio::test]
    async fn a_publish_future_stays_small() {
        let server = crate::testutil::NatsServer::start().expect("nats-server");
        let bus = NatsBus::connect(&server.url(), NatsOptions::default())
            .await
            .expect("connect");
        let future = bus.publish_events(Vec::new());
        let size = std::mem::size_of_val(&future);
        assert!(size <= 2048, "a publish's future is {size} bytes");
        future.await.expect("an empty publish");
    }

    #[test]
    fn servers_before_2_10_are_known_not_to_serialize_compare_and_set() {
        for old in ["2.9.10", "2.9.25", "2.2.0", "1.4.1"] {
            assert!(!serializes_compare_and_set(old), "{old}");
        }
        for current in ["2.10.0", "2.10.26-RC.1", "2.14.6", "3.0.0", "nightly"] {
            assert!(serializes_compare_and_set(current), "{current}");
        }
    }

    /// An election is waited out; a server that never answered, or bad data, is not.
    #[tokio::test(start_paused = true)]
    async fn only_a_cluster_that_cannot_answer_yet_is_waited_out() {
        let electing = || BusError::nats("get stream", BusErrorKind::Unavailable, "10008");
        let mut tries = 0;
        let mut waited = 0;
        let got = wait_out_elections(
            ELECTION_PATIENCE,
            |_| waited += 1,
            || {
                tries += 1;
                let n = tries;
                async move { if n < 4 { Err(electing()) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!((got.unwrap(), waited), (4, 3));

        let started = tokio::time::Instant::now();
        let got: Result<(), _> =
            wait_out_elections(ELECTION_PATIENCE, |_| {}, || async { Err(electing()) }).await;
        assert_eq!(got.unwrap_err().kind(), BusErrorKind::Unavailable);
        assert!(started.elapsed() >= ELECTION_PATIENCE, "gave up early");

        for now in [
            BusError::Connect {
                url: "nats://127.0.0.1:1".into(),
                source: "connection refused".into(),
            },
            BusError::nats("decode", BusErrorKind::Permanent, "bad json"),
        ] {
            let mut waited = 0;
            let started = tokio::time::Instant::now();
            let mut once = Some(now);
            let got: Result<(), _> = wait_out_elections(
                ELECTION_PATIENCE,
                |_| waited += 1,
                || {
                    let e = once.take().expect("tried once only");
                    async move { Err(e) }
                },
            )
            .await;
            assert!(got.is_err());
            assert_eq!((waited, started.elapsed()), (0, Duration::ZERO));
        }
    }

    /// A stop ends the wait (the engine stopping does not sit out an election), not the first
    /// try: what is asked while stopping is still asked once.
    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_for_an_election_but_not_the_first_try() {
        let electing = || BusError::nats("kv update", BusErrorKind::Unavailable, "no responders");
        let stop = tokio_util::sync::CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1800)).await;
            stopper.cancel();
        });
        let started = tokio::time::Instant::now();
        let mut tries = 0;
        let got: Result<(), _> = wait_out_elections_until(
            ELECTION_PATIENCE,
            stop.cancelled(),
            |_| {},
            || {
                tries += 1;
                async { Err(electing()) }
            },
        )
        .await;
        assert_eq!(got.unwrap_err().kind(), BusErrorKind::Unavailable);
        assert_eq!(started.elapsed(), Duration::from_millis(1800));
        assert_eq!(tries, 4, "a try every 500 ms until the stop");

        let mut tries = 0;
        let got = wait_out_elections_until(
            ELECTION_PATIENCE,
            stop.cancelled(),
            |_| {},
            || {
                tries += 1;
                async { Ok::<_, BusError>(7) }
            },
        )
        .await;
        assert_eq!((got.unwrap(), tries), (7, 1));
    }

    #[test]
    fn kv_keys_are_valid_and_distinct() {
        for key in [
            "team-a/fraud-model",
            "a.b",
            "a=2Eb",
            "x y>*",
            "dry-run:r/k=1",
            "é",
        ] {
            assert_eq!(kv_key_decode(&kv_key(key)), key);
        }
        assert_eq!(kv_key("team-a/fraud-model"), "team-a/fraud-model");
        assert_eq!(kv_key("a.b"), "a=2Eb");
        assert_ne!(kv_key("a.b"), kv_key("a=2Eb"));
        assert_eq!(kv_key("x y>*"), "x=20y=3E=2A");
    }

    #[test]
    fn subjects_are_sanitized_tokens() {
        let event = Event {
            id: "1".into(),
            source: "alert.manager".into(),
            kind: "fir ing>".into(),
            subject: "s".into(),
            time: Timestamp::UNIX_EPOCH,
            namespace: None,
            fingerprint: None,
            traceparent: None,
            data: serde_json::Value::Null,
            written: Default::default(),
        };
        assert_eq!(
            event_subject(&event),
            "firebreak.events.alert_manager.fir_ing_"
        );
    }
}
