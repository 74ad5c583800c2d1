//! Signing keys. The single `key_state` row names the active key; creating it and moving it
//! are compare-and-set operations, so replicas that start or rotate at once agree on one key.
//! A key's `secret` is a sealed envelope (see `crate::sealing`); replacing it is a
//! compare-and-set too, so replicas and `keys rewrap` re-sealing at once never lose a key.

use super::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct StoredKey {
    pub kid: String,
    /// The sealed envelope of the 32 secret bytes (plaintext base64url in rows written before
    /// sealing existed, until they are sealed).
    pub secret: String,
    pub created_at_ms: i64,
    pub retired_at_ms: Option<i64>,
}

impl Store {
    /// Keys that are active or retired after `retired_after_ms` (still verifying live tokens).
    pub async fn load_keys(&self, retired_after_ms: i64) -> Result<Vec<StoredKey>, StoreError> {
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT kid, secret, created_at, retired_at FROM signing_keys \
             WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at",
        )
        .bind(retired_after_ms)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(kid, secret, created_at_ms, retired_at_ms)| StoredKey {
                kid,
                secret,
                created_at_ms,
                retired_at_ms,
            })
            .collect())
    }

    /// The `(kid, secret)` of every key ever stored, retired ones included.
    pub async fn all_key_secrets(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT kid, secret FROM signing_keys ORDER BY created_at")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// The stored secret of one key, if it exists.
    pub async fn key_secret(&self, kid: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT secret FROM signing_keys WHERE kid = $1")
                .bind(kid)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(secret,)| secret))
    }

    /// Replaces the secret of `kid` if it still is `expected`; false if another writer changed
    /// it first.
    pub async fn replace_key_secret(
        &self,
        kid: &str,
        expected: &str,
        replacement: &str,
    ) -> Result<bool, StoreError> {
        let replaced =
            sqlx::query("UPDATE signing_keys SET secret = $1 WHERE kid = $2 AND secret = $3")
                .bind(replacement)
                .bind(kid)
                .bind(expected)
                .execute(self.pool())
                .await?
                .rows_affected();
        Ok(replaced == 1)
    }

    pub async fn active_kid(&self) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT active_kid FROM key_state WHERE id = 1")
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(kid,)| kid))
    }

    /// Makes `candidate` the active key if there is none yet; returns the active kid either way.
    /// A losing candidate is deleted, so no unused key is ever published.
    pub async fn bootstrap_key(&self, candidate: &StoredKey) -> Result<String, StoreError> {
        let mut tx = self.pool().begin().await?;
        insert_key(&mut tx, candidate).await?;
        sqlx::query("INSERT INTO key_state (id, active_kid, changed_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(&candidate.kid)
            .bind(candidate.created_at_ms)
            .execute(&mut *tx)
            .await?;
        let (active,): (String,) = sqlx::query_as("SELECT active_kid FROM key_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        if active != candidate.kid {
            sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                .bind(&candidate.kid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(active)
    }

    /// Replaces `expected_active` by `next`, retiring the old key. Returns false (and changes
    /// nothing) if another replica rotated first.
    pub async fn rotate_key(
        &self,
        expected_active: &str,
        next: &StoredKey,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        insert_key(&mut tx, next).await?;
        let moved = sqlx::query("UPDATE key_state SET active_kid = $1, changed_at = $2 WHERE id = 1 AND active_kid = $3")
            .bind(&next.kid)
            .bind(next.created_at_ms)
            .bind(expected_active)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !moved {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE signing_keys SET retired_at = $2 WHERE kid = $1")
            .bind(expected_active)
            .bind(next.created_at_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    key: &StoredKey,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO signing_keys (kid, secret, created_at) VALUES ($1, $2, $3)")
        .bind(&key.kid)
        .bind(&key.secret)
        .bind(key.created_at_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
