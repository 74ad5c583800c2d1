//! The common shape of every service's `main`: telemetry first, then the service, and on
//! failure one line on stderr and a non-zero exit.

use std::{future::Future, process::ExitCode};

use crate::telemetry;

/// Runs `service` with telemetry installed; the spans are flushed before returning.
pub async fn run(
    name: &'static str,
    otlp_endpoint: Option<&str>,
    service: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let telemetry = match telemetry::init(name, otlp_endpoint) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("{name}: OTEL_EXPORTER_OTLP_ENDPOINT: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = service.await;
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
