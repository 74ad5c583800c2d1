//! Durable state: users, sessions, refresh-token chains and signing keys.
//!
//! One implementation serves both backends through sqlx's `Any` driver with portable SQL
//! (text ids, integer milliseconds), so the behavioural tests that pass on the embedded SQLite
//! default pass on PostgreSQL by construction, not by keeping two copies in step.

mod keys;
mod sessions;
mod users;

use std::time::Duration;

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

pub use keys::StoredKey;
pub use sessions::{RefreshOutcome, Rotation, SessionRow, SessionStatus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the email is already registered")]
    EmailTaken,
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Unavailable(err)
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connects (failing fast if the database is unreachable) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let url = embedded_url(url);
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// Applies pending migrations. PostgreSQL serialises concurrent migrators with an advisory
    /// lock; SQLite has none, so a process that loses the race retries and then finds the
    /// migrations applied.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let mut attempts = 0;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Err(_) if attempts < 3 && self.is_sqlite().await => attempts += 1,
                result => return result,
            }
        }
    }

    async fn is_sqlite(&self) -> bool {
        match self.pool.acquire().await {
            Ok(conn) => conn.backend_name() == "SQLite",
            Err(_) => false,
        }
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
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

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
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
