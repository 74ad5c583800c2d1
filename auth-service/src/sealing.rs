//! Signing keys sealed at rest: a database dump or backup alone must not let anyone mint tokens.
//!
//! Each private key is stored as an envelope `v1.<kek id>.<base64url(nonce ‖ ciphertext)>`,
//! sealed with XChaCha20-Poly1305 under a key-encryption key (KEK) from
//! `AUTH_KEY_ENCRYPTION_KEYS`, with the version and the signing key's `kid` as associated data
//! (so an envelope copied onto another row does not open). The extended nonce makes random
//! nonces safe however many envelopes are sealed, and the cipher is constant-time in software.
//!
//! The keyring lists KEKs newest first: the newest seals, every one opens, and the envelope
//! names the KEK that sealed it by a public fingerprint (derived from the KEK, revealing
//! nothing about it), so a KEK can be retired once `auth-service keys rewrap` has moved every
//! row off it. Plaintext from the keyring and from opened envelopes is wiped when dropped.

use std::{fmt, sync::Arc};

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The variable that holds the keyring; errors name it, never its value.
pub const VARIABLE: &str = "AUTH_KEY_ENCRYPTION_KEYS";
/// Shortest accepted KEK, in bytes of key material.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest accepted KEK, so a pasted file cannot become a key by mistake.
const MAX_KEY_BYTES: usize = 1024;
/// The envelope version; it is part of the associated data.
const VERSION: &str = "v1";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const SECRET_BYTES: usize = 32;

/// The public fingerprint of a KEK, written into every envelope it seals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekId([u8; 8]);

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({self})")
    }
}

impl KekId {
    fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 8];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

struct Kek {
    id: KekId,
    cipher: XChaCha20Poly1305,
}

impl Kek {
    fn derive(material: &[u8]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(b"tollgate-auth key-encryption key"), material);
        let mut key = Zeroizing::new([0u8; 32]);
        let mut id = [0u8; 8];
        hkdf.expand(b"xchacha20poly1305 key v1", key.as_mut())
            .and_then(|()| hkdf.expand(b"fingerprint v1", &mut id))
            .expect("HKDF-SHA256 yields 40 bytes");
        Self {
            id: KekId(id),
            cipher: XChaCha20Poly1305::new(key.as_ref().into()),
        }
    }
}

/// The keyring of `AUTH_KEY_ENCRYPTION_KEYS`, newest first. Its `Debug` shows only the
/// fingerprints.
#[derive(Clone)]
pub struct KeyEncryptionKeys {
    keys: Arc<Vec<Kek>>,
}

impl fmt::Debug for KeyEncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEncryptionKeys")
            .field("ids", &self.ids())
            .finish()
    }
}

/// What a stored `secret` column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// An envelope sealed under this KEK.
    Sealed(KekId),
    /// A plaintext key as written before sealing existed (base64url of 32 bytes).
    Plaintext,
    /// Neither.
    Malformed,
}

/// Why an envelope did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("it is sealed under key-encryption key {0}, which is not in {VARIABLE}")]
    UnknownKek(KekId),
    #[error(
        "it does not open under key-encryption key {0} (a different key with that fingerprint, or a tampered row)"
    )]
    Rejected(KekId),
    #[error("it is stored in plaintext")]
    Plaintext,
    #[error("it is not a sealed key")]
    Malformed,
}

impl KeyEncryptionKeys {
    /// Parses `AUTH_KEY_ENCRYPTION_KEYS`: comma-separated base64 (standard or URL-safe, padding
    /// optional), newest first, each at least 32 bytes. Errors name the entry by position,
    /// never its value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut keys: Vec<Kek> = Vec::new();
        for (index, entry) in value.split(',').map(str::trim).enumerate() {
            let position = index + 1;
            if entry.is_empty() {
                return Err(format!("entry {position} is empty"));
            }
            let material =
                decode(entry).ok_or_else(|| format!("entry {position} is not base64"))?;
            if material.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "entry {position} has {} bytes; each key needs at least {MIN_KEY_BYTES} random bytes (e.g. `openssl rand -base64 32`)",
                    material.len()
                ));
            }
            if material.len() > MAX_KEY_BYTES {
                return Err(format!(
                    "entry {position} is longer than {MAX_KEY_BYTES} bytes"
                ));
            }
            let kek = Kek::derive(&material);
            if let Some(earlier) = keys.iter().position(|known| known.id == kek.id) {
                return Err(format!(
                    "entries {} and {position} are the same key",
                    earlier + 1
                ));
            }
            keys.push(kek);
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    /// A fresh KEK of 32 random bytes, encoded as the variable expects.
    pub fn generate_encoded() -> Zeroizing<String> {
        let material = Zeroizing::new(rand::random::<[u8; 32]>());
        Zeroizing::new(STANDARD.encode(material.as_ref()))
    }

    /// The KEK that seals.
    pub fn newest(&self) -> KekId {
        self.keys[0].id
    }

    /// Every KEK's fingerprint, newest first.
    pub fn ids(&self) -> Vec<KekId> {
        self.keys.iter().map(|kek| kek.id).collect()
    }

    /// Seals the 32 secret bytes of the signing key `kid` under the newest KEK.
    pub fn seal(&self, kid: &str, secret: &[u8; SECRET_BYTES]) -> String {
        let kek = &self.keys[0];
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let ciphertext = kek
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_slice(),
                    aad: &associated_data(kid),
                },
            )
            .expect("sealing 32 bytes cannot fail");
        let mut payload = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&ciphertext);
        format!("{VERSION}.{}.{}", kek.id, URL_SAFE_NO_PAD.encode(payload))
    }

    /// Opens the envelope stored for the signing key `kid`.
    pub fn open(
        &self,
        kid: &str,
        stored: &str,
    ) -> Result<Zeroizing<[u8; SECRET_BYTES]>, OpenError> {
        let (id, payload) = match split(stored) {
            Some(parts) => parts,
            None if classify(stored) == Stored::Plaintext => return Err(OpenError::Plaintext),
            None => return Err(OpenError::Malformed),
        };
        let kek = self
            .keys
            .iter()
            .find(|kek| kek.id == id)
            .ok_or(OpenError::UnknownKek(id))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| OpenError::Malformed)?;
        if payload.len() != NONCE_BYTES + SECRET_BYTES + TAG_BYTES {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = payload.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| OpenError::Malformed)?;
        let plaintext = Zeroizing::new(
            kek.cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &associated_data(kid),
                    },
                )
                .map_err(|_| OpenError::Rejected(id))?,
        );
        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        secret.copy_from_slice(&plaintext);
        Ok(secret)
    }
}

/// What a stored `secret` column holds, without opening it.
pub fn classify(stored: &str) -> Stored {
    if let Some((id, _)) = split(stored) {
        return Stored::Sealed(id);
    }
    match URL_SAFE_NO_PAD.decode(stored) {
        Ok(bytes) if bytes.len() == SECRET_BYTES => Stored::Plaintext,
        _ => Stored::Malformed,
    }
}

/// The secret of a plaintext row, as written before sealing existed.
pub fn plaintext_secret(stored: &str) -> Option<Zeroizing<[u8; SECRET_BYTES]>> {
    let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(stored).ok()?);
    if bytes.len() != SECRET_BYTES {
        return None;
    }
    let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
    secret.copy_from_slice(&bytes);
    Some(secret)
}

fn split(stored: &str) -> Option<(KekId, &str)> {
    let rest = stored.strip_prefix(VERSION)?.strip_prefix('.')?;
    let (id, payload) = rest.split_once('.')?;
    Some((KekId::parse(id)?, payload))
}

fn associated_data(kid: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + kid.len());
    aad.extend_from_slice(b"tollgate-auth signing key\0");
    aad.extend_from_slice(VERSION.as_bytes());
    aad.push(0);
    aad.extend_from_slice(kid.as_bytes());
    aad
}

fn decode(entry: &str) -> Option<Zeroizing<Vec<u8>>> {
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .into_iter()
        .find_map(|engine| engine.decode(entry).ok())
        .map(Zeroizing::new)
}

#[cfg(test)]
#[path = "sealing_tests.rs"]
mod tests;
