//! Moving stored signing keys onto the newest key-encryption key.
//!
//! Two passes share this code. At startup, rows still in plaintext (written before sealing
//! existed) are sealed, and every row must open under the configured keyring, or the service
//! refuses to start: a wrong or incomplete `AUTH_KEY_ENCRYPTION_KEYS` is caught before a token
//! is signed. `auth-service keys rewrap` additionally re-seals rows sealed under older KEKs, so
//! an operator can then remove those KEKs.
//!
//! Each row is replaced by compare-and-set on its previous value, so both passes are
//! idempotent, resumable after a crash, and safe while replicas run, rotate keys or run the
//! same pass: a writer that loses the race re-reads the row and tries again.

use tollgate_shared::tokens::SigningKey;

use crate::{
    sealing::{self, KeyEncryptionKeys, OpenError, Stored},
    store::{Store, StoreError},
};

/// How often one row is re-read after losing a compare-and-set before the pass gives up on it.
const ATTEMPTS_PER_ROW: usize = 5;

/// Which rows a pass re-seals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only plaintext rows (startup).
    Plaintext,
    /// Plaintext rows and rows sealed under older KEKs (`keys rewrap`).
    AllOlder,
}

/// What a pass did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows this pass sealed or re-sealed.
    pub resealed: usize,
    /// Rows sealed under the newest KEK when the pass ended.
    pub on_newest: usize,
    /// Rows still on an older KEK (or in plaintext) when the pass ended.
    pub on_older: usize,
    /// Rows the keyring cannot open, with the reason.
    pub unopenable: Vec<(String, OpenError)>,
}

impl Report {
    /// The startup verdict: every stored key opens, or one line naming the variable.
    pub fn require_all_open(&self) -> anyhow::Result<()> {
        match self.unopenable.first() {
            None => Ok(()),
            Some((kid, reason)) => Err(anyhow::anyhow!(
                "{}: {} of {} stored signing keys cannot be opened; signing key {kid}: {reason}",
                sealing::VARIABLE,
                self.unopenable.len(),
                self.unopenable.len() + self.on_newest + self.on_older,
            )),
        }
    }
}

/// Re-seals the rows in `scope` under the newest KEK and reports where every row stands.
pub async fn reseal(
    store: &Store,
    keys: &KeyEncryptionKeys,
    scope: Scope,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for (kid, secret) in store.all_key_secrets().await? {
        reseal_row(store, keys, scope, kid, secret, &mut report).await?;
    }
    Ok(report)
}

async fn reseal_row(
    store: &Store,
    keys: &KeyEncryptionKeys,
    scope: Scope,
    kid: String,
    mut secret: String,
    report: &mut Report,
) -> Result<(), StoreError> {
    for _ in 0..ATTEMPTS_PER_ROW {
        let stored = sealing::classify(&secret);
        let plaintext = match stored {
            Stored::Plaintext => match sealing::plaintext_secret(&secret) {
                Some(plaintext) if SigningKey::from_secret_bytes(&plaintext).kid() == kid => {
                    plaintext
                }
                _ => return unopenable(report, kid, OpenError::Malformed),
            },
            Stored::Sealed(_) | Stored::Malformed => match keys.open(&kid, &secret) {
                Ok(plaintext) => plaintext,
                Err(reason) => return unopenable(report, kid, reason),
            },
        };
        let current = stored == Stored::Sealed(keys.newest());
        let wanted = match scope {
            Scope::Plaintext => stored == Stored::Plaintext,
            Scope::AllOlder => !current,
        };
        if !wanted {
            if current {
                report.on_newest += 1;
            } else {
                report.on_older += 1;
            }
            return Ok(());
        }
        let sealed = keys.seal(&kid, &plaintext);
        if store.replace_key_secret(&kid, &secret, &sealed).await? {
            report.resealed += 1;
            report.on_newest += 1;
            return Ok(());
        }
        match store.key_secret(&kid).await? {
            Some(now) => secret = now,
            // Deleted meanwhile (a replica that lost the race for the first key).
            None => return Ok(()),
        }
    }
    tracing::warn!(%kid, "a signing key kept changing while it was re-sealed; left as it is");
    report.on_older += 1;
    Ok(())
}

fn unopenable(report: &mut Report, kid: String, reason: OpenError) -> Result<(), StoreError> {
    report.unopenable.push((kid, reason));
    Ok(())
}
