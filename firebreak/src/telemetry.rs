//! Logs to stderr and, when asked, traces over OTLP: a run is a trace, each step a span, a
//! connector's HTTP calls their children (see `firebreak_runtime::trace`).
//!
//! Tracing is off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set (and `OTEL_SDK_DISABLED` is not `true`, `OTEL_TRACES_EXPORTER` not `none`); off, the
//! trace spans are disabled at their callsites. On, spans go out over OTLP HTTP/protobuf from the
//! SDK's batch thread, configured by the standard `OTEL_*` variables (endpoint, headers, timeout,
//! `OTEL_SERVICE_NAME` (default `firebreak`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

use crate::logwriter::LogWriter;

/// Flushes and stops the trace exporter and writes the last log lines when dropped (at the
/// end of `main`).
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    /// Dropped after `drop` has stopped the exporter (which may log while it stops): its
    /// drop writes the last lines and joins the log thread.
    _logs: Option<LogWriter>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("firebreak: flushing traces failed: {e}");
        }
    }
}

fn wanted() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        && !std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"))
}

/// Structured logs to stderr (`RUST_LOG` filters, `FIREBREAK_LOG_FORMAT=json` for JSON lines),
/// and the OTLP trace exporter when configured.
pub fn init() -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Trace spans are for the exporter, not the log lines.
    let filter = filter.add_directive(
        format!("{}=off", firebreak_runtime::trace::TARGET)
            .parse()
            .expect("a static directive"),
    );
    // Lines leave from a thread of their own (see `logwriter`); if it cannot start, each
    // logger writes to stderr itself, as before.
    let writer = LogWriter::spawn(std::io::stderr())
        .inspect_err(|e| {
            eprintln!("firebreak: no log writer thread ({e}); logging to stderr directly")
        })
        .ok();
    let sink = match &writer {
        Some(writer) => BoxMakeWriter::new(writer.handle()),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let logs = if std::env::var("FIREBREAK_LOG_FORMAT").as_deref() == Ok("json") {
        fmt::layer().json().with_writer(sink).boxed()
    } else {
        // Colours only on a terminal: a log file or a pod's log gets plain lines, the same
        // text written with less work per line (see `logformat`).
        use std::io::IsTerminal as _;
        if std::io::stderr().is_terminal() {
            fmt::layer().with_writer(sink).boxed()
        } else {
            fmt::layer()
                .with_ansi(false)
                .event_format(crate::logformat::PlainLine)
                .with_writer(sink)
                .boxed()
        }
    };
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));
    if !wanted() {
        registry.init();
        return Telemetry {
            traces: None,
            _logs: writer,
        };
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            registry.init();
            tracing::error!(error = %e, "cannot build the OTLP trace exporter; traces are off");
            return Telemetry {
                traces: None,
                _logs: writer,
            };
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("firebreak");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("firebreak");
    // firebreak's run and step spans, and the Kubernetes client's HTTP spans (debug level).
    let spans = Targets::new()
        .with_target(firebreak_runtime::trace::TARGET, tracing::Level::INFO)
        .with_target("kube_client", tracing::Level::DEBUG);
    registry
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(spans),
        )
        .init();
    tracing::info!("exporting traces over OTLP");
    Telemetry {
        traces: Some(provider),
        _logs: writer,
    }
}
