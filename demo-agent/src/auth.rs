//! Who may start a run: the service token on each `Run` call, checked against a JWKS.
//!
//! The gateway calls a backend with a service token that auth-service issued for
//! audience = the agent's name and scope `agent.run`. When `AUTH_JWKS_URL` is set, each call
//! must carry one; the signature, issuer, audience, expiry and scope are checked with the
//! same [`Verifier`] every Tollgate service uses.
//!
//! Why the keys come over HTTP rather than auth-service's `GetJwks` RPC (what
//! `tollgate_shared::jwks` uses): `AUTH_JWKS_URL` is the variable every agent backend reads,
//! whatever its language, and it names a JWKS document such as auth-service's
//! `/.well-known/jwks.json`. The refresh policy is the shared one: a periodic refresh, plus
//! one early refresh when a token names an unknown `kid`, at most once per interval, so
//! forged kids cannot turn into a flood of fetches.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};
use tollgate_shared::{
    backoff::ExponentialBackoff,
    grpc::bearer_token,
    probe_gate::ProbeGate,
    shutdown::Shutdown,
    tokens::{JwkSet, KeySet, ServiceClaims, TokenError, Verifier, VerifierSettings},
};
use tonic::{Status, metadata::MetadataMap};
use url::Url;

/// The scope a token must hold to start a run.
pub const RUN_SCOPE: &str = "agent.run";
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How long one JWKS fetch may take, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Early refreshes for unknown kids: at most one per interval.
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a call waits for a fetch under way before its token is judged.
const KEYS_WAIT: Duration = Duration::from_secs(2);

/// What a [`ServiceAuth`] accepts.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Where the JWK Set is published (auth-service's `/.well-known/jwks.json`).
    pub jwks_url: Url,
    /// This agent's name: the `aud` its callers' tokens must carry.
    pub audience: String,
    /// The expected `iss`.
    pub issuer: String,
    /// Tolerance on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Verifies that each `Run` call carries a service token for this agent with scope
/// `agent.run`. Cloning shares the keys.
#[derive(Clone, Debug)]
pub struct ServiceAuth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    verifier: Verifier,
    url: Url,
    client: reqwest::Client,
    gate: ProbeGate,
    /// Bumped after every successful fetch, so callers can wait for one under way.
    loaded: watch::Sender<u64>,
}

/// Why the keys could not be fetched. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching the JWKS failed: {0}")]
    Fetch(#[from] reqwest::Error),
    #[error("the JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the JWKS is not a JWK Set: {0}")]
    Parse(#[from] serde_json::Error),
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthFailure {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the caller's token cannot be checked yet: no signing keys")]
    NoKeys,
}

impl From<AuthFailure> for Status {
    fn from(failure: AuthFailure) -> Self {
        let (code, reason) = match failure {
            AuthFailure::Token(TokenError::InsufficientScope) => (
                tonic::Code::PermissionDenied,
                TokenError::InsufficientScope.reason(),
            ),
            AuthFailure::Token(error) => (tonic::Code::Unauthenticated, error.reason()),
            AuthFailure::NoKeys => (tonic::Code::Unavailable, "keys_unavailable"),
        };
        tracing::debug!(reason, "run refused");
        let mut status = Status::new(code, failure.to_string());
        if let Ok(value) = reason.parse() {
            status.metadata_mut().insert("tollgate-reason", value);
        }
        status
    }
}

impl ServiceAuth {
    /// A verifier with no keys yet: [`ServiceAuth::refresh`] or the refresher loads them (and
    /// the first call with an unknown `kid` fetches them too).
    pub fn new(settings: AuthSettings) -> anyhow::Result<Self> {
        let AuthSettings {
            jwks_url,
            audience,
            issuer,
            leeway,
        } = settings;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(FETCH_TIMEOUT)
            .build()?;
        let settings = VerifierSettings {
            issuer,
            // User access tokens are never accepted here; only the service audience matters.
            audience: audience.clone(),
            service_audience: audience,
            leeway,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                verifier: Verifier::new(settings, KeySet::default()),
                url: jwks_url,
                client,
                gate: ProbeGate::new(UNKNOWN_KID_INTERVAL),
                loaded: watch::Sender::new(0),
            }),
        })
    }

    /// Whether keys have been loaded.
    pub fn has_keys(&self) -> bool {
        !self.inner.verifier.keys().is_empty()
    }

    /// Fetches the JWKS now and returns how many usable keys it holds.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        self.inner.gate.hold();
        let mut response = self
            .inner
            .client
            .get(self.inner.url.clone())
            .send()
            .await?
            .error_for_status()?;
        if response
            .content_length()
            .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)?;
        let keys = KeySet::from_jwks(&set.keys);
        let count = keys.len();
        self.inner.verifier.replace_keys(keys);
        self.inner.loaded.send_modify(|version| *version += 1);
        Ok(count)
    }

    /// Refreshes every `period` until shutdown, sooner after a failure.
    pub fn spawn_refresher(&self, period: Duration, shutdown: Shutdown) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff =
                ExponentialBackoff::new(Duration::from_millis(250), period, 0.5).start();
            loop {
                let wait = match this.refresh().await {
                    Ok(_) => {
                        backoff.reset();
                        period
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "refreshing the JWKS failed");
                        backoff.next_delay()
                    }
                };
                if !shutdown.sleep(wait).await {
                    return;
                }
            }
        })
    }

    /// Checks the call's `authorization: Bearer <service token>`.
    pub(crate) async fn check(&self, metadata: &MetadataMap) -> Result<ServiceClaims, AuthFailure> {
        let token = bearer_token(metadata).ok_or(TokenError::Missing)?;
        let verify = || self.inner.verifier.verify_service(token, RUN_SCOPE);
        let verified = match verify() {
            Err(TokenError::UnknownKey) => {
                self.refresh_for_unknown_kid().await;
                verify()
            }
            other => other,
        };
        match verified {
            Err(TokenError::UnknownKey) if !self.has_keys() => Err(AuthFailure::NoKeys),
            other => Ok(other?),
        }
    }

    /// A token names a key we do not hold: the keys may still be loading (just after start)
    /// or a rotation may have published a new one. Fetch now unless a fetch was made within
    /// the interval; then wait, bounded, for the fetch under way or for the gate to open.
    async fn refresh_for_unknown_kid(&self) {
        let mut loaded = self.inner.loaded.subscribe();
        let seen = *loaded.borrow_and_update();
        if self.inner.gate.try_claim().is_none() {
            let wait = self.inner.gate.until_open().min(KEYS_WAIT);
            let fetched = loaded.wait_for(|version| *version > seen);
            if tokio::time::timeout(wait, fetched).await.is_ok()
                || self.inner.gate.try_claim().is_none()
            {
                return;
            }
        }
        if let Err(error) = self.refresh().await {
            tracing::warn!(error = %error, "refreshing the JWKS for an unknown kid failed");
        }
    }
}
