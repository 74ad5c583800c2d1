//! auth-service and usage-service may share one database. PostgreSQL gives each a schema of
//! its own, but an SQLite file has one namespace: their tables must never share a name.

use std::collections::BTreeSet;

/// The tables a service's migrations create.
fn tables(schema: &tollgate_shared::db::ServiceSchema) -> BTreeSet<String> {
    schema
        .migrator()
        .iter()
        .flat_map(|migration| {
            let sql = migration.sql.as_str().to_ascii_lowercase();
            sql.split("create table")
                .skip(1)
                .filter_map(|rest| {
                    let rest = rest.trim_start();
                    let rest = rest.strip_prefix("if not exists").unwrap_or(rest);
                    rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .find(|word| !word.is_empty())
                        .map(str::to_owned)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_services_tables_never_share_a_name() {
    let auth = tables(&auth_service::store::SCHEMA);
    let usage = tables(&usage_service::store::SCHEMA);
    assert!(
        auth.contains("users") && usage.contains("ledger"),
        "{auth:?} {usage:?}"
    );
    let shared: Vec<_> = auth.intersection(&usage).collect();
    assert!(shared.is_empty(), "both services create {shared:?}");
}
