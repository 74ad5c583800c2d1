//! Database connections for every service: one sqlx `Any` pool over PostgreSQL or the embedded
//! SQLite default, with portable SQL in each service's migrations (text ids, integer
//! milliseconds), so one behavioural suite covers both backends.

use std::time::Duration;

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::{MigrateError, Migrator},
};

/// Connects, failing fast (5 s) if the database is unreachable.
pub async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let options: AnyConnectOptions = embedded_url(url).parse()?;
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                if conn.backend_name() == "SQLite" {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                         PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

/// Connects and migrates, failing with one line that names `DATABASE_URL` (never its value,
/// which may hold a password).
pub async fn open(url: &str, max_connections: u32, migrator: &Migrator) -> anyhow::Result<AnyPool> {
    let pool = connect(url, max_connections)
        .await
        .map_err(|err| anyhow::anyhow!("DATABASE_URL: cannot connect to the database: {err}"))?;
    migrate(&pool, migrator)
        .await
        .map_err(|err| anyhow::anyhow!("DATABASE_URL: migrations failed: {err}"))?;
    Ok(pool)
}

/// Applies pending migrations. PostgreSQL serialises concurrent migrators with an advisory
/// lock; SQLite has none, so a process that loses the race retries and then finds the
/// migrations applied.
pub async fn migrate(pool: &AnyPool, migrator: &Migrator) -> Result<(), MigrateError> {
    let mut attempts = 0;
    loop {
        match migrator.run(pool).await {
            Err(_) if attempts < 3 && is_sqlite(pool).await => attempts += 1,
            result => return result,
        }
    }
}

async fn is_sqlite(pool: &AnyPool) -> bool {
    match pool.acquire().await {
        Ok(conn) => conn.backend_name() == "SQLite",
        Err(_) => false,
    }
}

pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// `sqlite://file.db` should create the file on first start, as an embedded default must.
fn embedded_url(url: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}mode=rwc")
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_urls_create_their_file() {
        assert_eq!(
            super::embedded_url("sqlite://a.db"),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            super::embedded_url("sqlite://a.db?x=1"),
            "sqlite://a.db?x=1&mode=rwc"
        );
        assert_eq!(
            super::embedded_url("sqlite://a.db?mode=ro"),
            "sqlite://a.db?mode=ro"
        );
        assert_eq!(super::embedded_url("postgres://h/db"), "postgres://h/db");
    }
}
