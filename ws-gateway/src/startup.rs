//! Building and running the gateway: `Application::build` connects to Redis (when configured),
//! prepares the clients of auth-service and usage-service and binds the listeners (port 0
//! allowed); `run_until_stopped` serves until the shutdown signal, then drains.
//!
//! Two listeners: the public one (`GATEWAY_ADDR`) for clients and backends, and, with
//! `GATEWAY_ADMIN_ADDR`, an internal one for `/readyz` and `/metrics`, which then leave the
//! public port (a node's insides are nobody's business on the internet). `/healthz` answers on
//! both: the kubelet's liveness probe next to readiness, and a load balancer that can only
//! probe the serving port.
//!
//! Shutdown, in order: readiness turns 503 and the public listener stops accepting; every
//! connection is sent 1001 and closes (each connection task is tracked); once they are all
//! gone, or the grace period is over, the internal listener stops (it answers 503 on
//! `/readyz` and serves metrics throughout the drain), the background tasks stop and
//! `run_until_stopped` returns.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    routing::{get, post},
    serve::ListenerExt,
};
use demo_agent::DemoAgent;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tollgate_shared::{
    config::{ExposeSecret, SecretString},
    engine::Engine,
    events::REVOCATIONS_CHANNEL,
    grpc::{TracedChannel, channel_with, streaming_endpoint, unary_endpoint},
    health::{self, Readiness},
    jwks::JwksVerifier,
    metrics as shared_metrics, serve,
    service_auth::{ClientCredentials, ServiceTokenSource},
    shutdown::Shutdown,
    tokens::VerifierSettings,
};

use crate::{
    agent::{Backends, LocalAgent},
    breaker::Breaker,
    budgets::Budgets,
    config::Config,
    connection,
    consumes::{self, ConsumeQueue},
    delivery::Delivery,
    history::EventHistory,
    hub::Hub,
    journal::{RunStore, Sources},
    leases::{self, LeaseQueues},
    limits::Limits,
    metrics::GatewayMetrics,
    publish,
    revocations::{RevocationList, Revocations},
    runs::RunRegistry,
    state::Shared,
    usage::UsageClient,
    validation::TokenValidator,
};

/// The audience of the service tokens the gateway accepts (publishers').
pub const SELF_AUDIENCE: &str = "ws-gateway";
/// The scope of the service tokens the gateway presents to agent backends (whose audience
/// is the agent's name).
pub const AGENT_SCOPE: &str = "agent.run";

#[derive(Debug)]
pub struct Application {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    registry: Arc<Registry>,
    engine: Engine,
    revocations: Revocations,
    watch_channel: TracedChannel,
    auth_tokens: ServiceTokenSource,
    usage_tokens: ServiceTokenSource,
    lease_queues: LeaseQueues,
    consume_queue: ConsumeQueue,
    /// The task behind the node's dynamic subscriptions (with Redis): users' event channels,
    /// and the channels of runs followed from other nodes.
    interest_task: Option<JoinHandle<()>>,
}

impl Application {
    /// Builds the gateway; `builtin` routes run the demo agent.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let demo = Arc::new(DemoAgent::new().with_think_delay(config.agent_think_delay));
        Self::build_with_agent(config, shutdown, demo).await
    }

    /// Builds the gateway with another in-process agent behind the `builtin` routes.
    pub async fn build_with_agent(
        config: Config,
        shutdown: Shutdown,
        builtin: Arc<dyn LocalAgent>,
    ) -> anyhow::Result<Self> {
        check(&config)?;
        let redis_url = config.redis_url.as_ref().map(ExposeSecret::expose_secret);
        let engine = Engine::from_url(redis_url, &config.redis_prefix).await?;
        let auth_channel = upstream_channel(&config.auth_service_url, config.upstream_timeout)
            .map_err(|err| anyhow::anyhow!("AUTH_SERVICE_URL: {err}"))?;
        let usage_channel = upstream_channel(&config.usage_service_url, config.upstream_timeout)
            .map_err(|err| anyhow::anyhow!("USAGE_SERVICE_URL: {err}"))?;
        let watch_channel = streaming_channel(&config.auth_service_url)
            .map_err(|err| anyhow::anyhow!("AUTH_SERVICE_URL: {err}"))?;

        let mut registry = Registry::with_prefix("tollgate");
        let metrics = GatewayMetrics::register(&mut registry);
        let jwks = JwksVerifier::new(
            auth_channel.clone(),
            VerifierSettings {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                service_audience: SELF_AUDIENCE.into(),
                leeway: config.jwt_leeway,
            },
            Duration::from_secs(1),
        );
        let credentials = |audience: &str, scope: &str| ClientCredentials {
            client_id: config.service_client_id.clone(),
            client_secret: SecretString::from(config.service_client_secret.expose_secret()),
            audience: audience.into(),
            scopes: vec![scope.into()],
        };
        let auth_tokens = ServiceTokenSource::start(
            auth_channel.clone(),
            credentials("auth-service", "auth.validate"),
            shutdown.clone(),
        );
        let usage_tokens = ServiceTokenSource::start(
            auth_channel.clone(),
            credentials("usage-service", "usage.check"),
            shutdown.clone(),
        );

        let backends = Backends::new(
            &config.agents,
            builtin,
            &config.backend_settings(),
            |agent| {
                ServiceTokenSource::start(
                    auth_channel.clone(),
                    credentials(agent, AGENT_SCOPE),
                    shutdown.clone(),
                )
            },
        )
        .map_err(anyhow::Error::msg)?;

        let hub = Hub::new(metrics.clone());
        let revoked = Arc::new(RevocationList::default());
        let revocations = Revocations::new(revoked.clone(), hub.clone(), metrics.clone());
        let breaker = Breaker::new(
            config.breaker_failures,
            config.breaker_cool_down,
            metrics.breaker_state.clone(),
        );
        let validator = TokenValidator::new(
            jwks.clone(),
            auth_channel,
            auth_tokens.interceptor(),
            breaker,
            revocations.clone(),
            config.auth_mode,
            config.validation_cache_ttl,
            metrics.clone(),
        );
        let usage = UsageClient::new(usage_channel, usage_tokens.interceptor(), metrics.clone());
        let (leases, lease_queues) = leases::leases();
        let (consumes, consume_queue) = consumes::consumes();
        let budgets = Arc::new(Budgets::new(
            config.message_budget,
            consumes.clone(),
            usage.clone(),
        ));
        let limits = Limits::new(
            engine.clone(),
            (usage, leases, consumes, budgets),
            config.connect_rate,
            config.usage_fail_open,
            config.emergency_limit,
            metrics.clone(),
        );
        let history = Arc::new(EventHistory::new(engine.clone(), config.event_history()));
        let bus_limit = Delivery::limit_for(config.publish_max_bytes, &metrics);
        let (interest, interest_task) = engine.interest(bus_limit, shutdown.clone());
        let delivery = Delivery::new(
            hub.clone(),
            history,
            interest.clone(),
            metrics.clone(),
            config.publish_max_bytes,
        );
        let remote = RunStore::new(
            &engine,
            config.run_history_max_bytes,
            config.run_history_ttl + config.detached_run_timeout,
            config.run_history_ttl,
        )
        .map(|store| Sources {
            store,
            engine: engine.clone(),
            interest,
        });
        let runs = RunRegistry::new(config.retention(), metrics.clone(), remote);
        let listener = serve::bind(config.addr, "GATEWAY_ADDR").await?;
        let admin_listener = match config.admin_addr {
            Some(addr) => Some(serve::bind(addr, "GATEWAY_ADMIN_ADDR").await?),
            None => None,
        };
        let shared = Arc::new(Shared::new(
            config,
            validator,
            jwks,
            limits,
            hub,
            revoked,
            delivery,
            Arc::new(backends),
            runs,
            metrics,
            Readiness::new(),
            shutdown,
        ));
        Ok(Self {
            shared,
            listener,
            admin_listener,
            registry: Arc::new(registry),
            engine,
            revocations,
            watch_channel,
            auth_tokens,
            usage_tokens,
            lease_queues,
            consume_queue,
            interest_task,
        })
    }

    /// The state connections share, for tests that drive a connection without a socket.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The internal listener's address, with `GATEWAY_ADMIN_ADDR`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    /// Serves until the shutdown signal fires, then drains (see the module documentation).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            shared,
            listener,
            admin_listener,
            registry,
            engine,
            revocations,
            watch_channel,
            auth_tokens,
            usage_tokens,
            lease_queues,
            consume_queue,
            interest_task,
        } = self;
        let shutdown = shared.shutdown.clone();
        let jwks = shared.validator.jwks().clone();
        let mut tasks: Vec<JoinHandle<()>> = vec![
            jwks.spawn_refresher(Duration::from_secs(60), shutdown.clone()),
            revocations.spawn_watcher(watch_channel, auth_tokens.interceptor(), shutdown.clone()),
            revocations.spawn_bus_listener(&engine, shutdown.clone()),
            shared.delivery.spawn_listener(&engine, shutdown.clone()),
            spawn_readiness(&shared, auth_tokens, usage_tokens),
            shared.runs.spawn_sweeper(shutdown.clone()),
        ];
        // Revocations are broadcast to every node; published events reach only the nodes
        // subscribed to their user, and a run's records only the nodes following it
        // (`interest_task`).
        tasks.extend(engine.spawn_relay(&[REVOCATIONS_CHANNEL], shutdown.clone()));
        tasks.extend(interest_task);
        tasks.extend(shared.runs.spawn_control_listener(shutdown.clone()));
        tasks.extend(shared.runs.spawn_node_lease(shutdown.clone()));
        // Lease and consume calls outlive the shutdown signal: draining connections still give
        // their leases back, and runs ending count their last tool calls.
        let usage_calls_done = CancellationToken::new();
        let usage = shared.limits.usage().clone();
        let usage_calls = [
            tokio::spawn(lease_queues.run(usage.clone(), usage_calls_done.clone())),
            tokio::spawn(consume_queue.run(usage, usage_calls_done.clone())),
            tokio::spawn(Arc::clone(shared.limits.budgets()).run(usage_calls_done.clone())),
        ];

        let clients = Router::new()
            .route("/ws", get(connection::upgrade))
            .route("/v1/publish", post(publish::publish))
            .with_state(Arc::clone(&shared))
            .layer(shared.config.request_timeout.http_layer());
        let internal = health::routes(shared.readiness.clone())
            .merge(shared_metrics::routes(registry))
            .layer(shared.config.request_timeout.http_layer());
        let admin_done = CancellationToken::new();
        let (router, admin) = match admin_listener {
            Some(listener) => {
                let admin = axum::serve(listener, internal)
                    .with_graceful_shutdown(admin_done.clone().cancelled_owned());
                (
                    clients.merge(health::liveness()),
                    Some(tokio::spawn(admin.into_future())),
                )
            }
            None => (clients.merge(internal), None),
        };
        let http_shutdown = shutdown.clone();
        let server = axum::serve(
            listener.tap_io(|tcp| {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %err, "TCP_NODELAY could not be set");
                }
            }),
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_shutdown.wait().await });
        let connections = shared.connections.clone();
        let drained = async move {
            let served = server.await;
            // No new connections from here on; wait for the open ones to close (1001).
            connections.close();
            connections.wait().await;
            served
        };
        let grace = shared.config.shutdown_grace;
        let result = tokio::select! {
            served = drained => served.context("serving HTTP"),
            () = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(
                    open = shared.connections.len(),
                    "connections did not close within the grace period"
                );
                Ok(())
            }
        };
        shutdown.trigger();
        shared.readiness.set_ready(false);
        // Connections are gone; the runs they left end now, each with its terminal record.
        shared
            .runs
            .stop(shared.config.agent_cancel_grace + Duration::from_secs(1))
            .await;
        admin_done.cancel();
        if let Some(admin) = admin
            && let Ok(Err(err)) = admin.await
        {
            tracing::warn!(error = %err, "the internal listener failed");
        }
        usage_calls_done.cancel();
        for calls in usage_calls {
            let _ = calls.await;
        }
        for task in tasks {
            let _ = task.await;
        }
        result
    }
}

/// Ready once the JWKS is loaded and both service tokens are in hand; not ready from the
/// moment shutdown starts.
fn spawn_readiness(
    shared: &Arc<Shared>,
    auth_tokens: ServiceTokenSource,
    usage_tokens: ServiceTokenSource,
) -> JoinHandle<()> {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let shutdown = shared.shutdown.clone();
        let wait = async {
            loop {
                let ready = shared.validator.jwks().has_keys()
                    && auth_tokens.header().is_some()
                    && usage_tokens.header().is_some();
                if ready {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            () = wait => shared.readiness.set_ready(true),
            () = shutdown.wait() => {}
        }
        shutdown.wait().await;
        shared.readiness.set_ready(false);
        // Keep the token sources alive (their refresh tasks stop with them) until shutdown.
        drop((auth_tokens, usage_tokens));
    })
}

/// Calls in flight to one upstream service. Each call holds an encode buffer of several KiB
/// until it completes, so without a cap a burst (ten thousand clients disconnecting at once,
/// each releasing its lease) would cost tens of megabytes at once; callers beyond the cap wait
/// their turn, within their timeout.
const UPSTREAM_CONCURRENCY: usize = 256;

/// A channel for unary calls: connect and request timeouts (every call is bounded) and a cap
/// on the calls in flight.
fn upstream_channel(
    url: &str,
    timeout: Duration,
) -> Result<TracedChannel, tonic::transport::Error> {
    channel_with(url, move |endpoint| {
        unary_endpoint(endpoint, timeout).concurrency_limit(UPSTREAM_CONCURRENCY)
    })
}

/// A channel for long-lived streams: no per-request timeout (the stream would be cut), HTTP/2
/// keep-alive to notice a dead peer.
fn streaming_channel(url: &str) -> Result<TracedChannel, tonic::transport::Error> {
    channel_with(url, |endpoint| {
        streaming_endpoint(endpoint, Duration::from_secs(2))
    })
}

/// Configuration values that parse but cannot work, named by their variable.
fn check(config: &Config) -> anyhow::Result<()> {
    let rules = [
        (
            config.max_frame_bytes >= 1024,
            "GATEWAY_MAX_FRAME_BYTES: must be at least 1024",
        ),
        (
            config.send_queue >= 1,
            "GATEWAY_SEND_QUEUE: must be at least 1",
        ),
        (
            !config.ping_interval.is_zero(),
            "GATEWAY_PING_INTERVAL: must be more than 0",
        ),
        (
            (Duration::from_secs(15)..=Duration::from_secs(3600)).contains(&config.lease_ttl),
            "GATEWAY_LEASE_TTL: must be between 15s and 1h",
        ),
        (
            !config.detached_run_timeout.is_zero(),
            "GATEWAY_DETACHED_RUN_TIMEOUT: must be more than 0",
        ),
        (
            config.node_lease_ttl >= Duration::from_secs(1),
            "GATEWAY_NODE_LEASE_TTL: must be at least 1s",
        ),
        (
            config.run_history_max_bytes >= 1024,
            "GATEWAY_RUN_HISTORY_MAX_BYTES: must be at least 1024",
        ),
        (
            (1..=100_000).contains(&config.event_history_size),
            "GATEWAY_EVENT_HISTORY_SIZE: must be between 1 and 100000",
        ),
        (
            !config.service_client_secret.expose_secret().is_empty(),
            "SERVICE_CLIENT_SECRET: must not be empty",
        ),
    ];
    for (ok, message) in rules {
        anyhow::ensure!(ok, "{message}");
    }
    Ok(())
}
