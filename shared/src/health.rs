//! Liveness and readiness for the HTTP side of every service.
//!
//! `/healthz` answers 200 while the process runs; `/readyz` answers 200 only while the service
//! is ready and not shutting down, so load balancers drain it first.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::sync::watch;

/// Whether the service should receive traffic. Cloning shares the flag; [`Readiness::watch`]
/// follows its changes (gRPC health mirrors it).
#[derive(Clone, Debug)]
pub struct Readiness(Arc<watch::Sender<bool>>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.0.send_replace(ready);
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// A receiver that sees every later change.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// `/healthz` and `/readyz`.
pub fn routes(readiness: Readiness) -> Router {
    liveness()
        .route("/readyz", get(ready))
        .with_state(readiness)
}

/// `/healthz` alone, for a listener that answers liveness but not readiness.
pub fn liveness<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/healthz", get(|| async { "ok" }))
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
