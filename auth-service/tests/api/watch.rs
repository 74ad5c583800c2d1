//! `WatchRevocations`: the stream the gateway follows to close revoked sessions' connections.

use std::time::Duration;

use futures::StreamExt;
use tollgate_proto::auth::v1::{self as pb, LogoutAllRequest, LogoutRequest};
use tonic::{Code, Streaming};

use crate::{both_backends, helpers::*};

async fn watch(app: &TestApp, since_ms: i64) -> Result<Streaming<pb::Revocation>, tonic::Status> {
    let service = app
        .service_token("gateway", "auth-service", &["auth.validate"])
        .await?;
    let request = with_bearer(pb::WatchRevocationsRequest { since_ms }, &service);
    Ok(app.client().watch_revocations(request).await?.into_inner())
}

async fn next(stream: &mut Streaming<pb::Revocation>) -> pb::Revocation {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a revocation within 10 s")
        .expect("the stream is open")
        .expect("a revocation, not an error")
}

async fn watchers_see_revocations_live_and_replayed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let earlier = app.new_user().await;
    app.client()
        .logout(LogoutRequest {
            refresh_token: earlier.refresh_token.clone(),
        })
        .await
        .unwrap();

    // A watcher from the beginning of the remembered history sees the earlier revocation.
    let mut stream = watch(&app, 0).await.unwrap();
    let replayed = next(&mut stream).await;
    assert_eq!(replayed.session_id, earlier.session_id);
    assert_eq!(replayed.user_id, earlier.user_id);
    assert_eq!(replayed.reason, "logout");

    // Then live ones, every session of a logout-all.
    let email = unique_email();
    let first = app.register(&email, PASSWORD).await.unwrap();
    let second = app.login(&email, PASSWORD).await.unwrap();
    app.client()
        .logout_all(with_bearer(LogoutAllRequest {}, &first.access_token))
        .await
        .unwrap();
    let seen = [next(&mut stream).await, next(&mut stream).await];
    let mut sessions = seen.each_ref().map(|r| r.session_id.clone());
    sessions.sort();
    let mut expected = [first.session_id.clone(), second.session_id.clone()];
    expected.sort();
    assert_eq!(sessions, expected);
    assert!(seen.iter().all(|r| r.reason == "logout_all"));

    // A watcher asking only for what comes after now replays nothing old.
    let mut fresh = watch(&app, tollgate_shared::time::unix_now_ms() + 60_000)
        .await
        .unwrap();
    let later = app.new_user().await;
    app.client()
        .logout(LogoutRequest {
            refresh_token: later.refresh_token.clone(),
        })
        .await
        .unwrap();
    // The live revocation carries a timestamp before `since_ms`, but live ones are not filtered.
    assert_eq!(next(&mut fresh).await.session_id, later.session_id);
}

async fn watching_needs_the_validate_scope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unauthenticated = app
        .client()
        .watch_revocations(pb::WatchRevocationsRequest { since_ms: 0 })
        .await;
    assert_refused(unauthenticated, Code::Unauthenticated, "token_missing");
    let publisher = app
        .service_token("backend", "auth-service", &["publish"])
        .await
        .unwrap();
    let request = with_bearer(pb::WatchRevocationsRequest { since_ms: 0 }, &publisher);
    assert_refused(
        app.client().watch_revocations(request).await,
        Code::PermissionDenied,
        "insufficient_scope",
    );
}

async fn streams_end_when_the_service_stops(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut stream = watch(&app, 0).await.unwrap();
    // The stream must not hold up the drain: stop returns, and the stream ends.
    tokio::time::timeout(Duration::from_secs(20), app.stop())
        .await
        .expect("auth-service stops while a watcher is connected");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no revocation after shutdown: {end:?}"
    );
}

both_backends!(
    watchers_see_revocations_live_and_replayed,
    watching_needs_the_validate_scope,
    streams_end_when_the_service_stops,
);
