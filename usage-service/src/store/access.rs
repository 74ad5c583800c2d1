//! Roles and delegations. Roles are explicit rows: a user is granted the default role once, when
//! usage-service first sees it (`seen_users` records that), and holds no role permission once
//! every role is revoked.

use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{Permission, Role, UserId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegationRow {
    pub id: Uuid,
    pub from_user: UserId,
    pub permission: Permission,
    pub expires_at_ms: i64,
}

impl Store {
    /// The roles a user holds; None if usage-service has never seen the user (nor assigned it
    /// a role).
    pub async fn roles(&self, user: UserId) -> Result<Option<Vec<Role>>, StoreError> {
        // One row per role, plus a NULL one if the user was seen.
        let rows: Vec<(Option<String>,)> = sqlx::query_as(
            "SELECT role FROM user_roles WHERE user_id = $1 \
             UNION ALL SELECT NULL FROM seen_users WHERE user_id = $1",
        )
        .bind(user.to_string())
        .fetch_all(self.pool())
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter()
            .filter_map(|(role,)| role.as_deref())
            .map(|role| Role::parse(role).map_err(|err| StoreError::Corrupt(err.0)))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Records that usage-service has seen `user`, granting it `default` if this is the first
    /// sighting and it holds no role. One transaction: of replicas seeing a new user at once,
    /// exactly one records it, and the others' insert waits for its commit, so what they read
    /// next includes the grant.
    pub async fn first_sight(
        &self,
        user: UserId,
        default: Role,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let first = seen(&mut tx, user, now_ms).await?;
        if first {
            sqlx::query(
                "INSERT INTO user_roles (user_id, role, granted_at) SELECT $1, $2, $3 \
                 WHERE NOT EXISTS (SELECT 1 FROM user_roles WHERE user_id = $1)",
            )
            .bind(user.to_string())
            .bind(default.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Grants `role`. A user not seen before is seen now, with this role instead of the
    /// default: the first decision about its roles is the one made here.
    pub async fn assign_role(
        &self,
        user: UserId,
        role: Role,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        seen(&mut tx, user, now_ms).await?;
        sqlx::query(
            "INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3) ON CONFLICT (user_id, role) DO NOTHING",
        )
        .bind(user.to_string())
        .bind(role.as_str())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn revoke_role(&self, user: UserId, role: Role) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM user_roles WHERE user_id = $1 AND role = $2")
            .bind(user.to_string())
            .bind(role.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn insert_delegation(
        &self,
        from: UserId,
        to: UserId,
        permission: &Permission,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO delegations (id, from_user, to_user, permission, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(from.to_string())
        .bind(to.to_string())
        .bind(permission.to_string())
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    /// Revokes a delegation; returns its grantee if it was live.
    pub async fn revoke_delegation(
        &self,
        id: Uuid,
        now_ms: i64,
    ) -> Result<Option<UserId>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE delegations SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING to_user",
        )
        .bind(id.to_string())
        .bind(now_ms)
        .fetch_all(self.pool())
        .await?;
        rows.first()
            .map(|(to,)| UserId::parse(to).map_err(|err| StoreError::Corrupt(err.0)))
            .transpose()
    }

    /// Unrevoked, unexpired delegations granted to a user.
    pub async fn live_delegations(
        &self,
        to: UserId,
        now_ms: i64,
    ) -> Result<Vec<DelegationRow>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT id, from_user, permission, expires_at FROM delegations \
             WHERE to_user = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(to.to_string())
        .bind(now_ms)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(id, from, permission, expires_at_ms)| {
                let corrupt = |message: String| StoreError::Corrupt(message);
                Ok(DelegationRow {
                    id: Uuid::parse_str(&id).map_err(|err| corrupt(err.to_string()))?,
                    from_user: UserId::parse(&from).map_err(|err| corrupt(err.0))?,
                    permission: Permission::parse(&permission).map_err(|err| corrupt(err.0))?,
                    expires_at_ms,
                })
            })
            .collect()
    }
}

/// Marks `user` as seen; true if it had not been.
async fn seen(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: UserId,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO seen_users (user_id, first_seen_at) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user.to_string())
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
