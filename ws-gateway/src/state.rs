//! What every request handler and connection of one gateway shares.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio_util::task::TaskTracker;
use tollgate_shared::{health::Readiness, jwks::JwksVerifier, shutdown::Shutdown};

use crate::{
    agent::Backends, config::Config, delivery::Delivery, hub::Hub, limits::Limits,
    metrics::GatewayMetrics, revocations::RevocationList, runs::RunRegistry,
    validation::TokenValidator,
};

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub validator: TokenValidator,
    /// Verifies publishers' service tokens (audience `ws-gateway`).
    pub services: JwksVerifier,
    pub limits: Limits,
    pub hub: Arc<Hub>,
    pub revoked: Arc<RevocationList>,
    pub delivery: Delivery,
    /// Where each agent runs.
    pub backends: Arc<Backends>,
    /// The runs of this node, detached from their connections.
    pub runs: Arc<RunRegistry>,
    pub metrics: GatewayMetrics,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    /// Every connection task, so shutdown can wait for them to close.
    pub connections: TaskTracker,
    open: AtomicUsize,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        validator: TokenValidator,
        services: JwksVerifier,
        limits: Limits,
        hub: Arc<Hub>,
        revoked: Arc<RevocationList>,
        delivery: Delivery,
        backends: Arc<Backends>,
        runs: Arc<RunRegistry>,
        metrics: GatewayMetrics,
        readiness: Readiness,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            runs,
            config,
            validator,
            services,
            limits,
            hub,
            revoked,
            delivery,
            backends,
            metrics,
            readiness,
            shutdown,
            connections: TaskTracker::new(),
            open: AtomicUsize::new(0),
        }
    }

    /// Reserves a place for a connection, unless this node is full.
    pub fn reserve_slot(self: &Arc<Self>) -> Option<Slot> {
        let previous = self.open.fetch_add(1, Ordering::SeqCst);
        if previous >= self.config.max_connections {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        self.metrics.active_connections.inc();
        Some(Slot {
            shared: Arc::clone(self),
        })
    }
}

/// A connection's place among the node's `GATEWAY_MAX_CONNECTIONS`; released on drop.
#[derive(Debug)]
pub struct Slot {
    shared: Arc<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
        self.shared.metrics.active_connections.dec();
    }
}
