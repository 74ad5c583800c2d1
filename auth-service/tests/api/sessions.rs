use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tollgate_proto::auth::v1::{ListSessionsRequest, LogoutAllRequest, LogoutRequest};
use tollgate_shared::events::Revocation;
use tonic::Code;

use crate::{both_backends, helpers::*};

async fn logout_by_refresh_token_or_access_token_revokes_one_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = unique_email();
    let first = app.register(&email, PASSWORD).await.unwrap();
    let second = app.login(&email, PASSWORD).await.unwrap();

    app.client()
        .logout(LogoutRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap();
    assert_refused(
        app.validate(&first.access_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    assert_refused(
        app.refresh(&first.refresh_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    app.validate(&second.access_token).await.unwrap();

    let by_access = with_bearer(
        LogoutRequest {
            refresh_token: String::new(),
        },
        &second.access_token,
    );
    app.client().logout(by_access).await.unwrap();
    assert_refused(
        app.validate(&second.access_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    // Logging out twice is not an error.
    app.client()
        .logout(LogoutRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap();
    // Without any token it is.
    assert_refused(
        app.client()
            .logout(LogoutRequest {
                refresh_token: String::new(),
            })
            .await,
        Code::Unauthenticated,
        "token_missing",
    );
}

async fn logout_all_and_list_sessions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = unique_email();
    let pairs = [
        app.register(&email, PASSWORD).await.unwrap(),
        app.login(&email, PASSWORD).await.unwrap(),
        app.login(&email, PASSWORD).await.unwrap(),
    ];
    let bystander = app.new_user().await;

    let listed = app
        .client()
        .list_sessions(with_bearer(ListSessionsRequest {}, &pairs[1].access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 3);
    let current: Vec<_> = listed.iter().filter(|session| session.current).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].session_id, pairs[1].session_id);

    let revoked = app
        .client()
        .logout_all(with_bearer(LogoutAllRequest {}, &pairs[0].access_token))
        .await
        .unwrap()
        .into_inner()
        .revoked_sessions;
    assert_eq!(revoked, 3);
    for pair in &pairs {
        assert_refused(
            app.validate(&pair.access_token).await,
            Code::Unauthenticated,
            "session_revoked",
        );
    }
    app.validate(&bystander.access_token).await.unwrap();
    let status = app
        .client()
        .list_sessions(with_bearer(ListSessionsRequest {}, &pairs[0].access_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_refused(
        app.client().list_sessions(ListSessionsRequest {}).await,
        Code::Unauthenticated,
        "token_missing",
    );
}

async fn revocations_survive_a_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (config, database) = (app.config.clone(), Arc::clone(&app.database));
    let revoked = app.new_user().await;
    let kept = app.new_user().await;
    app.client()
        .logout(LogoutRequest {
            refresh_token: revoked.refresh_token.clone(),
        })
        .await
        .unwrap();
    app.stop().await;

    let restarted = TestApp::start(config, database).await;
    assert_refused(
        restarted.validate(&revoked.access_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    // Keys survive too: the old access token still verifies.
    restarted.validate(&kept.access_token).await.unwrap();
    restarted.refresh(&kept.refresh_token).await.unwrap();
}

both_backends!(
    logout_by_refresh_token_or_access_token_revokes_one_session,
    logout_all_and_list_sessions,
    revocations_survive_a_restart,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_published_on_redis() {
    let app = TestApp::spawn(Backend::PostgresRedis).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    let channel = format!(
        "{}:{}",
        app.config.redis_prefix,
        tollgate_shared::events::REVOCATIONS_CHANNEL
    );
    pubsub.subscribe(&channel).await.unwrap();

    let pair = app.new_user().await;
    app.client()
        .logout(LogoutRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap();

    let message = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
        .await
        .expect("a revocation event within 10 s")
        .expect("a message");
    let payload: String = message.get_payload().unwrap();
    let (_node, json) = tollgate_shared::events::open(&payload).expect("node-tagged envelope");
    let event: Revocation = serde_json::from_str(json).unwrap();
    assert_eq!(event.session_id.to_string(), pair.session_id);
    assert_eq!(event.user_id.to_string(), pair.user_id);
    assert_eq!(event.reason, "logout");
}
