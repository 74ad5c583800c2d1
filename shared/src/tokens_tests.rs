use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use super::*;
use crate::time::unix_now;

const ISSUER: &str = "tollgate-auth";

fn settings() -> VerifierSettings {
    VerifierSettings {
        issuer: ISSUER.into(),
        audience: "tollgate".into(),
        service_audience: "usage-service".into(),
        leeway: Duration::from_secs(30),
    }
}

fn claims() -> AccessClaims {
    let now = unix_now();
    AccessClaims {
        iss: ISSUER.into(),
        sub: Uuid::new_v4(),
        aud: "tollgate".into(),
        exp: now + 900,
        iat: now,
        nbf: now,
        jti: Uuid::new_v4().to_string(),
        sid: Uuid::new_v4(),
    }
}

fn setup() -> (SigningKey, Verifier) {
    let key = SigningKey::generate();
    let verifier = Verifier::new(settings(), KeySet::from_jwks([key.jwk()]));
    (key, verifier)
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[test]
fn a_signed_token_verifies_and_round_trips_its_claims() {
    let (key, verifier) = setup();
    let claims = claims();
    let verified = verifier.verify_access(&key.sign(&claims)).unwrap();
    assert_eq!(verified.claims, claims);
    assert_eq!(verified.kid, key.kid());
}

#[test]
fn kid_is_the_rfc7638_thumbprint() {
    // RFC 8037 appendix A.3: the thumbprint of the A.1 example key.
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    assert_eq!(
        ed25519_thumbprint(x),
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    );
}

#[test]
fn alg_none_is_refused() {
    let (_, verifier) = setup();
    let header = serde_json::json!({"alg": "none", "typ": "at+jwt"});
    let token = format!(
        "{}.{}.",
        b64(&header),
        b64(&serde_json::to_value(claims()).unwrap())
    );
    assert_eq!(
        verifier.verify_access(&token).unwrap_err(),
        TokenError::UnsupportedAlgorithm
    );
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let (key, verifier) = setup();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.typ = Some(TOKEN_TYPE.into());
    header.kid = Some(key.kid().into());
    let secret = jsonwebtoken::EncodingKey::from_secret(key.jwk().x.as_bytes());
    let token = jsonwebtoken::encode(&header, &claims(), &secret).unwrap();
    assert_eq!(
        verifier.verify_access(&token).unwrap_err(),
        TokenError::UnsupportedAlgorithm
    );
}

#[test]
fn unknown_and_path_like_kids_are_refused() {
    let (_, verifier) = setup();
    let stranger = SigningKey::generate();
    assert_eq!(
        verifier
            .verify_access(&stranger.sign(&claims()))
            .unwrap_err(),
        TokenError::UnknownKey
    );
    let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "../../etc/passwd"});
    let token = format!(
        "{}.{}.c2ln",
        b64(&header),
        b64(&serde_json::to_value(claims()).unwrap())
    );
    assert_eq!(
        verifier.verify_access(&token).unwrap_err(),
        TokenError::UnknownKey
    );
}

#[test]
fn expiry_and_not_before_honour_the_leeway() {
    let (key, verifier) = setup();
    let now = unix_now();
    let mut within = claims();
    within.exp = now - 10;
    assert!(verifier.verify_access(&key.sign(&within)).is_ok());

    let mut expired = claims();
    expired.exp = now - 120;
    assert_eq!(
        verifier.verify_access(&key.sign(&expired)).unwrap_err(),
        TokenError::Expired
    );

    let mut future = claims();
    future.nbf = now + 120;
    assert_eq!(
        verifier.verify_access(&key.sign(&future)).unwrap_err(),
        TokenError::NotYetValid
    );
}

#[test]
fn wrong_issuer_and_audience_are_refused() {
    let (key, verifier) = setup();
    let mut foreign = claims();
    foreign.iss = "someone-else".into();
    assert_eq!(
        verifier.verify_access(&key.sign(&foreign)).unwrap_err(),
        TokenError::WrongIssuer
    );
    let mut misaddressed = claims();
    misaddressed.aud = "another-app".into();
    assert_eq!(
        verifier
            .verify_access(&key.sign(&misaddressed))
            .unwrap_err(),
        TokenError::WrongAudience
    );
}

#[test]
fn a_tampered_payload_fails_the_signature() {
    let (key, verifier) = setup();
    let token = key.sign(&claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged = claims();
    forged.sub = Uuid::new_v4();
    parts[1] = b64(&serde_json::to_value(&forged).unwrap());
    assert_eq!(
        verifier.verify_access(&parts.join(".")).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn garbage_is_malformed_and_huge_tokens_are_refused_before_parsing() {
    let (_, verifier) = setup();
    for garbage in ["a", "a.b.c", "!!!.###.$$$", "eyJ.eyJ.", "\u{202e}.\u{0}.x"] {
        assert_eq!(
            verifier.verify_access(garbage).unwrap_err(),
            TokenError::Malformed,
            "{garbage}"
        );
    }
    assert_eq!(verifier.verify_access("").unwrap_err(), TokenError::Missing);
    let huge = "a".repeat(1024 * 1024);
    assert_eq!(
        verifier.verify_access(&huge).unwrap_err(),
        TokenError::TooLarge
    );
}

#[test]
fn service_tokens_need_this_audience_and_the_scope() {
    let (key, verifier) = setup();
    let now = unix_now();
    let service = ServiceClaims {
        iss: ISSUER.into(),
        sub: "ws-gateway".into(),
        aud: "usage-service".into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: "j".into(),
        scope: "usage.check publish".into(),
    };
    let token = key.sign(&service);
    assert_eq!(
        verifier.verify_service(&token, "usage.check").unwrap().sub,
        "ws-gateway"
    );
    assert_eq!(
        verifier.verify_service(&token, "usage.admin").unwrap_err(),
        TokenError::InsufficientScope
    );
    // A user's access token is not a service token, and the reverse.
    assert_eq!(
        verifier
            .verify_service(&key.sign(&claims()), "usage.check")
            .unwrap_err(),
        TokenError::WrongAudience
    );
    assert!(verifier.verify_access(&token).is_err());
}

#[test]
fn a_rotated_key_set_is_picked_up() {
    let (old, verifier) = setup();
    let new = SigningKey::generate();
    verifier.replace_keys(KeySet::from_jwks([old.jwk(), new.jwk()]));
    assert!(verifier.verify_access(&new.sign(&claims())).is_ok());
    verifier.replace_keys(KeySet::from_jwks([new.jwk()]));
    assert_eq!(
        verifier.verify_access(&old.sign(&claims())).unwrap_err(),
        TokenError::UnknownKey
    );
}

#[test]
fn a_jwk_whose_kid_is_not_its_thumbprint_is_ignored() {
    let key = SigningKey::generate();
    let mut jwk = key.jwk().clone();
    jwk.kid = "chosen-by-attacker".into();
    assert!(KeySet::from_jwks([&jwk]).is_empty());
}

#[test]
fn bearer_tokens_are_read_from_the_bearer_scheme_only() {
    for (value, token) in [
        ("Bearer abc.def.ghi", Some("abc.def.ghi")),
        ("bearer abc", Some("abc")),
        ("BEARER   abc  ", Some("abc")),
        ("  Bearer abc", Some("abc")),
        ("Bearer", None),
        ("Bearer    ", None),
        ("Basic dXNlcjpwdw==", None),
        ("Bearerabc", None),
        ("", None),
    ] {
        assert_eq!(bearer(value), token, "{value:?}");
    }
}

#[test]
fn an_agent_audience_takes_only_the_agent_scope() {
    let scopes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(service_audience_allows(
        "usage-service",
        &scopes(&["usage.check"])
    ));
    assert!(service_audience_allows("support", &scopes(&[AGENT_SCOPE])));
    assert!(service_audience_allows(
        "crm.agent-2",
        &scopes(&[AGENT_SCOPE])
    ));
    let refused = [
        ("support", scopes(&[])),
        ("support", scopes(&[AGENT_SCOPE, "usage.check"])),
        ("support", scopes(&["auth.admin"])),
        ("Support", scopes(&[AGENT_SCOPE])),
        ("../../etc", scopes(&[AGENT_SCOPE])),
        ("", scopes(&[AGENT_SCOPE])),
    ];
    for (audience, scopes) in refused {
        assert!(
            !service_audience_allows(audience, &scopes),
            "{audience:?} {scopes:?}"
        );
    }
    let long = format!("a{}", "b".repeat(64));
    assert!(!service_audience_allows(&long, &scopes(&[AGENT_SCOPE])));
}
