//! Token validation with caches, so `ValidateToken` rarely touches the database or repeats a
//! signature check:
//!
//! - verified claims by the SHA-256 of the token (a hit skips the signature check; the expiry
//!   is re-checked on every hit);
//! - session status by session id: "active" entries are trusted for a few seconds, "revoked"
//!   entries for good. A revocation on this replica writes "revoked" before it answers, and
//!   other replicas write it when the revocation event arrives, so revocation takes effect at
//!   once; the short life of "active" entries bounds the damage of a missed event;
//! - verified service tokens by their SHA-256 (callers present the same one for minutes).
//!
//! When the database is unreachable, sessions not known to be revoked stay valid (CONTRACT §6:
//! validating existing tokens goes on).

use std::{sync::Arc, time::Duration};

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tollgate_shared::{
    time::{unix_now, unix_now_ms},
    tokens::{AccessClaims, MAX_TOKEN_BYTES, ServiceClaims, TokenError, Verified},
};
use uuid::Uuid;

use crate::{
    keys::KeyRing,
    store::{SessionStatus, Store},
};

const ACTIVE_SESSION_TTL: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Validator {
    tokens: Cache<[u8; 32], Arc<Verified<AccessClaims>>>,
    /// Verified service tokens: a caller presents the same one for minutes.
    service_tokens: Cache<[u8; 32], Arc<ServiceClaims>>,
    sessions: Cache<Uuid, (SessionStatus, Instant)>,
    leeway_secs: i64,
}

impl Validator {
    pub fn new(leeway: Duration) -> Self {
        Self {
            tokens: Cache::new(100_000),
            service_tokens: Cache::new(1_000),
            sessions: Cache::new(100_000),
            leeway_secs: leeway.as_secs() as i64,
        }
    }

    /// Verifies the token and checks that its session is live.
    pub async fn validate(
        &self,
        keys: &KeyRing,
        store: &Store,
        token: &str,
    ) -> Result<Arc<Verified<AccessClaims>>, TokenError> {
        let verified = self.verify(keys, token).await?;
        match self.session_status(store, verified.claims.sid).await {
            SessionStatus::Active => Ok(verified),
            SessionStatus::Revoked => Err(TokenError::Revoked),
            SessionStatus::Gone => Err(TokenError::Revoked),
        }
    }

    /// Signature and claims only, through the claims cache.
    pub async fn verify(
        &self,
        keys: &KeyRing,
        token: &str,
    ) -> Result<Arc<Verified<AccessClaims>>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.tokens.get(&digest) {
            if cached.claims.exp + self.leeway_secs < unix_now() {
                self.tokens.remove(&digest);
                return Err(TokenError::Expired);
            }
            return Ok(cached);
        }
        let verified = Arc::new(keys.verify_access(token).await?);
        self.tokens.insert(digest, verified.clone());
        Ok(verified)
    }

    /// Verifies a service token addressed to auth-service and checks its scope, through a cache
    /// of verified tokens (expiry and scope are checked on every hit).
    pub async fn verify_service(
        &self,
        keys: &KeyRing,
        token: &str,
        scope: &str,
    ) -> Result<Arc<ServiceClaims>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let claims = match self.service_tokens.get(&digest) {
            Some(cached) if cached.exp + self.leeway_secs >= unix_now() => cached,
            Some(_) => {
                self.service_tokens.remove(&digest);
                return Err(TokenError::Expired);
            }
            None => {
                // Verified whatever its scopes, so one cache entry serves every scope.
                let claims = Arc::new(keys.verify_service_token(token).await?);
                self.service_tokens.insert(digest, Arc::clone(&claims));
                claims
            }
        };
        if claims.has_scope(scope) {
            Ok(claims)
        } else {
            Err(TokenError::InsufficientScope)
        }
    }

    async fn session_status(&self, store: &Store, session_id: Uuid) -> SessionStatus {
        if let Some((status, at)) = self.sessions.get(&session_id)
            && (status == SessionStatus::Revoked || at.elapsed() < ACTIVE_SESSION_TTL)
        {
            return status;
        }
        match store.session_status(session_id, unix_now_ms()).await {
            Ok(status) => {
                // A revocation may have landed while we read: never overwrite it.
                if !matches!(
                    self.sessions.get(&session_id),
                    Some((SessionStatus::Revoked, _))
                ) {
                    self.sessions.insert(session_id, (status, Instant::now()));
                }
                status
            }
            Err(err) => {
                tracing::warn!(error = %err, "session lookup failed; trusting the revocation cache");
                SessionStatus::Active
            }
        }
    }

    /// Records a revocation (from this replica or from an event).
    pub fn mark_revoked(&self, session_id: Uuid) {
        self.sessions
            .insert(session_id, (SessionStatus::Revoked, Instant::now()));
    }
}
