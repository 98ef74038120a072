//! OpenTelemetry from the outside: `firebreak serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` exports a
//! scenario-1 run over OTLP HTTP/protobuf to a receiver in this test (decoding with the
//! `opentelemetry-proto` types): the run is a trace whose id its audit record carries, each step
//! a span under it with runbook, team, run, step, connector, action and outcome, the Kubernetes
//! client's HTTP calls children of their step, and a link to the alert's W3C `traceparent`.
//! Without the variable nothing is exported and no trace id is recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::harness::{
    Cluster, Serve, ServeOpts, copy_shipped_runbooks, fraud_model_at_v2, http, latency_alert,
    wait_for, write_runbooks,
};

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Spans received, with their resource's service name.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

async fn receiver() -> (String, Received) {
    let received = Received::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut store = store.lock().unwrap();
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|a| a.key == "service.name")
                        .and_then(|a| text(a.value.as_ref()))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        store.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

fn text(v: Option<&AnyValue>) -> Option<String> {
    match v?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| text(a.value.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scenario_1_run_is_a_trace_with_a_span_per_step_and_its_http_calls() {
    let (endpoint, received) = receiver().await;
    let cluster = Cluster::start(kubesim::ControllerConfig::default()).await;
    fraud_model_at_v2(&cluster).await;
    let tmp = tempfile::tempdir().unwrap();
    let runbooks = tmp.path().join("runbooks");
    copy_shipped_runbooks(&runbooks);
    let serve = Serve::start(
        &runbooks,
        ServeOpts {
            env: vec![
                (
                    "FIREBREAK_KUBECONFIG",
                    cluster.kubeconfig.display().to_string(),
                ),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_SERVICE_NAME", "firebreak-it".into()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ],
            kubernetes: true,
            ..ServeOpts::default()
        },
    )
    .await;
    let resp = http()
        .post(serve.url("/v1/alertmanager"))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            format!("00-{PARENT_TRACE}-00f067aa0ba902b7-01"),
        )
        .body(latency_alert())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let journal = serve
        .wait_journal("the rollback run", Duration::from_secs(60), |j| {
            j.finished("model-latency-rollback").len() == 1
        })
        .await;
    let run = &journal.finished("model-latency-rollback")[0];
    assert_eq!(run.status(), Some("succeeded"), "{}", serve.log_tail());
    let run_id = run.records[0]["run_id"].as_str().unwrap().to_owned();
    let trace_id = run.records[0]["body"]["trace_id"]
        .as_str()
        .expect("the run's trace id in its audit record")
        .to_owned();

    // The run's span closes last; wait for it.
    let spans = wait_for(
        "the run's spans at the receiver",
        Duration::from_secs(30),
        || serve.log_tail(),
        || async {
            let got = received.lock().unwrap().clone();
            got.iter()
                .any(|(_, s)| s.name == "run model-latency-rollback")
                .then_some(got)
        },
    )
    .await;
    let (service, root) = spans
        .iter()
        .find(|(_, s)| s.name == "run model-latency-rollback")
        .unwrap();
    assert_eq!(service, "firebreak-it");
    assert_eq!(hex(&root.trace_id), trace_id, "the audit names the trace");
    assert!(
        root.parent_span_id.is_empty(),
        "a run is a trace of its own"
    );
    assert_eq!(
        attr(root, "firebreak.run_id").as_deref(),
        Some(run_id.as_str())
    );
    assert_eq!(attr(root, "firebreak.team").as_deref(), Some("ml-platform"));
    assert_eq!(
        attr(root, "firebreak.outcome").as_deref(),
        Some("succeeded")
    );
    assert!(
        root.links.iter().any(|l| hex(&l.trace_id) == PARENT_TRACE),
        "linked to the alert's traceparent"
    );

    let in_trace: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let step = |name: &str| {
        in_trace
            .iter()
            .find(|s| s.name == name)
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "no {name} span in {:?}",
                    in_trace.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };
    for name in [
        "k8s::snapshot",
        "k8s::rollback",
        "k8s::wait_rollout",
        "k8s::rollout_history",
    ] {
        let s = step(name);
        assert_eq!(
            s.parent_span_id, root.span_id,
            "{name} is a child of the run"
        );
        assert_eq!(attr(s, "firebreak.connector").as_deref(), Some("k8s"));
        assert_eq!(
            attr(s, "firebreak.action").as_deref(),
            name.strip_prefix("k8s::")
        );
        assert_eq!(
            attr(s, "firebreak.outcome").as_deref(),
            Some("ok"),
            "{name}"
        );
        assert!(attr(s, "firebreak.step").is_some());
    }
    let rollback = step("k8s::rollback");
    let http_calls = in_trace
        .iter()
        .filter(|s| s.parent_span_id == rollback.span_id)
        .count();
    assert!(
        http_calls >= 2,
        "the rollback's reads and its write are its children: {http_calls}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_nothing_is_traced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "note.yaml",
                "name: note\nteam: sre\ndescription: d\nnamespaces: [shop]\n",
            ),
            ("note.rhai", "log(\"noted\");\n"),
        ],
    );
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    let (status, body) = serve
        .post("/v1/trigger", None, r#"{"runbook": "note"}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    let journal = serve
        .wait_journal("the run", Duration::from_secs(30), |j| {
            j.finished("note").len() == 1
        })
        .await;
    let started = &journal.finished("note")[0].records[0]["body"];
    assert!(started.get("trace_id").is_none(), "{started}");
}
