//! `firebreak audit verify`: walk a journal (every segment, oldest first) or an export line by
//! line, recompute every hash, check every checkpoint's signature and name the first record
//! that breaks the chain. Start at [`verify`].
//!
//! Beyond the chain: every `checkpoint` must sign the very record before it with the trusted
//! key; the journal's head file (the newest checkpoint, see [`crate::checkpoint`]) must be in
//! the journal; and nothing may follow a checkpoint the engine wrote as it stopped. Records
//! after the last checkpoint are reported as an unanchored tail: the chain holds for them,
//! but no signature vouches that nobody appended them.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::checkpoint::{read_public_key, signature_holds};
use crate::journal::Layout;
use crate::record::{GENESIS_HASH, Record, RecordBody, canonical_json, chain_hash};

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
    /// Files read, oldest first.
    pub files: Vec<PathBuf>,
    /// Signed checkpoints found (each signature checked).
    pub checkpoints: u64,
    /// The key the checkpoints were checked against, and whether it came from outside the
    /// journal (`--key`, or the `.pub` file beside it) rather than from the records themselves.
    pub key: Option<(String, bool)>,
    /// `seq` of the last record a checkpoint signs (0: none).
    pub anchored_through: u64,
    /// Records after the last checkpoint: (file, first line, first seq, last seq).
    pub unanchored: Option<(PathBuf, u64, u64, u64)>,
    /// Whether the journal ends with the checkpoint the engine writes as it stops.
    pub closed: bool,
    /// Breaks the engine found at start and journaled before going on (`relinked` records).
    pub relinks: Vec<String>,
    /// Checkpoints kept outside the journal that it was held against: (where, seq).
    pub anchors: Vec<(String, u64)>,
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
    #[error(
        "checkpoint signs seq {covers} ending in hash {head}, but the record before it is seq {seq} with hash {hash}: records before it were rewritten"
    )]
    CheckpointMismatch {
        covers: u64,
        head: String,
        seq: u64,
        hash: String,
    },
    #[error(
        "checkpoint signature does not hold for key {key}: the checkpoint was forged or edited"
    )]
    BadSignature { key: String },
    #[error("checkpoint signed by key {found}, not by the trusted key {trusted}")]
    UntrustedKey { found: String, trusted: String },
    #[error(
        "{anchor} vouches for a signed checkpoint at seq {head_seq}, but the journal ends at seq {last_seq}: records were removed or the tail was cut off"
    )]
    TailMissing {
        /// Where the checkpoint was kept: the head file, the NATS audit stream.
        anchor: String,
        head_seq: u64,
        last_seq: u64,
    },
    #[error(
        "written after the checkpoint the engine wrote as it stopped (seq {last_checkpoint}): firebreak did not write it"
    )]
    AfterClose { last_checkpoint: u64 },
    #[error(
        "the signed checkpoint in {anchor}, seq {seq} (hash {head_hash}), is not the journal's record seq {seq} (hash {hash})"
    )]
    HeadMismatch {
        anchor: String,
        seq: u64,
        head_hash: String,
        hash: String,
    },
    #[error("the head file {0}")]
    BadHead(String),
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
    #[error("{0}")]
    Key(String),
}

/// What to check a journal against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The public key checkpoints must be signed with (hex, or a file holding it). Default:
    /// `<stem>.pub` beside the journal, else the key the checkpoints name.
    pub key: Option<String>,
    /// Checkpoints published elsewhere: (where, the published journal lines). The newest
    /// checkpoint among the lines must be in the journal, like the head file's.
    pub published: Option<(String, Vec<u8>)>,
}

/// Checks records one line at a time, carrying the chain between them.
/// Reads one journal line found outside its journal (the audit stream) and checks that its
/// content hashes to the hash it carries; where it sits in its chain is not checked here.
pub fn read_line(line: &[u8]) -> Result<Record, Problem> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| Problem::Unparsable(e.to_string()))?;
    let record: Record =
        serde_json::from_value(value.clone()).map_err(|e| Problem::Unparsable(e.to_string()))?;
    hash_holds(value, &record)?;
    Ok(record)
}

/// Whether `record` (parsed from `value`, its line) hashes to the hash it carries.
fn hash_holds(mut value: Value, record: &Record) -> Result<(), Problem> {
    if let Value::Object(map) = &mut value {
        map.remove("hash");
    }
    let computed = chain_hash(&record.prev_hash, &canonical_json(&value));
    if computed != record.hash {
        return Err(Problem::HashMismatch {
            stored: record.hash.clone(),
            computed,
        });
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub(crate) struct Checker {
    pub(crate) expected_seq: u64,
    pub(crate) prev_hash: String,
    /// The key checkpoints must carry; `None`: the first checkpoint's key, then that one.
    pub(crate) key: Option<String>,
    /// The last checkpoint seen: (its seq, whether it was written at a stop).
    pub(crate) last_checkpoint: Option<(u64, bool)>,
}

impl Checker {
    pub(crate) fn new(expected_seq: u64, prev_hash: String, key: Option<String>) -> Checker {
        Checker {
            expected_seq,
            prev_hash,
            key,
            last_checkpoint: None,
        }
    }

    /// Checks one complete line and moves the chain on. On failure: the record's seq (when
    /// readable) and what is wrong.
    pub(crate) fn check(&mut self, line: &[u8]) -> Result<Record, (Option<u64>, Problem)> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| (None, Problem::Unparsable(e.to_string())))?;
        let seq = value.get("seq").and_then(Value::as_u64);
        // The typed parse catches unknown fields and wrong shapes with a precise message.
        let record: Record = serde_json::from_value(value.clone())
            .map_err(|e| (seq, Problem::Unparsable(e.to_string())))?;
        let broken = |problem| Err((seq, problem));
        if let Some((closed_at, true)) = self.last_checkpoint
            && !matches!(record.body, RecordBody::Checkpoint { .. })
        {
            return broken(Problem::AfterClose {
                last_checkpoint: closed_at,
            });
        }
        if record.seq != self.expected_seq {
            return broken(Problem::SeqGap {
                expected: self.expected_seq,
                found: record.seq,
            });
        }
        if record.prev_hash != self.prev_hash {
            return broken(Problem::PrevHashMismatch {
                expected: self.prev_hash.clone(),
                found: record.prev_hash,
            });
        }
        if let Err(problem) = hash_holds(value, &record) {
            return broken(problem);
        }
        if let RecordBody::Checkpoint {
            covers,
            head,
            key,
            signature,
            last,
        } = &record.body
        {
            if *covers + 1 != record.seq || *head != record.prev_hash {
                return broken(Problem::CheckpointMismatch {
                    covers: *covers,
                    head: head.clone(),
                    seq: record.seq - 1,
                    hash: record.prev_hash.clone(),
                });
            }
            let trusted = self.key.get_or_insert_with(|| key.clone());
            if key != trusted {
                return broken(Problem::UntrustedKey {
                    found: key.clone(),
                    trusted: trusted.clone(),
                });
            }
            if !signature_holds(key, *covers, head, *last, signature) {
                return broken(Problem::BadSignature { key: key.clone() });
            }
            self.last_checkpoint = Some((record.seq, *last));
        }
        self.prev_hash.clone_from(&record.hash);
        self.expected_seq += 1;
        Ok(record)
    }
}

/// The head file's checkpoint: (seq, hash, written at a stop), its signature checked.
pub(crate) fn read_head(path: &Path, key: Option<&str>) -> Result<Option<Record>, Problem> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Problem::BadHead(format!("{}: {e}", path.display()))),
    };
    let record: Record = serde_json::from_slice(&text)
        .map_err(|e| Problem::BadHead(format!("{} does not parse: {e}", path.display())))?;
    check_anchor(record, &path.display().to_string(), key).map(Some)
}

/// The newest checkpoint among journal `lines` kept at `source`, its signature checked.
fn newest_checkpoint(
    lines: &[u8],
    source: &str,
    key: Option<&str>,
) -> Result<Option<Record>, Problem> {
    let newest = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<Record>(l).ok())
        .filter(|r| matches!(r.body, RecordBody::Checkpoint { .. }))
        .max_by_key(|r| r.seq);
    newest
        .map(|record| check_anchor(record, source, key))
        .transpose()
}

/// A checkpoint kept outside the journal (at `path`), its signature checked (against `key`
/// if given).
fn check_anchor(record: Record, path: &str, key: Option<&str>) -> Result<Record, Problem> {
    let RecordBody::Checkpoint {
        covers,
        head,
        key: signer,
        signature,
        last,
    } = &record.body
    else {
        return Err(Problem::BadHead(format!(
            "{path} holds a {} record, not a checkpoint",
            record.body.kind()
        )));
    };
    if key.is_some_and(|k| k != signer) {
        return Err(Problem::BadHead(format!(
            "{path} is signed by key {signer}, not by the trusted key"
        )));
    }
    if !signature_holds(signer, *covers, head, *last, signature) {
        return Err(Problem::BadHead(format!(
            "{path}: its signature does not hold"
        )));
    }
    Ok(record)
}

/// Verifies the whole chain of the journal (or export) at `path`, with the default options.
// Runs once per command, and callers match on the problem: not worth a box.
#[allow(clippy::result_large_err)]
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, VerifyError> {
    verify_with(path, &VerifyOptions::default())
}

/// Verifies the journal (every segment, oldest first) or export at `path`.
#[allow(clippy::result_large_err)]
pub fn verify_with(
    path: impl AsRef<Path>,
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let path = path.as_ref();
    let layout = Layout::new(path);
    let mut files: Vec<PathBuf> = layout
        .sealed()
        .map_err(|source| VerifyError::Io {
            path: path.to_owned(),
            source,
        })?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.push(path.to_owned());
    let (key, trusted) = match &options.key {
        Some(key) => (Some(read_public_key(key).map_err(VerifyError::Key)?), true),
        None => match read_public_key(layout.public_key().to_string_lossy().as_ref()) {
            Ok(key) => (Some(key), true),
            Err(_) => (None, false),
        },
    };
    // The head file before the records: a live engine writes it after the records it signs.
    let head = read_head(&layout.head(), key.as_deref()).map_err(|problem| VerifyError::Broken {
        path: layout.head(),
        line: 1,
        seq: None,
        problem,
    });
    let mut checker = Checker::new(1, GENESIS_HASH.to_owned(), key);
    let mut runs = std::collections::HashSet::new();
    let mut torn_tail_line = None;
    let mut checkpoints = 0u64;
    // seq → hash of every checkpoint, for the anchors kept outside the journal.
    let mut checkpoint_hashes = std::collections::HashMap::new();
    let mut relinks = Vec::new();
    // The first record after the last checkpoint: (file, line, seq).
    let mut after_checkpoint: Option<(PathBuf, u64, u64)> = None;
    let mut last_place = (path.to_owned(), 0u64);
    for file_path in &files {
        let io_err = |source| VerifyError::Io {
            path: file_path.clone(),
            source,
        };
        let file = File::open(file_path).map_err(io_err)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line_no = 0u64;
        let mut buf = Vec::new();
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
            let record = checker
                .check(&buf)
                .map_err(|(seq, problem)| VerifyError::Broken {
                    path: file_path.clone(),
                    line: line_no,
                    seq,
                    problem,
                })?;
            match &record.body {
                RecordBody::Checkpoint { .. } => {
                    checkpoints += 1;
                    checkpoint_hashes.insert(record.seq, record.hash);
                    after_checkpoint = None;
                }
                body => {
                    if let RecordBody::Relinked { set_aside, problem } = body {
                        relinks.push(format!(
                            "seq {}: the engine set {set_aside} aside: {problem}",
                            record.seq
                        ));
                    }
                    after_checkpoint.get_or_insert((file_path.clone(), line_no, record.seq));
                    runs.insert(record.run_id);
                }
            }
        }
        last_place = (file_path.clone(), line_no);
    }
    let last_seq = checker.expected_seq - 1;
    let mut anchors: Vec<(PathBuf, String, Record)> = Vec::new();
    if let Some(head) = head? {
        anchors.push((layout.head(), "the head file".to_owned(), head));
    }
    if let Some((source, lines)) = &options.published {
        let published =
            newest_checkpoint(lines, source, checker.key.as_deref()).map_err(|problem| {
                VerifyError::Broken {
                    path: PathBuf::from(source),
                    line: 1,
                    seq: None,
                    problem,
                }
            })?;
        anchors.extend(published.map(|r| (PathBuf::from(source), source.clone(), r)));
    }
    for (anchor_path, anchor, head) in &anchors {
        let at_end = |problem| VerifyError::Broken {
            path: last_place.0.clone(),
            line: torn_tail_line.unwrap_or(last_place.1 + 1),
            seq: None,
            problem,
        };
        if let (RecordBody::Checkpoint { key: signer, .. }, Some(trusted)) =
            (&head.body, &checker.key)
            && signer != trusted
        {
            return Err(VerifyError::Broken {
                path: anchor_path.clone(),
                line: 1,
                seq: Some(head.seq),
                problem: Problem::UntrustedKey {
                    found: signer.clone(),
                    trusted: trusted.clone(),
                },
            });
        }
        if head.seq > last_seq {
            return Err(at_end(Problem::TailMissing {
                anchor: anchor.clone(),
                head_seq: head.seq,
                last_seq,
            }));
        }
        let closed = matches!(head.body, RecordBody::Checkpoint { last: true, .. });
        if closed && torn_tail_line.is_some() {
            return Err(at_end(Problem::AfterClose {
                last_checkpoint: head.seq,
            }));
        }
        let stored = checkpoint_hashes.get(&head.seq);
        if stored != Some(&head.hash) {
            return Err(VerifyError::Broken {
                path: anchor_path.clone(),
                line: 1,
                seq: Some(head.seq),
                problem: Problem::HeadMismatch {
                    anchor: anchor.clone(),
                    seq: head.seq,
                    head_hash: head.hash.clone(),
                    hash: stored.cloned().unwrap_or_default(),
                },
            });
        }
    }
    let anchored_through = match checker.last_checkpoint {
        Some((seq, _)) => seq,
        None => 0,
    };
    Ok(VerifyReport {
        records: last_seq,
        runs: runs.len() as u64,
        last_hash: checker.prev_hash,
        torn_tail_line,
        files,
        checkpoints,
        key: checker.key.map(|k| (k, trusted)),
        anchored_through,
        unanchored: after_checkpoint.map(|(file, line, seq)| (file, line, seq, last_seq)),
        closed: matches!(checker.last_checkpoint, Some((seq, true)) if seq == last_seq),
        relinks,
        anchors: anchors
            .into_iter()
            .map(|(_, anchor, record)| (anchor, record.seq))
            .collect(),
    })
}
