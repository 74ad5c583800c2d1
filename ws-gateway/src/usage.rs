//! The gateway's side of usage-service: one client with the gateway's service token and trace
//! context on every call, a timeout on every call (the channel's), and the proto messages
//! converted to the few facts the gateway acts on.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;
use tollgate_proto::usage::v1::{self as pb, usage_service_client::UsageServiceClient};
use tollgate_shared::{grpc::TracedChannel, service_auth::ServiceAuthInterceptor};
use tonic::{Code, Status, service::interceptor::InterceptedService};
use uuid::Uuid;

use crate::metrics::GatewayMetrics;

type Client = UsageServiceClient<InterceptedService<TracedChannel, ServiceAuthInterceptor>>;

/// usage-service could not give an answer (down, slow, or refusing the gateway itself).
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("usage-service call failed: {code:?}")]
pub struct Unavailable {
    pub code: Code,
}

/// Why usage-service said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    PlanFeatureMissing,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    /// A denial without a reason (should not happen).
    Unspecified,
}

impl Denial {
    fn from_pb(reason: i32) -> Self {
        match pb::DenyReason::try_from(reason) {
            Ok(pb::DenyReason::PlanFeatureMissing) => Self::PlanFeatureMissing,
            Ok(pb::DenyReason::PermissionDenied) => Self::PermissionDenied,
            Ok(pb::DenyReason::QuotaExceeded) => Self::QuotaExceeded,
            Ok(pb::DenyReason::RateLimited) => Self::RateLimited,
            Ok(pb::DenyReason::Unspecified) | Err(_) => Self::Unspecified,
        }
    }
}

/// What one call of a tool costs: `amount` of the catalogue's meter `meter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCost {
    pub meter: String,
    pub amount: u64,
}

impl Default for ToolCost {
    fn default() -> Self {
        Self {
            meter: "tool_calls".into(),
            amount: 1,
        }
    }
}

/// The answer of `Consume` or `Authorize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied {
        reason: Denial,
        retry_after: Duration,
        upgrade_to: Option<String>,
    },
}

/// One `Consume`: `amount` of `meter` for `user` under the idempotency `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consume {
    pub user: Uuid,
    pub meter: String,
    pub amount: u64,
    pub key: String,
}

impl Consume {
    fn to_pb(&self) -> pb::ConsumeRequest {
        pb::ConsumeRequest {
            user_id: self.user.to_string(),
            meter: self.meter.clone(),
            amount: self.amount,
            idempotency_key: self.key.clone(),
        }
    }
}

/// The answer of `Consume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub verdict: Verdict,
    /// The key had been counted by an earlier call, and nothing was counted now.
    pub replayed: bool,
    /// The meter writes no ledger rows: units of it may be reserved and given back in part.
    pub rate_only: bool,
    /// The plan's limit on the meter (its rate, for a rate-only meter); 0 when unlimited.
    pub limit: u64,
}

/// The answer of `AcquireConnection`: the lease, and the plan and roles it was decided under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAnswer {
    pub granted: bool,
    pub limit: u32,
    pub profile: Profile,
}

/// A user's plan and roles, as far as usage-service could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub plan: String,
    pub roles: Vec<String>,
}

impl Profile {
    /// What a connection shows when usage-service could not be asked.
    pub fn unknown() -> Self {
        Self {
            plan: "unknown".into(),
            roles: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct UsageClient {
    client: Client,
    tokens: ServiceAuthInterceptor,
    metrics: GatewayMetrics,
}

impl UsageClient {
    pub fn new(
        channel: TracedChannel,
        interceptor: ServiceAuthInterceptor,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            client: UsageServiceClient::with_interceptor(channel, interceptor.clone()),
            tokens: interceptor,
            metrics,
        }
    }

    async fn call<T, F, Fut>(&self, method: &'static str, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.tokens.first_token().await;
        let started = Instant::now();
        let result = call(self.client.clone()).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.upstream(method, outcome, started.elapsed());
        result.map(tonic::Response::into_inner).map_err(|status| {
            tracing::warn!(method, code = ?status.code(), message = status.message(), "usage-service call failed");
            Unavailable {
                code: status.code(),
            }
        })
    }

    /// Whether `user` may take `action`; for an allowed tool, also what one call costs (the
    /// catalogue's meter and amount; `tool_calls` x 1 from a usage-service that does not say).
    pub async fn authorize(
        &self,
        user: Uuid,
        action: &str,
    ) -> Result<(Verdict, ToolCost), Unavailable> {
        let action = action.to_owned();
        let answer = self
            .call("Authorize", |mut client| async move {
                client
                    .authorize(pb::AuthorizeRequest {
                        user_id: user.to_string(),
                        action,
                    })
                    .await
            })
            .await?;
        let pb::AuthorizeResponse {
            allowed,
            reason,
            upgrade_to,
            plan_id: _,
            roles: _,
            meter,
            amount,
        } = answer;
        let cost = if meter.is_empty() || amount == 0 {
            ToolCost::default()
        } else {
            ToolCost { meter, amount }
        };
        let verdict = if allowed {
            Verdict::Allowed
        } else {
            Verdict::Denied {
                reason: Denial::from_pb(reason),
                retry_after: Duration::ZERO,
                upgrade_to,
            }
        };
        Ok((verdict, cost))
    }

    /// Counts each of `consumes` in one `ConsumeMany`, answered in order; each fails on its
    /// own (usage-service must know `ConsumeMany`: roll it out before the gateways).
    pub async fn consume_many(&self, consumes: Vec<Consume>) -> Vec<Result<Consumed, Unavailable>> {
        let request = pb::ConsumeManyRequest {
            requests: consumes.iter().map(Consume::to_pb).collect(),
        };
        let answer = self
            .call("ConsumeMany", |mut client| async move {
                client.consume_many(request).await
            })
            .await;
        match answer {
            Ok(answer) if answer.outcomes.len() == consumes.len() => answer
                .outcomes
                .into_iter()
                .map(|outcome| match outcome.outcome {
                    Some(pb::consume_outcome::Outcome::Consumed(consumed)) => {
                        Ok(consumed_of(consumed))
                    }
                    Some(pb::consume_outcome::Outcome::Failed(failed)) => Err(Unavailable {
                        code: Code::from_i32(failed.code),
                    }),
                    None => Err(Unavailable {
                        code: Code::Internal,
                    }),
                })
                .collect(),
            Ok(_) => vec![
                Err(Unavailable {
                    code: Code::Internal
                });
                consumes.len()
            ],
            Err(unavailable) => vec![Err(unavailable); consumes.len()],
        }
    }

    /// Gives back an allowed `Consume` of `key` whose action did not happen (or, for a
    /// rate-only meter, the units of it beyond the `keep` spent); whether there was anything
    /// to give back.
    pub async fn refund(
        &self,
        user: Uuid,
        meter: &str,
        (amount, keep): (u64, u64),
        key: String,
    ) -> Result<bool, Unavailable> {
        let meter = meter.to_owned();
        let answer = self
            .call("Refund", |mut client| async move {
                client
                    .refund(pb::RefundRequest {
                        user_id: user.to_string(),
                        meter,
                        amount,
                        idempotency_key: key,
                        keep,
                    })
                    .await
            })
            .await?;
        Ok(answer.refunded)
    }

    /// Gives up each `(user, connection id)` lease in `releases`, then takes or renews each
    /// `(user, connection id, ttl)` lease in `acquisitions`, in one `UpdateConnections`: one
    /// answer per acquisition, in order. A release that fails is logged and left to the
    /// lease's TTL.
    pub async fn update_connections(
        &self,
        releases: &[(Uuid, Arc<str>)],
        acquisitions: &[(Uuid, Arc<str>, Duration)],
    ) -> Vec<Result<LeaseAnswer, Unavailable>> {
        let request = pb::UpdateConnectionsRequest {
            release: releases
                .iter()
                .map(|(user, connection_id)| pb::ReleaseConnectionRequest {
                    user_id: user.to_string(),
                    connection_id: connection_id.to_string(),
                })
                .collect(),
            acquire: acquisitions
                .iter()
                .map(|(user, connection_id, ttl)| pb::AcquireConnectionRequest {
                    user_id: user.to_string(),
                    connection_id: connection_id.to_string(),
                    ttl_seconds: ttl.as_secs().clamp(5, 3600) as u32,
                })
                .collect(),
        };
        let answer = self
            .call("UpdateConnections", |mut client| async move {
                client.update_connections(request).await
            })
            .await;
        match answer {
            Ok(answer) if answer.acquired.len() == acquisitions.len() => answer
                .acquired
                .into_iter()
                .map(|lease| Ok(lease_answer(lease)))
                .collect(),
            Ok(_) => vec![
                Err(Unavailable {
                    code: Code::Internal
                });
                acquisitions.len()
            ],
            Err(unavailable) => vec![Err(unavailable); acquisitions.len()],
        }
    }
}

fn consumed_of(answer: pb::ConsumeResponse) -> Consumed {
    let pb::ConsumeResponse {
        allowed,
        reason,
        remaining: _,
        limit,
        reset_at_ms: _,
        retry_after_ms,
        upgrade_to,
        replayed,
        rate_only,
    } = answer;
    let verdict = if allowed {
        Verdict::Allowed
    } else {
        Verdict::Denied {
            reason: Denial::from_pb(reason),
            retry_after: Duration::from_millis(retry_after_ms),
            upgrade_to,
        }
    };
    Consumed {
        verdict,
        replayed,
        rate_only,
        limit,
    }
}

fn lease_answer(answer: pb::AcquireConnectionResponse) -> LeaseAnswer {
    let pb::AcquireConnectionResponse {
        granted,
        active: _,
        limit,
        plan_id,
        roles,
    } = answer;
    LeaseAnswer {
        granted,
        limit,
        profile: Profile {
            plan: plan_id,
            roles,
        },
    }
}
