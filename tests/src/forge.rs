//! Hostile tokens, made from a real one the way an attacker would: without auth-service's
//! private key. Each must be refused wherever it is presented, before anything is opened.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tollgate_shared::{
    time::unix_now,
    tokens::{AccessClaims, SigningKey},
};
use uuid::Uuid;

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn decode(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// The three parts of a JWT.
fn parts(token: &str) -> (&str, &str, &str) {
    let mut parts = token.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature)) => (header, payload, signature),
        _ => panic!("not a JWT"),
    }
}

/// The claims of a token, unverified.
pub fn claims(token: &str) -> Value {
    decode(parts(token).1)
}

/// The header of a token, unverified.
pub fn header(token: &str) -> Value {
    decode(parts(token).0)
}

/// A token like `valid` signed by a key auth-service never published.
pub fn foreign_signed(valid: &str) -> String {
    let real = claims(valid);
    let now = unix_now();
    let forged = AccessClaims {
        iss: real["iss"].as_str().unwrap_or_default().to_owned(),
        sub: real["sub"]
            .as_str()
            .and_then(|sub| sub.parse().ok())
            .unwrap_or_else(Uuid::new_v4),
        aud: real["aud"].as_str().unwrap_or_default().to_owned(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: Uuid::new_v4().to_string(),
        sid: real["sid"]
            .as_str()
            .and_then(|sid| sid.parse().ok())
            .unwrap_or_else(Uuid::new_v4),
    };
    SigningKey::generate().sign(&forged)
}

/// Hostile variants of `valid`, each named.
pub fn hostile_tokens(valid: &str) -> Vec<(&'static str, String)> {
    let (header_part, payload, signature) = parts(valid);
    let mut claims = decode(payload);
    claims["sub"] = json!(Uuid::new_v4());
    let other_subject = encode(&claims);
    let mut far_future = decode(payload);
    far_future["exp"] = json!(unix_now() + 365 * 86_400);
    let extended = encode(&far_future);
    let mut flipped = signature.to_owned();
    let last = if flipped.ends_with('A') { "B" } else { "A" };
    flipped.replace_range(flipped.len() - 1.., last);
    let foreign = foreign_signed(valid);
    let (_, foreign_payload, foreign_signature) = parts(&foreign);
    let mut hmac_header = header(valid);
    hmac_header["alg"] = json!("HS256");
    let none_header = encode(&json!({"alg": "none", "typ": "at+jwt"}));
    vec![
        ("garbage", "not-a-jwt".to_owned()),
        ("empty segments", "..".to_owned()),
        ("alg none", format!("{none_header}.{payload}.")),
        (
            "HS256 header",
            format!("{}.{payload}.{signature}", encode(&hmac_header)),
        ),
        (
            "another subject",
            format!("{header_part}.{other_subject}.{signature}"),
        ),
        (
            "extended expiry",
            format!("{header_part}.{extended}.{signature}"),
        ),
        (
            "flipped signature",
            format!("{header_part}.{payload}.{flipped}"),
        ),
        ("unknown key", foreign.clone()),
        (
            "known kid, foreign signature",
            format!("{header_part}.{foreign_payload}.{foreign_signature}"),
        ),
        ("oversized", format!("{valid}{}", "A".repeat(9 * 1024))),
    ]
}
