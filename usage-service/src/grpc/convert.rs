//! Domain results to proto messages, at the boundary.

use tollgate_proto::usage::v1 as pb;

use crate::{
    access::DenyReason,
    catalogue::{Catalogue, MeterLimits, MeterSpec, Plan, ToolSpec},
    domain::{Meter, Role},
    metering::LeaseDecision,
    subscriptions::Subscription,
};

/// The whole catalogue, as `ListPlans` answers it.
pub(super) fn catalogue_to_pb(catalogue: &Catalogue) -> pb::ListPlansResponse {
    pb::ListPlansResponse {
        plans: catalogue.plans().iter().map(plan_to_pb).collect(),
        meters: catalogue
            .meters()
            .iter()
            .map(|MeterSpec { name, billable }| pb::Meter {
                name: name.to_string(),
                billable: *billable,
            })
            .collect(),
        tools: catalogue
            .tools()
            .map(
                |ToolSpec {
                     name,
                     meter,
                     amount,
                     role,
                 }| pb::Tool {
                    name: name.to_string(),
                    meter: meter.to_string(),
                    amount: *amount,
                    role: role.as_str().to_owned(),
                },
            )
            .collect(),
    }
}

fn plan_to_pb(plan: &Plan) -> pb::Plan {
    let Plan {
        id,
        name,
        rank,
        max_connections,
        limits,
        tools,
    } = plan;
    pb::Plan {
        id: id.to_string(),
        name: name.clone(),
        max_connections: *max_connections,
        messages_per_minute: plan.messages_per_minute(),
        agent_runs_per_month: plan.limits_of(&Meter::agent_runs()).per_month,
        tool_calls_per_day: plan.limits_of(&Meter::tool_calls()).per_day,
        tools: tools.iter().map(ToString::to_string).collect(),
        rank: *rank,
        limits: limits
            .iter()
            .map(
                |(
                    meter,
                    MeterLimits {
                        per_minute,
                        per_day,
                        per_month,
                    },
                )| pb::MeterLimit {
                    meter: meter.to_string(),
                    per_minute: *per_minute,
                    per_day: *per_day,
                    per_month: *per_month,
                },
            )
            .collect(),
    }
}

pub(super) fn subscription_to_pb(subscription: &Subscription) -> pb::Subscription {
    pb::Subscription {
        user_id: subscription.user.to_string(),
        plan_id: subscription.plan.to_string(),
        period_start: subscription.period.start_ms / 1000,
        period_end: subscription.period.end_ms / 1000,
        pending_plan_id: subscription.pending.as_ref().map(ToString::to_string),
    }
}

pub(super) fn reason_to_pb(reason: Option<DenyReason>) -> i32 {
    let reason = match reason {
        None => pb::DenyReason::Unspecified,
        Some(DenyReason::PlanFeatureMissing) => pb::DenyReason::PlanFeatureMissing,
        Some(DenyReason::PermissionDenied) => pb::DenyReason::PermissionDenied,
        Some(DenyReason::QuotaExceeded) => pb::DenyReason::QuotaExceeded,
        Some(DenyReason::RateLimited) => pb::DenyReason::RateLimited,
    };
    reason as i32
}

pub(super) fn lease_to_pb(lease: LeaseDecision) -> pb::AcquireConnectionResponse {
    pb::AcquireConnectionResponse {
        granted: lease.granted,
        active: lease.active,
        limit: lease.limit,
        plan_id: lease.context.plan.id.to_string(),
        roles: roles_to_pb(&lease.context.roles),
    }
}

pub(super) fn roles_to_pb(roles: &[Role]) -> Vec<String> {
    roles.iter().map(|role| role.as_str().to_owned()).collect()
}
