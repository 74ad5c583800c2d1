use std::sync::Arc;

use tollgate_proto::auth::v1::{GetJwksRequest, RotateSigningKeyRequest};
use tonic::Code;

use crate::{both_backends, helpers::*};

async fn rotation_signs_with_the_new_key_and_keeps_the_old_one_published(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let before = app.new_user().await;
    let jwks = app
        .client()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks.keys.len(), 1);
    let old_kid = jwks.active_kid.clone();
    assert_eq!(jwks.keys[0].kid, old_kid);
    assert_eq!(
        jwks.keys[0].kid,
        tollgate_shared::tokens::ed25519_thumbprint(&jwks.keys[0].x),
        "kid is the RFC 7638 thumbprint"
    );

    let admin = app
        .service_token("admin", "auth-service", &["auth.admin"])
        .await
        .unwrap();
    let rotated = app
        .client()
        .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.previous_kid, old_kid);
    assert_ne!(rotated.kid, old_kid);

    let jwks = app
        .client()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let kids: Vec<_> = jwks.keys.iter().map(|key| key.kid.clone()).collect();
    assert_eq!(jwks.active_kid, rotated.kid);
    assert!(
        kids.contains(&old_kid) && kids.contains(&rotated.kid),
        "{kids:?}"
    );

    app.validate(&before.access_token).await.unwrap();
    let after = app.new_user().await;
    let claims = app.validate(&after.access_token).await.unwrap();
    assert_eq!(claims.kid, rotated.kid);

    // The HTTP JWKS document agrees.
    let document: serde_json::Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["keys"].as_array().unwrap().len(), 2);
}

async fn rotation_needs_the_admin_scope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_refused(
        app.client()
            .rotate_signing_key(RotateSigningKeyRequest {})
            .await,
        Code::Unauthenticated,
        "token_missing",
    );
    let gateway = app
        .service_token("gateway", "auth-service", &[])
        .await
        .unwrap();
    assert_refused(
        app.client()
            .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &gateway))
            .await,
        Code::PermissionDenied,
        "insufficient_scope",
    );
    let user = app.new_user().await;
    let status = app
        .client()
        .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &user.access_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

async fn replicas_starting_at_once_agree_on_one_key(backend: Backend) {
    let database = Arc::new(TestDatabase::create(backend).await);
    let config = config(backend, &database);
    let replicas = futures::future::join_all(
        (0..4).map(|_| TestApp::start(config.clone(), Arc::clone(&database))),
    )
    .await;
    let mut kids = Vec::new();
    for replica in &replicas {
        let jwks = replica
            .client()
            .get_jwks(GetJwksRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(jwks.keys.len(), 1, "exactly one key is published");
        kids.push(jwks.active_kid);
    }
    kids.dedup();
    assert_eq!(kids.len(), 1, "all replicas sign with the same key");
}

both_backends!(
    rotation_signs_with_the_new_key_and_keeps_the_old_one_published,
    rotation_needs_the_admin_scope,
    replicas_starting_at_once_agree_on_one_key,
);
