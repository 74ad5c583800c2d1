//! Building and running the demo-agent server: `Application::build` binds; `run_until_stopped`
//! serves `AgentBackend`, health and reflection until the shutdown signal, then drains.
//!
//! Shutdown, in order: gRPC health turns NOT_SERVING and the listener stops accepting; runs in
//! flight get the grace period to finish; the ones still going are then stopped (each sends
//! `failed {reason: "the agent is shutting down"}`), and the server ends once their streams
//! have closed.

use std::{net::SocketAddr, time::Duration};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tollgate_proto::agent::v1::agent_backend_server::SERVICE_NAME;
use tollgate_shared::{
    grpc::{TelemetryLayer, health_and_reflection},
    grpc_methods::{ServedMethods, served_services},
    metrics::RpcMetrics,
    serve,
    shutdown::Shutdown,
};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::{
    Config, DemoAgent,
    auth::{AuthSettings, ServiceAuth},
    service::{Runs, service_with_runs},
};

/// How often the JWKS is fetched again.
const JWKS_REFRESH: Duration = Duration::from_secs(60);
/// HTTP/2 pings on an idle connection, and how long an answer may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopped runs get to send their last message and close their streams.
const STOP_DRAIN: Duration = Duration::from_secs(6);

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    agent: DemoAgent,
    auth: Option<ServiceAuth>,
    shutdown: Shutdown,
    grace: Duration,
}

impl Application {
    /// Binds the listener (port 0 allowed). Builds the caller check when `AUTH_JWKS_URL` is
    /// set; its keys are fetched once serving starts.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let Config {
            addr,
            think_delay,
            name,
            jwks_url,
            issuer,
            jwt_leeway,
            shutdown_grace,
            otlp_endpoint: _,
        } = config;
        let auth = match jwks_url {
            Some(jwks_url) => Some(
                ServiceAuth::new(AuthSettings {
                    jwks_url,
                    audience: name,
                    issuer,
                    leeway: jwt_leeway,
                })
                .map_err(|err| anyhow::anyhow!("AUTH_JWKS_URL: {err}"))?,
            ),
            None => {
                tracing::info!("AUTH_JWKS_URL is unset: Run calls are not checked for a token");
                None
            }
        };
        let listener = serve::bind(addr, "AGENT_ADDR").await?;
        Ok(Self {
            listener,
            agent: DemoAgent::new().with_think_delay(think_delay),
            auth,
            shutdown,
            grace: shutdown_grace,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until shutdown and the drain that follows it. gRPC health reports the service
    /// SERVING once callers can be checked (at once when no JWKS is configured).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            agent,
            auth,
            shutdown,
            grace,
        } = self;
        let (health, routes) = health_and_reflection(SERVICE_NAME)?;
        health
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
        let runs = Runs::default();
        let routes = routes.add_service(service_with_runs(agent, auth.clone(), runs.clone()));
        let refresher = auth
            .as_ref()
            .map(|auth| auth.spawn_refresher(JWKS_REFRESH, shutdown.clone()));
        let ready = tokio::spawn({
            let (health, shutdown) = (health.clone(), shutdown.clone());
            async move {
                while auth.as_ref().is_some_and(|auth| !auth.has_keys()) {
                    if !shutdown.sleep(Duration::from_millis(50)).await {
                        return;
                    }
                }
                health
                    .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                    .await;
            }
        });

        let mut registry = Registry::with_prefix("tollgate");
        let methods = ServedMethods::of(&served_services(SERVICE_NAME))?;
        let server_shutdown = shutdown.clone();
        let server = tonic::transport::Server::builder()
            // A gateway that vanished without closing its connection is noticed, and its runs
            // (blocked on a response nobody reads) end with the connection.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .layer(TelemetryLayer::new(
                RpcMetrics::register(&mut registry),
                methods,
            ))
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    server_shutdown.wait().await;
                    ready.abort();
                    health
                        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                        .await;
                },
            );
        let drain = async {
            shutdown.wait().await;
            if tokio::time::timeout(grace, runs.wait()).await.is_err() {
                tracing::warn!(
                    runs = runs.len(),
                    "runs did not finish within the grace period; stopping them"
                );
                runs.stop();
            }
            tokio::time::sleep(STOP_DRAIN).await;
        };
        let result = tokio::select! {
            result = server => result.map_err(anyhow::Error::from),
            () = drain => {
                tracing::warn!("connections were still open after the drain; closing them");
                Ok(())
            }
        };
        shutdown.trigger();
        runs.stop();
        if let Some(refresher) = refresher {
            let _ = refresher.await;
        }
        result
    }
}
