//! `firebreak audit verify`: walk a journal (or an export) line by line, recompute every hash
//! and name the first record that breaks the chain. Start at [`verify`].

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::record::{GENESIS_HASH, Record, canonical_json, chain_hash};

/// A journal whose chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// Distinct run ids.
    pub runs: u64,
    /// The last record's hash ([`GENESIS_HASH`] for an empty journal); publish it elsewhere to
    /// anchor the chain.
    pub last_hash: String,
    /// 1-based line number of an incomplete last line (a crash mid-write that no writer has
    /// truncated yet). Not a broken record: it was never acknowledged.
    pub torn_tail_line: Option<u64>,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("unparsable line: {0}")]
    Unparsable(String),
    #[error("hash mismatch: the record says {stored}, its content hashes to {computed}")]
    HashMismatch { stored: String, computed: String },
    #[error("prev_hash mismatch: expected {expected} (hash of the record before), found {found}")]
    PrevHashMismatch { expected: String, found: String },
    #[error(
        "sequence gap: expected seq {expected}, found {found} (a record was removed or inserted)"
    )]
    SeqGap { expected: u64, found: u64 },
}

/// Why verification stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: record {}: {problem}", seq.map_or_else(|| "?".to_owned(), |s| format!("seq {s}")))]
    Broken {
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The record's own `seq`, when it could be read.
        seq: Option<u64>,
        problem: Problem,
    },
}

/// Verifies the whole chain of the journal (or export) at `path`.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, VerifyError> {
    let path = path.as_ref();
    let io_err = |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut runs = std::collections::HashSet::new();
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    let mut torn_tail_line = None;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            torn_tail_line = Some(line_no);
            break;
        }
        let broken = |seq, problem| VerifyError::Broken {
            path: path.to_owned(),
            line: line_no,
            seq,
            problem,
        };
        let mut value: Value = serde_json::from_slice(&buf)
            .map_err(|e| broken(None, Problem::Unparsable(e.to_string())))?;
        let seq = value.get("seq").and_then(Value::as_u64);
        // The typed parse catches unknown fields and wrong shapes with a precise message.
        let record: Record = serde_json::from_value(value.clone())
            .map_err(|e| broken(seq, Problem::Unparsable(e.to_string())))?;
        if record.seq != expected_seq {
            return Err(broken(
                seq,
                Problem::SeqGap {
                    expected: expected_seq,
                    found: record.seq,
                },
            ));
        }
        if record.prev_hash != prev_hash {
            return Err(broken(
                seq,
                Problem::PrevHashMismatch {
                    expected: prev_hash,
                    found: record.prev_hash,
                },
            ));
        }
        if let Value::Object(map) = &mut value {
            map.remove("hash");
        }
        let computed = chain_hash(&record.prev_hash, &canonical_json(&value));
        if computed != record.hash {
            return Err(broken(
                seq,
                Problem::HashMismatch {
                    stored: record.hash,
                    computed,
                },
            ));
        }
        runs.insert(record.run_id);
        prev_hash = record.hash;
        expected_seq += 1;
    }
    Ok(VerifyReport {
        records: expected_seq - 1,
        runs: runs.len() as u64,
        last_hash: prev_hash,
        torn_tail_line,
    })
}
