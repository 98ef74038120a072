use firebreak_audit::{Journal, Problem, VerifyError, verify};
use serde_json::Value;

use crate::run_drafts;

/// A journal of two runs (8 records); returns its lines.
async fn journal_lines(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let path = dir.join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    journal.append_all(run_drafts("r1")).await.unwrap();
    journal.append_all(run_drafts("r2")).await.unwrap();
    drop(journal);
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text.lines().map(str::to_owned).collect())
}

fn write_lines(path: &std::path::Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Every way of changing one value: strings, numbers, bools, nulls, arrays and maps.
fn tamper(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(format!("{s}x")),
        Value::Number(n) => match n.as_u64() {
            Some(u) => Value::from(u + 1),
            None => Value::from(n.as_f64().unwrap() + 1.0),
        },
        Value::Bool(b) => Value::Bool(!b),
        Value::Null => Value::from(1),
        Value::Array(a) => {
            let mut a = a.clone();
            a.push(Value::from("extra"));
            Value::Array(a)
        }
        Value::Object(m) => {
            let mut m = m.clone();
            m.insert("extra".into(), Value::from(1));
            Value::Object(m)
        }
    }
}

/// Paths to every leaf and inner value of a record, e.g. ["body", "params", "replicas"].
fn paths(v: &Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    if !prefix.is_empty() {
        out.push(prefix.clone());
    }
    if let Value::Object(m) = v {
        for (k, item) in m {
            let mut p = prefix.clone();
            p.push(k.clone());
            paths(item, p, out);
        }
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| v.get_mut(k).unwrap())
}

#[tokio::test]
async fn editing_any_field_of_any_line_is_caught_and_the_line_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lines) = journal_lines(dir.path()).await;
    assert_eq!(verify(&path).unwrap().records, 8);
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        let original: Value = serde_json::from_str(line).unwrap();
        let mut fields = Vec::new();
        paths(&original, Vec::new(), &mut fields);
        for field in fields {
            let mut edited = original.clone();
            let slot = get_mut(&mut edited, &field);
            *slot = tamper(slot);
            let mut tampered = lines.clone();
            tampered[i] = serde_json::to_string(&edited).unwrap();
            write_lines(&path, &tampered);
            match verify(&path) {
                Err(VerifyError::Broken { line, .. }) => assert_eq!(
                    line,
                    i as u64 + 1,
                    "editing {field:?} on line {} named the wrong line",
                    i + 1
                ),
                other => panic!(
                    "editing {field:?} on line {} was not caught: {other:?}",
                    i + 1
                ),
            }
            checked += 1;
        }
    }
    assert!(checked > 80, "only {checked} edits tried");
}

#[tokio::test]
async fn each_kind_of_break_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lines) = journal_lines(dir.path()).await;

    // Deleting a line: the next one no longer follows.
    let mut deleted = lines.clone();
    deleted.remove(2);
    write_lines(&path, &deleted);
    let err = verify(&path).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Broken {
                line: 3,
                seq: Some(4),
                problem: Problem::SeqGap {
                    expected: 3,
                    found: 4
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("audit.jsonl:3: record seq 4: sequence gap"),
        "{err}"
    );

    // Deleting the last line cannot be seen from the chain alone, but the count changes.
    write_lines(&path, &lines[..7]);
    assert_eq!(verify(&path).unwrap().records, 7);

    // An unparsable line.
    let mut garbage = lines.clone();
    garbage[5] = "{not json".into();
    write_lines(&path, &garbage);
    let err = verify(&path).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Broken {
                line: 6,
                seq: None,
                problem: Problem::Unparsable(_),
                ..
            }
        ),
        "{err}"
    );

    // A body edit with a recomputed-looking but wrong hash: hash mismatch.
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"deployment\":\"api\"", "\"deployment\":\"web\"");
    assert_ne!(edited[1], lines[1]);
    write_lines(&path, &edited);
    let err = verify(&path).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Broken {
                line: 2,
                problem: Problem::HashMismatch { .. },
                ..
            }
        ),
        "{err}"
    );

    // Swapping two lines.
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    write_lines(&path, &swapped);
    let err = verify(&path).unwrap_err();
    assert!(matches!(err, VerifyError::Broken { line: 4, .. }), "{err}");

    // A missing file.
    let err = verify(dir.path().join("nope.jsonl")).unwrap_err();
    assert!(matches!(err, VerifyError::Io { .. }), "{err}");
}

/// Metric values are floats with every digit they have (Prometheus answers with 17 significant
/// digits). The journal line must read back to the very value that was hashed, or a true
/// record fails verification.
#[tokio::test]
async fn records_carrying_metric_floats_verify() {
    use firebreak_audit::{RecordBody, RecordDraft};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let journal = Journal::open(&path).unwrap();
    let mut drafts = run_drafts("r1");
    let meta = crate::meta("r1");
    // Values seen in real prom::check answers, and others the shortest-digits printer emits.
    let values = [
        0.029513378397636347,
        0.018333333333333424,
        5.241e-2,
        1994.8333333333333,
        0.1 + 0.2,
        1e-7,
        123456789.12345679,
        f64::MIN_POSITIVE,
        f64::MAX,
    ];
    for (i, v) in values.iter().enumerate() {
        drafts.push(RecordDraft::new(
            meta.clone(),
            RecordBody::Evidence {
                step: 1,
                name: format!("value {i}"),
                data: serde_json::json!({ "value": v, "samples": v * 3.0 }),
            },
        ));
    }
    journal.append_all(drafts).await.unwrap();
    drop(journal);
    let report = verify(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.records, 4 + values.len() as u64);
}
