//! Sessions and refresh-token rotation.
//!
//! Every mutation of a session's token chain starts by updating the session row, which takes
//! its row lock on PostgreSQL (and the write lock on SQLite): concurrent refreshes and
//! revocations of one session are serialised by the database, so exactly one rotation wins and
//! a revocation is never undone by a racing refresh.

use sqlx::{Any, Transaction};
use uuid::Uuid;

use super::{Store, StoreError, users::parse_uuid};
use crate::domain::RefreshTokenHash;

/// What presenting a refresh token led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new token was chained; `via_grace` when an already-rotated token whose child is
    /// unused was presented again within the grace window.
    Rotated {
        user_id: Uuid,
        session_id: Uuid,
        via_grace: bool,
    },
    /// A rotated token was replayed outside the rules: the session is now revoked.
    ReuseDetected {
        user_id: Uuid,
        session_id: Uuid,
    },
    /// Unknown token.
    Unknown,
    Expired,
    SessionRevoked,
}

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

/// A rotation's inputs: the presented token, the one to chain after it, and the clock.
#[derive(Clone, Copy, Debug)]
pub struct Rotation<'a> {
    pub presented: &'a RefreshTokenHash,
    pub next: &'a RefreshTokenHash,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    pub grace_ms: i64,
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
        insert_token(&mut tx, refresh, session_id, now_ms, expires_at_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rotates `presented`, following the contract's reuse rules.
    pub async fn rotate_refresh_token(
        &self,
        rotation: Rotation<'_>,
    ) -> Result<RefreshOutcome, StoreError> {
        let row: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT rt.session_id, rt.expires_at, s.user_id FROM refresh_tokens rt \
             JOIN sessions s ON s.id = rt.session_id WHERE rt.hash = $1",
        )
        .bind(rotation.presented.as_str())
        .fetch_optional(self.pool())
        .await?;
        let Some((session_id, token_expires_at, user_id)) = row else {
            return Ok(RefreshOutcome::Unknown);
        };
        if token_expires_at <= rotation.now_ms {
            return Ok(RefreshOutcome::Expired);
        }
        let (session_id, user_id) = (parse_uuid(&session_id)?, parse_uuid(&user_id)?);

        let mut tx = self.pool().begin().await?;
        let live = sqlx::query(
            "UPDATE sessions SET last_refreshed_at = $2, expires_at = $3 \
             WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(session_id.to_string())
        .bind(rotation.now_ms)
        .bind(rotation.expires_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !live {
            tx.rollback().await?;
            return Ok(
                match self.session_status(session_id, rotation.now_ms).await? {
                    SessionStatus::Revoked => RefreshOutcome::SessionRevoked,
                    SessionStatus::Active | SessionStatus::Gone => RefreshOutcome::Expired,
                },
            );
        }

        if chain_after(&mut tx, rotation.presented, &rotation, session_id).await? {
            tx.commit().await?;
            return Ok(RefreshOutcome::Rotated {
                user_id,
                session_id,
                via_grace: false,
            });
        }

        // Already rotated. (Concurrent requests read the clock before queueing on the session
        // lock, so `now_ms` may predate the rotation: elapsed time is clamped at zero.)
        // Within the grace window of its rotation, a token whose child is
        // still unused (a concurrent refresh, or a response that never arrived) gets another
        // child; anything else is a replay of a stolen token.
        let (rotated_at, child): (Option<i64>, Option<String>) =
            sqlx::query_as("SELECT rotated_at, child_hash FROM refresh_tokens WHERE hash = $1")
                .bind(rotation.presented.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let within_grace =
            rotated_at.is_some_and(|at| (rotation.now_ms - at).max(0) < rotation.grace_ms);
        if let (true, Some(child)) = (within_grace, child)
            && is_unused(&mut tx, &child).await?
        {
            sqlx::query("UPDATE refresh_tokens SET child_hash = $2 WHERE hash = $1")
                .bind(rotation.presented.as_str())
                .bind(rotation.next.as_str())
                .execute(&mut *tx)
                .await?;
            insert_token(
                &mut tx,
                rotation.next,
                session_id,
                rotation.now_ms,
                rotation.expires_at_ms,
            )
            .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Rotated {
                user_id,
                session_id,
                via_grace: true,
            });
        }

        revoke_in(&mut tx, session_id, rotation.now_ms, "refresh_token_reuse").await?;
        tx.commit().await?;
        Ok(RefreshOutcome::ReuseDetected {
            user_id,
            session_id,
        })
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

async fn is_unused(tx: &mut Transaction<'static, Any>, hash: &str) -> Result<bool, StoreError> {
    let row: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT rotated_at FROM refresh_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(matches!(row, Some((None,))))
}

/// Chains `rotation.next` after `parent` if `parent` is still the live end of the chain.
async fn chain_after(
    tx: &mut Transaction<'static, Any>,
    parent: &RefreshTokenHash,
    rotation: &Rotation<'_>,
    session_id: Uuid,
) -> Result<bool, StoreError> {
    let claimed = sqlx::query(
        "UPDATE refresh_tokens SET rotated_at = $2, child_hash = $3 WHERE hash = $1 AND rotated_at IS NULL",
    )
    .bind(parent.as_str())
    .bind(rotation.now_ms)
    .bind(rotation.next.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        insert_token(
            tx,
            rotation.next,
            session_id,
            rotation.now_ms,
            rotation.expires_at_ms,
        )
        .await?;
    }
    Ok(claimed)
}

async fn insert_token(
    tx: &mut Transaction<'static, Any>,
    hash: &RefreshTokenHash,
    session_id: Uuid,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO refresh_tokens (hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(hash.as_str())
        .bind(session_id.to_string())
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn revoke_in(
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
