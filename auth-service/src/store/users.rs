use uuid::Uuid;

use tollgate_shared::db::is_unique_violation;

use super::{Store, StoreError};
use crate::domain::Email;

impl Store {
    pub async fn insert_user(
        &self,
        id: Uuid,
        email: &Email,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.to_string())
        .bind(email.as_str())
        .bind(password_hash)
        .bind(now_ms)
        .execute(self.pool())
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::EmailTaken
            } else {
                err.into()
            }
        })?;
        Ok(())
    }

    /// The user id and password hash for an email.
    pub async fn find_credentials(
        &self,
        email: &Email,
    ) -> Result<Option<(Uuid, String)>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
                .bind(email.as_str())
                .fetch_optional(self.pool())
                .await?;
        row.map(|(id, hash)| Ok((parse_uuid(&id)?, hash)))
            .transpose()
    }
}

pub(super) fn parse_uuid(value: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(value).map_err(|_| StoreError::Corrupt(format!("`{value}` is not a UUID")))
}
