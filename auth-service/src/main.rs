use std::process::ExitCode;

use auth_service::{Application, Config, config::Command, startup::connect_store};
use tollgate_shared::{config::parse_or_exit, process, shutdown::Shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    let otlp_endpoint = config.otlp_endpoint.clone();
    process::run("auth-service", otlp_endpoint.as_deref(), run(config)).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(Command::Migrate) = config.command {
        connect_store(&config).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let app = Application::build(config, shutdown).await?;
    tracing::info!(grpc = %app.grpc_addr(), http = %app.http_addr(), "auth-service listening");
    app.run_until_stopped().await?;
    tracing::info!("auth-service stopped");
    Ok(())
}
