use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::InvalidInput;

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

impl RefreshToken {
    pub fn generate() -> Self {
        Self(URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()))
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(InvalidInput("refresh_token is required"));
        }
        let decodes = raw.len() == ENCODED_LEN
            && URL_SAFE_NO_PAD
                .decode(raw)
                .is_ok_and(|bytes| bytes.len() == 32);
        if decodes {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput("refresh_token is malformed"))
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
        for bad in [
            "",
            "abc",
            &"a".repeat(44),
            &"!".repeat(43),
            &"a".repeat(1 << 20),
        ] {
            assert!(RefreshToken::parse(bad).is_err());
        }
    }
}
