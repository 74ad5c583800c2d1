use std::process::ExitCode;

use auth_service::{
    Application, Config,
    config::{Command, KeysCommand},
    rewrap::{self, Scope},
    startup::{connect_store, key_encryption_keys},
};
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
    if let Some(Command::Keys(KeysCommand::Rewrap)) = config.command {
        return rewrap_keys(&config).await;
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let app = Application::build(config, shutdown).await?;
    tracing::info!(grpc = %app.grpc_addr(), http = %app.http_addr(), "auth-service listening");
    app.run_until_stopped().await?;
    tracing::info!("auth-service stopped");
    Ok(())
}

/// `auth-service keys rewrap`: one summary line on stdout; a failure if rows are left behind.
async fn rewrap_keys(config: &Config) -> anyhow::Result<()> {
    let keys = key_encryption_keys(config)?;
    let store = connect_store(config).await?;
    let report = rewrap::reseal(&store, &keys, Scope::AllOlder).await?;
    store.close().await;
    report.require_all_open()?;
    println!(
        "re-sealed {} signing keys under key-encryption key {}; {} on it, {} left on older keys",
        report.resealed,
        keys.newest(),
        report.on_newest,
        report.on_older
    );
    if report.on_older > 0 {
        anyhow::bail!(
            "{} signing keys are still sealed under older key-encryption keys (a replica with an older keyring may be writing them): run it again once every replica has the new keyring",
            report.on_older
        );
    }
    Ok(())
}
