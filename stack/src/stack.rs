//! The stack: auth-service, usage-service and ws-gateway built from their own libraries in one
//! process, each on the listeners and stores a standalone binary would use, so what a newcomer
//! runs here is the same code the services run in production, minus PostgreSQL and Redis.
//!
//! Each service still reads its own environment variables (`RUST_LOG`, `AUTH_ACCESS_TOKEN_TTL`,
//! `GATEWAY_AUTH_MODE`, …); the stack decides only what must agree between them: the addresses
//! they call each other on, the embedded databases under the data directory, the service
//! credentials, and (unless `AUTH_KEY_ENCRYPTION_KEYS` is set) the key that seals the signing
//! keys, kept in the data directory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Args, Parser};
use tokio::task::JoinSet;
use tollgate_shared::{config::parse_socket_addr, shutdown::Shutdown};

use crate::{
    credentials::{Credentials, GATEWAY_CLIENT},
    data_dir, key_encryption,
};

/// The embedded databases' file names in the data directory.
const AUTH_DATABASE: &str = "auth.db";
const USAGE_DATABASE: &str = "usage.db";

#[derive(Clone, Debug, Args)]
pub struct Options {
    /// Where the embedded databases and the backend's credentials file live.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = ".tollgate")]
    pub data_dir: PathBuf,

    /// auth-service gRPC address. Port 0 picks a free port.
    #[arg(long, env = "AUTH_GRPC_ADDR", default_value = "127.0.0.1:50051", value_parser = parse_socket_addr)]
    pub auth_grpc_addr: SocketAddr,

    /// auth-service HTTP address (JSON API, JWKS).
    #[arg(long, env = "AUTH_HTTP_ADDR", default_value = "127.0.0.1:8081", value_parser = parse_socket_addr)]
    pub auth_http_addr: SocketAddr,

    /// usage-service gRPC address.
    #[arg(long, env = "USAGE_GRPC_ADDR", default_value = "127.0.0.1:50052", value_parser = parse_socket_addr)]
    pub usage_grpc_addr: SocketAddr,

    /// usage-service HTTP address (health, metrics).
    #[arg(long, env = "USAGE_HTTP_ADDR", default_value = "127.0.0.1:8082", value_parser = parse_socket_addr)]
    pub usage_http_addr: SocketAddr,

    /// ws-gateway address (`/ws`, `/v1/publish`, health, metrics).
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:8080", value_parser = parse_socket_addr)]
    pub gateway_addr: SocketAddr,
}

impl Options {
    /// Every listener on a free port and the data under `data_dir`: for tests and the demo.
    pub fn ephemeral(data_dir: &Path) -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            data_dir: data_dir.to_owned(),
            auth_grpc_addr: any,
            auth_http_addr: any,
            usage_grpc_addr: any,
            usage_http_addr: any,
            gateway_addr: any,
        }
    }
}

/// Where the running stack answers.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub auth_grpc: SocketAddr,
    pub auth_http: SocketAddr,
    pub usage_grpc: SocketAddr,
    pub usage_http: SocketAddr,
    pub gateway: SocketAddr,
    /// The gateway's `/readyz` and `/metrics`: its internal listener with
    /// `GATEWAY_ADMIN_ADDR`, else its only one.
    pub gateway_admin: SocketAddr,
    pub data_dir: PathBuf,
    pub credentials_file: PathBuf,
}

/// The three services, built (listening) and ready to run.
#[derive(Debug)]
pub struct Stack {
    endpoints: Endpoints,
    credentials: Credentials,
    shutdown: Shutdown,
    services: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Stack {
    /// Builds the three services on their listeners and starts serving them; stop them with
    /// [`Stack::stop`] or the shutdown signal.
    pub async fn start(options: Options, shutdown: Shutdown) -> anyhow::Result<Self> {
        data_dir::prepare(&options.data_dir, &[AUTH_DATABASE, USAGE_DATABASE])
            .with_context(|| format!("TOLLGATE_DATA_DIR: cannot prepare {:?}", options.data_dir))?;
        let credentials = Credentials::generate();
        let credentials_file = credentials
            .write_backend_file(&options.data_dir)
            .context("TOLLGATE_DATA_DIR: cannot write the credentials file")?;
        let mut services = JoinSet::new();

        let mut auth = parse::<auth_service::Config>("auth-service")?;
        auth.grpc_addr = options.auth_grpc_addr;
        auth.http_addr = options.auth_http_addr;
        auth.database_url = sqlite(&options.data_dir, AUTH_DATABASE).into();
        auth.redis_url = None;
        auth.service_clients =
            auth_service::clients::ClientRegistry::parse(&credentials.registry())
                .map_err(anyhow::Error::msg)?;
        if auth.key_encryption_keys.is_none() {
            auth.key_encryption_keys = Some(key_encryption::load_or_create(&options.data_dir)?);
        }
        let auth = auth_service::Application::build(auth, shutdown.clone()).await?;
        let (auth_grpc, auth_http) = (auth.grpc_addr(), auth.http_addr());
        services.spawn(async move { ("auth-service", auth.run_until_stopped().await) });
        let auth_url = format!("http://{auth_grpc}");

        let mut usage = parse::<usage_service::Config>("usage-service")?;
        usage.grpc_addr = options.usage_grpc_addr;
        usage.http_addr = options.usage_http_addr;
        usage.database_url = sqlite(&options.data_dir, USAGE_DATABASE).into();
        usage.redis_url = None;
        usage.auth_service_url = auth_url.clone();
        let usage = usage_service::Application::build(usage, shutdown.clone()).await?;
        let (usage_grpc, usage_http) = (usage.grpc_addr(), usage.http_addr());
        services.spawn(async move { ("usage-service", usage.run_until_stopped().await) });

        // The secret goes in as an argument only to satisfy the parser; it is set below.
        let mut gateway = parse_with::<ws_gateway::Config>(
            "ws-gateway",
            &["--service-client-secret", "set-below"],
        )?;
        gateway.addr = options.gateway_addr;
        gateway.redis_url = None;
        gateway.auth_service_url = auth_url;
        gateway.usage_service_url = format!("http://{usage_grpc}");
        gateway.service_client_id = GATEWAY_CLIENT.into();
        gateway.service_client_secret = credentials.gateway_secret.clone().into();
        let gateway = ws_gateway::Application::build(gateway, shutdown.clone()).await?;
        let gateway_addr = gateway.addr();
        let gateway_admin = gateway.admin_addr().unwrap_or(gateway_addr);
        services.spawn(async move { ("ws-gateway", gateway.run_until_stopped().await) });

        Ok(Self {
            endpoints: Endpoints {
                auth_grpc,
                auth_http,
                usage_grpc,
                usage_http,
                gateway: gateway_addr,
                gateway_admin,
                data_dir: options.data_dir,
                credentials_file,
            },
            credentials,
            shutdown,
            services,
        })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The secret of the `backend` client, which may publish events to users.
    pub fn backend_secret(&self) -> &str {
        &self.credentials.backend_secret
    }

    /// What a developer needs to know, for the terminal.
    pub fn banner(&self) -> String {
        let e = &self.endpoints;
        format!(
            "Tollgate is running on the embedded default (SQLite under {data:?}, in-process engine).\n\
             \n  ws-gateway     ws://{gw}/ws   POST http://{gw}/v1/publish   http://{ga}/metrics\
             \n  auth-service   http://{ah}/v1/register|login|refresh|logout   grpc {ag}\
             \n  usage-service  grpc {ug}   http://{uh}/metrics\
             \n\n  The `backend` client's credentials (scope publish) are in {creds:?}.\
             \n  Try it: `cargo run --release -- demo` in another terminal. Ctrl-C stops everything.",
            data = e.data_dir,
            gw = e.gateway,
            ga = e.gateway_admin,
            ah = e.auth_http,
            ag = e.auth_grpc,
            ug = e.usage_grpc,
            uh = e.usage_http,
            creds = e.credentials_file,
        )
    }

    /// Serves until the shutdown signal, then waits for every service to drain. If one service
    /// fails, the others are stopped too and the first error is returned.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.services.join_next().await {
            let (name, result) = joined.context("a service task panicked")?;
            if let Err(err) = result {
                tracing::error!(service = name, error = %format!("{err:#}"), "service failed; stopping the stack");
                self.shutdown.trigger();
                first_error.get_or_insert(err.context(name));
            } else if !self.shutdown.is_triggered() {
                tracing::warn!(
                    service = name,
                    "service stopped on its own; stopping the stack"
                );
                self.shutdown.trigger();
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops the stack and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.run_until_stopped().await
    }
}

/// A service's configuration from its own environment variables and defaults.
fn parse<C: Parser>(name: &str) -> anyhow::Result<C> {
    parse_with(name, &[])
}

fn parse_with<C: Parser>(name: &str, arguments: &[&str]) -> anyhow::Result<C> {
    C::try_parse_from(std::iter::once(name).chain(arguments.iter().copied()))
        .map_err(|err| anyhow::anyhow!("{name}: {}", err.kind()))
}

fn sqlite(data_dir: &Path, file: &str) -> String {
    format!("sqlite://{}", data_dir.join(file).display())
}
