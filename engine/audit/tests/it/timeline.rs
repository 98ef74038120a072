use firebreak_audit::{
    Journal, Record, RecordBody, RecordDraft, RunStatus, StepError, StepStatus, render_timeline,
};
use serde_json::json;

use crate::{meta, run_drafts};

/// `bodies` appended as run r1's records to a fresh journal, as it sealed them.
async fn journaled(bodies: Vec<RecordBody>) -> Vec<Record> {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("audit.jsonl")).unwrap();
    let m = meta("r1");
    let drafts = bodies
        .into_iter()
        .map(|b| RecordDraft::new(m.clone(), b))
        .collect();
    journal.append_all(drafts).await.unwrap()
}

#[tokio::test]
async fn the_timeline_shows_steps_outcomes_evidence_refusals_and_the_final_status() {
    let records = journaled(vec![
        RecordBody::RunStarted {
            event: json!({"source": "alertmanager", "type": "firing", "subject": "HighLatency"})
                .into(),
            params: json!({"namespace": "shop"}),
            dry_run: true,
            namespaces: vec!["shop".into()],
            cluster_actions: None,
            timeout_ms: Some(300_000),
            lock_key: None,
            cooldown_ms: None,
            interactive: false,
            approval: None,
            trace_id: None,
        },
        RecordBody::StepStarted {
            step: 1,
            name: "k8s::pods".into(),
            inputs: json!({"namespace": "shop"}),
            intent: None,
        },
        RecordBody::Evidence {
            step: 1,
            name: "k8s::pods".into(),
            data: json!([{"name": "a"}, {"name": "b"}]),
        },
        RecordBody::StepFinished {
            step: 1,
            name: "k8s::pods".into(),
            inputs: None,
            status: StepStatus::Ok,
            outputs: json!({"count": 2}),
            error: None,
            duration_ms: 14,
            attempts: 1,
        },
        RecordBody::StepStarted {
            step: 2,
            name: "k8s::scale".into(),
            inputs: json!({"namespace": "kube-system"}),
            intent: None,
        },
        RecordBody::Refusal {
            step: Some(2),
            action: "k8s::scale".into(),
            reason: "namespace kube-system is outside the runbook's namespaces [shop]".into(),
        },
        RecordBody::StepFinished {
            step: 2,
            name: "k8s::scale".into(),
            inputs: None,
            status: StepStatus::Error,
            outputs: json!(null),
            error: Some(StepError {
                kind: "denied".into(),
                message: "namespace kube-system refused".into(),
            }),
            duration_ms: 0,
            attempts: 1,
        },
        RecordBody::RunFinished {
            status: RunStatus::Failed,
            error: Some("step 2 failed".into()),
        },
    ])
    .await;
    let text = render_timeline(&records);
    for expected in [
        "run r1",
        "runbook restart-api · team payments · actor alertmanager",
        "▶ run started (dry run) · namespaces shop · timeout 300s",
        "event alertmanager/firing HighLatency",
        "✓ #1 k8s::pods",
        "14 ms",
        "in  namespace=\"shop\"",
        "out {\"count\":2}",
        "◆ evidence k8s::pods: 2 items",
        "⛔ refused k8s::scale: namespace kube-system is outside",
        "✗ #2 k8s::scale",
        "error (denied) namespace kube-system refused",
        "■ run FAILED",
        "step 2 failed",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("no run_finished"));
    let unfinished = render_timeline(&records[..4]);
    assert!(
        unfinished.contains("no run_finished record"),
        "{unfinished}"
    );
    assert_eq!(render_timeline(&[]), "no records\n");
}

/// A local step journaled as one record (`step_finished` with its inputs) shows its inputs,
/// on a line placed at its start: the record's time less its duration, never before the run.
#[tokio::test]
async fn a_one_record_step_shows_its_inputs_at_its_start() {
    let records = journaled(vec![
        run_drafts("r1").swap_remove(0).body,
        RecordBody::StepFinished {
            step: 1,
            name: "log".into(),
            inputs: Some(json!({"message": "noted"})),
            status: StepStatus::Ok,
            outputs: json!(null),
            error: None,
            // Longer than the run so far: the line is placed at the run's start.
            duration_ms: 60_000,
            attempts: 1,
        },
        RecordBody::RunFinished {
            status: RunStatus::Succeeded,
            error: None,
        },
    ])
    .await;
    let text = render_timeline(&records);
    let step = text
        .lines()
        .position(|l| l.contains("✓ #1 log"))
        .unwrap_or_else(|| panic!("no step line in\n{text}"));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[step].trim_start().starts_with("+0.000s"), "{text}");
    assert!(lines[step + 1].contains("in  message=\"noted\""), "{text}");
}
