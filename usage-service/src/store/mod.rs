//! Durable state: subscriptions and their history, roles, delegations and the usage ledger,
//! on PostgreSQL or the embedded SQLite default through `tollgate_shared::db`.

mod access;
mod ledger;
mod subscriptions;

use sqlx::AnyPool;
use tollgate_shared::db;

pub use access::DelegationRow;
pub use ledger::{LedgerEntry, LedgerWrite, REVERSAL_PREFIX, ROWS_PER_STATEMENT};
pub use subscriptions::{PlanChangeRow, SubscriptionRow};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where this service keeps its tables in a database it may share with the others.
pub static SCHEMA: db::ServiceSchema = db::ServiceSchema::new(
    "usage",
    &MIGRATOR,
    // The tables of the release before schemas, which adoption moves out of `public`.
    &[
        "subscriptions",
        "plan_changes",
        "user_roles",
        "delegations",
        "ledger",
    ],
);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable")]
    Unavailable(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Whether several transactions may write at once (PostgreSQL), or writers queue for one
    /// lock anyway (SQLite).
    concurrent_writes: bool,
}

impl Store {
    /// Connects and migrates, failing with one line that names `DATABASE_URL`.
    pub async fn open(settings: db::Settings<'_>) -> anyhow::Result<Self> {
        Ok(Self {
            pool: db::open(settings, &SCHEMA).await?,
            concurrent_writes: !settings.url.starts_with("sqlite:"),
        })
    }

    /// How many writes are worth having in flight at once.
    pub fn write_parallelism(&self) -> usize {
        if self.concurrent_writes { 4 } else { 1 }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}
