//! Registration and login.

use std::net::IpAddr;

use tollgate_shared::time::unix_now_ms;
use uuid::Uuid;

use crate::{
    auth::{Auth, TokenPair},
    domain::{Email, Password},
    error::AuthError,
};

impl Auth {
    #[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
    pub async fn register(
        &self,
        email: Email,
        password: Password,
        client: Option<IpAddr>,
    ) -> Result<TokenPair, AuthError> {
        let result = async {
            self.throttle.attempt_from(client).await?;
            let hash = self
                .passwords
                .hash(password)
                .await
                .map_err(AuthError::Internal)?;
            let user_id = Uuid::new_v4();
            self.store
                .insert_user(user_id, &email, &hash, unix_now_ms())
                .await?;
            tracing::Span::current().record("user_id", tracing::field::display(user_id));
            self.open_session(user_id).await
        }
        .await;
        self.metrics.outcome("register", outcome(&result));
        result
    }

    /// Logs a user in. Wrong password, unknown email and throttled account all take the time of
    /// one password check and say the same thing.
    #[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
    pub async fn login(
        &self,
        email: Email,
        password: Password,
        client: Option<IpAddr>,
    ) -> Result<TokenPair, AuthError> {
        let result = async {
            self.throttle.attempt_from(client).await?;
            self.throttle.check_account(&email, client).await?;
            let credentials = self.store.find_credentials(&email).await?;
            let (user_id, hash) =
                credentials.map_or((None, None), |(id, hash)| (Some(id), Some(hash)));
            let matches = self
                .passwords
                .verify(password, hash)
                .await
                .map_err(AuthError::Internal)?;
            let Some(user_id) = user_id.filter(|_| matches) else {
                self.throttle.record_failure(&email, client).await;
                return Err(AuthError::InvalidCredentials);
            };
            self.throttle.clear(&email, client).await;
            tracing::Span::current().record("user_id", tracing::field::display(user_id));
            self.open_session(user_id).await
        }
        .await;
        self.metrics.outcome("login", outcome(&result));
        result
    }
}

pub(crate) fn outcome<T>(result: &Result<T, AuthError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(err) => err.reason(),
    }
}
