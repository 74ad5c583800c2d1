//! The throwaway database auth-service runs on: a fresh PostgreSQL database (so numbers never
//! depend on rows left by earlier runs, and the run cannot touch anyone's data) or a temporary
//! SQLite file. Both disappear at the end of the run.

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _, PgConnection};
use tempfile::TempDir;

use crate::{cli::DatabaseKind, random_lowercase};

#[derive(Debug)]
pub enum Database {
    Postgres { server: String, name: String },
    Sqlite { dir: TempDir },
}

impl Database {
    /// Creates the database. For PostgreSQL, `server` is a URL without a database name.
    pub async fn create(kind: DatabaseKind, server: &str) -> anyhow::Result<Self> {
        match kind {
            DatabaseKind::Postgres => {
                let server = server.trim_end_matches('/').to_owned();
                let name = format!("tollgate_bench_{}", random_lowercase(12));
                let mut admin = admin_connection(&server).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .with_context(|| format!("creating database {name}"))?;
                admin.close().await.ok();
                Ok(Self::Postgres { server, name })
            }
            DatabaseKind::Sqlite => Ok(Self::Sqlite {
                dir: tempfile::tempdir().context("creating a temporary directory")?,
            }),
        }
    }

    /// The `DATABASE_URL` auth-service gets.
    pub fn url(&self) -> String {
        match self {
            Self::Postgres { server, name } => format!("{server}/{name}"),
            Self::Sqlite { dir } => format!("sqlite://{}", dir.path().join("auth.db").display()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Postgres { name, .. } => format!("PostgreSQL (database {name}) + Redis"),
            Self::Sqlite { .. } => "SQLite (temporary file), in-process engine".into(),
        }
    }

    /// Drops the database; call after auth-service has closed its pool.
    pub async fn remove(self) -> anyhow::Result<()> {
        match self {
            Self::Postgres { server, name } => {
                let mut admin = admin_connection(&server).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await
                    .with_context(|| format!("dropping database {name}"))?;
                admin.close().await.ok();
                Ok(())
            }
            Self::Sqlite { dir } => dir.close().context("removing the temporary directory"),
        }
    }
}

async fn admin_connection(server: &str) -> anyhow::Result<PgConnection> {
    let url = format!("{server}/postgres");
    PgConnection::connect(&url)
        .await
        .with_context(|| format!("connecting to {server}"))
}
