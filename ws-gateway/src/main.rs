use std::process::ExitCode;

use tollgate_shared::{config::parse_or_exit, process, shutdown::Shutdown};
use ws_gateway::{Application, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    let otlp_endpoint = config.otlp_endpoint.clone();
    process::run("ws-gateway", otlp_endpoint.as_deref(), run(config)).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let app = Application::build(config, shutdown).await?;
    tracing::info!(
        addr = %app.addr(),
        admin = app.admin_addr().map(tracing::field::display),
        "ws-gateway listening"
    );
    app.run_until_stopped().await?;
    tracing::info!("ws-gateway stopped");
    Ok(())
}
