//! A token verifier fed by auth-service's JWKS, for services that verify tokens locally (the
//! gateway's fast path, usage-service's service-token checks).
//!
//! Keys are fetched over gRPC (`GetJwks`) at startup, refreshed periodically, and refreshed
//! early when a token names an unknown `kid`, at most once per `min_refresh_interval`, so a
//! flood of forged kids cannot turn into a flood of JWKS requests. A token whose kid is unknown
//! within that interval waits for the next refresh rather than being refused, so a key rotated
//! just after a fetch is accepted at once.

use std::{sync::Arc, time::Duration};

use sha2::{Digest, Sha256};
use tollgate_proto::auth::v1::{GetJwksRequest, auth_service_client::AuthServiceClient};

use crate::{
    backoff::{ExponentialBackoff, STARTUP_GRACE, StartupGrace},
    grpc::TracedChannel,
    probe_gate::ProbeGate,
    shutdown::Shutdown,
    time::unix_now,
    tokens::{
        AccessClaims, Jwk, KeySet, ServiceClaims, TokenError, Verified, Verifier, VerifierSettings,
    },
};

/// How long a caller waits for a key set on its way (the first one, or a refresh another
/// caller started) before being refused.
const KEYS_WAIT: Duration = Duration::from_secs(2);

type Client = AuthServiceClient<TracedChannel>;

/// A [`Verifier`] whose keys come from auth-service.
#[derive(Clone, Debug)]
pub struct JwksVerifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    verifier: Verifier,
    client: Client,
    /// Refreshes prompted by unknown `kid`s: at most one per interval.
    gate: ProbeGate,
    /// Verified service tokens by SHA-256: a caller presents the same one for minutes, and a
    /// signature check per call would dominate a cheap RPC.
    service_tokens: quick_cache::sync::Cache<[u8; 32], Arc<ServiceClaims>>,
    /// Bumped after every successful refresh, so callers can wait for the first key set.
    loaded: tokio::sync::watch::Sender<u64>,
}

impl JwksVerifier {
    pub fn new(
        channel: TracedChannel,
        settings: VerifierSettings,
        min_refresh_interval: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                verifier: Verifier::new(settings, KeySet::default()),
                client: AuthServiceClient::new(channel),
                gate: ProbeGate::new(min_refresh_interval),
                loaded: tokio::sync::watch::Sender::new(0),
                service_tokens: quick_cache::sync::Cache::new(1_000),
            }),
        }
    }

    /// Whether keys have been loaded (readiness).
    pub fn has_keys(&self) -> bool {
        !self.inner.verifier.keys().is_empty()
    }

    /// Fetches the JWKS now.
    pub async fn refresh(&self) -> Result<usize, tonic::Status> {
        self.inner.gate.hold();
        let response = self
            .inner
            .client
            .clone()
            .get_jwks(GetJwksRequest {})
            .await?
            .into_inner();
        let jwks: Vec<Jwk> = response
            .keys
            .into_iter()
            .map(|key| Jwk {
                kty: key.kty,
                crv: key.crv,
                x: key.x,
                kid: key.kid,
                alg: key.alg,
                use_: key.r#use,
            })
            .collect();
        let keys = KeySet::from_jwks(&jwks);
        let count = keys.len();
        self.inner.verifier.replace_keys(keys);
        self.inner.loaded.send_modify(|version| *version += 1);
        Ok(count)
    }

    /// Refreshes every `period` until shutdown.
    pub fn spawn_refresher(
        &self,
        period: Duration,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            // A failed refresh is retried sooner, from 250 ms doubling up to `period`, so a
            // service started alongside auth-service becomes ready as soon as it answers.
            let mut backoff =
                ExponentialBackoff::new(Duration::from_millis(250), period, 0.5).start();
            let mut grace = StartupGrace::new(STARTUP_GRACE);
            loop {
                let wait = match this.refresh().await {
                    Ok(_) => {
                        grace.answered();
                        backoff.reset();
                        period
                    }
                    Err(status) => {
                        if grace.is_quiet() && status.code() == tonic::Code::Unavailable {
                            tracing::debug!(
                                "auth-service not reachable yet; fetching the JWKS again"
                            );
                        } else {
                            tracing::warn!(code = ?status.code(), "refreshing the JWKS failed");
                        }
                        backoff.next_delay()
                    }
                };
                if !shutdown.sleep(wait).await {
                    return;
                }
            }
        })
    }

    pub async fn verify_access(&self, token: &str) -> Result<Verified<AccessClaims>, TokenError> {
        self.with_unknown_kid_refresh(|verifier| verifier.verify_access(token))
            .await
    }

    /// Verifies a service token addressed to this service and holding `scope`, from the cache
    /// of verified tokens when it can (expiry and scope are checked on every hit).
    pub async fn verify_service(
        &self,
        token: &str,
        scope: &str,
    ) -> Result<ServiceClaims, TokenError> {
        if token.len() > crate::tokens::MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let claims = match self.inner.service_tokens.get(&digest) {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(
                    self.with_unknown_kid_refresh(|verifier| verifier.verify_service_token(token))
                        .await?,
                );
                self.inner
                    .service_tokens
                    .insert(digest, Arc::clone(&claims));
                claims
            }
        };
        let leeway = self.inner.verifier.settings().leeway.as_secs() as i64;
        if claims.exp + leeway < unix_now() {
            self.inner.service_tokens.remove(&digest);
            return Err(TokenError::Expired);
        }
        if claims.has_scope(scope) {
            Ok((*claims).clone())
        } else {
            Err(TokenError::InsufficientScope)
        }
    }

    async fn with_unknown_kid_refresh<T>(
        &self,
        verify: impl Fn(&Verifier) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        match verify(&self.inner.verifier) {
            Err(TokenError::UnknownKey) if self.inner.gate.try_claim().is_some() => {
                if let Err(status) = self.refresh().await {
                    tracing::warn!(code = ?status.code(), "refreshing the JWKS for an unknown kid failed");
                }
                verify(&self.inner.verifier)
            }
            // Before the first key set has arrived (just after startup), wait briefly for the
            // refresh already under way rather than refusing every caller.
            Err(TokenError::UnknownKey) if !self.has_keys() => {
                let mut loaded = self.inner.loaded.subscribe();
                let _ =
                    tokio::time::timeout(KEYS_WAIT, loaded.wait_for(|version| *version > 0)).await;
                verify(&self.inner.verifier)
            }
            // The keys were fetched moments ago, perhaps just before a rotation published this
            // token's key. Refusing would turn a good token away for the rest of the interval
            // (and a client told 401 gets a new token signed by the same key), so wait for the
            // next refresh instead: one already under way, or the one this caller claims when
            // the gate opens. Fetches stay bounded to one per interval; an unknown kid waits
            // at most about that long.
            Err(TokenError::UnknownKey) => {
                let mut loaded = self.inner.loaded.subscribe();
                let seen = *loaded.borrow_and_update();
                let open = self.inner.gate.until_open();
                let refreshed = tokio::time::timeout(open, loaded.wait_for(|v| *v > seen))
                    .await
                    .is_ok();
                if !refreshed {
                    if self.inner.gate.try_claim().is_some() {
                        if let Err(status) = self.refresh().await {
                            tracing::warn!(code = ?status.code(), "refreshing the JWKS for an unknown kid failed");
                        }
                    } else {
                        let refresh = loaded.wait_for(|version| *version > seen);
                        let _ = tokio::time::timeout(KEYS_WAIT, refresh).await;
                    }
                }
                verify(&self.inner.verifier)
            }
            other => other,
        }
    }
}
