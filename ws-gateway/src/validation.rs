//! Deciding whether an access token opens (or keeps open) a connection.
//!
//! How the local fast path and auth-service's `ValidateToken` combine, in order:
//!
//! 1. **Positive cache**, keyed by the token's SHA-256: the very same token confirmed by
//!    auth-service within the last few seconds (`GATEWAY_VALIDATION_CACHE_TTL`, never past its
//!    `exp`) is accepted again unless its session is on the revocation list, with no signature
//!    check and no call: identical bytes carry the signature already checked. Reconnect storms
//!    cost one verification and one call per token, not per connection.
//! 2. **Local verification** against the cached JWKS ([`JwksVerifier`]): size, header,
//!    algorithm, key id, signature, `iss`, `aud`, `exp`/`nbf` with leeway. Garbage, `alg:
//!    none`, tampered, expired and unknown-`kid` tokens are refused here without a network call
//!    (an unknown `kid` refreshes the JWKS at a bounded rate first, so a rotated key is picked
//!    up). This is what keeps a flood of junk from reaching auth-service.
//! 3. **Cached revocation list**: a session the gateway has heard revoked is refused.
//! 4. **`ValidateToken`** through the circuit breaker, for what only auth-service knows: whether
//!    the session is still live (revoked, logged out everywhere, refresh-token reuse). Its
//!    refusal is final. A session it says is revoked is news like a revocation event: it goes
//!    on the revocation list and its open connections on this node close with 4004.
//! 5. **auth-service unreachable** (breaker open, or the call failed): in `degraded` mode the
//!    locally verified, not-known-revoked token is accepted; in `strict` mode the answer is
//!    "unavailable" (503 at the upgrade, 1013 in-band).
//!
//! Every outcome is counted in `gateway_auth_outcomes` by reason.

use std::time::Duration;

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tollgate_proto::auth::v1::{ValidateTokenRequest, auth_service_client::AuthServiceClient};
use tollgate_shared::{
    grpc::TracedChannel, jwks::JwksVerifier, service_auth::ServiceAuthInterceptor, time::unix_now,
    tokens::TokenError,
};
use tonic::{Code, service::interceptor::InterceptedService};
use uuid::Uuid;

use crate::{
    breaker::Breaker, config::AuthMode, error::AuthFailure, metrics::GatewayMetrics,
    revocations::Revocations,
};

type Client = AuthServiceClient<InterceptedService<TracedChannel, ServiceAuthInterceptor>>;

/// Tokens confirmed by auth-service, remembered briefly.
const CACHED_TOKENS: usize = 50_000;

/// Who a valid token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug)]
pub struct TokenValidator {
    jwks: JwksVerifier,
    client: Client,
    tokens: ServiceAuthInterceptor,
    breaker: Breaker,
    revocations: Revocations,
    confirmed: Cache<[u8; 32], (Identity, Instant)>,
    mode: AuthMode,
    cache_ttl: Duration,
    metrics: GatewayMetrics,
}

impl TokenValidator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        jwks: JwksVerifier,
        channel: TracedChannel,
        interceptor: ServiceAuthInterceptor,
        breaker: Breaker,
        revocations: Revocations,
        mode: AuthMode,
        cache_ttl: Duration,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            jwks,
            client: AuthServiceClient::with_interceptor(channel, interceptor.clone()),
            tokens: interceptor,
            breaker,
            revocations,
            confirmed: Cache::new(CACHED_TOKENS),
            mode,
            cache_ttl,
            metrics,
        }
    }

    pub fn jwks(&self) -> &JwksVerifier {
        &self.jwks
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The token's identity, or why not. See the module documentation for the order.
    #[tracing::instrument(skip_all, fields(outcome = tracing::field::Empty))]
    pub async fn validate(&self, token: &str) -> Result<Identity, AuthFailure> {
        let result = self.decide(token).await;
        let (outcome, reason) = match &result {
            Ok((_, how)) => ("accepted", *how),
            Err(AuthFailure::Invalid(err)) => ("rejected", err.reason()),
            Err(AuthFailure::Unavailable) => ("unavailable", "auth_unavailable"),
        };
        self.metrics.auth(outcome, reason);
        tracing::Span::current().record("outcome", reason);
        result.map(|(identity, _)| identity)
    }

    async fn decide(&self, token: &str) -> Result<(Identity, &'static str), AuthFailure> {
        // A token confirmed moments ago (the very same bytes, so the same signature) needs
        // neither the signature check nor the call again; its session may have been revoked
        // since, which the revocation list says.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((cached, until)) = self.confirmed.get(&digest)
            && Instant::now() < until
        {
            if self.revocations.list().is_revoked(cached.session_id) {
                return Err(AuthFailure::Invalid(TokenError::Revoked));
            }
            return Ok((cached, "cached"));
        }
        let verified = self
            .jwks
            .verify_access(token)
            .await
            .map_err(AuthFailure::Invalid)?;
        let claims = verified.claims;
        let identity = Identity {
            user_id: claims.sub,
            session_id: claims.sid,
            expires_at: claims.exp,
        };
        if self.revocations.list().is_revoked(identity.session_id) {
            return Err(AuthFailure::Invalid(TokenError::Revoked));
        }

        self.tokens.first_token().await;
        let Some(permit) = self.breaker.try_call() else {
            return self.fallback(identity);
        };
        let started = Instant::now();
        let answer = self
            .client
            .clone()
            .validate_token(ValidateTokenRequest {
                token: token.to_owned(),
            })
            .await;
        let elapsed = started.elapsed();
        match answer {
            Ok(response) => {
                permit.success();
                self.metrics.upstream("ValidateToken", "ok", elapsed);
                let response = response.into_inner();
                if response.user_id != identity.user_id.to_string()
                    || response.session_id != identity.session_id.to_string()
                {
                    // auth-service and the JWKS disagree about the same token: refuse it.
                    tracing::error!("ValidateToken answered for another user or session");
                    return Err(AuthFailure::Invalid(TokenError::BadSignature));
                }
                let left = Duration::from_secs(
                    identity.expires_at.saturating_sub(unix_now()).max(0) as u64,
                );
                self.confirmed.insert(
                    digest,
                    (identity, Instant::now() + self.cache_ttl.min(left)),
                );
                Ok((identity, "validated"))
            }
            Err(status) if refusal(&status) => {
                permit.success();
                self.metrics.upstream("ValidateToken", "refused", elapsed);
                if says_revoked(&status) {
                    self.revocations
                        .refused(identity.user_id, identity.session_id);
                }
                Err(AuthFailure::Invalid(reason_of(&status)))
            }
            Err(status) => {
                permit.failure();
                self.metrics.upstream("ValidateToken", "error", elapsed);
                if status.code() == Code::PermissionDenied {
                    tracing::error!(
                        "auth-service refuses the gateway's service token: is auth.validate granted?"
                    );
                } else {
                    tracing::warn!(code = ?status.code(), message = status.message(), "ValidateToken failed");
                }
                self.fallback(identity)
            }
        }
    }

    fn fallback(&self, identity: Identity) -> Result<(Identity, &'static str), AuthFailure> {
        match self.mode {
            AuthMode::Degraded => Ok((identity, "degraded")),
            AuthMode::Strict => Err(AuthFailure::Unavailable),
        }
    }
}

/// Whether auth-service refused the user's token itself (as opposed to failing to answer, or
/// refusing the gateway's own credentials: the user's token is never empty here, so a missing
/// token can only be the gateway's service token).
fn refusal(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unauthenticated | Code::InvalidArgument)
        && reason_of(status) != TokenError::Missing
}

/// Whether auth-service said, in so many words, that the token's session is revoked (a refusal
/// without a reason is refused as revoked, but closes nothing).
fn says_revoked(status: &tonic::Status) -> bool {
    reason_text(status) == TokenError::Revoked.reason()
}

fn reason_text(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("tollgate-reason")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// The `TokenError` behind auth-service's machine-readable reason.
fn reason_of(status: &tonic::Status) -> TokenError {
    const ALL: [TokenError; 13] = [
        TokenError::Missing,
        TokenError::TooLarge,
        TokenError::Malformed,
        TokenError::UnsupportedAlgorithm,
        TokenError::WrongType,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::Revoked,
        TokenError::InsufficientScope,
    ];
    let reason = reason_text(status);
    ALL.into_iter()
        .find(|err| err.reason() == reason)
        .unwrap_or(if status.code() == Code::InvalidArgument {
            TokenError::Malformed
        } else {
            TokenError::Revoked
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_service_reasons_map_back_to_token_errors() {
        let mut status = tonic::Status::unauthenticated("revoked");
        status
            .metadata_mut()
            .insert("tollgate-reason", "session_revoked".parse().unwrap());
        assert_eq!(reason_of(&status), TokenError::Revoked);
        assert!(says_revoked(&status));
        assert!(
            !says_revoked(&tonic::Status::unauthenticated("?")),
            "refused, but nothing to close on a guess"
        );
        let mut status = tonic::Status::unauthenticated("expired");
        status
            .metadata_mut()
            .insert("tollgate-reason", "token_expired".parse().unwrap());
        assert_eq!(reason_of(&status), TokenError::Expired);
        assert_eq!(
            reason_of(&tonic::Status::invalid_argument("?")),
            TokenError::Malformed
        );
        assert!(refusal(&status));
        assert!(!refusal(&tonic::Status::unavailable("down")));
        let mut ours = tonic::Status::unauthenticated("no token");
        ours.metadata_mut()
            .insert("tollgate-reason", "token_missing".parse().unwrap());
        assert!(
            !refusal(&ours),
            "a refusal of the gateway's own credentials"
        );
    }
}
