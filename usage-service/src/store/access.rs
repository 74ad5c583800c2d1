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
    /// The roles explicitly assigned to a user.
    pub async fn roles(&self, user: UserId) -> Result<Vec<Role>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT role FROM user_roles WHERE user_id = $1")
            .bind(user.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|(role,)| Role::parse(role).map_err(|err| StoreError::Corrupt(err.0)))
            .collect()
    }

    pub async fn assign_role(
        &self,
        user: UserId,
        role: Role,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3) ON CONFLICT (user_id, role) DO NOTHING",
        )
        .bind(user.to_string())
        .bind(role.as_str())
        .bind(now_ms)
        .execute(self.pool())
        .await?;
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
        permission: Permission,
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
