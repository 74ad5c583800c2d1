use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use tollgate_shared::tokens::MAX_TOKEN_BYTES;

/// An opaque refresh token: 256 random bits, base64url. It is handed to the client once and
/// stored only as its [`RefreshTokenHash`].
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(..)")
    }
}

const ENCODED_LEN: usize = 43;

/// Why a presented refresh token was refused before any lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshTokenError {
    /// An empty field: a malformed request.
    #[error("refresh_token is required")]
    Missing,
    /// Larger than any token: a malformed request.
    #[error("refresh_token is too large")]
    TooLarge,
    /// Not the shape of a token this service issues (an access or service token, a truncated
    /// or corrupted one). The service cannot tell it from a refresh token it never issued, and
    /// the client's remedy is the same, so it is refused like one: an invalid refresh token.
    #[error("not a refresh token")]
    NotARefreshToken,
}

impl RefreshToken {
    pub fn generate() -> Self {
        Self(URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()))
    }

    pub fn parse(raw: &str) -> Result<Self, RefreshTokenError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(RefreshTokenError::Missing);
        }
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(RefreshTokenError::TooLarge);
        }
        let decodes = raw.len() == ENCODED_LEN
            && URL_SAFE_NO_PAD
                .decode(raw)
                .is_ok_and(|bytes| bytes.len() == 32);
        if decodes {
            Ok(Self(raw.to_owned()))
        } else {
            Err(RefreshTokenError::NotARefreshToken)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> RefreshTokenHash {
        RefreshTokenHash(hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

/// The stored form of a refresh token. A fast hash is right here: the token has 256 bits of
/// entropy, so there is nothing to brute-force.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RefreshTokenHash(String);

impl RefreshTokenHash {
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_hash_stably() {
        let token = RefreshToken::generate();
        let parsed = RefreshToken::parse(token.expose()).unwrap();
        assert_eq!(parsed.hash(), token.hash());
        assert_ne!(RefreshToken::generate().hash(), token.hash());
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert_eq!(RefreshToken::parse(" "), Err(RefreshTokenError::Missing));
        assert_eq!(
            RefreshToken::parse(&"a".repeat(1 << 20)),
            Err(RefreshTokenError::TooLarge)
        );
        let access_token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        for other in ["abc", &"a".repeat(44), &"!".repeat(43), access_token] {
            assert_eq!(
                RefreshToken::parse(other),
                Err(RefreshTokenError::NotARefreshToken)
            );
        }
    }
}
