//! JWT claim types and the verifier that every service uses.
//!
//! Verification is deliberately strict and cheap to reject: size, header, algorithm and key id
//! are checked before any signature work, only EdDSA is accepted, the key must come from the
//! issuer's JWKS, and the required claims are named explicitly.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Tokens longer than this are rejected before parsing (CONTRACT §2).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The `typ` header of every token Tollgate issues (RFC 9068).
pub const TOKEN_TYPE: &str = "at+jwt";

/// The audiences a service token may name.
pub const SERVICE_AUDIENCES: [&str; 3] = ["auth-service", "usage-service", "ws-gateway"];

/// The one scope of a service token addressed to an agent backend (whose audience is the
/// agent's name in the gateway's `GATEWAY_AGENTS`).
pub const AGENT_SCOPE: &str = "agent.run";

/// Whether a service token for `audience` may carry `scopes`: a Tollgate service's audience
/// takes any granted scope; any other well-formed name is an agent backend's, and its token
/// carries `agent.run` only, so it can never be replayed to a Tollgate service.
pub fn service_audience_allows(audience: &str, scopes: &[String]) -> bool {
    if SERVICE_AUDIENCES.contains(&audience) {
        return true;
    }
    crate::names::is_name(audience)
        && !scopes.is_empty()
        && scopes.iter().all(|scope| scope == AGENT_SCOPE)
}

/// The token of an `Authorization` value in the `Bearer` scheme (RFC 6750 §2.1, the scheme
/// name case-insensitive), or `None` for another scheme or a blank token. Every service reads
/// bearer tokens (HTTP headers and gRPC metadata) through this one function.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Claims of a user's access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: Uuid,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub sid: Uuid,
}

/// Claims of a service token (OAuth 2.0 client credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceClaims {
    pub iss: String,
    /// The client id.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// Space-separated scopes (RFC 8693 §4.2).
    pub scope: String,
}

impl ServiceClaims {
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope.split(' ').any(|scope| scope == wanted)
    }
}

/// Why a token was refused. `reason()` is the machine-readable code sent to callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token was presented")]
    Missing,
    #[error("the token exceeds {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("the token is not an access token")]
    WrongType,
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token's session has been revoked")]
    Revoked,
    #[error("the token lacks the required scope")]
    InsufficientScope,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::TooLarge => "token_too_large",
            Self::Malformed => "token_malformed",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::WrongType => "wrong_token_type",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Revoked => "session_revoked",
            Self::InsufficientScope => "insufficient_scope",
        }
    }
}

/// An Ed25519 public key as a JWK (RFC 8037).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    /// The JWK of a raw 32-byte Ed25519 public key, with its RFC 7638 thumbprint as `kid`.
    pub fn ed25519(public_key: &[u8; 32]) -> Self {
        let x = URL_SAFE_NO_PAD.encode(public_key);
        Self {
            kid: ed25519_thumbprint(&x),
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x,
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }
}

/// A JWK Set document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// RFC 7638 thumbprint of an Ed25519 key given its base64url `x`.
pub fn ed25519_thumbprint(x: &str) -> String {
    // Members in lexicographic order, no whitespace, as RFC 7638 §3 requires.
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A key id is a base64url thumbprint; anything else (paths, quotes, huge strings) is refused
/// before it reaches a lookup.
pub fn is_plausible_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a verifier checks besides the signature.
#[derive(Clone, Debug)]
pub struct VerifierSettings {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud` of user access tokens.
    pub audience: String,
    /// This service's own name: the `aud` its service tokens must carry.
    pub service_audience: String,
    /// Tolerance on `exp` and `nbf`.
    pub leeway: Duration,
}

/// The verification keys by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// Builds a key set from JWKs, skipping any that is not an Ed25519 key whose `kid` is its
    /// thumbprint.
    pub fn from_jwks<'a>(jwks: impl IntoIterator<Item = &'a Jwk>) -> Self {
        let keys = jwks
            .into_iter()
            .filter(|jwk| jwk.kty == "OKP" && jwk.crv == "Ed25519")
            .filter(|jwk| jwk.kid == ed25519_thumbprint(&jwk.x))
            .filter_map(|jwk| {
                let key = DecodingKey::from_ed_components(&jwk.x).ok()?;
                Some((jwk.kid.clone(), key))
            })
            .collect();
        Self { keys }
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Verifies access and service tokens against a replaceable key set.
#[derive(Debug)]
pub struct Verifier {
    settings: VerifierSettings,
    keys: RwLock<Arc<KeySet>>,
    access_validation: Validation,
    service_validation: Validation,
}

impl Verifier {
    pub fn new(settings: VerifierSettings, keys: KeySet) -> Self {
        let access_validation = validation(&settings, &settings.audience);
        let service_validation = validation(&settings, &settings.service_audience);
        Self {
            settings,
            keys: RwLock::new(Arc::new(keys)),
            access_validation,
            service_validation,
        }
    }

    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }

    /// Swaps in a new key set (after a JWKS refresh or a key rotation).
    pub fn replace_keys(&self, keys: KeySet) {
        *self
            .keys
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(keys);
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Verifies a user's access token: signature, header and claims. Revocation is the
    /// caller's concern.
    pub fn verify_access(&self, token: &str) -> Result<Verified<AccessClaims>, TokenError> {
        self.verify(token, &self.access_validation)
    }

    /// Verifies a service token addressed to this service and holding `scope`.
    pub fn verify_service(&self, token: &str, scope: &str) -> Result<ServiceClaims, TokenError> {
        let claims = self.verify_service_token(token)?;
        if claims.has_scope(scope) {
            Ok(claims)
        } else {
            Err(TokenError::InsufficientScope)
        }
    }

    /// Verifies a service token addressed to this service, whatever its scopes.
    pub fn verify_service_token(&self, token: &str) -> Result<ServiceClaims, TokenError> {
        Ok(self
            .verify::<ServiceClaims>(token, &self.service_validation)?
            .claims)
    }

    fn verify<C: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<Verified<C>, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| classify_bad_header(token))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        if header.typ.as_deref() != Some(TOKEN_TYPE) {
            return Err(TokenError::WrongType);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        if !is_plausible_kid(&kid) {
            return Err(TokenError::UnknownKey);
        }
        let keys = self.keys();
        let key = keys.keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        // Decode generically first so that the standard claims are validated (and reported)
        // before the token's shape is: a service token shown as an access token is refused
        // for its audience, not as "malformed".
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, key, validation).map_err(map_error)?;
        let claims = serde_json::from_value(data.claims).map_err(|_| TokenError::WrongType)?;
        Ok(Verified { claims, kid })
    }
}

/// Claims that passed verification, and the key that signed them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<C> {
    pub claims: C,
    pub kid: String,
}

fn validation(settings: &VerifierSettings, audience: &str) -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[settings.issuer.as_str()]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    validation
}

/// A header `jsonwebtoken` cannot parse is either garbage or names an algorithm it does not
/// know (`none`, say): tell the two apart for the caller.
fn classify_bad_header(token: &str) -> TokenError {
    let names_an_algorithm = token
        .split('.')
        .next()
        .and_then(|segment| URL_SAFE_NO_PAD.decode(segment).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .is_some_and(|header| header.get("alg").is_some_and(serde_json::Value::is_string));
    if names_an_algorithm {
        TokenError::UnsupportedAlgorithm
    } else {
        TokenError::Malformed
    }
}

fn map_error(err: jsonwebtoken::errors::Error) -> TokenError {
    match err.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::UnsupportedAlgorithm
        }
        _ => TokenError::Malformed,
    }
}

/// An Ed25519 signing key with its JWK; `kid` is the RFC 7638 thumbprint.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate() -> Self {
        Self::from_secret_bytes(&rand::random::<[u8; 32]>())
    }

    /// Rebuilds a key from its 32 secret bytes.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_bytes(secret);
        let der = key
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8");
        Self {
            encoding: jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
            jwk: Jwk::ed25519(key.verifying_key().as_bytes()),
            key,
        }
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs `claims` as an `at+jwt` with this key's `kid`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.into());
        header.kid = Some(self.jwk.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("signing serialisable claims with a valid Ed25519 key cannot fail")
    }
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
