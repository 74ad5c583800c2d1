//! Building and running the service: `Application::build` connects, migrates and binds every
//! listener (port 0 allowed) so tests and `main` learn the real addresses before serving;
//! `run_until_stopped` serves until the shutdown signal, then drains.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tollgate_proto::auth::v1::auth_service_server::{self, AuthServiceServer};
use tollgate_shared::{
    config::ExposeSecret,
    db,
    engine::Engine,
    events::{KEYS_CHANNEL, REVOCATIONS_CHANNEL},
    grpc::health_and_reflection,
    health::{self, Readiness},
    metrics::{self as shared_metrics, RpcMetrics},
    serve::{self, RequestTimeout, Servers},
    shutdown::Shutdown,
    tokens::VerifierSettings,
};

use crate::{
    auth::{Auth, TokenSettings},
    config::Config,
    grpc::AuthGrpc,
    http,
    keys::KeyRing,
    metrics::AuthMetrics,
    passwords::Passwords,
    pruning::PruneSettings,
    revocation_feed::RevocationFeed,
    rewrap::{self, Scope},
    sealing::{self, KeyEncryptionKeys},
    store::Store,
    throttle::{Throttle, ThrottleSettings},
    validation::Validator,
};

#[derive(Debug)]
pub struct Application {
    auth: Arc<Auth>,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    registry: Arc<Registry>,
    rpc_metrics: RpcMetrics,
    readiness: Readiness,
    shutdown: Shutdown,
    grace: Duration,
    request_timeout: RequestTimeout,
    prune: PruneSettings,
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

/// The keyring, or one line saying it is required.
pub fn key_encryption_keys(config: &Config) -> anyhow::Result<KeyEncryptionKeys> {
    config.key_encryption_keys.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: required: the keys that seal signing keys at rest (comma-separated base64, newest first, each at least 32 random bytes, e.g. `openssl rand -base64 32`)",
            sealing::VARIABLE
        )
    })
}

/// Seals the plaintext rows of the old schema and checks that the keyring opens every stored
/// key, so a wrong keyring stops the service before it signs anything.
async fn seal_stored_keys(store: &Store, keys: &KeyEncryptionKeys) -> anyhow::Result<()> {
    let report = rewrap::reseal(store, keys, Scope::Plaintext)
        .await
        .context("sealing stored signing keys")?;
    report.require_all_open()?;
    if report.resealed > 0 {
        tracing::info!(sealed = report.resealed, "plaintext signing keys sealed");
    }
    if report.on_older > 0 {
        tracing::info!(
            rows = report.on_older,
            "signing keys are sealed under older key-encryption keys; `auth-service keys rewrap` moves them"
        );
    }
    Ok(())
}

impl Application {
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let sealing = key_encryption_keys(&config)?;
        let store = connect_store(&config).await?;
        seal_stored_keys(&store, &sealing).await?;
        let redis_url = config.redis_url.as_ref().map(|url| url.expose_secret());
        let engine = Engine::from_url(redis_url, &config.redis_prefix).await?;
        let verifier_settings = VerifierSettings {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            service_audience: crate::service_tokens::SELF_AUDIENCE.into(),
            leeway: config.jwt_leeway,
        };
        let retention = config.access_token_ttl.max(config.service_token_ttl) + config.jwt_leeway;
        let keys = KeyRing::load(store.clone(), sealing, verifier_settings, retention)
            .await
            .context("loading signing keys")?;
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let mut registry = Registry::with_prefix("tollgate");
        let metrics = AuthMetrics::register(&mut registry);
        let rpc_metrics = RpcMetrics::register(&mut registry);

        let auth = Arc::new(Auth {
            throttle: Throttle::new(
                engine.clone(),
                ThrottleSettings {
                    max_failures: config.login_max_failures,
                    failure_window: config.login_failure_window,
                    failure_delay: config.login_failure_delay,
                    max_delay: config.login_max_delay,
                    max_per_address: config.login_max_per_address,
                    address_window: config.login_address_window,
                    token_max_per_address: config.token_max_per_address,
                    token_window: config.token_address_window,
                },
            ),
            store,
            engine,
            keys,
            passwords: Passwords::new(cores).await?,
            clients: config.service_clients.clone(),
            proxies: config.trusted_proxies.clone(),
            validator: Validator::new(config.jwt_leeway),
            tokens: TokenSettings {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                access_ttl: config.access_token_ttl,
                refresh_ttl: config.refresh_token_ttl,
                refresh_reuse_grace: config.refresh_reuse_grace,
                session_max_lifetime: config.session_max_lifetime,
                service_token_ttl: config.service_token_ttl,
            },
            metrics,
            feed: Arc::new(RevocationFeed::new(shutdown.clone())),
        });

        let grpc_listener = serve::bind(config.grpc_addr, "AUTH_GRPC_ADDR").await?;
        let http_listener = serve::bind(config.http_addr, "AUTH_HTTP_ADDR").await?;
        Ok(Self {
            auth,
            grpc_listener,
            http_listener,
            registry: Arc::new(registry),
            rpc_metrics,
            readiness: Readiness::new(),
            shutdown,
            grace: config.shutdown_grace,
            request_timeout: config.request_timeout,
            prune: PruneSettings {
                interval: config.prune_interval,
                retention: config.access_token_ttl.saturating_add(config.jwt_leeway),
            },
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

    /// The service core, for tests that need to reach behind the API (minting hostile tokens).
    pub fn auth(&self) -> Arc<Auth> {
        self.auth.clone()
    }

    /// Serves until the shutdown signal fires, then stops accepting, lets in-flight requests
    /// finish within the grace period and stops the background tasks.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            auth,
            grpc_listener,
            http_listener,
            registry,
            rpc_metrics,
            readiness,
            shutdown,
            grace,
            request_timeout,
            prune,
        } = self;
        let (health, routes) = health_and_reflection(auth_service_server::SERVICE_NAME)?;
        let tasks = [
            Some(auth.spawn_event_listener(shutdown.clone())),
            Some(auth.spawn_key_reloader(Duration::from_secs(30), shutdown.clone())),
            Some(auth.spawn_pruner(prune, shutdown.clone())),
            auth.engine
                .spawn_relay(&[REVOCATIONS_CHANNEL, KEYS_CHANNEL], shutdown.clone()),
        ];
        let grpc_routes = routes.add_service(AuthServiceServer::new(AuthGrpc::new(auth.clone())));
        let http_router = http::routes(auth.clone())
            .merge(health::routes(readiness.clone()))
            .merge(shared_metrics::routes(registry));
        readiness.set_ready(true);
        let result = Servers {
            grpc_listener,
            grpc_routes,
            health,
            service_name: auth_service_server::SERVICE_NAME,
            rpc_metrics,
            http_listener,
            http_router,
            readiness,
            shutdown: shutdown.clone(),
            grace,
            request_timeout,
        }
        .run()
        .await;
        shutdown.trigger();
        for task in tasks.into_iter().flatten() {
            let _ = task.await;
        }
        auth.store.close().await;
        result
    }
}
