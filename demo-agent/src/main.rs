use std::process::ExitCode;

use demo_agent::{Application, Config};
use tollgate_shared::{config::parse_or_exit, process, shutdown::Shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    let otlp_endpoint = config.otlp_endpoint.clone();
    process::run("demo-agent", otlp_endpoint.as_deref(), run(config)).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let app = Application::build(config, shutdown).await?;
    tracing::info!(grpc = %app.addr(), "demo-agent listening");
    app.run_until_stopped().await?;
    tracing::info!("demo-agent stopped");
    Ok(())
}
