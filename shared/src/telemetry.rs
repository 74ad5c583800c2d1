//! Logging and tracing, set up once per process.
//!
//! Logs are JSON lines filtered by `RUST_LOG`. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans
//! are also exported over OTLP/gRPC and W3C trace context is the global propagator, so the
//! gRPC helpers in [`crate::grpc`] carry traces across services.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

use crate::span_fields::AppendJsonFields;

/// Flushes exported spans when dropped at the end of `main`.
#[derive(Debug)]
#[must_use = "dropping the guard flushes and stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {err}");
        }
    }
}

/// Installs the global subscriber for `service`. `otlp_endpoint` comes from
/// `OTEL_EXPORTER_OTLP_ENDPOINT`; `None` means no export.
pub fn init(service: &'static str, otlp_endpoint: Option<&str>) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .fmt_fields(AppendJsonFields);

    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service).build())
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            Some(provider)
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// A quiet subscriber for tests; safe to call from every test.
pub fn init_for_tests() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
