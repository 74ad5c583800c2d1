//! Refresh, logout, session listing and token validation.

use std::sync::Arc;

use tollgate_shared::{
    time::unix_now_ms,
    tokens::{AccessClaims, Verified},
};
use uuid::Uuid;

use crate::{
    accounts::outcome,
    auth::{Auth, TokenPair},
    domain::RefreshToken,
    error::{AuthError, RefreshRefusal},
    store::{RefreshOutcome, Rotation, SessionRow},
};

impl Auth {
    /// Rotates a refresh token (CONTRACT §2): a new pair, or a refusal; a replay outside the
    /// grace rules revokes the session.
    #[tracing::instrument(skip_all, fields(session_id = tracing::field::Empty))]
    pub async fn refresh(&self, presented: RefreshToken) -> Result<TokenPair, AuthError> {
        let result = self.rotate(presented).await;
        self.metrics.outcome("refresh", outcome(&result));
        result
    }

    async fn rotate(&self, presented: RefreshToken) -> Result<TokenPair, AuthError> {
        let next = RefreshToken::generate();
        let now_ms = unix_now_ms();
        let rotation = Rotation {
            presented: &presented.hash(),
            next: &next.hash(),
            now_ms,
            lifetime: self.tokens.session_lifetime(),
            grace_ms: self.tokens.refresh_reuse_grace.as_millis() as i64,
        };
        match self.store.rotate_refresh_token(rotation).await? {
            RefreshOutcome::Rotated {
                user_id,
                session_id,
                ..
            } => {
                tracing::Span::current().record("session_id", tracing::field::display(session_id));
                Ok(self.token_pair(user_id, session_id, next))
            }
            RefreshOutcome::ReuseDetected {
                user_id,
                session_id,
            } => {
                tracing::warn!(%session_id, "refresh token reuse detected; session revoked");
                self.announce_revocation(session_id, user_id, "refresh_token_reuse")
                    .await;
                Err(AuthError::InvalidRefreshToken(RefreshRefusal::Reused))
            }
            RefreshOutcome::Unknown => Err(AuthError::InvalidRefreshToken(RefreshRefusal::Unknown)),
            RefreshOutcome::Expired => Err(AuthError::InvalidRefreshToken(RefreshRefusal::Expired)),
            RefreshOutcome::SessionRevoked => {
                Err(AuthError::InvalidRefreshToken(RefreshRefusal::Revoked))
            }
        }
    }

    /// Ends the session a refresh token belongs to. Ending an ended session is not an error.
    pub async fn logout_refresh(&self, token: RefreshToken) -> Result<(), AuthError> {
        let (session_id, user_id) = self
            .store
            .session_of_refresh_token(&token.hash())
            .await?
            .ok_or(AuthError::InvalidRefreshToken(RefreshRefusal::Unknown))?;
        self.revoke(session_id, user_id, "logout").await
    }

    /// Ends the session of an access token (which may already be revoked).
    pub async fn logout_access(&self, token: &str) -> Result<(), AuthError> {
        let verified = self.validator.verify(&self.keys, token).await?;
        self.revoke(verified.claims.sid, verified.claims.sub, "logout")
            .await
    }

    async fn revoke(&self, session_id: Uuid, user_id: Uuid, reason: &str) -> Result<(), AuthError> {
        if self
            .store
            .revoke_session(session_id, unix_now_ms(), reason)
            .await?
        {
            self.announce_revocation(session_id, user_id, reason).await;
        }
        self.metrics.outcome("logout", "ok");
        Ok(())
    }

    /// Ends every session of the access token's user.
    pub async fn logout_all(&self, token: &str) -> Result<usize, AuthError> {
        let verified = self.validate(token).await?;
        let user_id = verified.claims.sub;
        let revoked = self
            .store
            .revoke_all_sessions(user_id, unix_now_ms())
            .await?;
        for session_id in &revoked {
            self.announce_revocation(*session_id, user_id, "logout_all")
                .await;
        }
        self.metrics.outcome("logout_all", "ok");
        Ok(revoked.len())
    }

    /// The live sessions of the access token's user, and which one is the caller's.
    pub async fn list_sessions(&self, token: &str) -> Result<(Vec<SessionRow>, Uuid), AuthError> {
        let verified = self.validate(token).await?;
        let sessions = self
            .store
            .list_sessions(verified.claims.sub, unix_now_ms())
            .await?;
        Ok((sessions, verified.claims.sid))
    }

    /// Validates a user's access token: signature, claims, and a live session.
    pub async fn validate(&self, token: &str) -> Result<Arc<Verified<AccessClaims>>, AuthError> {
        let result = self
            .validator
            .validate(&self.keys, &self.store, token)
            .await;
        self.metrics.outcome(
            "validate",
            result.as_ref().map_or_else(|err| err.reason(), |_| "ok"),
        );
        Ok(result?)
    }
}
