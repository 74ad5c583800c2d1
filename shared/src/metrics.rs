//! Prometheus metrics: one registry per service instance (so tests can run several services in
//! one process), served at `/metrics` in the text exposition format.

use std::sync::Arc;

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

/// Latency buckets for RPCs and requests, in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// `/metrics`.
pub fn routes(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .with_state(registry)
}

async fn render(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    if let Err(err) = encode(&mut body, &registry) {
        tracing::error!(error = %err, "encoding metrics failed");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

/// Server-side gRPC latency by method and status code (`rpc_server_duration_seconds`).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    duration: Family<RpcLabels, Histogram>,
}

impl RpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let duration = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register_with_unit(
            "rpc_server_duration",
            "Latency of gRPC calls handled by this server",
            Unit::Seconds,
            duration.clone(),
        );
        Self { duration }
    }

    pub fn observe(&self, method: &str, code: &str, seconds: f64) {
        self.duration
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .observe(seconds);
    }
}
