//! ws-gateway's Prometheus metrics (served at `/metrics` under the `tollgate_` prefix).

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tollgate_shared::metrics::LATENCY_BUCKETS;

use crate::error::CloseCode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `accepted`, `rejected` or `unavailable`.
    pub outcome: &'static str,
    /// `validated`, `cached`, `degraded`, or the refusal's reason.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `connect`, `connections`, `messages`, `agent_runs`, `tool_calls`.
    pub kind: &'static str,
    /// `allowed`, `denied`, `unavailable`, `fail_open`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `oversized` or `malformed`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// The agent's name in `GATEWAY_AGENTS` (a bounded set: requests for others are refused).
    pub agent: String,
    /// `completed`, `failed`, `cancelled`, `unavailable` or `disconnected`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    pub active_connections: Gauge,
    pub breaker_state: Gauge,
    /// 1 while the `WatchRevocations` stream is open.
    pub revocation_watch_up: Gauge,
    auth: Family<AuthLabels, Counter>,
    bus_dropped: Family<ReasonLabels, Counter>,
    closes: Family<CloseLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    pub events_delivered: Counter,
    pub events_published: Counter,
    pub bus_events_received: Counter,
    pub send_queue_drops: Counter,
    revocations: Family<SourceLabels, Counter>,
    runs: Family<RunLabels, Counter>,
    upstream: Family<RpcLabels, Histogram>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            active_connections: Gauge::default(),
            breaker_state: Gauge::default(),
            revocation_watch_up: Gauge::default(),
            auth: Family::default(),
            bus_dropped: Family::default(),
            closes: Family::default(),
            decisions: Family::default(),
            events_delivered: Counter::default(),
            events_published: Counter::default(),
            bus_events_received: Counter::default(),
            send_queue_drops: Counter::default(),
            revocations: Family::default(),
            runs: Family::default(),
            upstream: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
        }
    }
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gateway_connections_active",
            "Open WebSocket connections on this node",
            metrics.active_connections.clone(),
        );
        registry.register(
            "gateway_auth_breaker_state",
            "State of the auth-service circuit breaker: 0 closed, 1 open, 2 half-open",
            metrics.breaker_state.clone(),
        );
        registry.register(
            "gateway_revocation_watch_up",
            "1 while the WatchRevocations stream from auth-service is open",
            metrics.revocation_watch_up.clone(),
        );
        registry.register(
            "gateway_auth_outcomes",
            "Token checks (upgrade, in-band auth, refresh) by outcome and reason",
            metrics.auth.clone(),
        );
        registry.register(
            "gateway_bus_messages_dropped",
            "Messages from the Redis bus dropped on arrival, by reason (oversized, malformed, queue_full)",
            metrics.bus_dropped.clone(),
        );
        // Present from the start, so an alert can be written on it before the first drop.
        metrics.bus_drops("oversized");
        metrics.bus_drops("malformed");
        metrics.bus_drops("queue_full");
        registry.register(
            "gateway_agent_runs",
            "Agent runs that ended, by agent and outcome (completed, failed, cancelled, unavailable, disconnected)",
            metrics.runs.clone(),
        );
        registry.register(
            "gateway_connections_closed",
            "Connections closed by the gateway, by close code",
            metrics.closes.clone(),
        );
        registry.register(
            "gateway_rate_limit_decisions",
            "Limit decisions by kind and outcome",
            metrics.decisions.clone(),
        );
        registry.register(
            "gateway_events_delivered",
            "Published events queued to a connection",
            metrics.events_delivered.clone(),
        );
        registry.register(
            "gateway_events_published",
            "Events accepted by /v1/publish on this node",
            metrics.events_published.clone(),
        );
        registry.register(
            "gateway_bus_events_received",
            "Published events this node took from the bus (Redis): one per node that has a connection of the event's user",
            metrics.bus_events_received.clone(),
        );
        registry.register(
            "gateway_send_queue_drops",
            "Messages dropped because a connection's send queue was full",
            metrics.send_queue_drops.clone(),
        );
        registry.register(
            "gateway_revocations",
            "Session revocations heard, by source (watch, bus, validate), before deduplication",
            metrics.revocations.clone(),
        );
        registry.register_with_unit(
            "gateway_upstream_rpc_duration",
            "Latency of calls to auth-service and usage-service, by method and outcome",
            Unit::Seconds,
            metrics.upstream.clone(),
        );
        metrics
    }

    pub fn auth(&self, outcome: &'static str, reason: &'static str) {
        self.auth
            .get_or_create(&AuthLabels { outcome, reason })
            .inc();
    }

    /// The counter of bus messages dropped for `reason` (a handle: cloning shares it).
    pub fn bus_drops(&self, reason: &'static str) -> Counter {
        self.bus_dropped
            .get_or_create(&ReasonLabels { reason })
            .clone()
    }

    pub fn closed(&self, code: CloseCode) {
        self.closes
            .get_or_create(&CloseLabels { code: code.label() })
            .inc();
    }

    pub fn decision(&self, kind: &'static str, outcome: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels { kind, outcome })
            .inc();
    }

    pub fn run_ended(&self, agent: &str, outcome: &'static str) {
        self.runs
            .get_or_create(&RunLabels {
                agent: agent.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn revocation(&self, source: &'static str) {
        self.revocations
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    pub fn upstream(&self, method: &'static str, outcome: &'static str, elapsed: Duration) {
        self.upstream
            .get_or_create(&RpcLabels { method, outcome })
            .observe(elapsed.as_secs_f64());
    }
}
