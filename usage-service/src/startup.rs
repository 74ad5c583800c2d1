//! Building and running usage-service: `Application::build` connects, migrates, loads the plan
//! catalogue and binds every listener; `run_until_stopped` serves until the shutdown signal,
//! then drains and flushes the ledger.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tollgate_proto::usage::v1::usage_service_server::{self, UsageServiceServer};
use tollgate_shared::{
    config::ExposeSecret,
    db,
    engine::Engine,
    grpc::{self as shared_grpc, health_and_reflection},
    health::{self, Readiness},
    jwks::JwksVerifier,
    metrics::{self as shared_metrics, RpcMetrics},
    serve::{self, RequestTimeout, Servers},
    shutdown::Shutdown,
    tokens::VerifierSettings,
};

use crate::{
    catalogue::Catalogue,
    config::{Config, RedisDownMode},
    grpc::UsageGrpc,
    ledger::Ledger,
    limits::{self, Limiter},
    metrics::UsageMetrics,
    store::Store,
    usage::{INVALIDATE_CHANNEL, Usage},
};

#[derive(Debug)]
pub struct Application {
    usage: Arc<Usage>,
    verifier: JwksVerifier,
    ledger_writer: tokio::task::JoinHandle<()>,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    registry: Arc<Registry>,
    rpc_metrics: RpcMetrics,
    shutdown: Shutdown,
    grace: Duration,
    request_timeout: RequestTimeout,
}
/// Connects to the database and migrates, failing with one line that names the variable.
pub async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(db::Settings {
        url: config.database_url.expose_secret(),
        max_connections: config.database_max_connections,
        timeouts: config.database_timeouts,
    })
    .await
}

impl Application {
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let catalogue = match &config.plans_file {
            Some(path) => {
                Catalogue::load(path).map_err(|err| anyhow::anyhow!("USAGE_PLANS_FILE: {err}"))?
            }
            None => Catalogue::default_catalogue(),
        };
        let store = connect_store(&config).await?;
        let redis_url = config.redis_url.as_ref().map(|url| url.expose_secret());
        let engine = Engine::from_url(redis_url, &config.redis_prefix).await?;
        let channel = shared_grpc::channel(&config.auth_service_url, Duration::from_secs(5))
            .map_err(|err| anyhow::anyhow!("AUTH_SERVICE_URL: {err}"))?;
        let verifier = JwksVerifier::new(
            channel,
            VerifierSettings {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                service_audience: "usage-service".into(),
                leeway: config.jwt_leeway,
            },
            Duration::from_secs(1),
        );
        let mode = match config.redis_down_mode {
            RedisDownMode::Local => limits::RedisDownMode::Local,
            RedisDownMode::Closed => limits::RedisDownMode::Closed,
        };
        let mut registry = Registry::with_prefix("tollgate");
        let metrics = UsageMetrics::register(&mut registry);
        let rpc_metrics = RpcMetrics::register(&mut registry);
        let (ledger, ledger_writer) = Ledger::start(store.clone(), shutdown.clone());
        // Quotas the limiter counts in this process start from what the ledger holds.
        let limiter = Limiter::seeded(
            engine.clone(),
            mode,
            config.clock.clone(),
            Arc::new(store.clone()),
        );
        let usage = Arc::new(Usage::new(
            store, catalogue, limiter, ledger, engine, metrics,
        ));

        let grpc_listener = serve::bind(config.grpc_addr, "USAGE_GRPC_ADDR").await?;
        let http_listener = serve::bind(config.http_addr, "USAGE_HTTP_ADDR").await?;
        Ok(Self {
            usage,
            verifier,
            ledger_writer,
            grpc_listener,
            http_listener,
            registry: Arc::new(registry),
            rpc_metrics,
            shutdown,
            grace: config.shutdown_grace,
            request_timeout: config.request_timeout,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The service core, for tests that look behind the API.
    pub fn usage(&self) -> Arc<Usage> {
        self.usage.clone()
    }

    /// Serves until shutdown; readiness waits for the JWKS. On shutdown the ledger is flushed
    /// before this returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            usage,
            verifier,
            ledger_writer,
            grpc_listener,
            http_listener,
            registry,
            rpc_metrics,
            shutdown,
            grace,
            request_timeout,
        } = self;
        let (health, routes) = health_and_reflection(usage_service_server::SERVICE_NAME)?;
        let readiness = Readiness::new();
        let tasks = [
            Some(usage.spawn_invalidation_listener(shutdown.clone())),
            usage
                .engine
                .spawn_relay(&[INVALIDATE_CHANNEL], shutdown.clone()),
            Some(verifier.spawn_refresher(Duration::from_secs(60), shutdown.clone())),
        ];
        let grpc_routes = routes.add_service(UsageServiceServer::new(UsageGrpc::new(
            usage.clone(),
            verifier.clone(),
        )));
        let http_router = health::routes(readiness.clone()).merge(shared_metrics::routes(registry));
        let servers = Servers {
            grpc_listener,
            grpc_routes,
            health,
            service_name: usage_service_server::SERVICE_NAME,
            rpc_metrics,
            http_listener,
            http_router,
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
            grace,
            request_timeout,
        };
        // Ready only once service tokens can be verified.
        let gate = readiness.clone();
        let keys = verifier.clone();
        let ready_watch = shutdown.clone();
        let result = tokio::select! {
            result = servers.run() => result,
            () = async move {
                while !keys.has_keys() && !ready_watch.is_triggered() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                gate.set_ready(!ready_watch.is_triggered());
                std::future::pending::<()>().await
            } => Ok(()),
        };
        shutdown.trigger();
        if ledger_writer.await.is_err() {
            tracing::error!("the ledger writer stopped abnormally");
        }
        for task in tasks.into_iter().flatten() {
            let _ = task.await;
        }
        usage.store.close().await;
        result
    }
}
