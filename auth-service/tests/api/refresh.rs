use std::time::Duration;

use futures::future::join_all;
use tonic::Code;

use crate::{both_backends, helpers::*};

async fn refresh_rotates_and_keeps_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.new_user().await;
    let second = app.refresh(&first.refresh_token).await.unwrap();
    assert_eq!(second.session_id, first.session_id);
    assert_eq!(second.user_id, first.user_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    app.validate(&second.access_token).await.unwrap();
    let third = app.refresh(&second.refresh_token).await.unwrap();
    app.validate(&third.access_token).await.unwrap();
}

async fn the_immediate_parent_is_honoured_within_the_grace_window(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.new_user().await;
    let lost = app.refresh(&first.refresh_token).await.unwrap();
    // The response was lost: the client presents the same token again and gets a valid pair.
    let retried = app.refresh(&first.refresh_token).await.unwrap();
    assert_eq!(retried.session_id, first.session_id);
    app.validate(&retried.access_token).await.unwrap();
    app.refresh(&retried.refresh_token).await.unwrap();
    assert!(!lost.refresh_token.is_empty());
}

async fn a_grandparent_replay_revokes_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.new_user().await;
    let second = app.refresh(&first.refresh_token).await.unwrap();
    let third = app.refresh(&second.refresh_token).await.unwrap();
    // `first` is now two generations old: a replay is theft, even inside the grace window.
    assert_refused(
        app.refresh(&first.refresh_token).await,
        Code::Unauthenticated,
        "refresh_token_reused",
    );
    assert_refused(
        app.refresh(&third.refresh_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    assert_refused(
        app.validate(&third.access_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
}

async fn reuse_after_the_grace_window_revokes_the_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.refresh_reuse_grace = Duration::ZERO
    })
    .await;
    let first = app.new_user().await;
    let second = app.refresh(&first.refresh_token).await.unwrap();
    assert_refused(
        app.refresh(&first.refresh_token).await,
        Code::Unauthenticated,
        "refresh_token_reused",
    );
    assert_refused(
        app.refresh(&second.refresh_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    assert_refused(
        app.validate(&second.access_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
}

async fn concurrent_refreshes_outside_the_window_have_exactly_one_winner(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.refresh_reuse_grace = Duration::ZERO
    })
    .await;
    let first = app.new_user().await;
    let attempts = join_all((0..8).map(|_| app.refresh(&first.refresh_token))).await;
    let winners: Vec<_> = attempts
        .iter()
        .filter_map(|result| result.as_ref().ok())
        .collect();
    assert_eq!(winners.len(), 1, "{attempts:?}");
    for failure in attempts.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(failure.code(), Code::Unauthenticated);
        assert!(
            ["refresh_token_reused", "session_revoked"].contains(&reason(failure).as_str()),
            "{failure:?}"
        );
    }
    // The losers prove the token was replayed, so the winner's pair must not stay live.
    assert_refused(
        app.refresh(&winners[0].refresh_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
}

async fn a_revocation_racing_refreshes_leaves_the_session_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(app.new_user().await);
    }
    let races = sessions.iter().map(|pair| async {
        let logout = async {
            let request = tollgate_proto::auth::v1::LogoutRequest {
                refresh_token: pair.refresh_token.clone(),
            };
            app.client().logout(request).await
        };
        let (logout, refreshed) = tokio::join!(logout, app.refresh(&pair.refresh_token));
        logout.expect("logout succeeds");
        refreshed
    });
    for (pair, refreshed) in sessions.iter().zip(join_all(races).await) {
        // Whichever came first, the session ends revoked and nothing it minted stays valid.
        assert_refused(
            app.validate(&pair.access_token).await,
            Code::Unauthenticated,
            "session_revoked",
        );
        if let Ok(new_pair) = refreshed {
            assert_refused(
                app.validate(&new_pair.access_token).await,
                Code::Unauthenticated,
                "session_revoked",
            );
            assert_refused(
                app.refresh(&new_pair.refresh_token).await,
                Code::Unauthenticated,
                "session_revoked",
            );
        }
    }
}

async fn malformed_and_unknown_refresh_tokens_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Empty and oversized fields are bad requests...
    assert_refused(
        app.refresh("").await,
        Code::InvalidArgument,
        "invalid_request",
    );
    assert_refused(
        app.refresh(&"A".repeat(1 << 20)).await,
        Code::InvalidArgument,
        "invalid_request",
    );
    // ...anything else that is not a live refresh token is an invalid one, whatever its shape.
    for unknown in ["not a token".to_owned(), "A".repeat(43)] {
        assert_refused(
            app.refresh(&unknown).await,
            Code::Unauthenticated,
            "refresh_token_invalid",
        );
    }
}

async fn tokens_of_another_type_are_invalid_refresh_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let pair = app.new_user().await;
    let service = app
        .service_token("gateway", "auth-service", &["auth.validate"])
        .await
        .unwrap();
    for token in [&pair.access_token, &service] {
        assert_refused(
            app.refresh(token).await,
            Code::Unauthenticated,
            "refresh_token_invalid",
        );
        let response = app
            .http
            .post(app.url("/v1/refresh"))
            .json(&serde_json::json!({"refresh_token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "refresh_token_invalid", "{body}");
    }
    // Nothing of the session was touched: its own refresh token still works.
    app.refresh(&pair.refresh_token).await.unwrap();
}

both_backends!(
    refresh_rotates_and_keeps_the_session,
    the_immediate_parent_is_honoured_within_the_grace_window,
    a_grandparent_replay_revokes_the_session,
    reuse_after_the_grace_window_revokes_the_session,
    concurrent_refreshes_outside_the_window_have_exactly_one_winner,
    a_revocation_racing_refreshes_leaves_the_session_revoked,
    malformed_and_unknown_refresh_tokens_are_refused,
    tokens_of_another_type_are_invalid_refresh_tokens,
);
