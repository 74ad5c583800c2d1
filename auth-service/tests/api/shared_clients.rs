//! The `shared` crate's clients against the real auth-service: the service-token source that
//! other services use to call in, and the JWKS verifier they use to check tokens locally.

use std::time::Duration;

use tollgate_proto::auth::v1::{
    RotateSigningKeyRequest, ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use tollgate_shared::{
    jwks::JwksVerifier,
    service_auth::{ClientCredentials, ServiceTokenSource},
    shutdown::Shutdown,
    tokens::{TokenError, VerifierSettings},
};

use crate::{both_backends, helpers::*};

/// What the gateway presents to auth-service for its `ValidateToken` calls.
fn gateway_credentials() -> ClientCredentials {
    ClientCredentials {
        client_id: "gateway".into(),
        client_secret: CLIENT_SECRET.to_owned().into(),
        audience: "auth-service".into(),
        scopes: vec!["auth.validate".into()],
    }
}

async fn the_service_token_source_authenticates_outgoing_calls(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let shutdown = Shutdown::new();
    let credentials = gateway_credentials();
    let source = ServiceTokenSource::start(app.channel.clone(), credentials, shutdown.clone());
    assert!(
        source.ready(Duration::from_secs(10)).await,
        "no service token within 10 s"
    );
    let mut client = AuthServiceClient::with_interceptor(app.channel.clone(), source.interceptor());
    let user = app.new_user().await;
    let claims = client
        .validate_token(ValidateTokenRequest {
            token: user.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claims.user_id, user.user_id);

    // Wrong credentials never produce a token, and calls are refused locally, not sent bare.
    let wrong = ClientCredentials {
        client_id: "gateway".into(),
        client_secret: "not-the-secret-0000000000".to_owned().into(),
        audience: "auth-service".into(),
        scopes: vec![],
    };
    let refused = ServiceTokenSource::start(app.channel.clone(), wrong, shutdown.clone());
    assert!(!refused.ready(Duration::from_millis(500)).await);
    let mut bare = AuthServiceClient::with_interceptor(app.channel.clone(), refused.interceptor());
    let status = bare
        .validate_token(ValidateTokenRequest {
            token: user.access_token,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    shutdown.trigger();
}

async fn the_jwks_verifier_follows_key_rotation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let settings = VerifierSettings {
        issuer: app.config.issuer.clone(),
        audience: app.config.audience.clone(),
        service_audience: "ws-gateway".into(),
        leeway: app.config.jwt_leeway,
    };
    // A caller that arrives while the first key set is still on its way waits for it.
    let starting = JwksVerifier::new(
        app.channel.clone(),
        settings.clone(),
        Duration::from_secs(60),
    );
    let shutdown = Shutdown::new();
    let refresher = starting.spawn_refresher(Duration::from_secs(60), shutdown.clone());
    let early = app.new_user().await;
    starting.verify_access(&early.access_token).await.unwrap();
    shutdown.trigger();
    refresher.await.unwrap();

    let verifier = JwksVerifier::new(app.channel.clone(), settings, Duration::ZERO);
    assert!(!verifier.has_keys());
    assert_eq!(verifier.refresh().await.unwrap(), 1);
    let before = app.new_user().await;
    let verified = verifier.verify_access(&before.access_token).await.unwrap();
    assert_eq!(verified.claims.sub.to_string(), before.user_id);

    let admin = app
        .service_token("admin", "auth-service", &["auth.admin"])
        .await
        .unwrap();
    app.client()
        .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &admin))
        .await
        .unwrap();
    // A token signed by the new key names a kid the verifier has not seen: it refreshes once
    // and accepts it, and still accepts tokens of the retired key.
    let after = app.new_user().await;
    verifier.verify_access(&after.access_token).await.unwrap();
    verifier.verify_access(&before.access_token).await.unwrap();

    // Service tokens for this audience verify too; tokens for others do not.
    let for_gateway = app
        .service_token("backend", "ws-gateway", &["publish"])
        .await
        .unwrap();
    assert_eq!(
        verifier
            .verify_service(&for_gateway, "publish")
            .await
            .unwrap()
            .sub,
        "backend"
    );
    let elsewhere = app
        .service_token("backend", "auth-service", &["publish"])
        .await
        .unwrap();
    assert_eq!(
        verifier
            .verify_service(&elsewhere, "publish")
            .await
            .unwrap_err(),
        TokenError::WrongAudience
    );
}

/// A process serves from the moment it starts; a call it makes before its first service token
/// is back waits for the token instead of failing as if auth-service were down.
async fn a_call_made_before_the_first_token_waits_for_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = app.new_user().await;
    let shutdown = Shutdown::new();
    let credentials = gateway_credentials();
    let source = ServiceTokenSource::start(app.channel.clone(), credentials, shutdown.clone());
    let interceptor = source.interceptor();
    assert!(
        source.header().is_none(),
        "the token came back before any round trip"
    );
    interceptor.first_token().await;
    let claims = AuthServiceClient::with_interceptor(app.channel.clone(), interceptor)
        .validate_token(ValidateTokenRequest {
            token: user.access_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claims.user_id, user.user_id);
    shutdown.trigger();
}

both_backends!(
    the_service_token_source_authenticates_outgoing_calls,
    a_call_made_before_the_first_token_waits_for_it,
    the_jwks_verifier_follows_key_rotation,
);
