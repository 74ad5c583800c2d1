use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::UserId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub plan_id: String,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub pending_plan_id: Option<String>,
}

/// A recorded plan change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanChangeRow {
    pub from_plan: String,
    pub to_plan: String,
    pub reason: String,
    pub created_at_ms: i64,
    pub effective_at_ms: i64,
}

impl Store {
    pub async fn subscription(&self, user: UserId) -> Result<Option<SubscriptionRow>, StoreError> {
        let row: Option<(String, i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT plan_id, period_start, period_end, pending_plan_id FROM subscriptions WHERE user_id = $1",
        )
        .bind(user.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(
            |(plan_id, period_start_ms, period_end_ms, pending_plan_id)| SubscriptionRow {
                plan_id,
                period_start_ms,
                period_end_ms,
                pending_plan_id,
            },
        ))
    }

    /// Writes the subscription as `next` if it is still `expected` (None: absent), so two
    /// replicas rolling a period over or changing a plan at once cannot both win.
    pub async fn replace_subscription(
        &self,
        user: UserId,
        expected: Option<&SubscriptionRow>,
        next: &SubscriptionRow,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = match expected {
            None => {
                sqlx::query(
                    "INSERT INTO subscriptions (user_id, plan_id, period_start, period_end, pending_plan_id, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user.to_string())
                .bind(&next.plan_id)
                .bind(next.period_start_ms)
                .bind(next.period_end_ms)
                .bind(next.pending_plan_id.clone())
                .bind(now_ms)
                .execute(self.pool())
                .await?
            }
            Some(expected) => {
                sqlx::query(
                    "UPDATE subscriptions SET plan_id = $2, period_start = $3, period_end = $4, pending_plan_id = $5, updated_at = $6 \
                     WHERE user_id = $1 AND plan_id = $7 AND period_start = $8 \
                     AND COALESCE(pending_plan_id, '') = COALESCE($9, '')",
                )
                .bind(user.to_string())
                .bind(&next.plan_id)
                .bind(next.period_start_ms)
                .bind(next.period_end_ms)
                .bind(next.pending_plan_id.clone())
                .bind(now_ms)
                .bind(&expected.plan_id)
                .bind(expected.period_start_ms)
                .bind(expected.pending_plan_id.clone())
                .execute(self.pool())
                .await?
            }
        };
        Ok(result.rows_affected() == 1)
    }

    /// Records a plan change under its idempotency key; false if the key was already used.
    pub async fn record_plan_change(
        &self,
        user: UserId,
        idempotency_key: &str,
        change: &PlanChangeRow,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO plan_changes (id, user_id, idempotency_key, from_plan, to_plan, reason, created_at, effective_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, idempotency_key) DO NOTHING",
        )
        // Time-ordered ids break ties between changes recorded in the same millisecond.
        .bind(Uuid::now_v7().to_string())
        .bind(user.to_string())
        .bind(idempotency_key)
        .bind(&change.from_plan)
        .bind(&change.to_plan)
        .bind(&change.reason)
        .bind(change.created_at_ms)
        .bind(change.effective_at_ms)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn plan_change(
        &self,
        user: UserId,
        idempotency_key: &str,
    ) -> Result<Option<PlanChangeRow>, StoreError> {
        let row: Option<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT from_plan, to_plan, reason, created_at, effective_at FROM plan_changes \
             WHERE user_id = $1 AND idempotency_key = $2",
        )
        .bind(user.to_string())
        .bind(idempotency_key)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(
            |(from_plan, to_plan, reason, created_at_ms, effective_at_ms)| PlanChangeRow {
                from_plan,
                to_plan,
                reason,
                created_at_ms,
                effective_at_ms,
            },
        ))
    }

    pub async fn plan_history(&self, user: UserId) -> Result<Vec<PlanChangeRow>, StoreError> {
        let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT from_plan, to_plan, reason, created_at, effective_at FROM plan_changes \
             WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user.to_string())
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(from_plan, to_plan, reason, created_at_ms, effective_at_ms)| PlanChangeRow {
                    from_plan,
                    to_plan,
                    reason,
                    created_at_ms,
                    effective_at_ms,
                },
            )
            .collect())
    }
}
