//! Serving a service's two listeners, gRPC and HTTP, with one shutdown sequence: when the
//! signal fires, readiness turns 503 and gRPC health NOT_SERVING, both listeners stop
//! accepting, and in-flight requests get `grace` to finish. When to turn ready is the
//! service's call (after its own dependencies are loaded).
//!
//! No request runs forever: a unary gRPC call or an HTTP request that has not been answered
//! within the request timeout is answered `CANCELLED` or 503 and its work dropped, so a stuck
//! dependency costs each caller a bounded wait instead of piling requests up.

use std::{net::SocketAddr, time::Duration};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::parse_duration,
    grpc::TelemetryLayer,
    grpc_methods::{ServedMethods, served_services},
    health::Readiness,
    metrics::RpcMetrics,
    shutdown::Shutdown,
};

/// How long a server gives one request, shared by every service's configuration.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct RequestTimeout {
    /// Longest a gRPC call (until its response starts) or an HTTP request may take before
    /// it is answered `CANCELLED` or 503.
    #[arg(long = "request-timeout", env = "REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
}

impl RequestTimeout {
    /// The HTTP layer: a request not answered within the timeout gets 503 and its work is
    /// dropped. (A WebSocket upgrade is answered once the handshake is done; the connection
    /// then lives on.)
    pub fn http_layer(self) -> tower_http::timeout::TimeoutLayer {
        tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::SERVICE_UNAVAILABLE,
            self.duration,
        )
    }
}

impl Default for RequestTimeout {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
        }
    }
}

/// Binds a listener, failing with one line that names the variable the address came from.
pub async fn bind(addr: SocketAddr, variable: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("{variable}: cannot listen on {addr}: {err}"))
}

/// Everything a service serves.
#[derive(Debug)]
pub struct Servers {
    pub grpc_listener: TcpListener,
    /// The service's gRPC services, with health and reflection.
    pub grpc_routes: Routes,
    pub health: HealthReporter,
    /// The fully-qualified name of the main gRPC service, reported in health.
    pub service_name: &'static str,
    pub rpc_metrics: RpcMetrics,
    pub http_listener: TcpListener,
    pub http_router: axum::Router,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    pub grace: Duration,
    pub request_timeout: RequestTimeout,
}

impl Servers {
    /// Serves until shutdown and the drain that follows it.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            grpc_listener,
            grpc_routes,
            health,
            service_name,
            rpc_metrics,
            http_listener,
            http_router,
            readiness,
            shutdown,
            grace,
            request_timeout,
        } = self;
        // gRPC health of the service follows readiness, so a gRPC readiness probe (Kubernetes'
        // native one) sends no traffic before the service is ready, nor while it drains.
        let mirror = {
            let (health, mut ready) = (health.clone(), readiness.watch());
            tokio::spawn(async move {
                loop {
                    let status = if *ready.borrow_and_update() {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    health.set_service_status(service_name, status).await;
                    if ready.changed().await.is_err() {
                        return;
                    }
                }
            })
        };

        let grpc_shutdown = shutdown.clone();
        let grpc = tonic::transport::Server::builder()
            .timeout(request_timeout.duration)
            .layer(TelemetryLayer::new(
                rpc_metrics,
                ServedMethods::of(&served_services(service_name))?,
            ))
            .add_routes(grpc_routes)
            // Accepted sockets do not inherit a setting tonic applies only to listeners it binds
            // itself: without TCP_NODELAY a reply written in two parts waits for a delayed ACK.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move {
                    grpc_shutdown.wait().await;
                    health
                        .set_service_status(service_name, ServingStatus::NotServing)
                        .await;
                },
            );
        let http_shutdown = shutdown.clone();
        let http = axum::serve(
            http_listener.tap_io(|tcp| {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %err, "TCP_NODELAY could not be set");
                }
            }),
            http_router
                .layer(request_timeout.http_layer())
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_shutdown.wait().await });

        let stop_watch = shutdown.clone();
        let readiness_on_stop = readiness.clone();
        tokio::spawn(async move {
            stop_watch.wait().await;
            readiness_on_stop.set_ready(false);
        });

        let servers = async {
            tokio::try_join!(async { grpc.await.map_err(anyhow::Error::from) }, async {
                http.await.map_err(anyhow::Error::from)
            })
        };
        let result = tokio::select! {
            result = servers => result.map(|_| ()),
            () = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("in-flight requests did not finish within the grace period");
                Ok(())
            }
        };
        mirror.abort();
        result
    }
}
