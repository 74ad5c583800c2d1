//! The signing-key ring: the active Ed25519 key that signs new tokens, plus retired keys that
//! stay published (and accepted) until every token they signed has expired.
//!
//! Keys live in the database, sealed under the key-encryption keys (`crate::sealing`), so
//! restarts and replicas agree and a dump of the database signs nothing. A replica learns of
//! another's rotation from the key-change event, from its periodic reload, or when it meets a
//! token with an unknown `kid` (reloading at most once a second).

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use tollgate_shared::{
    probe_gate::ProbeGate,
    time::unix_now_ms,
    tokens::{
        AccessClaims, Jwk, KeySet, ServiceClaims, SigningKey, TokenError, Verified, Verifier,
        VerifierSettings,
    },
};

use crate::{
    sealing::{self, KeyEncryptionKeys, OpenError},
    store::{Store, StoreError, StoredKey},
};

#[derive(Debug)]
pub struct KeyRing {
    store: Store,
    sealing: KeyEncryptionKeys,
    verifier: Verifier,
    current: RwLock<Arc<Published>>,
    /// How long a retired key stays published: the longest token lifetime plus leeway.
    retention: Duration,
    /// Reloads prompted by unknown kids: at most one a second.
    reload_gate: ProbeGate,
}

#[derive(Debug)]
struct Published {
    active: Arc<SigningKey>,
    jwks: Vec<Jwk>,
}

impl KeyRing {
    /// Loads the keys, creating the first one if this is a new deployment.
    pub async fn load(
        store: Store,
        sealing: KeyEncryptionKeys,
        settings: VerifierSettings,
        retention: Duration,
    ) -> Result<Self, StoreError> {
        if store.active_kid().await?.is_none() {
            store
                .bootstrap_key(&to_stored(&SigningKey::generate(), &sealing))
                .await?;
        }
        let (published, keys) = read(&store, &sealing, retention).await?;
        Ok(Self {
            verifier: Verifier::new(settings, keys),
            current: RwLock::new(Arc::new(published)),
            store,
            sealing,
            retention,
            reload_gate: ProbeGate::new(Duration::from_secs(1)),
        })
    }

    /// Re-reads the keys from the database.
    pub async fn reload(&self) -> Result<(), StoreError> {
        self.reload_gate.hold();
        let (published, keys) = read(&self.store, &self.sealing, self.retention).await?;
        self.verifier.replace_keys(keys);
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(published);
        Ok(())
    }

    fn published(&self) -> Arc<Published> {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub fn signer(&self) -> Arc<SigningKey> {
        self.published().active.clone()
    }

    pub fn jwks(&self) -> Vec<Jwk> {
        self.published().jwks.clone()
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Verifies an access token, reloading the keys once if it names a key this replica has
    /// not seen yet (another replica may just have rotated).
    pub async fn verify_access(&self, token: &str) -> Result<Verified<AccessClaims>, TokenError> {
        self.with_reload(|verifier| verifier.verify_access(token))
            .await
    }

    /// Verifies a service token addressed to auth-service (whatever its scopes), reloading on
    /// an unknown key the same way.
    pub async fn verify_service_token(&self, token: &str) -> Result<ServiceClaims, TokenError> {
        self.with_reload(|verifier| verifier.verify_service_token(token))
            .await
    }

    async fn with_reload<T>(
        &self,
        verify: impl Fn(&Verifier) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        match verify(&self.verifier) {
            Err(TokenError::UnknownKey) if self.reload_gate.try_claim().is_some() => {
                if let Err(err) = self.reload().await {
                    tracing::warn!(error = %err, "reloading signing keys failed");
                }
                verify(&self.verifier)
            }
            other => other,
        }
    }

    /// Rotates to a new key. Returns `(new kid, previous kid)`. If another replica rotated at
    /// the same moment, its key wins and is returned.
    pub async fn rotate(&self) -> Result<(String, String), StoreError> {
        let previous = self
            .store
            .active_kid()
            .await?
            .ok_or_else(|| StoreError::Corrupt("no active signing key".into()))?;
        let next = SigningKey::generate();
        self.store
            .rotate_key(&previous, &to_stored(&next, &self.sealing))
            .await?;
        self.reload().await?;
        Ok((self.signer().kid().to_owned(), previous))
    }
}

fn to_stored(key: &SigningKey, sealing: &KeyEncryptionKeys) -> StoredKey {
    let secret = zeroize::Zeroizing::new(key.secret_bytes());
    StoredKey {
        kid: key.kid().to_owned(),
        secret: sealing.seal(key.kid(), &secret),
        created_at_ms: unix_now_ms(),
        retired_at_ms: None,
    }
}

async fn read(
    store: &Store,
    sealing: &KeyEncryptionKeys,
    retention: Duration,
) -> Result<(Published, KeySet), StoreError> {
    let active_kid = store
        .active_kid()
        .await?
        .ok_or_else(|| StoreError::Corrupt("no active signing key".into()))?;
    let stored = store
        .load_keys(unix_now_ms() - retention.as_millis() as i64)
        .await?;
    let mut active = None;
    let mut jwks = Vec::with_capacity(stored.len());
    for key in stored {
        let signing = SigningKey::from_secret_bytes(&*open(sealing, &key)?);
        if signing.kid() != key.kid {
            return Err(StoreError::Corrupt(format!(
                "signing key {} does not match its kid",
                key.kid
            )));
        }
        jwks.push(signing.jwk().clone());
        if key.kid == active_kid {
            active = Some(Arc::new(signing));
        }
    }
    let active =
        active.ok_or_else(|| StoreError::Corrupt("the active signing key is missing".into()))?;
    let keys = KeySet::from_jwks(&jwks);
    Ok((Published { active, jwks }, keys))
}

/// Opens a stored key. A plaintext row (written by a replica that predates sealing, during an
/// upgrade) is still used, with a warning; the next start or `keys rewrap` seals it.
fn open(
    sealing: &KeyEncryptionKeys,
    key: &StoredKey,
) -> Result<zeroize::Zeroizing<[u8; 32]>, StoreError> {
    match sealing.open(&key.kid, &key.secret) {
        Ok(secret) => Ok(secret),
        Err(OpenError::Plaintext) => {
            tracing::warn!(kid = %key.kid, "a signing key is stored in plaintext; run `auth-service keys rewrap`");
            sealing::plaintext_secret(&key.secret).ok_or_else(|| {
                StoreError::Corrupt(format!("signing key {} is unreadable", key.kid))
            })
        }
        Err(reason) => Err(StoreError::Corrupt(format!(
            "signing key {}: {reason}",
            key.kid
        ))),
    }
}
