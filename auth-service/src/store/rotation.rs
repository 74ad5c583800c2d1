//! Refresh-token rotation (CONTRACT §2), without letting the grace window fork a session.
//!
//! Presenting a session's live token rotates it: the token is spent and a child is issued.
//! Within the grace window a spent token may be presented once more (a concurrent refresh, or a
//! response lost on the way) and gets one more child, provided its first child is still
//! unused. The children of one token are siblings, and the first of them to be refreshed retires
//! the others: a session therefore has one family of live tokens at a time, and its chain never
//! forks. Retirement is read, not written: a token is retired once a sibling of it (a child of
//! the same parent) was refreshed, so a rotation writes one token row and checks its siblings
//! through an index on `parent_hash`, a column no update changes. Any other presentation of a spent or retired token (a third one inside the window,
//! one after the window, one after a child was used, a retired sibling) is a replay of a stolen
//! token, and revokes the session.
//!
//! Every rotation first locks the session row with an `UPDATE` (PostgreSQL's row lock,
//! SQLite's write lock) and only then touches the presented token, with statements that each
//! read what was committed before them: concurrent refreshes and revocations of one session are
//! serialised by the database, each deciding on what the previous one committed, so two of them
//! never both rotate the same token and a revocation is never undone by a racing refresh.

use sqlx::{Any, Transaction};
use uuid::Uuid;

use super::{
    Store, StoreError,
    sessions::{NewToken, SessionLifetime, SessionStatus, insert_token, revoke_in},
    users::parse_uuid,
};
use crate::domain::RefreshTokenHash;

/// What presenting a refresh token led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new token was issued; `via_grace` when it was the one re-issue of a spent token.
    Rotated {
        user_id: Uuid,
        session_id: Uuid,
        via_grace: bool,
    },
    /// A spent or retired token was replayed: the session is now revoked.
    ReuseDetected {
        user_id: Uuid,
        session_id: Uuid,
    },
    /// Unknown token (never issued, or pruned after it expired).
    Unknown,
    /// The token, or its session, is past its expiry or the session's maximum lifetime.
    Expired,
    SessionRevoked,
}

/// A rotation's inputs: the presented token, the one to issue after it, and the clock.
#[derive(Clone, Copy, Debug)]
pub struct Rotation<'a> {
    pub presented: &'a RefreshTokenHash,
    pub next: &'a RefreshTokenHash,
    pub now_ms: i64,
    pub lifetime: SessionLifetime,
    pub grace_ms: i64,
}

/// The presented token as the locked session sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TokenState {
    rotated_at: Option<i64>,
    reissued_at: Option<i64>,
    retired_at: Option<i64>,
    /// Whether the token's first child exists and was neither refreshed nor retired.
    child_unused: bool,
    /// Whether a sibling (another child of its parent) was refreshed: this one is retired.
    sibling_rotated: bool,
}

/// What a presentation does, decided from the token's state alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A live token: spend it, retire its siblings, issue a child.
    Rotate,
    /// The one retry of a just-spent token whose child is unused: issue a sibling of that child.
    Reissue,
    /// Anything else: theft.
    Replay,
}

impl TokenState {
    fn step(self, now_ms: i64, grace_ms: i64) -> Step {
        if self.retired_at.is_some() || self.sibling_rotated {
            return Step::Replay;
        }
        let Some(rotated_at) = self.rotated_at else {
            return Step::Rotate;
        };
        // Concurrent requests read the clock before queueing on the session lock, so `now_ms`
        // may predate the rotation: elapsed time is clamped at zero.
        let within_grace = (now_ms - rotated_at).max(0) < grace_ms;
        if within_grace && self.reissued_at.is_none() && self.child_unused {
            Step::Reissue
        } else {
            Step::Replay
        }
    }
}

impl Store {
    /// Rotates `presented`, following the rules in this module's documentation.
    pub async fn rotate_refresh_token(
        &self,
        rotation: Rotation<'_>,
    ) -> Result<RefreshOutcome, StoreError> {
        let row: Option<(String, i64, Option<String>, String, i64)> = sqlx::query_as(
            "SELECT rt.session_id, rt.expires_at, rt.parent_hash, s.user_id, s.created_at \
             FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id WHERE rt.hash = $1",
        )
        .bind(rotation.presented.as_str())
        .fetch_optional(self.pool())
        .await?;
        let Some((session_id, token_expires_at, parent, user_id, created_at)) = row else {
            return Ok(RefreshOutcome::Unknown);
        };
        if token_expires_at <= rotation.now_ms {
            return Ok(RefreshOutcome::Expired);
        }
        let (session_id, user_id) = (parse_uuid(&session_id)?, parse_uuid(&user_id)?);
        // A session's opening time never changes, so it may be read before the lock.
        let expires_at = rotation.lifetime.expires_at(created_at, rotation.now_ms);

        let mut tx = self.pool().begin().await?;
        if !lock_and_extend(&mut tx, session_id, expires_at, &rotation).await? {
            tx.rollback().await?;
            return Ok(
                match self.session_status(session_id, rotation.now_ms).await? {
                    SessionStatus::Revoked => RefreshOutcome::SessionRevoked,
                    SessionStatus::Active | SessionStatus::Gone => RefreshOutcome::Expired,
                },
            );
        }
        // The common case first: the presented token is live and is spent in one statement.
        // A token's parent never changes, so it may be read before the lock.
        let via_grace = if spend(&mut tx, parent.as_deref(), session_id, &rotation).await? {
            false
        } else {
            let state = token_state(&mut tx, rotation.presented).await?;
            match state.map(|state| state.step(rotation.now_ms, rotation.grace_ms)) {
                Some(Step::Reissue) if mark_reissued(&mut tx, &rotation).await? => true,
                Some(Step::Replay) => {
                    revoke_in(&mut tx, session_id, rotation.now_ms, "refresh_token_reuse").await?;
                    tx.commit().await?;
                    return Ok(RefreshOutcome::ReuseDetected {
                        user_id,
                        session_id,
                    });
                }
                // The row vanished under the lock: only pruning deletes tokens, so it had
                // expired. (A live token would have been spent above.)
                Some(Step::Rotate | Step::Reissue) | None => {
                    tx.rollback().await?;
                    return Ok(RefreshOutcome::Unknown);
                }
            }
        };
        let child = NewToken {
            hash: rotation.next,
            parent: Some(rotation.presented),
            session_id,
            now_ms: rotation.now_ms,
            expires_at_ms: expires_at,
        };
        insert_token(&mut tx, child).await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated {
            user_id,
            session_id,
            via_grace,
        })
    }
}

/// Locks the session row if the session is live (not revoked, not expired, within its maximum
/// lifetime), recording the refresh and the new expiry. Returns whether it was live. (A replay
/// found later in the transaction revokes the session, so the new expiry does no harm there.)
async fn lock_and_extend(
    tx: &mut Transaction<'static, Any>,
    session_id: Uuid,
    expires_at: i64,
    rotation: &Rotation<'_>,
) -> Result<bool, StoreError> {
    let opened_after = rotation
        .now_ms
        .saturating_sub(rotation.lifetime.max_lifetime_ms);
    Ok(sqlx::query(
        "UPDATE sessions SET last_refreshed_at = $2, expires_at = $3 \
         WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2 AND created_at > $4",
    )
    .bind(session_id.to_string())
    .bind(rotation.now_ms)
    .bind(expires_at)
    .bind(opened_after)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

async fn token_state(
    tx: &mut Transaction<'static, Any>,
    hash: &RefreshTokenHash,
) -> Result<Option<TokenState>, StoreError> {
    type Row = (
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        i64,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT t.rotated_at, t.reissued_at, t.retired_at, c.hash, c.rotated_at, c.retired_at, \
           CAST(CASE WHEN EXISTS (SELECT 1 FROM refresh_tokens s \
             WHERE s.parent_hash = t.parent_hash AND s.hash <> t.hash \
             AND s.rotated_at IS NOT NULL) THEN 1 ELSE 0 END AS BIGINT) \
         FROM refresh_tokens t LEFT JOIN refresh_tokens c ON c.hash = t.child_hash \
         WHERE t.hash = $1",
    )
    .bind(hash.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(
        |(
            rotated_at,
            reissued_at,
            retired_at,
            child,
            child_rotated_at,
            child_retired_at,
            sibling_rotated,
        )| {
            TokenState {
                rotated_at,
                reissued_at,
                retired_at,
                child_unused: child.is_some()
                    && child_rotated_at.is_none()
                    && child_retired_at.is_none(),
                sibling_rotated: sibling_rotated != 0,
            }
        },
    ))
}

/// Spends the presented token if it is live: neither spent, nor retired, nor the sibling of
/// one already refreshed. Returns whether it was. A token without a parent (a session's first,
/// or one issued before parents were recorded) then retires every other live token of its
/// session, which closes forks made before families existed.
async fn spend(
    tx: &mut Transaction<'static, Any>,
    parent: Option<&str>,
    session_id: Uuid,
    rotation: &Rotation<'_>,
) -> Result<bool, StoreError> {
    let spent = sqlx::query(
        "UPDATE refresh_tokens SET rotated_at = $2, child_hash = $3 \
         WHERE hash = $1 AND rotated_at IS NULL AND retired_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM refresh_tokens s WHERE s.parent_hash = $4 \
                           AND s.hash <> $1 AND s.rotated_at IS NOT NULL)",
    )
    .bind(rotation.presented.as_str())
    .bind(rotation.now_ms)
    .bind(rotation.next.as_str())
    .bind(parent)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if spent && parent.is_none() {
        sqlx::query(
            "UPDATE refresh_tokens SET retired_at = $3 \
             WHERE session_id = $1 AND hash <> $2 AND rotated_at IS NULL AND retired_at IS NULL",
        )
        .bind(session_id.to_string())
        .bind(rotation.presented.as_str())
        .bind(rotation.now_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(spent)
}

/// Uses up the presented token's one re-issue. Returns false if it is already used up or the
/// token is no longer there.
async fn mark_reissued(
    tx: &mut Transaction<'static, Any>,
    rotation: &Rotation<'_>,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE refresh_tokens SET reissued_at = $2 WHERE hash = $1 AND reissued_at IS NULL",
    )
    .bind(rotation.presented.as_str())
    .bind(rotation.now_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: i64 = 10_000;

    fn spent_at(rotated_at: i64) -> TokenState {
        TokenState {
            rotated_at: Some(rotated_at),
            child_unused: true,
            ..TokenState::default()
        }
    }

    #[test]
    fn a_live_token_rotates() {
        assert_eq!(TokenState::default().step(1_000, GRACE), Step::Rotate);
    }

    #[test]
    fn a_spent_token_gets_one_reissue_inside_the_window_while_its_child_is_unused() {
        assert_eq!(
            spent_at(1_000).step(1_000 + GRACE - 1, GRACE),
            Step::Reissue
        );
        // Requests that read the clock before the rotation committed are inside the window.
        assert_eq!(spent_at(1_000).step(900, GRACE), Step::Reissue);
        let reissued = TokenState {
            reissued_at: Some(1_500),
            ..spent_at(1_000)
        };
        assert_eq!(reissued.step(2_000, GRACE), Step::Replay);
        let child_used = TokenState {
            child_unused: false,
            ..spent_at(1_000)
        };
        assert_eq!(child_used.step(2_000, GRACE), Step::Replay);
    }

    #[test]
    fn a_spent_token_after_the_window_is_a_replay() {
        assert_eq!(spent_at(1_000).step(1_000 + GRACE, GRACE), Step::Replay);
        assert_eq!(spent_at(1_000).step(1_000, 0), Step::Replay);
    }

    #[test]
    fn a_retired_sibling_is_a_replay_even_inside_the_window() {
        let retired = TokenState {
            retired_at: Some(1_000),
            ..TokenState::default()
        };
        assert_eq!(retired.step(1_001, GRACE), Step::Replay);
    }

    #[test]
    fn the_sibling_of_a_refreshed_token_is_a_replay() {
        let sibling_refreshed = TokenState {
            sibling_rotated: true,
            ..TokenState::default()
        };
        assert_eq!(sibling_refreshed.step(1_001, GRACE), Step::Replay);
    }
}
