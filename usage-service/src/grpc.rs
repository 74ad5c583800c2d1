//! The `tollgate.usage.v1.UsageService` gRPC surface: checks the caller's service token,
//! converts proto messages to domain types at the boundary and domain results back (the
//! latter in [`convert`]).

mod convert;

use std::{sync::Arc, time::Duration};

use tollgate_proto::usage::v1::{self as pb, usage_service_server::UsageService};
use tollgate_shared::{grpc::bearer_token, jwks::JwksVerifier, tokens::TokenError};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use self::convert::{catalogue_to_pb, lease_to_pb, reason_to_pb, roles_to_pb, subscription_to_pb};
use crate::{
    access::DenyReason,
    domain::{IdempotencyKey, Meter, Permission, PlanId, Role, UserId},
    error::UsageError,
    subscriptions::PlanChange,
    usage::Usage,
};

/// Scope for reads, decisions, metering and leases.
pub const SCOPE_CHECK: &str = "usage.check";
/// Most consumes one `ConsumeMany` may carry.
pub const MAX_CONSUMES: usize = 1000;
/// Scope for plan, role and delegation changes.
pub const SCOPE_ADMIN: &str = "usage.admin";

#[derive(Clone, Debug)]
pub struct UsageGrpc {
    usage: Arc<Usage>,
    verifier: JwksVerifier,
}

impl UsageGrpc {
    pub fn new(usage: Arc<Usage>, verifier: JwksVerifier) -> Self {
        Self { usage, verifier }
    }

    /// One `Consume`, its caller checked.
    async fn consume_one(
        &self,
        request: pb::ConsumeRequest,
    ) -> Result<pb::ConsumeResponse, UsageError> {
        let pb::ConsumeRequest {
            user_id,
            meter,
            amount,
            idempotency_key,
        } = request;
        let (user, meter, key) = counted_key(&user_id, &meter, &idempotency_key)?;
        let consumed = self.usage.consume(user, meter.clone(), amount, key).await?;
        let upgrade_to = match consumed.denial {
            Some(denial) => {
                let plan = self.usage.context(user).await?.plan.clone();
                let quota = denial == DenyReason::QuotaExceeded;
                self.usage
                    .catalogue()
                    .cheapest_looser(&plan, &meter, quota)
                    .map(|plan| plan.id.to_string())
            }
            None => None,
        };
        let decision = consumed.decision;
        Ok(pb::ConsumeResponse {
            allowed: decision.allowed,
            reason: reason_to_pb(consumed.denial),
            remaining: decision.remaining,
            limit: decision.limit,
            reset_at_ms: decision.reset_at_ms,
            retry_after_ms: decision.retry_after_ms,
            upgrade_to,
            replayed: decision.replayed,
            rate_only: consumed.rate_only,
        })
    }

    async fn caller<T>(&self, request: &Request<T>, scope: &str) -> Result<(), UsageError> {
        let token = bearer_token(request.metadata())
            .ok_or(UsageError::Unauthenticated(TokenError::Missing))?;
        self.verifier.verify_service(token, scope).await?;
        Ok(())
    }
}

/// The user, meter and idempotency key of a `Consume` or a `Refund`, validated.
fn counted_key(
    user_id: &str,
    meter: &str,
    idempotency_key: &str,
) -> Result<(UserId, Meter, IdempotencyKey), UsageError> {
    Ok((
        UserId::parse(user_id)?,
        Meter::parse(meter)?,
        IdempotencyKey::parse(idempotency_key)?,
    ))
}

/// The user and TTL of a lease request (TTL 0: the default minute).
fn lease_request(request: &pb::AcquireConnectionRequest) -> Result<(UserId, Duration), Status> {
    let user = UserId::parse(&request.user_id).map_err(UsageError::from)?;
    let ttl = Duration::from_secs(match request.ttl_seconds {
        0 => 60,
        seconds => u64::from(seconds),
    });
    Ok((user, ttl))
}

/// The `(user, connection id, ttl)` of each acquisition asked for.
fn acquisitions(
    leases: &[pb::AcquireConnectionRequest],
) -> Result<Vec<(UserId, &str, Duration)>, Status> {
    leases
        .iter()
        .map(|lease| {
            let (user, ttl) = lease_request(lease)?;
            Ok((user, lease.connection_id.as_str(), ttl))
        })
        .collect()
}

/// The `(user, connection id)` of each release asked for.
fn releases(leases: &[pb::ReleaseConnectionRequest]) -> Result<Vec<(UserId, &str)>, Status> {
    leases
        .iter()
        .map(|lease| {
            let user = UserId::parse(&lease.user_id).map_err(UsageError::from)?;
            Ok((user, lease.connection_id.as_str()))
        })
        .collect()
}

#[tonic::async_trait]
impl UsageService for UsageGrpc {
    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::ListPlansRequest {} = request.into_inner();
        Ok(Response::new(catalogue_to_pb(self.usage.catalogue())))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::GetSubscriptionRequest { user_id } = request.into_inner();
        let subscription = self
            .usage
            .subscription(UserId::parse(&user_id).map_err(UsageError::from)?)
            .await?;
        Ok(Response::new(subscription_to_pb(&subscription)))
    }

    async fn change_plan(
        &self,
        request: Request<pb::ChangePlanRequest>,
    ) -> Result<Response<pb::ChangePlanResponse>, Status> {
        self.caller(&request, SCOPE_ADMIN).await?;
        let pb::ChangePlanRequest {
            user_id,
            plan_id,
            immediate,
            idempotency_key,
            reason,
        } = request.into_inner();
        let user = UserId::parse(&user_id).map_err(UsageError::from)?;
        if reason.len() > 512 {
            return Err(UsageError::InvalidInput("reason must be at most 512 bytes".into()).into());
        }
        let change = PlanChange {
            plan: PlanId::parse(&plan_id).map_err(UsageError::from)?,
            immediate,
            idempotency_key: IdempotencyKey::parse(&idempotency_key).map_err(UsageError::from)?,
            reason,
        };
        let (subscription, applied) = self.usage.change_plan(user, change).await?;
        Ok(Response::new(pb::ChangePlanResponse {
            subscription: Some(subscription_to_pb(&subscription)),
            applied,
        }))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::AuthorizeRequest { user_id, action } = request.into_inner();
        let user = UserId::parse(&user_id).map_err(UsageError::from)?;
        let action = Permission::parse(&action).map_err(UsageError::from)?;
        let (verdict, context) = self.usage.authorize(user, action).await?;
        let allowed = verdict.allowed();
        let (meter, amount) = verdict.cost.map_or((String::new(), 0), |(meter, amount)| {
            (meter.to_string(), amount)
        });
        Ok(Response::new(pb::AuthorizeResponse {
            allowed,
            reason: reason_to_pb(verdict.denial),
            upgrade_to: verdict.upgrade_to,
            plan_id: context.plan.id.to_string(),
            roles: roles_to_pb(&context.roles),
            meter,
            amount,
        }))
    }

    async fn consume(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<pb::ConsumeResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        Ok(Response::new(self.consume_one(request.into_inner()).await?))
    }

    async fn consume_many(
        &self,
        request: Request<pb::ConsumeManyRequest>,
    ) -> Result<Response<pb::ConsumeManyResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::ConsumeManyRequest { requests } = request.into_inner();
        if requests.len() > MAX_CONSUMES {
            return Err(UsageError::InvalidInput(format!(
                "at most {MAX_CONSUMES} consumes per call"
            ))
            .into());
        }
        // Judged side by side, so that their limiter calls and ledger rows travel together.
        let answers =
            futures::future::join_all(requests.into_iter().map(|one| self.consume_one(one))).await;
        let outcomes = answers
            .into_iter()
            .map(|answer| pb::ConsumeOutcome {
                outcome: Some(match answer {
                    Ok(consumed) => pb::consume_outcome::Outcome::Consumed(consumed),
                    Err(err) => {
                        let status = Status::from(err);
                        pb::consume_outcome::Outcome::Failed(pb::ConsumeFailure {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        })
                    }
                }),
            })
            .collect();
        Ok(Response::new(pb::ConsumeManyResponse { outcomes }))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::RefundRequest {
            user_id,
            meter,
            amount,
            idempotency_key,
            keep,
        } = request.into_inner();
        let (user, meter, key) = counted_key(&user_id, &meter, &idempotency_key)?;
        let refunded = self.usage.refund(user, meter, (amount, keep), key).await?;
        Ok(Response::new(pb::RefundResponse { refunded }))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::GetUsageRequest { user_id, at } = request.into_inner();
        let user = UserId::parse(&user_id).map_err(UsageError::from)?;
        let at_ms = if at == 0 {
            self.usage.now_ms()
        } else {
            at.saturating_mul(1000)
        };
        let (period, meters) = self.usage.usage(user, at_ms).await?;
        let plan_id = self.usage.context(user).await?.plan.id.to_string();
        Ok(Response::new(pb::GetUsageResponse {
            user_id: user.to_string(),
            plan_id,
            period_start: period.start_ms / 1000,
            period_end: period.end_ms / 1000,
            meters: meters
                .into_iter()
                .map(|meter| pb::MeterUsage {
                    meter: meter.meter.to_string(),
                    used: meter.used,
                    limit: meter.limit,
                })
                .collect(),
        }))
    }

    async fn assign_role(
        &self,
        request: Request<pb::AssignRoleRequest>,
    ) -> Result<Response<pb::AssignRoleResponse>, Status> {
        self.caller(&request, SCOPE_ADMIN).await?;
        let pb::AssignRoleRequest { user_id, role } = request.into_inner();
        let user = UserId::parse(&user_id).map_err(UsageError::from)?;
        let roles = self
            .usage
            .assign_role(user, Role::parse(&role).map_err(UsageError::from)?)
            .await?;
        Ok(Response::new(pb::AssignRoleResponse {
            roles: roles_to_pb(&roles),
        }))
    }

    async fn revoke_role(
        &self,
        request: Request<pb::RevokeRoleRequest>,
    ) -> Result<Response<pb::RevokeRoleResponse>, Status> {
        self.caller(&request, SCOPE_ADMIN).await?;
        let pb::RevokeRoleRequest { user_id, role } = request.into_inner();
        let user = UserId::parse(&user_id).map_err(UsageError::from)?;
        let roles = self
            .usage
            .revoke_role(user, Role::parse(&role).map_err(UsageError::from)?)
            .await?;
        Ok(Response::new(pb::RevokeRoleResponse {
            roles: roles_to_pb(&roles),
        }))
    }

    async fn delegate(
        &self,
        request: Request<pb::DelegateRequest>,
    ) -> Result<Response<pb::DelegateResponse>, Status> {
        self.caller(&request, SCOPE_ADMIN).await?;
        let pb::DelegateRequest {
            from_user_id,
            to_user_id,
            permission,
            expires_at,
        } = request.into_inner();
        let from = UserId::parse(&from_user_id).map_err(UsageError::from)?;
        let to = UserId::parse(&to_user_id).map_err(UsageError::from)?;
        let permission = Permission::parse(&permission).map_err(UsageError::from)?;
        let id = self
            .usage
            .delegate(from, to, permission, expires_at.saturating_mul(1000))
            .await?;
        Ok(Response::new(pb::DelegateResponse {
            delegation_id: id.to_string(),
        }))
    }

    async fn revoke_delegation(
        &self,
        request: Request<pb::RevokeDelegationRequest>,
    ) -> Result<Response<pb::RevokeDelegationResponse>, Status> {
        self.caller(&request, SCOPE_ADMIN).await?;
        let pb::RevokeDelegationRequest { delegation_id } = request.into_inner();
        let id = Uuid::parse_str(&delegation_id)
            .map_err(|_| UsageError::InvalidInput("delegation_id must be a UUID".into()))?;
        self.usage.revoke_delegation(id).await?;
        Ok(Response::new(pb::RevokeDelegationResponse {}))
    }

    async fn list_permissions(
        &self,
        request: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::ListPermissionsRequest { user_id } = request.into_inner();
        let (roles, permissions) = self
            .usage
            .permissions(UserId::parse(&user_id).map_err(UsageError::from)?)
            .await?;
        Ok(Response::new(pb::ListPermissionsResponse {
            roles: roles_to_pb(&roles),
            permissions: permissions.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn acquire_connection(
        &self,
        request: Request<pb::AcquireConnectionRequest>,
    ) -> Result<Response<pb::AcquireConnectionResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let request = request.into_inner();
        let (user, ttl) = lease_request(&request)?;
        let lease = self
            .usage
            .acquire_connection(user, &request.connection_id, ttl)
            .await?;
        Ok(Response::new(lease_to_pb(lease)))
    }

    async fn acquire_connections(
        &self,
        request: Request<pb::AcquireConnectionsRequest>,
    ) -> Result<Response<pb::AcquireConnectionsResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::AcquireConnectionsRequest { leases } = request.into_inner();
        let decisions = self
            .usage
            .acquire_connections(&acquisitions(&leases)?)
            .await?;
        Ok(Response::new(pb::AcquireConnectionsResponse {
            leases: decisions.into_iter().map(lease_to_pb).collect(),
        }))
    }

    async fn release_connection(
        &self,
        request: Request<pb::ReleaseConnectionRequest>,
    ) -> Result<Response<pb::ReleaseConnectionResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::ReleaseConnectionRequest {
            user_id,
            connection_id,
        } = request.into_inner();
        let user = UserId::parse(&user_id).map_err(UsageError::from)?;
        self.usage
            .release_connections(&[(user, &connection_id)])
            .await?;
        Ok(Response::new(pb::ReleaseConnectionResponse {}))
    }

    async fn release_connections(
        &self,
        request: Request<pb::ReleaseConnectionsRequest>,
    ) -> Result<Response<pb::ReleaseConnectionsResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::ReleaseConnectionsRequest { leases } = request.into_inner();
        self.usage.release_connections(&releases(&leases)?).await?;
        Ok(Response::new(pb::ReleaseConnectionsResponse {}))
    }

    async fn update_connections(
        &self,
        request: Request<pb::UpdateConnectionsRequest>,
    ) -> Result<Response<pb::UpdateConnectionsResponse>, Status> {
        self.caller(&request, SCOPE_CHECK).await?;
        let pb::UpdateConnectionsRequest { release, acquire } = request.into_inner();
        let decisions = self
            .usage
            .update_connections(&releases(&release)?, &acquisitions(&acquire)?)
            .await?;
        Ok(Response::new(pb::UpdateConnectionsResponse {
            acquired: decisions.into_iter().map(lease_to_pb).collect(),
        }))
    }
}
