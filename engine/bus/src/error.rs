//! The one error type of the bus crate, and the kind callers decide retries from.

use std::path::PathBuf;

/// A boxed cause, for errors from async-nats whose types differ per call.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a caller should react to a [`BusError`]. Decide from this, never from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusErrorKind {
    /// Try again soon; nothing is wrong with the request (a timeout, a lost connection).
    Transient,
    /// The bus cannot take work now (NATS down, store closed); ingest answers 503.
    Unavailable,
    /// Retrying will not help (bad data, corrupt store, failed fsync).
    Permanent,
}

/// What went wrong in the bus or the state store.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// NATS is not connected, so nothing can be published or stored.
    #[error("nats is not connected ({url})")]
    NotConnected {
        /// The server URL.
        url: String,
    },
    /// Connecting to NATS failed.
    #[error("cannot connect to nats at {url}")]
    Connect {
        /// The server URL.
        url: String,
        /// The cause.
        #[source]
        source: Cause,
    },
    /// nats-server refused the client's credentials (wrong or missing; or a user it does not
    /// know). Retrying with the same credentials will not help.
    #[error(
        "nats at {url} refused authorization (authenticating with {method}): check the \
         credentials and the server's users"
    )]
    Unauthorized {
        /// The server URL.
        url: String,
        /// How the client authenticated (`user/password`, `token`, `nkey`, `creds file`, `none`).
        method: &'static str,
        /// What the server said.
        #[source]
        source: Cause,
    },
    /// The TLS handshake with nats-server failed (an untrusted server certificate, a client
    /// certificate the server does not accept, or a server without TLS while TLS is required).
    #[error("TLS with nats at {url} failed")]
    Tls {
        /// The server URL.
        url: String,
        /// The cause.
        #[source]
        source: Cause,
    },
    /// A credential or TLS file given for NATS is unusable.
    #[error("nats {what}: {reason}")]
    Credentials {
        /// Which one, e.g. `creds file /run/secrets/firebreak.creds`.
        what: String,
        /// What is wrong with it.
        reason: String,
        /// The cause, if there is one.
        #[source]
        source: Option<Cause>,
    },
    /// A NATS or JetStream operation failed.
    #[error("nats {op} failed")]
    Nats {
        /// What was attempted, e.g. `publish`, `create stream FIREBREAK_EVENTS`.
        op: String,
        /// Whether retrying makes sense.
        kind: BusErrorKind,
        /// The cause.
        #[source]
        source: Cause,
    },
    /// An event or record could not be encoded or decoded.
    #[error("cannot encode or decode {what}")]
    Codec {
        /// What was being encoded, e.g. `event 3f2a...`.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A file of the embedded store could not be read or written.
    #[error("store file {path} failed")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A log file of the embedded store holds a line that is not a record (and is not the last,
    /// possibly torn, line).
    #[error("store file {path} is corrupt at line {line}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Another process (or another `EmbeddedBus` in this one) holds the store directory.
    #[error("store directory {path} is in use by another firebreak")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// An earlier write or fsync failed; the store refuses further writes until reopened,
    /// because what is on disk is no longer known.
    #[error("store {path} failed earlier and refuses writes until reopened")]
    Poisoned {
        /// The log file.
        path: PathBuf,
    },
    /// One event is larger than the bus takes in one message (nats-server's `max_payload`).
    #[error("event {id} is {size} bytes, over the bus limit of {max} bytes")]
    EventTooLarge {
        /// The event id.
        id: String,
        /// Its encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An event without an id cannot be deduplicated, so it is refused.
    #[error("event has an empty id (subject {subject})")]
    EmptyEventId {
        /// The event's subject, to find it.
        subject: String,
    },
    /// The bus or store was closed.
    #[error("bus is closed")]
    Closed,
    /// A key given to the state store is empty.
    #[error("state store key is empty")]
    EmptyKey,
}

impl BusError {
    /// The kind that decides what the caller does next.
    pub fn kind(&self) -> BusErrorKind {
        match self {
            BusError::NotConnected { .. } | BusError::Connect { .. } | BusError::Closed => {
                BusErrorKind::Unavailable
            }
            BusError::Nats { kind, .. } => *kind,
            BusError::Unauthorized { .. }
            | BusError::Tls { .. }
            | BusError::Credentials { .. }
            | BusError::Codec { .. }
            | BusError::Io { .. }
            | BusError::Corrupt { .. }
            | BusError::Locked { .. }
            | BusError::Poisoned { .. }
            | BusError::EventTooLarge { .. }
            | BusError::EmptyEventId { .. }
            | BusError::EmptyKey => BusErrorKind::Permanent,
        }
    }

    pub(crate) fn nats(
        op: impl Into<String>,
        kind: BusErrorKind,
        source: impl Into<Cause>,
    ) -> BusError {
        BusError::Nats {
            op: op.into(),
            kind,
            source: source.into(),
        }
    }
}

/// Refuses a batch holding an event without an id.
pub(crate) fn check_ids(events: &[firebreak_event::Event]) -> Result<(), BusError> {
    match events.iter().find(|e| e.id.is_empty()) {
        Some(e) => Err(BusError::EmptyEventId {
            subject: e.subject.clone(),
        }),
        None => Ok(()),
    }
}
