//! The grace window cannot fork a session: a rotated token is re-issued at most once, the
//! children of one token are a family whose first refresh retires the others, and a session
//! ends at its maximum lifetime however often it is refreshed.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use tollgate_proto::auth::v1::{ListSessionsRequest, TokenPair};
use tonic::Code;

use crate::{both_backends, helpers::*};

/// Asserts the session behind `pairs` is revoked: none of its refresh tokens refreshes and
/// none of its access tokens validates.
async fn assert_session_revoked(app: &TestApp, pairs: &[&TokenPair]) {
    for pair in pairs {
        assert_refused(
            app.refresh(&pair.refresh_token).await,
            Code::Unauthenticated,
            "session_revoked",
        );
        assert_refused(
            app.validate(&pair.access_token).await,
            Code::Unauthenticated,
            "session_revoked",
        );
    }
}

async fn the_parent_presented_a_third_time_inside_the_window_revokes_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let parent = app.new_user().await;
    let child = app.refresh(&parent.refresh_token).await.unwrap();
    // One retry inside the window (a lost response) gets a working pair...
    let retried = app.refresh(&parent.refresh_token).await.unwrap();
    app.validate(&retried.access_token).await.unwrap();
    // ...a third presentation is a thief keeping a chain of their own.
    assert_refused(
        app.refresh(&parent.refresh_token).await,
        Code::Unauthenticated,
        "refresh_token_reused",
    );
    assert_session_revoked(&app, &[&child, &retried]).await;
}

async fn once_a_sibling_is_refreshed_the_others_are_retired(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let parent = app.new_user().await;
    let a = app.refresh(&parent.refresh_token).await.unwrap();
    let a_prime = app.refresh(&parent.refresh_token).await.unwrap();
    let next = app.refresh(&a_prime.refresh_token).await.unwrap();
    // `a` was never used, but its sibling was: presenting it now is reuse.
    assert_refused(
        app.refresh(&a.refresh_token).await,
        Code::Unauthenticated,
        "refresh_token_reused",
    );
    assert_session_revoked(&app, &[&next]).await;
}

async fn the_retry_is_refused_once_the_first_child_was_used(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let parent = app.new_user().await;
    let child = app.refresh(&parent.refresh_token).await.unwrap();
    let grandchild = app.refresh(&child.refresh_token).await.unwrap();
    // The client provably got `child`: the parent coming back is not a lost response.
    assert_refused(
        app.refresh(&parent.refresh_token).await,
        Code::Unauthenticated,
        "refresh_token_reused",
    );
    assert_session_revoked(&app, &[&grandchild]).await;
}

async fn two_concurrent_refreshes_inside_the_window_both_get_working_pairs(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let parent = app.new_user().await;
    let (first, second) = tokio::join!(
        app.refresh(&parent.refresh_token),
        app.refresh(&parent.refresh_token)
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_ne!(first.refresh_token, second.refresh_token);
    app.validate(&first.access_token).await.unwrap();
    app.validate(&second.access_token).await.unwrap();
    // Whichever the client kept goes on; the session stays one chain.
    let next = app.refresh(&second.refresh_token).await.unwrap();
    app.refresh(&next.refresh_token).await.unwrap();
}

async fn more_concurrent_refreshes_than_one_retry_revoke_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let parent = app.new_user().await;
    let attempts = join_all((0..8).map(|_| app.refresh(&parent.refresh_token))).await;
    let winners: Vec<_> = attempts.iter().filter_map(|r| r.as_ref().ok()).collect();
    // The database decides: one rotation and one re-issue at most, then it is a replay.
    assert!(winners.len() <= 2, "{attempts:?}");
    let distinct: HashSet<_> = winners.iter().map(|pair| &pair.refresh_token).collect();
    assert_eq!(distinct.len(), winners.len());
    let reused = attempts
        .iter()
        .filter_map(|r| r.as_ref().err())
        .inspect(|failure| {
            assert_eq!(failure.code(), Code::Unauthenticated);
            assert!(
                ["refresh_token_reused", "session_revoked"].contains(&reason(failure).as_str()),
                "{failure:?}"
            );
        })
        .filter(|failure| reason(failure) == "refresh_token_reused")
        .count();
    assert_eq!(reused, 1, "{attempts:?}");
    assert_session_revoked(&app, &winners).await;
}

async fn a_session_ends_at_its_maximum_lifetime_however_often_it_is_refreshed(backend: Backend) {
    let lifetime = Duration::from_secs(2);
    let app = TestApp::spawn_with(backend, |config| {
        config.session_max_lifetime = lifetime;
    })
    .await;
    let started = std::time::Instant::now();
    let mut pair = app.new_user().await;
    let sessions = app
        .client()
        .list_sessions(with_bearer(ListSessionsRequest {}, &pair.access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1);
    assert!(
        sessions[0].expires_at <= sessions[0].created_at + lifetime.as_secs() as i64 + 1,
        "{sessions:?}"
    );

    // Refreshing keeps sliding the 30-day expiry, but never past the absolute lifetime.
    let deadline = started + Duration::from_secs(20);
    let refusal = loop {
        match app.refresh(&pair.refresh_token).await {
            Ok(next) => pair = next,
            Err(status) => break status,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session outlived its maximum lifetime"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(started.elapsed() >= lifetime, "the session ended early");
    assert_refused(
        Err::<(), _>(refusal),
        Code::Unauthenticated,
        "refresh_token_expired",
    );
    // Its access tokens follow once the validator's short cache of live sessions lapses.
    let refused = eventually(Duration::from_secs(10), || async {
        app.validate(&pair.access_token)
            .await
            .is_err_and(|status| reason(&status) == "session_revoked")
    })
    .await;
    assert!(refused, "an access token outlived its session");
}

both_backends!(
    the_parent_presented_a_third_time_inside_the_window_revokes_the_session,
    once_a_sibling_is_refreshed_the_others_are_retired,
    the_retry_is_refused_once_the_first_child_was_used,
    two_concurrent_refreshes_inside_the_window_both_get_working_pairs,
    more_concurrent_refreshes_than_one_retry_revoke_the_session,
    a_session_ends_at_its_maximum_lifetime_however_often_it_is_refreshed,
);
