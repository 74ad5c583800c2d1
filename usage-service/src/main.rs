use tollgate_shared::{config::parse_or_exit, shutdown::Shutdown, telemetry};
use usage_service::{Application, Config, config::Command, startup::connect_store};

#[tokio::main]
async fn main() {
    let config: Config = parse_or_exit();
    let _telemetry = match telemetry::init("usage-service", config.otlp_endpoint.as_deref()) {
        Ok(guard) => guard,
        Err(err) => fail(&format!("OTEL_EXPORTER_OTLP_ENDPOINT: {err}")),
    };
    if let Err(err) = run(config).await {
        fail(&format!("{err:#}"));
    }
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
    tracing::info!(grpc = %app.grpc_addr(), http = %app.http_addr(), "usage-service listening");
    app.run_until_stopped().await?;
    tracing::info!("usage-service stopped");
    Ok(())
}

fn fail(message: &str) -> ! {
    eprintln!("usage-service: {message}");
    std::process::exit(1);
}
