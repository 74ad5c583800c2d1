//! Subscriptions: every user starts on the default plan; an upgrade applies to the very next
//! request, a downgrade at the end of the billing period unless asked to apply at once. Changes
//! are idempotent by key and recorded for billing.

use crate::{
    domain::{IdempotencyKey, PlanId, UserId},
    error::UsageError,
    periods::{self, Window},
    store::{PlanChangeRow, SubscriptionRow},
    usage::Usage,
};

/// How many times a change retries after losing a race with another replica.
const MAX_ATTEMPTS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub user: UserId,
    pub plan: PlanId,
    pub period: Window,
    pub pending: Option<PlanId>,
}

/// The request of a plan change.
#[derive(Clone, Debug)]
pub struct PlanChange {
    pub plan: PlanId,
    pub immediate: bool,
    pub idempotency_key: IdempotencyKey,
    pub reason: String,
}

impl Usage {
    /// The user's subscription, created on first use and rolled into the current period (which
    /// applies a pending downgrade).
    pub async fn subscription(&self, user: UserId) -> Result<Subscription, UsageError> {
        Ok(self.current_row(user).await?.1)
    }

    async fn current_row(
        &self,
        user: UserId,
    ) -> Result<(SubscriptionRow, Subscription), UsageError> {
        for _ in 0..MAX_ATTEMPTS {
            let now = self.now_ms();
            let stored = self.store.subscription(user).await?;
            let next = match &stored {
                Some(row) if row.period_end_ms > now => {
                    return Ok((row.clone(), self.to_domain(user, row)?));
                }
                Some(row) => rolled_over(row, now),
                None => SubscriptionRow {
                    plan_id: self.catalogue.default_plan().id.to_string(),
                    period_start_ms: periods::month(now).start_ms,
                    period_end_ms: periods::month(now).end_ms,
                    pending_plan_id: None,
                },
            };
            if self
                .store
                .replace_subscription(user, stored.as_ref(), &next, now)
                .await?
            {
                let subscription = self.to_domain(user, &next)?;
                return Ok((next, subscription));
            }
        }
        Err(UsageError::Unavailable(anyhow::anyhow!(
            "the subscription kept changing underneath"
        )))
    }

    fn to_domain(&self, user: UserId, row: &SubscriptionRow) -> Result<Subscription, UsageError> {
        let parse =
            |id: &str| PlanId::parse(id).map_err(|err| UsageError::Internal(anyhow::anyhow!(err)));
        Ok(Subscription {
            user,
            plan: parse(&row.plan_id)?,
            period: Window {
                start_ms: row.period_start_ms,
                end_ms: row.period_end_ms,
            },
            pending: row.pending_plan_id.as_deref().map(parse).transpose()?,
        })
    }

    /// Changes the plan. Returns the subscription and whether the change applies now.
    pub async fn change_plan(
        &self,
        user: UserId,
        change: PlanChange,
    ) -> Result<(Subscription, bool), UsageError> {
        let target = self
            .catalogue
            .get(&change.plan)
            .ok_or_else(|| UsageError::UnknownPlan(change.plan.to_string()))?
            .clone();
        for _ in 0..MAX_ATTEMPTS {
            let (row, current) = self.current_row(user).await?;
            if let Some(prior) = self
                .store
                .plan_change(user, change.idempotency_key.as_str())
                .await?
            {
                if prior.to_plan != target.id.as_str() {
                    return Err(UsageError::IdempotencyConflict);
                }
                return Ok((current, prior.effective_at_ms <= prior.created_at_ms));
            }
            let now = self.now_ms();
            let current_rank = self
                .catalogue
                .get(&current.plan)
                .map_or(0, |plan| plan.rank);
            let applies_now = target.rank >= current_rank || change.immediate;
            let next = SubscriptionRow {
                plan_id: if applies_now {
                    target.id.to_string()
                } else {
                    row.plan_id.clone()
                },
                pending_plan_id: if applies_now {
                    None
                } else {
                    Some(target.id.to_string())
                },
                ..row.clone()
            };
            if !self
                .store
                .replace_subscription(user, Some(&row), &next, now)
                .await?
            {
                continue;
            }
            let record = PlanChangeRow {
                from_plan: row.plan_id.clone(),
                to_plan: target.id.to_string(),
                reason: change.reason.clone(),
                created_at_ms: now,
                effective_at_ms: if applies_now { now } else { row.period_end_ms },
            };
            self.store
                .record_plan_change(user, change.idempotency_key.as_str(), &record)
                .await?;
            self.invalidate(user).await;
            self.metrics
                .plan_change(if applies_now { "applied" } else { "scheduled" });
            return Ok((self.to_domain(user, &next)?, applies_now));
        }
        Err(UsageError::Unavailable(anyhow::anyhow!(
            "the subscription kept changing underneath"
        )))
    }
}

impl Usage {
    /// The user's plan changes, oldest first, for billing.
    pub async fn plan_history(&self, user: UserId) -> Result<Vec<PlanChangeRow>, UsageError> {
        Ok(self.store.plan_history(user).await?)
    }
}

fn rolled_over(row: &SubscriptionRow, now: i64) -> SubscriptionRow {
    let period = periods::month(now);
    SubscriptionRow {
        plan_id: row
            .pending_plan_id
            .clone()
            .unwrap_or_else(|| row.plan_id.clone()),
        period_start_ms: period.start_ms,
        period_end_ms: period.end_ms,
        pending_plan_id: None,
    }
}
