//! Database connections for every service: one sqlx `Any` pool over PostgreSQL or the embedded
//! SQLite default, with portable SQL in each service's migrations (text ids, integer
//! milliseconds), so one behavioural suite covers both backends.
//!
//! Services may share one database: on PostgreSQL each keeps its tables in a schema of its own
//! (every pooled connection's `search_path`), and on both backends each tracks its migrations
//! in a table of its own (see [`migrate`]).
//!
//! No statement waits forever. On PostgreSQL every pooled connection carries a statement
//! timeout, a lock timeout and an idle-in-transaction timeout, and asks the server to probe the
//! connection with TCP keepalives: a client that vanishes mid-transaction (a partition, a
//! killed process) loses its transaction and its row locks after seconds, not hours. SQLite has
//! no statement timeout; its writers wait for the write lock at most `busy_timeout`, and each
//! server's request timeout bounds the rest.

mod migrate;

use std::time::Duration;

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

pub use migrate::{ServiceSchema, migrate};

use crate::config::parse_duration;

/// Time limits of every database statement, shared by every service's configuration.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Timeouts {
    /// Longest a database statement may run or wait for a lock before it fails. On
    /// PostgreSQL a transaction left idle for twice as long (its client gone silent) is
    /// ended by the server, releasing its locks.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a service's pool connects, and how.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    /// `postgres://…` or `sqlite://…`.
    pub url: &'a str,
    pub max_connections: u32,
    pub timeouts: Timeouts,
}

/// How long the server waits on a silent client before it probes, between probes, and how
/// many unanswered probes end the connection: about a minute for a dead peer.
const TCP_KEEPALIVE: (u32, u32, u32) = (30, 10, 3);

/// Connects, failing fast (5 s) if the database is unreachable. On PostgreSQL every
/// connection works in `schema` (created by [`migrate`] if missing).
pub async fn connect(
    settings: Settings<'_>,
    schema: &ServiceSchema,
) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let options: AnyConnectOptions = embedded_url(settings.url).parse()?;
    let postgres_setup = postgres_session_setup(schema.name(), settings.timeouts);
    AnyPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _meta| {
            let postgres_setup = postgres_setup.clone();
            Box::pin(async move {
                let setup = if conn.backend_name() == "SQLite" {
                    SQLITE_SESSION_SETUP.to_owned()
                } else {
                    postgres_setup
                };
                conn.execute(sqlx::AssertSqlSafe(setup)).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

/// Connects and migrates, failing with one line that names `DATABASE_URL` (never its value,
/// which may hold a password).
pub async fn open(settings: Settings<'_>, schema: &ServiceSchema) -> anyhow::Result<AnyPool> {
    let pool = connect(settings, schema)
        .await
        .map_err(|err| anyhow::anyhow!("DATABASE_URL: cannot connect to the database: {err}"))?;
    migrate(&pool, schema)
        .await
        .map_err(|err| anyhow::anyhow!("DATABASE_URL: migrations failed: {err}"))?;
    Ok(pool)
}

const SQLITE_SESSION_SETUP: &str = "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
     PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;";

/// The settings of every pooled PostgreSQL session. `schema` is one of the services' own
/// constant names, never input.
fn postgres_session_setup(schema: &str, timeouts: Timeouts) -> String {
    let statement = timeouts.statement_timeout.as_millis().max(1);
    let idle_in_transaction = statement.saturating_mul(2);
    let (idle, interval, count) = TCP_KEEPALIVE;
    format!(
        "SET search_path TO \"{schema}\"; \
         SET statement_timeout = {statement}; \
         SET lock_timeout = {statement}; \
         SET idle_in_transaction_session_timeout = {idle_in_transaction}; \
         SET tcp_keepalives_idle = {idle}; \
         SET tcp_keepalives_interval = {interval}; \
         SET tcp_keepalives_count = {count};"
    )
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
    use std::time::Duration;

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

    #[test]
    fn postgres_sessions_time_out_and_work_in_their_schema() {
        let setup = super::postgres_session_setup(
            "auth",
            super::Timeouts {
                statement_timeout: Duration::from_millis(1500),
            },
        );
        for expected in [
            "SET search_path TO \"auth\"",
            "statement_timeout = 1500",
            "lock_timeout = 1500",
            "idle_in_transaction_session_timeout = 3000",
            "tcp_keepalives_idle = 30",
        ] {
            assert!(setup.contains(expected), "{expected} missing from {setup}");
        }
    }
}
