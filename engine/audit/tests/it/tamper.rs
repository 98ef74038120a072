//! The four ways to rewrite a journal's tail that the chain alone cannot see, each caught by
//! the signed checkpoints and the head file: by `verify` with the line and the reason, and by
//! the engine, which refuses to append to it.

use std::sync::Arc;

use firebreak_audit::{
    AuditError, Journal, JournalOptions, Problem, SigningKey, VerifyError, VerifyOptions,
    canonical_json, chain_hash, verify, verify_with,
};
use serde_json::Value;

use crate::run_drafts;

fn signed(dir: &std::path::Path) -> JournalOptions {
    let key = SigningKey::load_or_create(&dir.join("audit.key"))
        .unwrap()
        .0;
    JournalOptions {
        signing_key: Some(Arc::new(key)),
        ..JournalOptions::default()
    }
}

/// A signed journal of two runs, closed the way the engine stops; returns its lines.
async fn closed_journal(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let path = dir.join("audit.jsonl");
    let journal = Journal::open_with(&path, signed(dir)).unwrap();
    journal.append_all(run_drafts("r1")).await.unwrap();
    journal.append_all(run_drafts("r2")).await.unwrap();
    let last = journal.checkpoint(true).await.unwrap().expect("signed");
    assert_eq!(
        last.seq, 10,
        "opening checkpoint, 8 records, closing checkpoint"
    );
    drop(journal);
    let report = verify(&path).unwrap();
    assert!(report.closed && report.unanchored.is_none(), "{report:?}");
    assert_eq!((report.checkpoints, report.anchored_through), (2, 10));
    assert!(report.key.as_ref().is_some_and(|(_, trusted)| *trusted));
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text.lines().map(str::to_owned).collect())
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Re-seals `value` onto `prev`: what a forger with the file (and not the key) can do.
fn reseal(mut value: Value, prev: &str) -> (String, String) {
    value["prev_hash"] = prev.into();
    value.as_object_mut().unwrap().remove("hash");
    let hash = chain_hash(prev, &canonical_json(&value));
    value["hash"] = hash.clone().into();
    (serde_json::to_string(&value).unwrap(), hash)
}

/// Verify fails at `line` with a problem `want` accepts, and the engine will not append.
fn caught(path: &std::path::Path, line: u64, want: impl Fn(&Problem) -> bool) {
    match verify(path) {
        Err(VerifyError::Broken {
            line: at, problem, ..
        }) => {
            assert_eq!(at, line, "{problem}");
            assert!(want(&problem), "unexpected: {problem}");
        }
        other => panic!("not caught: {other:?}"),
    }
    let dir = path.parent().unwrap();
    match Journal::open_with(path, signed(dir)) {
        Err(AuditError::Tampered {
            line: at, problem, ..
        }) => {
            assert_eq!(at, line, "{problem}")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("the engine appended to a tampered journal"),
    }
}

#[tokio::test]
async fn a_truncated_last_line_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lines) = closed_journal(dir.path()).await;
    let mut text = lines[..9].join("\n") + "\n";
    text.push_str(&lines[9][..lines[9].len() / 2]);
    write(&path, &text);
    caught(&path, 10, |p| {
        matches!(
            p,
            Problem::TailMissing {
                head_seq: 10,
                last_seq: 9,
                ..
            }
        )
    });
}

#[tokio::test]
async fn a_removed_last_record_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lines) = closed_journal(dir.path()).await;
    write(&path, &(lines[..9].join("\n") + "\n"));
    caught(&path, 10, |p| matches!(p, Problem::TailMissing { .. }));
    // Removing more than the last one too.
    write(&path, &(lines[..6].join("\n") + "\n"));
    caught(&path, 7, |p| matches!(p, Problem::TailMissing { .. }));
}

#[tokio::test]
async fn a_forged_record_appended_with_a_recomputed_hash_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut lines) = closed_journal(dir.path()).await;
    let last: Value = serde_json::from_str(&lines[9]).unwrap();
    let mut forged: Value = serde_json::from_str(&lines[2]).unwrap();
    forged["seq"] = 11.into();
    forged["actor"] = "mallory".into();
    let (line, _) = reseal(forged, last["hash"].as_str().unwrap());
    lines.push(line);
    write(&path, &(lines.join("\n") + "\n"));
    caught(&path, 11, |p| {
        matches!(
            p,
            Problem::AfterClose {
                last_checkpoint: 10
            }
        )
    });
}

#[tokio::test]
async fn a_whole_file_rehashed_after_an_edit_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lines) = closed_journal(dir.path()).await;
    // Edit record 3 (r1's step) and recompute every hash after it, checkpoints included.
    let rehash = |edit_checkpoints: bool| {
        let mut prev = String::new();
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let mut value: Value = serde_json::from_str(line).unwrap();
            if i == 2 {
                value["actor"] = "mallory".into();
            }
            if i < 2 {
                prev = value["hash"].as_str().unwrap().to_owned();
                out.push(line.clone());
                continue;
            }
            if edit_checkpoints && value["body"]["type"] == "checkpoint" {
                value["body"]["head"] = prev.clone().into();
            }
            let (line, hash) = reseal(value, &prev);
            prev = hash;
            out.push(line);
        }
        out.join("\n") + "\n"
    };
    // The checkpoint after the edit signs the old hash.
    write(&path, &rehash(false));
    caught(&path, 10, |p| {
        matches!(p, Problem::CheckpointMismatch { covers: 9, .. })
    });
    // Fixing its `head` too breaks its signature.
    write(&path, &rehash(true));
    caught(&path, 10, |p| matches!(p, Problem::BadSignature { .. }));
}

#[tokio::test]
async fn a_journal_resigned_with_another_key_fails_against_the_trusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = closed_journal(dir.path()).await;
    let trusted = std::fs::read_to_string(dir.path().join("audit.pub")).unwrap();
    // Another key takes over the journal's directory (a new key, a new .pub beside it).
    for name in ["audit.key", "audit.pub"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let journal = Journal::open_with(&path, signed(dir.path()));
    assert!(
        matches!(journal, Err(AuditError::Tampered { .. })),
        "the head file is signed by the old key"
    );
    let err = verify_with(
        &path,
        &VerifyOptions {
            key: Some(trusted.trim().to_owned()),
            ..VerifyOptions::default()
        },
    );
    assert!(err.is_ok(), "the old key still verifies it: {err:?}");
    let other = std::fs::read_to_string(dir.path().join("audit.pub")).unwrap();
    let err = verify_with(
        &path,
        &VerifyOptions {
            key: Some(other.trim().to_owned()),
            ..VerifyOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("not by the trusted key"), "{err}");
}

/// A crash leaves records after the last checkpoint: they verify as a chain and are reported
/// as an unanchored tail; the next start anchors them with its opening checkpoint.
#[tokio::test]
async fn records_after_the_last_checkpoint_are_an_unanchored_tail_until_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open_with(&path, signed(dir.path())).unwrap();
    journal.append_all(run_drafts("r1")).await.unwrap();
    drop(journal); // no closing checkpoint: a crash
    let report = verify(&path).unwrap();
    assert_eq!(
        report.unanchored,
        Some((path.clone(), 2, 2, 5)),
        "{report:?}"
    );
    assert!(!report.closed);
    let journal = Journal::open_with(&path, signed(dir.path())).unwrap();
    drop(journal);
    let report = verify(&path).unwrap();
    assert_eq!((report.unanchored, report.anchored_through), (None, 6));
}

/// Checkpoints come every N records, and ride along with the append that crossed N.
#[tokio::test]
async fn a_checkpoint_is_signed_every_n_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let options = JournalOptions {
        checkpoint_every: 6,
        ..signed(dir.path())
    };
    let journal = Journal::open_with(&path, options).unwrap();
    for run in ["a", "b", "c", "d"] {
        let records = journal.append_all(run_drafts(run)).await.unwrap();
        assert_eq!(records.len(), 4, "the caller gets only its own records");
    }
    assert!(
        journal.checkpoint(false).await.unwrap().is_none(),
        "the append that crossed 6 records signed them all"
    );
    journal
        .append(run_drafts("e").swap_remove(0))
        .await
        .unwrap();
    assert!(journal.checkpoint(false).await.unwrap().is_some());
    assert!(
        journal.checkpoint(false).await.unwrap().is_none(),
        "nothing new to sign"
    );
    drop(journal);
    let report = verify(&path).unwrap();
    // Opening, after 8 records, after 16, and the one asked for.
    assert_eq!(report.checkpoints, 4, "{report:?}");
    assert_eq!(report.records, 17 + 4);
}

/// Checkpoints published elsewhere (the NATS audit stream) anchor the tail even when the
/// local head file is gone with the records.
#[tokio::test]
async fn a_published_checkpoint_catches_a_tail_removed_with_the_head_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lines) = closed_journal(dir.path()).await;
    let published = (lines.join("\n") + "\n").into_bytes();
    write(&path, &(lines[..6].join("\n") + "\n"));
    std::fs::remove_file(dir.path().join("audit.head")).unwrap();
    assert!(
        verify(&path).is_ok(),
        "without an anchor the cut cannot be seen"
    );
    let options = VerifyOptions {
        published: Some(("the NATS audit stream".into(), published.clone())),
        ..VerifyOptions::default()
    };
    let err = verify_with(&path, &options).unwrap_err();
    assert!(
        matches!(
            &err,
            VerifyError::Broken {
                line: 7,
                problem: Problem::TailMissing { head_seq: 10, last_seq: 6, anchor },
                ..
            } if anchor == "the NATS audit stream"
        ),
        "{err}"
    );
    // A published checkpoint that was forged does not count as one.
    let mut forged: serde_json::Value = serde_json::from_str(&lines[9]).unwrap();
    forged["body"]["covers"] = 20.into();
    let options = VerifyOptions {
        published: Some(("nats".into(), serde_json::to_vec(&forged).unwrap())),
        ..VerifyOptions::default()
    };
    let err = verify_with(&path, &options).unwrap_err();
    assert!(err.to_string().contains("signature does not hold"), "{err}");
}
