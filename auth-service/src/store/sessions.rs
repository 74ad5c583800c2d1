//! Sessions: opening, revoking, listing and checking them. Refresh-token rotation is in
//! `rotation.rs`.
//!
//! Every mutation of a session's token chain starts by updating the session row, which takes
//! its row lock on PostgreSQL (and the write lock on SQLite): concurrent refreshes and
//! revocations of one session are serialised by the database.

use sqlx::{Any, Transaction};
use uuid::Uuid;

use super::{Store, StoreError, users::parse_uuid};
use crate::domain::RefreshTokenHash;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub id: Uuid,
    pub created_at_ms: i64,
    pub last_refreshed_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    Active,
    Revoked,
    /// Expired or unknown.
    Gone,
}

/// How long a session lives: each refresh extends it by the refresh-token lifetime, never past
/// its maximum lifetime after it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLifetime {
    pub refresh_ttl_ms: i64,
    pub max_lifetime_ms: i64,
}

impl SessionLifetime {
    /// The expiry of a session opened at `created_at_ms` and refreshed (or opened) at `now_ms`.
    pub fn expires_at(self, created_at_ms: i64, now_ms: i64) -> i64 {
        now_ms
            .saturating_add(self.refresh_ttl_ms)
            .min(created_at_ms.saturating_add(self.max_lifetime_ms))
    }
}

impl Store {
    /// Opens a session with its first refresh token.
    pub async fn create_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        refresh: &RefreshTokenHash,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, last_refreshed_at, expires_at) VALUES ($1, $2, $3, $3, $4)",
        )
        .bind(session_id.to_string())
        .bind(user_id.to_string())
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await?;
        let first = NewToken {
            hash: refresh,
            parent: None,
            session_id,
            now_ms,
            expires_at_ms,
        };
        insert_token(&mut tx, first).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revokes one session. Returns whether it was live.
    pub async fn revoke_session(
        &self,
        session_id: Uuid,
        now_ms: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let revoked = revoke_in(&mut tx, session_id, now_ms, reason).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// The session and user a refresh token belongs to.
    pub async fn session_of_refresh_token(
        &self,
        hash: &RefreshTokenHash,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT s.id, s.user_id FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id WHERE rt.hash = $1",
        )
        .bind(hash.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.map(|(sid, uid)| Ok((parse_uuid(&sid)?, parse_uuid(&uid)?)))
            .transpose()
    }

    /// Revokes every live session of a user and returns their ids.
    pub async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        now_ms: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = 'logout_all' \
             WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(user_id.to_string())
        .bind(now_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|(id,)| parse_uuid(id)).collect()
    }

    pub async fn list_sessions(
        &self,
        user_id: Uuid,
        now_ms: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, created_at, last_refreshed_at, expires_at FROM sessions \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at",
        )
        .bind(user_id.to_string())
        .bind(now_ms)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(id, created, refreshed, expires)| {
                Ok(SessionRow {
                    id: parse_uuid(&id)?,
                    created_at_ms: created,
                    last_refreshed_at_ms: refreshed,
                    expires_at_ms: expires,
                })
            })
            .collect()
    }

    pub async fn session_status(
        &self,
        session_id: Uuid,
        now_ms: i64,
    ) -> Result<SessionStatus, StoreError> {
        let row: Option<(Option<i64>, i64)> =
            sqlx::query_as("SELECT revoked_at, expires_at FROM sessions WHERE id = $1")
                .bind(session_id.to_string())
                .fetch_optional(self.pool())
                .await?;
        Ok(match row {
            Some((Some(_), _)) => SessionStatus::Revoked,
            Some((None, expires_at)) if expires_at > now_ms => SessionStatus::Active,
            _ => SessionStatus::Gone,
        })
    }
}

/// A refresh token to issue: the first of a session (no parent), or a child of the token
/// presented to a rotation.
#[derive(Clone, Copy, Debug)]
pub(super) struct NewToken<'a> {
    pub hash: &'a RefreshTokenHash,
    pub parent: Option<&'a RefreshTokenHash>,
    pub session_id: Uuid,
    pub now_ms: i64,
    pub expires_at_ms: i64,
}

pub(super) async fn insert_token(
    tx: &mut Transaction<'static, Any>,
    token: NewToken<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, parent_hash, session_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token.hash.as_str())
    .bind(token.parent.map(RefreshTokenHash::as_str))
    .bind(token.session_id.to_string())
    .bind(token.now_ms)
    .bind(token.expires_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn revoke_in(
    tx: &mut Transaction<'static, Any>,
    session_id: Uuid,
    now_ms: i64,
    reason: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query("UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL")
        .bind(session_id.to_string())
        .bind(now_ms)
        .bind(reason)
        .execute(&mut **tx)
        .await?
        .rows_affected()
        == 1)
}

#[cfg(test)]
mod tests {
    use super::SessionLifetime;

    #[test]
    fn refreshing_slides_the_expiry_up_to_the_maximum_lifetime() {
        let lifetime = SessionLifetime {
            refresh_ttl_ms: 30,
            max_lifetime_ms: 90,
        };
        assert_eq!(lifetime.expires_at(0, 0), 30);
        assert_eq!(lifetime.expires_at(0, 50), 80);
        assert_eq!(lifetime.expires_at(0, 70), 90);
        assert_eq!(lifetime.expires_at(0, 200), 90);
        let shorter = SessionLifetime {
            refresh_ttl_ms: 30,
            max_lifetime_ms: 10,
        };
        assert_eq!(shorter.expires_at(0, 0), 10);
        assert_eq!(lifetime.expires_at(i64::MAX - 5, i64::MAX - 5), i64::MAX);
    }
}
