//! The service core: every operation of the contract as a method on [`Auth`], taking validated
//! domain types and returning domain results. The gRPC and HTTP layers only convert.

use std::{sync::Arc, time::Duration};

use tollgate_shared::{
    client_addr::TrustedProxies,
    engine::{Engine, Heard},
    events::{KEYS_CHANNEL, REVOCATIONS_CHANNEL, Revocation},
    shutdown::Shutdown,
    time::{unix_now, unix_now_ms},
    tokens::AccessClaims,
};
use uuid::Uuid;

use crate::store::SessionLifetime;
use crate::{
    clients::ClientRegistry, domain::RefreshToken, error::AuthError, keys::KeyRing,
    metrics::AuthMetrics, passwords::Passwords, revocation_feed::RevocationFeed, store::Store,
    throttle::Throttle, validation::Validator,
};

/// Token lifetimes and names.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub session_max_lifetime: Duration,
    pub service_token_ttl: Duration,
}

impl TokenSettings {
    pub fn session_lifetime(&self) -> SessionLifetime {
        let millis = |duration: Duration| duration.as_millis().try_into().unwrap_or(i64::MAX);
        SessionLifetime {
            refresh_ttl_ms: millis(self.refresh_ttl),
            max_lifetime_ms: millis(self.session_max_lifetime),
        }
    }
}

/// A freshly issued access + refresh token pair.
#[derive(Debug)]
pub struct TokenPair {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub access_token: String,
    pub refresh_token: RefreshToken,
    pub expires_in: Duration,
}

#[derive(Debug)]
pub struct Auth {
    pub(crate) store: Store,
    pub(crate) engine: Engine,
    pub(crate) keys: KeyRing,
    pub(crate) passwords: Passwords,
    pub(crate) clients: ClientRegistry,
    pub(crate) throttle: Throttle,
    /// Whose forwarding headers name the client (`TRUSTED_PROXIES`).
    pub(crate) proxies: TrustedProxies,
    pub(crate) validator: Validator,
    pub(crate) tokens: TokenSettings,
    pub(crate) metrics: AuthMetrics,
    /// Every revocation made here or heard from other replicas, for `WatchRevocations`.
    pub(crate) feed: Arc<RevocationFeed>,
}

impl Auth {
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Signs an access token for a session.
    pub(crate) fn access_token(&self, user_id: Uuid, session_id: Uuid) -> String {
        let now = unix_now();
        let claims = AccessClaims {
            iss: self.tokens.issuer.clone(),
            sub: user_id,
            aud: self.tokens.audience.clone(),
            exp: now + self.tokens.access_ttl.as_secs() as i64,
            iat: now,
            nbf: now,
            jti: Uuid::new_v4().to_string(),
            sid: session_id,
        };
        self.keys.signer().sign(&claims)
    }

    pub(crate) fn token_pair(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        refresh_token: RefreshToken,
    ) -> TokenPair {
        TokenPair {
            user_id,
            session_id,
            access_token: self.access_token(user_id, session_id),
            refresh_token,
            expires_in: self.tokens.access_ttl,
        }
    }

    /// Opens a new session for a user who just proved who they are.
    pub(crate) async fn open_session(&self, user_id: Uuid) -> Result<TokenPair, AuthError> {
        let session_id = Uuid::new_v4();
        let refresh = RefreshToken::generate();
        let now = unix_now_ms();
        let expires_at = self.tokens.session_lifetime().expires_at(now, now);
        self.store
            .create_session(session_id, user_id, &refresh.hash(), now, expires_at)
            .await?;
        Ok(self.token_pair(user_id, session_id, refresh))
    }

    /// Makes a revocation visible everywhere: this replica's cache at once, the others (and the
    /// gateways) through the revocation event.
    pub(crate) async fn announce_revocation(&self, session_id: Uuid, user_id: Uuid, reason: &str) {
        self.validator.mark_revoked(session_id);
        self.metrics.revoked();
        let event = Revocation {
            session_id,
            user_id,
            revoked_at_ms: unix_now_ms(),
            reason: reason.to_owned(),
        };
        match serde_json::to_string(&event) {
            Ok(payload) => self.engine.publish(REVOCATIONS_CHANNEL, payload).await,
            Err(err) => tracing::error!(error = %err, "encoding a revocation failed"),
        }
    }

    /// Applies other replicas' revocations and key changes until shutdown.
    pub(crate) fn spawn_event_listener(
        self: &Arc<Self>,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        self.engine.spawn_listener(shutdown, move |heard| {
            let this = Arc::clone(&this);
            async move {
                match heard {
                    Heard::Message(message) if message.channel == REVOCATIONS_CHANNEL => {
                        match serde_json::from_str::<Revocation>(&message.payload) {
                            Ok(revocation) => {
                                this.validator.mark_revoked(revocation.session_id);
                                this.feed.record(revocation);
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "ignoring a malformed revocation event")
                            }
                        }
                    }
                    Heard::Message(message) if message.channel == KEYS_CHANNEL => {
                        this.reload_keys().await;
                    }
                    Heard::Message(_) => {}
                    Heard::Lagged(missed) => {
                        // Missed revocations still reach the validator through the session
                        // cache's short life; revocation watchers miss them.
                        tracing::warn!(missed, "event listener lagged; reloading keys");
                        this.reload_keys().await;
                    }
                }
            }
        })
    }

    /// Reloads the signing keys every `period` until shutdown (a safety net for missed events).
    pub(crate) fn spawn_key_reloader(
        self: &Arc<Self>,
        period: Duration,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(period) => this.reload_keys().await,
                    () = shutdown.wait() => return,
                }
            }
        })
    }

    async fn reload_keys(&self) {
        if let Err(err) = self.keys.reload().await {
            tracing::warn!(error = %err, "reloading signing keys failed");
        }
    }
}
