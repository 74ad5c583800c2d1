//! Deleting expired sessions and refresh tokens, one bounded batch per statement.
//!
//! What goes, and why no security answer changes when it does:
//!
//! - A refresh token goes once it is past its own expiry (by the caller's retention margin).
//!   Until then it answered `refresh_token_expired`; once pruned it is unknown and answers
//!   `refresh_token_invalid`: a refusal either way, and neither revokes anything. A spent or
//!   retired token of a live session is *not* pruned before its expiry, so presenting it is
//!   still caught as a replay and revokes the session.
//! - A session goes once it is past its expiry and none of its refresh tokens remain. (A
//!   session's tokens never expire after it, so they go first.) Until then a revoked session
//!   answers `session_revoked`; once pruned, its access tokens (long expired by the retention
//!   margin) find no session, which validation also answers `session_revoked`.

use super::{Store, StoreError};

impl Store {
    /// Claims this period's run of a maintenance task: true for exactly one caller among
    /// replicas racing for it, and for nobody until `period_ms` has passed since the last run.
    pub async fn claim_maintenance(
        &self,
        task: &str,
        now_ms: i64,
        period_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE auth_maintenance SET next_run_at = $2 WHERE task = $1 AND next_run_at <= $3",
        )
        .bind(task)
        .bind(now_ms.saturating_add(period_ms))
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// Deletes up to `limit` refresh tokens that expired before `cutoff_ms`; returns how many.
    pub async fn prune_refresh_tokens(
        &self,
        cutoff_ms: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM refresh_tokens WHERE hash IN \
             (SELECT hash FROM refresh_tokens WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(limit)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// Deletes up to `limit` sessions that expired before `cutoff_ms` and have no refresh token
    /// left; returns how many.
    pub async fn prune_sessions(&self, cutoff_ms: i64, limit: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM sessions WHERE id IN \
             (SELECT s.id FROM sessions s WHERE s.expires_at < $1 AND NOT EXISTS \
              (SELECT 1 FROM refresh_tokens rt WHERE rt.session_id = s.id) LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(limit)
        .execute(self.pool())
        .await?
        .rows_affected())
    }
}
