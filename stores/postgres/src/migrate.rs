//! The schema, as versioned migrations (`migrations/NNNN_name.sql`) applied once each, in
//! order, and recorded in `syncjobs_migrations`.
//!
//! Everything runs in one transaction behind a transaction-scoped advisory lock, so two
//! nodes starting together apply each migration once: the second waits for the first to
//! commit, then finds the migrations recorded. PostgreSQL's DDL is transactional: a migration
//! that fails leaves nothing behind.

use crate::error::store_error;
use syncjobs_domain::StoreError;
use tokio_postgres::Client;

/// Every migration this build knows, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "events", include_str!("../migrations/0001_events.sql")),
    (
        2,
        "entities",
        include_str!("../migrations/0002_entities.sql"),
    ),
    (
        3,
        "worker_heartbeats",
        include_str!("../migrations/0003_worker_heartbeats.sql"),
    ),
    (4, "leases", include_str!("../migrations/0004_leases.sql")),
];

/// The advisory lock key migrations are applied under ("syncjobs" + 0).
pub(crate) const MIGRATION_LOCK: i64 = 0x7379_6e63_6a6f_6200;

const MIGRATIONS_TABLE: &str = include_str!("sql/migrations_table.sql");

/// Brings the database's schema up to this build's; returns the versions it applied.
/// Refuses a database whose schema is newer than this build understands.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let fail = |e: tokio_postgres::Error| store_error(&e);
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    tx.batch_execute(MIGRATIONS_TABLE).await.map_err(fail)?;
    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM syncjobs_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(&newest) = applied.last().filter(|&&v| v > known) {
        return Err(StoreError::Backend(format!(
            "the database's schema version {newest} is newer than this build understands ({known})"
        )));
    }
    let mut done = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Backend(format!("migration {version} ({name}): {}", fail(e)))
        })?;
        tx.execute(
            "INSERT INTO syncjobs_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(fail)?;
        done.push(version);
    }
    tx.commit().await.map_err(fail)?;
    if !done.is_empty() {
        tracing::info!(versions = ?done, "PostgreSQL schema migrated");
    }
    Ok(done)
}

/// Fails unless the database has the store's schema (for commands that must not create it).
pub async fn require(client: &Client) -> Result<(), StoreError> {
    let row = client
        .query_one("SELECT to_regclass('syncjobs_events') IS NOT NULL", &[])
        .await
        .map_err(|e| store_error(&e))?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(StoreError::Backend(
            "no event store in this database (`syncjobs serve` creates it)".into(),
        ))
    }
}
