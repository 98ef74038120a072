//! The central audit stream: two replicas' journals interleaved, one run taken over from the
//! first by the second. `verify_stream` accepts it whole and names what is wrong otherwise.

use firebreak_audit::{
    Journal, RecordBody, RecordDraft, canonical_json, chain_hash, verify_stream,
};
use serde_json::Value;

use crate::{meta, run_drafts};

/// Lines of replica a (run r1 whole, run r2 started) and of replica b (run r3 whole, then r2
/// taken over and finished), interleaved as a stream would hold them.
async fn two_replicas(dir: &std::path::Path) -> Vec<String> {
    let a = Journal::open(dir.join("a.jsonl")).unwrap();
    let b = Journal::open(dir.join("b.jsonl")).unwrap();
    a.append_all(run_drafts("r1")).await.unwrap();
    b.append_all(run_drafts("r3")).await.unwrap();
    let r2 = run_drafts("r2");
    let last = a.append_all(r2[..2].to_vec()).await.unwrap().pop().unwrap();
    b.append(RecordDraft::new(
        meta("r2"),
        RecordBody::RunTakenOver {
            by_replica: "b".into(),
            from_replica: "a".into(),
            last_hash: last.hash.clone(),
            last_seq: last.seq,
            records: 2,
        },
    ))
    .await
    .unwrap();
    b.append_all(r2[2..].to_vec()).await.unwrap();
    drop((a, b));
    let read = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let (a, b) = (read("a.jsonl"), read("b.jsonl"));
    let mut lines = Vec::new();
    for i in 0..a.len().max(b.len()) {
        lines.extend(a.get(i).cloned());
        lines.extend(b.get(i).cloned());
    }
    lines
}

fn check(lines: &[String]) -> Result<firebreak_audit::StreamReport, String> {
    verify_stream(lines.iter().map(|l| l.as_bytes()))
}

#[tokio::test]
async fn two_journals_and_a_takeover_verify_and_each_break_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let lines = two_replicas(dir.path()).await;
    let report = check(&lines).unwrap();
    assert_eq!(report.chains.len(), 2, "{report:?}");
    assert_eq!(report.runs, 3);
    assert_eq!(
        report.takeovers,
        vec![("r2".to_owned(), "a".to_owned(), "b".to_owned())]
    );
    // A line published twice (a retried mirror batch) counts once.
    let mut twice = lines.clone();
    twice.push(lines[3].clone());
    assert_eq!(check(&twice).unwrap().records, report.records);

    // An edited record: its hash no longer holds.
    let mut edited = lines.clone();
    edited[2] = edited[2].replace("restart-api", "restart-db");
    assert!(check(&edited).unwrap_err().contains("hash mismatch"));

    // A takeover pointing at a record that is not the run's last: resealed, so only the link
    // is wrong.
    let at = lines
        .iter()
        .position(|l| l.contains("run_taken_over"))
        .unwrap();
    let mut value: Value = serde_json::from_str(&lines[at]).unwrap();
    value["body"]["last_seq"] = 1.into();
    value.as_object_mut().unwrap().remove("hash");
    let hash = chain_hash(
        value["prev_hash"].as_str().unwrap(),
        &canonical_json(&value),
    );
    value["hash"] = hash.into();
    let mut relinked = lines.clone();
    relinked[at] = value.to_string();
    let err = check(&relinked).unwrap_err();
    assert!(err.contains("its takeover by b links to seq 1"), "{err}");

    // The record it links to removed from the stream.
    let linked_hash: Value = serde_json::from_str(&lines[at]).unwrap();
    let linked_hash = linked_hash["body"]["last_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let cut: Vec<String> = lines
        .iter()
        .filter(|l| !l.contains(&format!("\"hash\":\"{linked_hash}\"")))
        .cloned()
        .collect();
    assert_eq!(cut.len(), lines.len() - 1);
    let err = check(&cut).unwrap_err();
    assert!(err.contains("which is not on the stream"), "{err}");

    // A second record resealed onto a record another already follows: a fork.
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    let mut forged: Value = serde_json::from_str(&lines[2]).unwrap();
    forged["actor"] = "mallory".into();
    forged["prev_hash"] = first["hash"].clone();
    forged.as_object_mut().unwrap().remove("hash");
    let hash = chain_hash(
        forged["prev_hash"].as_str().unwrap(),
        &canonical_json(&forged),
    );
    forged["hash"] = hash.into();
    let mut forked = lines.clone();
    forked.push(forged.to_string());
    let err = check(&forked).unwrap_err();
    assert!(err.contains("the chain was forked"), "{err}");
}
