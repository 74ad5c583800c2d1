//! The upgrade to explicit roles, on both backends: users seen before it (they have a
//! subscription) held `member` implicitly while they had no role, and hold it as a row after
//! it; users with roles keep exactly theirs; every one of them counts as seen, so a later
//! revocation of their last role is not undone by a fresh default.

use std::path::Path;

use sqlx::AnyPool;

use crate::{both_backends, helpers::*};

/// The service's migrations, oldest first.
fn migrations() -> Vec<String> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect()
}

async fn roles(pool: &AnyPool, user: &str) -> Vec<String> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role")
            .bind(user)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().map(|(role,)| role).collect()
}

async fn the_upgrade_makes_the_implicit_default_role_explicit(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let settings = tollgate_shared::db::Settings {
        url: &database.url,
        max_connections: 1,
        timeouts: Default::default(),
    };
    let pool = tollgate_shared::db::connect(settings, &usage_service::store::SCHEMA)
        .await
        .unwrap();
    if backend == Backend::PostgresRedis {
        sqlx::raw_sql("CREATE SCHEMA usage")
            .execute(&pool)
            .await
            .unwrap();
    }
    let migrations = migrations();
    let (first, later) = migrations.split_first().unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(first.clone()))
        .execute(&pool)
        .await
        .unwrap();

    // What the first version stored: a user it saw, a user restricted to viewer, and a user
    // made admin before it was ever seen.
    let (seen, viewer, admin) = (new_user(), new_user(), new_user());
    for user in [&seen, &viewer] {
        sqlx::query(
            "INSERT INTO subscriptions (user_id, plan_id, period_start, period_end, updated_at) \
             VALUES ($1, 'free', 0, 1, 1)",
        )
        .bind(user.as_str())
        .execute(&pool)
        .await
        .unwrap();
    }
    for (user, role) in [(&viewer, "viewer"), (&admin, "admin")] {
        sqlx::query("INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, 1)")
            .bind(user.as_str())
            .bind(role)
            .execute(&pool)
            .await
            .unwrap();
    }

    for migration in later {
        sqlx::raw_sql(sqlx::AssertSqlSafe(migration.clone()))
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(roles(&pool, &seen).await, ["member"]);
    assert_eq!(roles(&pool, &viewer).await, ["viewer"]);
    assert_eq!(roles(&pool, &admin).await, ["admin"]);
    let (known,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM seen_users WHERE user_id IN ($1, $2, $3)")
            .bind(seen.as_str())
            .bind(viewer.as_str())
            .bind(admin.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(known, 3, "every user of the first version counts as seen");
}

both_backends!(the_upgrade_makes_the_implicit_default_role_explicit);
