//! Integration tests of the audit journal: chain, tampering, crashes, concurrency, reads.

mod journal;
mod segments;
mod stream;
mod tamper;
mod timeline;
mod verify;

use std::sync::Arc;

use firebreak_audit::{RecordBody, RecordDraft, RunMeta, RunStatus, StepStatus};
use serde_json::json;

pub fn meta(run: &str) -> Arc<RunMeta> {
    Arc::new(RunMeta {
        run_id: run.into(),
        runbook: "restart-api".into(),
        team: "payments".into(),
        actor: "alertmanager".into(),
        event_id: format!("ev-{run}"),
    })
}

/// The records of one complete run with one step.
pub fn run_drafts(run: &str) -> Vec<RecordDraft> {
    let m = meta(run);
    vec![
        RecordDraft::new(
            m.clone(),
            RecordBody::RunStarted {
                event: json!({"id": "e1", "source": "alertmanager", "type": "firing", "subject": "HighLatency"}).into(),
                params: json!({"namespace": "shop", "replicas": 3}),
                dry_run: false,
                namespaces: vec!["shop".into()],
                cluster_actions: None,
                timeout_ms: Some(60_000),
                lock_key: None,
                cooldown_ms: None,
                interactive: false,
                approval: None,
                trace_id: None,
            },
        ),
        RecordDraft::new(
            m.clone(),
            RecordBody::StepStarted {
                step: 1,
                name: "k8s::scale".into(),
                inputs: json!({"namespace": "shop", "deployment": "api", "replicas": 3}),
                intent: None,
            },
        ),
        RecordDraft::new(
            m.clone(),
            RecordBody::StepFinished {
                step: 1,
                name: "k8s::scale".into(),
                inputs: None,
                status: StepStatus::Ok,
                outputs: json!({"from": 1, "to": 3, "ratio": 0.5}),
                error: None,
                duration_ms: 12,
                attempts: 1,
            },
        ),
        RecordDraft::new(
            m,
            RecordBody::RunFinished {
                status: RunStatus::Succeeded,
                error: None,
            },
        ),
    ]
}
