//! Expired sessions and refresh tokens are pruned, and pruning changes no security answer: live
//! sessions, the spent tokens of live sessions and revoked sessions that have not expired stay;
//! a pruned refresh token answers `refresh_token_invalid`.

use std::time::Duration;

use auth_service::{
    domain::RefreshToken,
    pruning::{BATCH, PruneSettings},
};
use futures::future::join_all;
use sqlx::AnyPool;
use tollgate_proto::auth::v1::LogoutRequest;
use tollgate_shared::{shutdown::Shutdown, time::unix_now_ms};
use tonic::Code;
use uuid::Uuid;

use crate::{both_backends, helpers::*};

const DAY_MS: i64 = 86_400_000;

/// A session (revoked first, if asked) that expires at `expires_at_ms`, with its refresh token.
async fn session_expiring_at(
    app: &TestApp,
    user_id: Uuid,
    expires_at_ms: i64,
    revoked: bool,
) -> RefreshToken {
    let (session_id, token) = (Uuid::new_v4(), RefreshToken::generate());
    let created_at_ms = expires_at_ms - 30 * DAY_MS;
    let store = app.auth.store();
    store
        .create_session(
            session_id,
            user_id,
            &token.hash(),
            created_at_ms,
            expires_at_ms,
        )
        .await
        .unwrap();
    if revoked {
        store
            .revoke_session(session_id, created_at_ms + 1, "logout")
            .await
            .unwrap();
    }
    token
}

/// The app's database, as a second client sees it.
async fn database(app: &TestApp) -> AnyPool {
    let settings = tollgate_shared::db::Settings {
        url: &app.database.url,
        max_connections: 1,
        timeouts: Default::default(),
    };
    tollgate_shared::db::connect(settings, &auth_service::store::SCHEMA)
        .await
        .unwrap()
}

/// Rows of `table` whose expiry is before `before_ms` (all of them with `i64::MAX`).
async fn count(db: &AnyPool, table: &str, before_ms: i64) -> i64 {
    // `table` is one of this file's constants.
    let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {table} WHERE expires_at < $1"
    )))
    .bind(before_ms)
    .fetch_one(db)
    .await
    .unwrap();
    count
}

async fn expired_rows_are_pruned_and_live_ones_stay(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.prune_interval = Duration::from_millis(50);
        config.refresh_reuse_grace = Duration::ZERO;
    })
    .await;
    let db = database(&app).await;
    // A live session whose first token is spent, and a revoked one that has not expired.
    let live = app.new_user().await;
    let current = app.refresh(&live.refresh_token).await.unwrap();
    let revoked = app.new_user().await;
    app.client()
        .logout(LogoutRequest {
            refresh_token: revoked.refresh_token.clone(),
        })
        .await
        .unwrap();
    let user_id = live.user_id.parse().unwrap();
    let a_day_ago = unix_now_ms() - DAY_MS;
    let expired_token = session_expiring_at(&app, user_id, a_day_ago, false).await;
    let expired_revoked_token = session_expiring_at(&app, user_id, a_day_ago, true).await;

    let gone = eventually(Duration::from_secs(20), || async {
        let now = unix_now_ms();
        count(&db, "sessions", now).await + count(&db, "refresh_tokens", now).await == 0
    })
    .await;
    assert!(gone, "expired sessions and refresh tokens were not pruned");

    // A pruned refresh token is an invalid one.
    for token in [&expired_token, &expired_revoked_token] {
        assert_refused(
            app.refresh(token.expose()).await,
            Code::Unauthenticated,
            "refresh_token_invalid",
        );
    }
    // What had not expired answers as before.
    assert_refused(
        app.refresh(&revoked.refresh_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    assert_refused(
        app.validate(&revoked.access_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
    let next = app.refresh(&current.refresh_token).await.unwrap();
    app.validate(&next.access_token).await.unwrap();
    // The live session's spent token was kept, so its replay is still caught.
    assert_refused(
        app.refresh(&live.refresh_token).await,
        Code::Unauthenticated,
        "refresh_token_reused",
    );
    assert_refused(
        app.validate(&next.access_token).await,
        Code::Unauthenticated,
        "session_revoked",
    );
}

async fn replicas_share_one_run_that_drains_a_backlog_in_batches(backend: Backend) {
    let first = TestApp::spawn(backend).await;
    let second = TestApp::start(first.config.clone(), first.database.clone()).await;
    let db = database(&first).await;
    let user = first.new_user().await;
    let user_id = user.user_id.parse().unwrap();
    // Expired two hours from now, when the replicas below prune: their own runs at startup
    // leave them alone.
    let later = unix_now_ms() + 2 * 3_600_000;
    let backlog = BATCH + 50;
    for _ in 0..backlog {
        session_expiring_at(&first, user_id, later - 3_600_000, false).await;
    }
    assert_eq!(count(&db, "sessions", i64::MAX).await, backlog + 1);

    // Both replicas' periods are over at once: exactly one of them prunes.
    let settings = PruneSettings {
        interval: Duration::from_secs(3600),
        retention: Duration::from_secs(930),
    };
    let shutdown = Shutdown::new();
    let runs =
        join_all([&first, &second].map(|app| app.auth.prune(later, settings, &shutdown))).await;
    let runs: Vec<_> = runs.into_iter().map(Result::unwrap).collect();
    let ran: Vec<_> = runs.iter().flatten().collect();
    assert_eq!(ran.len(), 1, "{runs:?}");
    assert_eq!(ran[0].refresh_tokens, backlog as u64);
    assert_eq!(ran[0].sessions, backlog as u64);
    // Within the period, nobody runs again.
    for app in [&first, &second] {
        assert_eq!(
            app.auth
                .prune(later + 1_000, settings, &shutdown)
                .await
                .unwrap(),
            None
        );
    }

    // Only the live user's session is left.
    assert_eq!(count(&db, "sessions", i64::MAX).await, 1);
    assert_eq!(count(&db, "refresh_tokens", i64::MAX).await, 1);
    first.refresh(&user.refresh_token).await.unwrap();
}

both_backends!(
    expired_rows_are_pruned_and_live_ones_stay,
    replicas_share_one_run_that_drains_a_backlog_in_batches,
);
