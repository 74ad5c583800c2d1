//! Dependencies cut off mid-flight through a fault proxy (a partition, not a stopped server):
//! the contract's fallbacks hold and the service recovers by itself.

use std::{sync::Arc, time::Duration};

use tollgate_proto::auth::v1::LogoutRequest;
use tollgate_shared::fault_proxy::FaultProxy;
use tonic::Code;

use crate::helpers::*;

async fn proxied(url: &str) -> (FaultProxy, String) {
    FaultProxy::in_front_of(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_cut_off_tokens_still_validate_and_writes_are_unavailable() {
    let database = Arc::new(TestDatabase::create(Backend::PostgresRedis).await);
    let (proxy, url) = proxied(&database.url).await;
    let mut config = config(Backend::PostgresRedis, &database);
    config.database_url = url.into();
    let app = TestApp::start(config, database).await;
    let email = unique_email();
    let user = app.register(&email, PASSWORD).await.unwrap();
    let never_validated = app.login(&email, PASSWORD).await.unwrap();
    app.validate(&user.access_token).await.unwrap();

    proxy.cut();
    assert_refused(
        app.login(&email, PASSWORD).await,
        Code::Unavailable,
        "unavailable",
    );
    assert_refused(
        app.register(&unique_email(), PASSWORD).await,
        Code::Unavailable,
        "unavailable",
    );
    assert_refused(
        app.refresh(&user.refresh_token).await,
        Code::Unavailable,
        "unavailable",
    );
    // Existing tokens keep validating, cached or not.
    app.validate(&user.access_token).await.unwrap();
    app.validate(&never_validated.access_token).await.unwrap();

    proxy.restore();
    let recovered = eventually(Duration::from_secs(20), || async {
        app.login(&email, PASSWORD).await.is_ok()
    })
    .await;
    assert!(
        recovered,
        "login did not recover after the database came back"
    );
    app.refresh(&user.refresh_token).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_cut_off_replicas_keep_serving_and_resume_sharing_revocations() {
    let database = Arc::new(TestDatabase::create(Backend::PostgresRedis).await);
    let (proxy, url) = proxied(&redis_url()).await;
    let mut config = config(Backend::PostgresRedis, &database);
    config.redis_url = Some(url.into());
    let (a, b) = tokio::join!(
        TestApp::start(config.clone(), Arc::clone(&database)),
        TestApp::start(config, Arc::clone(&database))
    );

    proxy.cut();
    // Counters and events fall back to the process: everything keeps answering.
    let email = unique_email();
    let on_a = a.register(&email, PASSWORD).await.unwrap();
    b.login(&email, PASSWORD).await.unwrap();
    b.validate(&on_a.access_token).await.unwrap();
    a.client()
        .logout(LogoutRequest {
            refresh_token: on_a.refresh_token.clone(),
        })
        .await
        .unwrap();
    assert_refused(
        a.validate(&on_a.access_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    // Without events, B learns from the database once its cached "active" entry lapses.
    let learned = eventually(Duration::from_secs(10), || async {
        b.validate(&on_a.access_token)
            .await
            .is_err_and(|status| reason(&status) == "session_revoked")
    })
    .await;
    assert!(learned, "replica B never learned of the revocation");

    proxy.restore();
    // Once the subscriber has reconnected, a revocation on A reaches B within a second even
    // though B holds the session as active in its cache.
    let resumed = eventually(Duration::from_secs(20), || async {
        let pair = a.new_user().await;
        b.validate(&pair.access_token).await.unwrap();
        a.client()
            .logout(LogoutRequest {
                refresh_token: pair.refresh_token.clone(),
            })
            .await
            .unwrap();
        eventually(Duration::from_secs(1), || async {
            b.validate(&pair.access_token)
                .await
                .is_err_and(|status| reason(&status) == "session_revoked")
        })
        .await
    })
    .await;
    assert!(
        resumed,
        "revocation events did not resume after Redis came back"
    );
}

/// A partition in the middle of a refresh: the row lock was taken, the answer lost, and the
/// service's end of the connection gave up without the database hearing of it. The database
/// must end that transaction by itself, the stuck request must be answered, and once the
/// partition heals the session must refresh (not queue behind a lock held for hours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_inside_a_refresh_transaction_heals_without_stuck_locks() {
    let database = Arc::new(TestDatabase::create(Backend::PostgresRedis).await);
    let (proxy, url) = proxied(&database.url).await;
    let mut config = config(Backend::PostgresRedis, &database);
    config.database_url = url.into();
    config.database_timeouts.statement_timeout = Duration::from_secs(1);
    config.request_timeout.duration = Duration::from_secs(3);
    let app = TestApp::start(config, database).await;
    let email = unique_email();
    let user = app.register(&email, PASSWORD).await.unwrap();

    // The refresh's first UPDATE locks a row; its answer (command tag `UPDATE 1`) is lost.
    // Stuck requests are answered at the request timeout: HTTP 503, gRPC CANCELLED.
    proxy.blackhole_before_reply(b"UPDATE 1\0");
    let stuck = app
        .http
        .post(app.url("/v1/refresh"))
        .json(&serde_json::json!({"refresh_token": user.refresh_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stuck.status(),
        503,
        "the refresh was answered: it updated no row, so the partition missed it"
    );
    assert_eq!(
        app.login(&email, PASSWORD).await.unwrap_err().code(),
        Code::Cancelled,
        "a call stuck behind the partition"
    );

    proxy.restore();
    let refreshed = eventually(Duration::from_secs(20), || async {
        app.refresh(&user.refresh_token).await.is_ok()
    })
    .await;
    assert!(
        refreshed,
        "the session never refreshed after the partition healed"
    );
    app.login(&email, PASSWORD).await.unwrap();
}
