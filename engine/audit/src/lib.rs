//! firebreak audit: typed records, the SHA-256 hash chain, the durable journal and its verifier.
//!
//! Start at [`Journal`] (open, append, read) and [`Record`] (what one line holds).
//! - [`record`]: the record types, redaction of secrets, canonical JSON and the chain hash;
//! - [`journal`]: the append-only JSONL segments with group commit and a run index;
//! - [`checkpoint`]: Ed25519-signed checkpoints that let the journal prove its own tail;
//! - [`verify`](verify()): recompute the chain and name the first broken record;
//! - [`timeline`]: render one run for `firebreak audit show`;
//! - [`stream`]: check the central audit stream, every replica's journal interleaved, with the
//!   links of runs taken over from one replica by another.

pub mod checkpoint;
mod handoff;
pub mod journal;
pub mod record;
pub mod stream;
pub mod timeline;
pub mod verify;

pub use checkpoint::SigningKey;
pub use journal::{
    AuditError, AuditMirror, EntryKind, Journal, JournalOptions, JournalReader, MirrorStored,
    PROBE_EVERY, RecordIter, RunSummary,
};
pub use record::{
    ApprovalPolicy, CanonicalJson, GENESIS_HASH, REDACTED, Record, RecordBody, RecordDraft,
    RunMeta, RunStatus, SecretScan, StepError, StepStatus, canonical_json, chain_hash,
    is_secret_key, redact, redact_text, redact_value,
};
pub use stream::{Chain, StreamReport, verify_stream};
pub use timeline::render_timeline;
pub use verify::{
    Problem, VerifyError, VerifyOptions, VerifyReport, read_line, verify, verify_with,
};
