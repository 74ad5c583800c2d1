//! Hostile and malformed input on every endpoint: each gets the contract's code and reason, no
//! answer echoes a secret, and the service keeps serving.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_shared::time::unix_now;
use tonic::Code;

use crate::{both_backends, helpers::*};

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

async fn hostile_access_tokens_are_refused_with_their_reason(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = app.new_user().await;
    let good = app.claims_for(&user.user_id, &user.session_id);
    let kid = app.auth.keys().signer().kid().to_owned();
    let payload = b64(&serde_json::to_value(&good).unwrap());
    let signature = user.access_token.rsplit('.').next().unwrap().to_owned();

    let with = |edit: &dyn Fn(&mut tollgate_shared::tokens::AccessClaims)| {
        let mut claims = good.clone();
        edit(&mut claims);
        app.mint(&claims)
    };
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.clone());
        let x = app.auth.keys().jwks()[0].x.clone();
        jsonwebtoken::encode(
            &header,
            &good,
            &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
        )
        .unwrap()
    };
    let tampered = {
        let mut forged = good.clone();
        forged.sub = uuid::Uuid::new_v4();
        format!(
            "{}.{}.{signature}",
            user.access_token.split('.').next().unwrap(),
            b64(&serde_json::to_value(&forged).unwrap())
        )
    };
    let now = unix_now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{payload}.",
                b64(&json!({"alg": "none", "typ": "at+jwt"}))
            ),
            "unsupported_algorithm",
        ),
        ("HS256 with the public key", hs256, "unsupported_algorithm"),
        (
            "unknown kid",
            format!(
                "{}.{payload}.{signature}",
                b64(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "nope"}))
            ),
            "unknown_key",
        ),
        (
            "path kid",
            format!(
                "{}.{payload}.{signature}",
                b64(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "../../keys/active"}))
            ),
            "unknown_key",
        ),
        ("expired", with(&|c| c.exp = now - 300), "token_expired"),
        (
            "future nbf",
            with(&|c| c.nbf = now + 300),
            "token_not_yet_valid",
        ),
        (
            "wrong audience",
            with(&|c| c.aud = "another-app".into()),
            "wrong_audience",
        ),
        (
            "wrong issuer",
            with(&|c| c.iss = "https://evil.example".into()),
            "wrong_issuer",
        ),
        ("tampered payload", tampered, "bad_signature"),
        (
            "non-base64 segments",
            "@@@.!!!.###".into(),
            "token_malformed",
        ),
        ("two segments", "abc.def".into(), "token_malformed"),
        ("1 MB token", "a".repeat(1 << 20), "token_too_large"),
        (
            "unknown session",
            with(&|c| c.sid = uuid::Uuid::new_v4()),
            "session_revoked",
        ),
    ];
    for (name, token, expected) in cases {
        let status = app.validate(&token).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert_eq!(reason(&status), expected, "{name}");
        assert!(
            status.message().len() < 200
                && !status.message().contains(&token[..token.len().min(40)]),
            "{name} echoes the token"
        );
    }
    let status = app.validate("").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Still serving, and the genuine token still validates.
    app.validate(&user.access_token).await.unwrap();
}

async fn health_readiness_and_metrics_are_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.new_user().await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_auth_outcomes_total{operation=\"register\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_rpc_server_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(!metrics.contains(PASSWORD));

    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tollgate.auth.v1.AuthService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// Reflection answers in both versions (grpcio-reflection, evans and older grpcurl speak only
/// v1alpha) and lists this process's services, not every service Tollgate has.
async fn reflection_lists_only_what_this_process_serves(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let reflected =
        tollgate_shared::testing::reflect(app.grpc_addr, "tollgate.auth.v1.AuthService").await;
    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "tollgate.auth.v1.AuthService",
    ];
    assert_eq!(reflected.v1, expected);
    assert_eq!(reflected.v1alpha, expected);
    assert!(reflected.v1alpha_files_for_symbol >= 1, "{reflected:?}");
}

async fn oversized_and_empty_fields_are_refused_on_every_user_call(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let huge = "x".repeat(1 << 20);
    let huge_email = format!("{huge}@example.com");
    assert_refused(
        app.login(&unique_email(), &huge).await,
        Code::InvalidArgument,
        "invalid_request",
    );
    assert_refused(
        app.login(&huge_email, PASSWORD).await,
        Code::InvalidArgument,
        "invalid_request",
    );
    assert_refused(
        app.login("", "").await,
        Code::InvalidArgument,
        "invalid_request",
    );
    assert_refused(
        app.register(&huge_email, PASSWORD).await,
        Code::InvalidArgument,
        "invalid_request",
    );
    let request = tollgate_proto::auth::v1::IssueServiceTokenRequest {
        client_id: huge.clone(),
        client_secret: huge.clone(),
        audience: "auth-service".into(),
        scopes: vec![],
    };
    assert_refused(
        app.client().issue_service_token(request).await,
        Code::InvalidArgument,
        "invalid_request",
    );
    let logout = tollgate_proto::auth::v1::LogoutRequest {
        refresh_token: huge.clone(),
    };
    assert_refused(
        app.client().logout(logout).await,
        Code::InvalidArgument,
        "invalid_request",
    );
    let oversized = "x".repeat(10 * 1024);
    let request = with_bearer(tollgate_proto::auth::v1::ListSessionsRequest {}, &oversized);
    assert_refused(
        app.client().list_sessions(request).await,
        Code::Unauthenticated,
        "token_too_large",
    );
    // A megabyte of metadata is refused by the HTTP/2 layer before it reaches the service,
    // which closes that client's connection (so it gets a connection of its own here)...
    let abusive = tollgate_shared::grpc::channel(
        &format!("http://{}", app.grpc_addr),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let request = with_bearer(tollgate_proto::auth::v1::ListSessionsRequest {}, &huge);
    let mut abusive =
        tollgate_proto::auth::v1::auth_service_client::AuthServiceClient::new(abusive);
    assert!(abusive.list_sessions(request).await.is_err());
    // ...and keeps serving everyone else.
    app.new_user().await;
}

both_backends!(
    hostile_access_tokens_are_refused_with_their_reason,
    health_readiness_and_metrics_are_served,
    reflection_lists_only_what_this_process_serves,
    oversized_and_empty_fields_are_refused_on_every_user_call,
);
