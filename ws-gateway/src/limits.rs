//! Plans and limits at the gateway (CONTRACT §5):
//!
//! - connection attempts per client address, counted on the engine (Redis when set, so the
//!   count spans nodes): 429 with `Retry-After` beyond `GATEWAY_CONNECT_RATE` a minute;
//! - concurrent connections per user, by plan and across nodes: a lease at usage-service per
//!   connection (taken, renewed and released through `UpdateConnections`, batched in
//!   [`crate::leases`]);
//! - metered actions (messages, agent runs, tool calls) through usage-service's `Consume`,
//!   batched across connections in [`crate::consumes`]; messages of a rate-only meter mostly
//!   from this node's budget of them ([`crate::budgets`]).
//!
//! When usage-service cannot be asked, metered actions answer "unavailable" (the client gets
//! `dependency_unavailable`) unless `GATEWAY_USAGE_FAIL_OPEN` is set: then they are allowed
//! under a local emergency limit (`GATEWAY_EMERGENCY_LIMIT` per user, meter and minute on this
//! node), counted on an in-process engine of its own. Permissions (`Authorize`) are never
//! guessed: a tool whose permission cannot be checked is refused either way.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::time::Instant;
use tollgate_shared::engine::Engine;
use uuid::Uuid;

use crate::{
    budgets::{Budgets, Take},
    consumes::Consumes,
    leases::Leases,
    metrics::GatewayMetrics,
    usage::{
        Consume, Consumed, Denial, LeaseAnswer, Profile, ToolCost, Unavailable, UsageClient,
        Verdict,
    },
};

/// The window of the per-address connection count.
const CONNECT_WINDOW: Duration = Duration::from_secs(60);
/// The window of the emergency limit.
const EMERGENCY_WINDOW: Duration = Duration::from_secs(60);

/// A usage-service meter the gateway counts on its own account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meter {
    Messages,
    AgentRuns,
}

impl Meter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::AgentRuns => "agent_runs",
        }
    }
}

/// The outcome of a metered action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metered {
    Allowed,
    /// Allowed by an earlier call with the same key; nothing was counted now.
    Replayed,
    Denied {
        reason: Denial,
        retry_after: Duration,
        upgrade_to: Option<String>,
    },
    /// usage-service could not be asked (and fail-open is off, or the emergency limit is hit).
    Unavailable,
}

/// The outcome of asking for a connection lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lease {
    Granted(Profile),
    Denied { limit: u32 },
    Unavailable,
}

#[derive(Clone, Debug)]
pub struct Limits {
    engine: Engine,
    emergency: Engine,
    usage: UsageClient,
    leases: Leases,
    consumes: Consumes,
    budgets: Arc<Budgets>,
    connect_rate: u64,
    fail_open: bool,
    emergency_limit: u64,
    metrics: GatewayMetrics,
}

impl Limits {
    pub fn new(
        engine: Engine,
        (usage, leases, consumes, budgets): (UsageClient, Leases, Consumes, Arc<Budgets>),
        connect_rate: u64,
        fail_open: bool,
        emergency_limit: u64,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            engine,
            emergency: Engine::local(),
            usage,
            leases,
            consumes,
            budgets,
            connect_rate,
            fail_open,
            emergency_limit,
            metrics,
        }
    }

    pub fn usage(&self) -> &UsageClient {
        &self.usage
    }

    /// This node's message budgets (their task gives back what they did not spend).
    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    pub fn emergency_limit(&self) -> u64 {
        self.emergency_limit
    }

    /// Counts a connection attempt from `address`; `Err(retry_after)` beyond the rate.
    pub async fn admit_address(&self, address: IpAddr) -> Result<(), Duration> {
        let count = self
            .engine
            .hit(&format!("gateway:connect:{address}"), CONNECT_WINDOW)
            .await;
        if count.value > self.connect_rate {
            self.metrics.decision("connect", "denied");
            Err(count.resets_in.max(Duration::from_secs(1)))
        } else {
            self.metrics.decision("connect", "allowed");
            Ok(())
        }
    }

    /// Takes or renews the lease of `connection_id` among the user's connections.
    pub async fn lease(&self, user: Uuid, connection_id: &Arc<str>, ttl: Duration) -> Lease {
        match self.leases.acquire(user, connection_id, ttl).await {
            Ok(LeaseAnswer {
                granted: true,
                profile,
                ..
            }) => {
                self.metrics.decision("connections", "allowed");
                Lease::Granted(profile)
            }
            Ok(LeaseAnswer { limit, .. }) => {
                self.metrics.decision("connections", "denied");
                Lease::Denied { limit }
            }
            Err(_) => {
                self.metrics.decision("connections", "unavailable");
                Lease::Unavailable
            }
        }
    }

    /// Gives the lease back; returns once usage-service has been told.
    pub async fn release(&self, user: Uuid, connection_id: &Arc<str>) {
        self.leases.release(user, connection_id).await;
    }

    /// Counts one of `meter` for `user` under the idempotency `key`.
    pub async fn meter(&self, user: Uuid, meter: Meter, key: String) -> Metered {
        if meter == Meter::Messages {
            return self.meter_message(user, key).await;
        }
        self.count(user, meter.as_str(), meter.as_str(), 1, key)
            .await
    }

    /// Counts a message: from this node's budget of the user's messages when it has one, on
    /// its own otherwise (which also tells the budgets what the user's plan allows).
    async fn meter_message(&self, user: Uuid, key: String) -> Metered {
        loop {
            match self.budgets.take(user, Instant::now()) {
                Take::Spent => {
                    self.metrics.decision("messages", "allowed");
                    return Metered::Allowed;
                }
                Take::Wait(reserved) => reserved.cancelled().await,
                Take::Reserve { size, done } => self.budgets.reserve(user, size, done).await,
                Take::Alone => break,
            }
        }
        let kind = Meter::Messages.as_str();
        let answer = self.consume(user, kind, 1, key).await;
        if let Ok(consumed) = &answer {
            self.budgets.learn(user, consumed, Instant::now());
        }
        self.metered(user, kind, answer).await
    }

    /// Gives back one of `meter` counted under `key` for an action that did not happen (a run
    /// whose agent could not be reached). Best effort: a refund usage-service cannot take is
    /// logged, and the unit stays counted.
    pub async fn refund(&self, user: Uuid, meter: Meter, key: String) {
        match self.usage.refund(user, meter.as_str(), (1, 0), key).await {
            Ok(_) => self.metrics.decision(meter.as_str(), "refunded"),
            Err(_) => tracing::warn!(
                meter = meter.as_str(),
                "a refund could not reach usage-service; the unit stays counted"
            ),
        }
    }

    /// Counts one tool call at its `cost` for `user` under the idempotency `key`.
    pub async fn meter_tool_call(&self, user: Uuid, cost: &ToolCost, key: String) -> Metered {
        self.count(user, "tool_calls", &cost.meter, cost.amount, key)
            .await
    }

    /// Counts `amount` of `meter` for `user` under the idempotency `key`; `kind` labels the
    /// decision in the metrics (a fixed set, whatever meters the catalogue declares).
    async fn count(
        &self,
        user: Uuid,
        kind: &'static str,
        meter: &str,
        amount: u64,
        key: String,
    ) -> Metered {
        let answer = self.consume(user, meter, amount, key).await;
        self.metered(user, kind, answer).await
    }

    async fn consume(
        &self,
        user: Uuid,
        meter: &str,
        amount: u64,
        key: String,
    ) -> Result<Consumed, Unavailable> {
        let consume = Consume {
            user,
            meter: meter.to_owned(),
            amount,
            key,
        };
        self.consumes.consume(consume).await
    }

    /// What `answer` means for the action, under the emergency limit when usage-service gave
    /// none and fail-open is on.
    async fn metered(
        &self,
        user: Uuid,
        kind: &'static str,
        answer: Result<Consumed, Unavailable>,
    ) -> Metered {
        match answer {
            Ok(Consumed {
                verdict: Verdict::Allowed,
                replayed,
                ..
            }) => {
                self.metrics.decision(kind, "allowed");
                if replayed {
                    Metered::Replayed
                } else {
                    Metered::Allowed
                }
            }
            Ok(Consumed {
                verdict:
                    Verdict::Denied {
                        reason,
                        retry_after,
                        upgrade_to,
                    },
                ..
            }) => {
                self.metrics.decision(kind, "denied");
                Metered::Denied {
                    reason,
                    retry_after,
                    upgrade_to,
                }
            }
            Err(_) if self.fail_open => {
                let count = self
                    .emergency
                    .hit(&format!("{kind}:{user}"), EMERGENCY_WINDOW)
                    .await;
                if count.value <= self.emergency_limit {
                    self.metrics.decision(kind, "fail_open");
                    Metered::Allowed
                } else {
                    self.metrics.decision(kind, "denied");
                    Metered::Denied {
                        reason: Denial::RateLimited,
                        retry_after: count.resets_in,
                        upgrade_to: None,
                    }
                }
            }
            Err(_) => {
                self.metrics.decision(kind, "unavailable");
                Metered::Unavailable
            }
        }
    }
}
