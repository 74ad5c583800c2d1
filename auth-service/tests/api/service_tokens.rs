use tollgate_proto::auth::v1::{IssueServiceTokenRequest, ValidateTokenRequest};
use tonic::Code;

use crate::{both_backends, helpers::*};

async fn client_credentials_issue_scoped_service_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app
        .service_token("gateway", "usage-service", &[])
        .await
        .unwrap();
    // Verify as usage-service would: audience and scope.
    let verifier = tollgate_shared::tokens::Verifier::new(
        tollgate_shared::tokens::VerifierSettings {
            issuer: app.config.issuer.clone(),
            audience: app.config.audience.clone(),
            service_audience: "usage-service".into(),
            leeway: app.config.jwt_leeway,
        },
        tollgate_shared::tokens::KeySet::from_jwks(&app.auth.keys().jwks()),
    );
    let claims = verifier.verify_service(&token, "usage.check").unwrap();
    assert_eq!(claims.sub, "gateway");
    assert_eq!(claims.scope, "auth.validate usage.check");
    let narrowed = app
        .service_token("gateway", "usage-service", &["usage.check"])
        .await
        .unwrap();
    assert_eq!(
        verifier
            .verify_service(&narrowed, "usage.check")
            .unwrap()
            .scope,
        "usage.check"
    );
    assert!(verifier.verify_service(&narrowed, "auth.validate").is_err());
}

async fn bad_client_credentials_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request =
        |client_id: &str, secret: &str, audience: &str, scopes: &[&str]| IssueServiceTokenRequest {
            client_id: client_id.into(),
            client_secret: secret.into(),
            audience: audience.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        };
    let cases = [
        (
            request("gateway", "wrong-secret-0123456789", "auth-service", &[]),
            Code::Unauthenticated,
            "invalid_client",
        ),
        (
            request("nobody", CLIENT_SECRET, "auth-service", &[]),
            Code::Unauthenticated,
            "invalid_client",
        ),
        (
            request("", "", "auth-service", &[]),
            Code::Unauthenticated,
            "invalid_client",
        ),
        (
            request("backend", CLIENT_SECRET, "ws-gateway", &["auth.admin"]),
            Code::PermissionDenied,
            "invalid_scope",
        ),
        (
            request("gateway", CLIENT_SECRET, "tollgate", &[]),
            Code::InvalidArgument,
            "invalid_target",
        ),
        (
            request("gateway", CLIENT_SECRET, "../../etc", &[]),
            Code::InvalidArgument,
            "invalid_target",
        ),
    ];
    for (request, code, expected) in cases {
        let status = assert_refused(
            app.client().issue_service_token(request).await,
            code,
            expected,
        );
        assert!(!status.message().contains(CLIENT_SECRET));
    }
}

async fn validate_token_requires_a_service_token_with_its_scope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = app.new_user().await;
    let request = || ValidateTokenRequest {
        token: user.access_token.clone(),
    };

    assert_refused(
        app.client().validate_token(request()).await,
        Code::Unauthenticated,
        "token_missing",
    );
    // A user's access token is not a service token.
    let status = app
        .client()
        .validate_token(with_bearer(request(), &user.access_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // A service token for another audience, or without the scope.
    let elsewhere = app
        .service_token("gateway", "usage-service", &[])
        .await
        .unwrap();
    assert_refused(
        app.client()
            .validate_token(with_bearer(request(), &elsewhere))
            .await,
        Code::Unauthenticated,
        "wrong_audience",
    );
    let publisher = app
        .service_token("backend", "auth-service", &[])
        .await
        .unwrap();
    assert_refused(
        app.client()
            .validate_token(with_bearer(request(), &publisher))
            .await,
        Code::PermissionDenied,
        "insufficient_scope",
    );
    let gateway = app
        .service_token("gateway", "auth-service", &["auth.validate"])
        .await
        .unwrap();
    app.client()
        .validate_token(with_bearer(request(), &gateway))
        .await
        .unwrap();
}

both_backends!(
    client_credentials_issue_scoped_service_tokens,
    bad_client_credentials_are_refused,
    validate_token_requires_a_service_token_with_its_scope,
);
