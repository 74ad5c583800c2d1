//! Migrations that several services can run against one database.
//!
//! Each service names a [`ServiceSchema`]: on PostgreSQL its tables live in a schema of that
//! name and its migrations are tracked in `<schema>._sqlx_migrations`; on SQLite, which has one
//! namespace per file, they are tracked in `_sqlx_migrations_<schema>` (the services' table
//! names are disjoint, which the stack crate's tests check). Two services therefore never
//! read each other's migration history, whatever their versions.
//!
//! A database laid out by an earlier release (tables and `_sqlx_migrations` in PostgreSQL's
//! `public` schema, or `_sqlx_migrations` in a SQLite file) is adopted on first start, but only
//! when every migration recorded there is one of this service's, byte for byte: its tables move
//! into the service's schema and its history into the service's tracking table.

use sqlx::{
    AnyConnection, AnyPool, Connection, Executor,
    migrate::{Migrate, MigrateError, Migrator},
};

/// A service's place in a database: its schema (PostgreSQL) and its migrations.
#[derive(Debug)]
pub struct ServiceSchema {
    name: &'static str,
    migrator: &'static Migrator,
    legacy_tables: &'static [&'static str],
}

impl ServiceSchema {
    /// `name` is a lowercase identifier (`[a-z_]+`); `legacy_tables` are the tables that the
    /// earlier release created in `public`, which adoption moves.
    pub const fn new(
        name: &'static str,
        migrator: &'static Migrator,
        legacy_tables: &'static [&'static str],
    ) -> Self {
        let bytes = name.as_bytes();
        assert!(!bytes.is_empty(), "a schema needs a name");
        let mut i = 0;
        while i < bytes.len() {
            assert!(
                bytes[i].is_ascii_lowercase() || bytes[i] == b'_',
                "a schema name is a lowercase identifier"
            );
            i += 1;
        }
        Self {
            name,
            migrator,
            legacy_tables,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The migrations, as the service ships them.
    pub fn migrator(&self) -> &'static Migrator {
        self.migrator
    }

    fn tracking_table(&self, backend: Backend) -> String {
        match backend {
            Backend::Postgres => format!("{}._sqlx_migrations", self.name),
            Backend::Sqlite => format!("_sqlx_migrations_{}", self.name),
        }
    }

    /// Whether a recorded migration history is entirely this service's.
    fn owns(&self, applied: &[(i64, Vec<u8>)]) -> bool {
        !applied.is_empty()
            && applied.iter().all(|(version, checksum)| {
                self.migrator
                    .iter()
                    .any(|m| m.version == *version && *m.checksum == **checksum)
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    fn of(conn: &AnyConnection) -> Self {
        if conn.backend_name() == "SQLite" {
            Self::Sqlite
        } else {
            Self::Postgres
        }
    }
}

/// The table name of an earlier release's migration history.
const LEGACY_TRACKING_TABLE: &str = "_sqlx_migrations";

/// Applies pending migrations. PostgreSQL serialises concurrent migrators (of every service
/// on the database) with an advisory lock; SQLite has none, so a process that loses the race
/// retries and then finds the migrations applied.
pub async fn migrate(pool: &AnyPool, schema: &ServiceSchema) -> Result<(), MigrateError> {
    let mut attempts = 0;
    loop {
        let mut conn = pool.acquire().await?;
        let backend = Backend::of(&conn);
        let result = migrate_on(&mut conn, backend, schema).await;
        if backend == Backend::Postgres {
            // Its session settings were changed for the migration; it must not serve requests.
            conn.close_on_drop();
        }
        match result {
            Err(_) if attempts < 3 && backend == Backend::Sqlite => attempts += 1,
            result => return result,
        }
    }
}

async fn migrate_on(
    conn: &mut AnyConnection,
    backend: Backend,
    schema: &ServiceSchema,
) -> Result<(), MigrateError> {
    if backend == Backend::Postgres {
        // A migration may take longer than a request's statement; it still must not queue
        // behind (and so block) live traffic forever.
        conn.execute("SET statement_timeout = 0; SET lock_timeout = '60s'")
            .await?;
    }
    conn.lock().await?;
    let result = migrate_locked(conn, backend, schema).await;
    let unlocked = conn.unlock().await;
    result.and(unlocked)
}

async fn migrate_locked(
    conn: &mut AnyConnection,
    backend: Backend,
    schema: &ServiceSchema,
) -> Result<(), MigrateError> {
    if backend == Backend::Postgres {
        ensure_schema(conn, schema.name).await?;
    }
    adopt_legacy_layout(conn, backend, schema).await?;
    let mut migrator = Migrator::with_migrations(schema.migrator.iter().cloned().collect());
    migrator.set_locking(false);
    migrator.dangerous_set_table_name(schema.tracking_table(backend));
    migrator.run_direct(None, conn, false).await
}

/// Creates the schema unless it exists: a role that owns a schema made for it by an
/// administrator needs no right to create schemas.
async fn ensure_schema(conn: &mut AnyConnection, name: &str) -> Result<(), MigrateError> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_namespace WHERE nspname = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{name}\""
        )))
        .await?;
    }
    Ok(())
}

async fn adopt_legacy_layout(
    conn: &mut AnyConnection,
    backend: Backend,
    schema: &ServiceSchema,
) -> Result<(), MigrateError> {
    let legacy = match backend {
        Backend::Postgres => format!("public.{LEGACY_TRACKING_TABLE}"),
        Backend::Sqlite => LEGACY_TRACKING_TABLE.to_owned(),
    };
    if table_exists(conn, backend, &schema.tracking_table(backend)).await?
        || !table_exists(conn, backend, &legacy).await?
    {
        return Ok(());
    }
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, checksum FROM {legacy}"
    )))
    .fetch_all(&mut *conn)
    .await?;
    if !schema.owns(&applied) {
        return Ok(());
    }
    tracing::info!(
        schema = schema.name,
        "adopting the database layout of an earlier release"
    );
    let mut tx = Connection::begin(&mut *conn).await?;
    match backend {
        Backend::Postgres => {
            for table in schema.legacy_tables {
                if table_exists(&mut tx, backend, &format!("public.{table}")).await? {
                    tx.execute(sqlx::AssertSqlSafe(format!(
                        "ALTER TABLE public.\"{table}\" SET SCHEMA \"{}\"",
                        schema.name
                    )))
                    .await?;
                }
            }
            tx.execute(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {legacy} SET SCHEMA \"{}\"",
                schema.name
            )))
            .await?;
        }
        Backend::Sqlite => {
            tx.execute(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {legacy} RENAME TO \"{}\"",
                schema.tracking_table(backend)
            )))
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Whether a table exists; `name` may be schema-qualified on PostgreSQL.
async fn table_exists(
    conn: &mut AnyConnection,
    backend: Backend,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let found: Option<String> = match backend {
        Backend::Postgres => {
            sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(name)
                .fetch_one(&mut *conn)
                .await?
        }
        Backend::Sqlite => {
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    Ok(found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    static MIGRATOR: Migrator = sqlx::migrate!("src/db/test_migrations");
    static SCHEMA: ServiceSchema = ServiceSchema::new("things", &MIGRATOR, &["things"]);

    #[test]
    fn tracking_tables_are_per_service() {
        assert_eq!(
            SCHEMA.tracking_table(Backend::Postgres),
            "things._sqlx_migrations"
        );
        assert_eq!(
            SCHEMA.tracking_table(Backend::Sqlite),
            "_sqlx_migrations_things"
        );
    }

    #[test]
    fn only_a_history_of_our_own_migrations_is_adopted() {
        let first = MIGRATOR.iter().next().expect("a test migration");
        let ours = (first.version, first.checksum.to_vec());
        assert!(SCHEMA.owns(std::slice::from_ref(&ours)));
        assert!(!SCHEMA.owns(&[]), "nothing to adopt");
        let mut edited = ours.clone();
        edited.1[0] ^= 1;
        assert!(
            !SCHEMA.owns(&[edited]),
            "same version, other service (or edited) migration"
        );
        assert!(!SCHEMA.owns(&[ours, (1, vec![0; 48])]));
    }

    #[test]
    fn schema_names_are_identifiers() {
        let result = std::panic::catch_unwind(|| ServiceSchema::new("a;b", &MIGRATOR, &[]));
        assert!(result.is_err());
    }

    static OTHER_MIGRATOR: Migrator = sqlx::migrate!("src/db/test_migrations_other");
    static OTHER: ServiceSchema = ServiceSchema::new("widgets", &OTHER_MIGRATOR, &["widgets"]);

    async fn sqlite_pool(dir: &tempfile::TempDir) -> AnyPool {
        let url = format!("sqlite://{}", dir.path().join("shared.db").display());
        let settings = crate::db::Settings {
            url: &url,
            max_connections: 2,
            timeouts: crate::db::Timeouts::default(),
        };
        crate::db::connect(settings, &SCHEMA)
            .await
            .expect("an SQLite file")
    }

    async fn tables(pool: &AnyPool) -> Vec<String> {
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(pool)
            .await
            .expect("the table list")
    }

    #[tokio::test]
    async fn two_services_with_colliding_versions_share_one_sqlite_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pool = sqlite_pool(&dir).await;
        migrate(&pool, &SCHEMA)
            .await
            .expect("the first service migrates");
        migrate(&pool, &OTHER)
            .await
            .expect("the second service migrates the same version number");
        migrate(&pool, &SCHEMA)
            .await
            .expect("a restart finds nothing to do");
        assert_eq!(
            tables(&pool).await,
            [
                "_sqlx_migrations_things",
                "_sqlx_migrations_widgets",
                "things",
                "widgets"
            ]
        );
    }

    #[tokio::test]
    async fn an_earlier_release_layout_is_adopted_by_its_own_service_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pool = sqlite_pool(&dir).await;
        // The earlier release: the default tracking table.
        MIGRATOR.run(&pool).await.expect("the earlier layout");
        sqlx::query("INSERT INTO things (id) VALUES ('kept')")
            .execute(&pool)
            .await
            .expect("a row");

        migrate(&pool, &OTHER)
            .await
            .expect("another service leaves the history alone");
        assert!(
            tables(&pool)
                .await
                .contains(&LEGACY_TRACKING_TABLE.to_owned())
        );

        migrate(&pool, &SCHEMA)
            .await
            .expect("its own service adopts it");
        let tables = tables(&pool).await;
        assert!(
            !tables.contains(&LEGACY_TRACKING_TABLE.to_owned()),
            "{tables:?}"
        );
        assert!(tables.contains(&"_sqlx_migrations_things".to_owned()));
        let kept: String = sqlx::query_scalar("SELECT id FROM things")
            .fetch_one(&pool)
            .await
            .expect("the row survived");
        assert_eq!(kept, "kept");
    }
}
