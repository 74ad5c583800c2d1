//! A database laid out by the release before schemas (its tables and `_sqlx_migrations` in
//! PostgreSQL's `public`, or `_sqlx_migrations` in the SQLite file) migrates forward on the
//! first start of this one, and its sessions live on.

use std::sync::Arc;

use auth_service::domain::RefreshToken;
use sqlx::{AnyPool, migrate::Migrator};
use tollgate_shared::time::unix_now_ms;
use uuid::Uuid;

use crate::{both_backends, helpers::*};

/// A plain client of the database, outside any service schema: what the earlier release was.
async fn plain_pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    };
    AnyPool::connect(&url).await.unwrap()
}

async fn a_database_of_the_earlier_layout_migrates_forward(backend: Backend) {
    let database = Arc::new(TestDatabase::create(backend).await);
    let pool = plain_pool(&database.url).await;
    // The earlier release: its one migration, tracked in the shared default table.
    let first = auth_service::store::SCHEMA
        .migrator()
        .iter()
        .next()
        .unwrap();
    Migrator::with_migrations(vec![first.clone()])
        .run(&pool)
        .await
        .unwrap();
    let (user, session, token) = (Uuid::new_v4(), Uuid::new_v4(), RefreshToken::generate());
    let now = unix_now_ms();
    let in_a_month = now + 30 * 86_400_000;
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, 'x', $3)",
    )
    .bind(user.to_string())
    .bind(unique_email())
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, created_at, last_refreshed_at, expires_at) \
         VALUES ($1, $2, $3, $3, $4)",
    )
    .bind(session.to_string())
    .bind(user.to_string())
    .bind(now)
    .bind(in_a_month)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, session_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token.hash().as_str())
    .bind(session.to_string())
    .bind(now)
    .bind(in_a_month)
    .execute(&pool)
    .await
    .unwrap();

    let app = TestApp::start(config(backend, &database), Arc::clone(&database)).await;
    let pair = app
        .refresh(token.expose())
        .await
        .expect("the earlier release's session refreshes");
    let validated = app.validate(&pair.access_token).await.unwrap();
    assert_eq!(validated.session_id, session.to_string());

    if backend == Backend::PostgresRedis {
        // Moved, not copied: nothing of the service's is left in `public`.
        for table in ["public.users", "public._sqlx_migrations", "auth.users"] {
            let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(table)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(found.is_some(), table.starts_with("auth."), "{table}");
        }
    }
    pool.close().await;
}

both_backends!(a_database_of_the_earlier_layout_migrates_forward);
