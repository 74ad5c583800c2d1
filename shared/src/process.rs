//! The common shape of every service's `main`: telemetry first, then the service, and on
//! failure one line on stderr and a non-zero exit.

use std::{future::Future, process::ExitCode};

use crate::telemetry;

/// Runs `service` with telemetry installed; the spans are flushed before returning.
///
/// The service runs as a task on the runtime's workers rather than on the thread that called
/// `block_on`: its accept loops then spawn each connection's task onto the worker that
/// accepted it, instead of handing it across threads and waking a worker for it.
pub async fn run(
    name: &'static str,
    otlp_endpoint: Option<&str>,
    service: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> ExitCode {
    let telemetry = match telemetry::init(name, otlp_endpoint) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("{name}: OTEL_EXPORTER_OTLP_ENDPOINT: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match tokio::spawn(service).await {
        Ok(result) => result,
        Err(err) => Err(anyhow::anyhow!("the service task failed: {err}")),
    };
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
