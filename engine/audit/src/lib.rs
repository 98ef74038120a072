//! firebreak audit: typed records, the SHA-256 hash chain, the durable journal and its verifier.
//!
//! Start at [`Journal`] (open, append, read) and [`Record`] (what one line holds).
//! - [`record`]: the record types, redaction of secrets, canonical JSON and the chain hash;
//! - [`journal`]: the append-only JSONL file with group commit and a run index;
//! - [`verify`](verify()): recompute the chain and name the first broken record;
//! - [`timeline`]: render one run for `firebreak audit show`.

pub mod journal;
pub mod record;
pub mod timeline;
pub mod verify;

pub use journal::{
    AuditError, AuditMirror, EntryKind, Journal, JournalReader, PROBE_EVERY, RecordIter, RunSummary,
};
pub use record::{
    GENESIS_HASH, REDACTED, Record, RecordBody, RecordDraft, RunMeta, RunStatus, StepError,
    StepStatus, canonical_json, chain_hash, is_secret_key, redact, redact_value,
};
pub use timeline::render_timeline;
pub use verify::{Problem, VerifyError, VerifyReport, verify};
