//! Tracing spans shaped for OpenTelemetry: a run is a trace, each step a span under it (steps of
//! `step(name, || ...)` and canary analyses under theirs), carrying `firebreak.runbook`,
//! `firebreak.team`, `firebreak.run_id`, `firebreak.step`, `firebreak.connector`,
//! `firebreak.action`, `firebreak.outcome` and `error.kind`. A connector's calls run inside its
//! step's span, so the HTTP spans of its client (kube's) are the step's children. A run whose
//! event carried a W3C `traceparent` links to that trace.
//!
//! The spans use the target `firebreak::trace`. Nothing records them unless the binary installs
//! an OpenTelemetry layer (see `OTEL_EXPORTER_OTLP_ENDPOINT` in the README): without one they are
//! disabled at their callsite and cost next to nothing.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use firebreak_audit::RunMeta;

/// The target of firebreak's trace spans.
pub const TARGET: &str = "firebreak::trace";

/// A run's root span and, when it is recorded, its trace id (hex).
pub(crate) fn run_span(meta: &RunMeta, traceparent: Option<&str>) -> (Span, Option<String>) {
    let span = tracing::info_span!(
        target: "firebreak::trace",
        "run",
        otel.name = %format!("run {}", meta.runbook),
        firebreak.runbook = %meta.runbook,
        firebreak.team = %meta.team,
        firebreak.run_id = %meta.run_id,
        firebreak.actor = %meta.actor,
        firebreak.outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return (span, None);
    }
    if let Some(linked) = traceparent.and_then(parse_traceparent) {
        span.add_link(linked);
    }
    let trace_id = span.context().span().span_context().trace_id();
    let id = (trace_id != TraceId::INVALID).then(|| trace_id.to_string());
    (span, id)
}

/// A step's span under `parent`.
pub(crate) fn step_span(parent: &Span, step: u32, name: &str) -> Span {
    if parent.is_disabled() {
        return Span::none();
    }
    let (connector, action) = name.split_once("::").unwrap_or(("", name));
    tracing::info_span!(
        target: "firebreak::trace",
        parent: parent,
        "step",
        otel.name = %name,
        firebreak.step = step,
        firebreak.connector = connector,
        firebreak.action = action,
        firebreak.outcome = tracing::field::Empty,
        error.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records how a span's step or run ended.
pub(crate) fn record_outcome(span: &Span, outcome: &str, error_kind: Option<&str>) {
    span.record("firebreak.outcome", outcome);
    if let Some(kind) = error_kind {
        span.record("error.kind", kind);
        span.record("otel.status_code", "ERROR");
    }
}

/// `00-<trace id>-<span id>-<flags>` as a remote span context.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.split('-');
    let (_version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_as_w3c_says() {
        let sc =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
    }
}
