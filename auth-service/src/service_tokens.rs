//! Service tokens (OAuth 2.0 client credentials) and the admin operations that require one.

use tollgate_shared::{
    events::KEYS_CHANNEL,
    time::unix_now,
    tokens::{ServiceClaims, service_audience_allows},
};
use uuid::Uuid;

use crate::{accounts::outcome, auth::Auth, error::AuthError};

/// The audience of service tokens that auth-service itself accepts.
pub const SELF_AUDIENCE: &str = "auth-service";

/// A service token, as issued.
#[derive(Debug)]
pub struct ServiceToken {
    pub access_token: String,
    pub expires_in: std::time::Duration,
    pub scopes: Vec<String>,
}

impl Auth {
    #[tracing::instrument(skip_all, fields(client_id = %client_id, audience = %audience))]
    pub fn issue_service_token(
        &self,
        client_id: &str,
        client_secret: &str,
        audience: &str,
        requested_scopes: &[String],
    ) -> Result<ServiceToken, AuthError> {
        let result = self.mint_service_token(client_id, client_secret, audience, requested_scopes);
        self.metrics.outcome("service_token", outcome(&result));
        result
    }

    fn mint_service_token(
        &self,
        client_id: &str,
        client_secret: &str,
        audience: &str,
        requested_scopes: &[String],
    ) -> Result<ServiceToken, AuthError> {
        if client_id.is_empty() || client_secret.is_empty() {
            return Err(AuthError::InvalidClient);
        }
        if client_id.len() > 256 || client_secret.len() > 1024 || requested_scopes.len() > 32 {
            return Err(AuthError::InvalidInput("client credentials are too large"));
        }
        let scopes = self
            .clients
            .authenticate(client_id, client_secret, requested_scopes)?;
        if !service_audience_allows(audience, &scopes) {
            return Err(AuthError::InvalidAudience);
        }
        let now = unix_now();
        let ttl = self.tokens.service_token_ttl;
        let claims = ServiceClaims {
            iss: self.tokens.issuer.clone(),
            sub: client_id.to_owned(),
            aud: audience.to_owned(),
            exp: now + ttl.as_secs() as i64,
            iat: now,
            nbf: now,
            jti: Uuid::new_v4().to_string(),
            scope: scopes.join(" "),
        };
        Ok(ServiceToken {
            access_token: self.keys.signer().sign(&claims),
            expires_in: ttl,
            scopes,
        })
    }

    /// Checks a service token addressed to auth-service for `scope`.
    pub async fn authorize_service(
        &self,
        token: Option<&str>,
        scope: &str,
    ) -> Result<ServiceClaims, AuthError> {
        let token = token.ok_or(AuthError::InvalidToken(
            tollgate_shared::tokens::TokenError::Missing,
        ))?;
        Ok((*self
            .validator
            .verify_service(&self.keys, token, scope)
            .await?)
            .clone())
    }

    /// Rotates the signing key and tells every replica.
    pub async fn rotate_signing_key(&self) -> Result<(String, String), AuthError> {
        let (kid, previous) = self.keys.rotate().await?;
        self.engine.publish(KEYS_CHANNEL, kid.clone()).await;
        tracing::info!(%kid, %previous, "signing key rotated");
        Ok((kid, previous))
    }
}
