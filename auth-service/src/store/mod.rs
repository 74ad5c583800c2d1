//! Durable state: users, sessions, refresh-token chains and signing keys, and the pruning of
//! what has expired.
//!
//! One implementation serves both backends through `tollgate_shared::db` (sqlx's `Any` driver
//! with portable SQL), so the behavioural tests that pass on the embedded SQLite default pass on
//! PostgreSQL by construction, not by keeping two copies in step.

mod keys;
mod prune;
mod rotation;
mod sessions;
mod users;

use sqlx::AnyPool;
use tollgate_shared::db;

pub use keys::StoredKey;
pub use rotation::{RefreshOutcome, Rotation};
pub use sessions::{SessionLifetime, SessionRow, SessionStatus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where this service keeps its tables in a database it may share with the others.
pub static SCHEMA: db::ServiceSchema = db::ServiceSchema::new(
    "auth",
    &MIGRATOR,
    // The tables of the release before schemas, which adoption moves out of `public`.
    &[
        "users",
        "sessions",
        "refresh_tokens",
        "signing_keys",
        "key_state",
    ],
);

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
    /// Connects and migrates, failing with one line that names `DATABASE_URL`.
    pub async fn open(settings: db::Settings<'_>) -> anyhow::Result<Self> {
        Ok(Self {
            pool: db::open(settings, &SCHEMA).await?,
        })
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
