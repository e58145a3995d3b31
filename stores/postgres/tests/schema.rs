//! The schema: created once however many nodes start together, never by a reading command,
//! and a newer one than this build knows is refused.

use syncjobs_store_postgres::migrate::MIGRATIONS;
use syncjobs_store_postgres::testkit::{admin_url, TestDb};
use syncjobs_store_postgres::{PgStore, Schema};

async fn tables(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_apply_each_migration_once() {
    let Some(admin) = admin_url("nodes_starting_together_apply_each_migration_once") else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let stores = futures::future::join_all((0..6).map(|_| PgStore::connect(&db.url))).await;
    assert!(stores.iter().all(Result::is_ok), "every node starts");
    let applied: Vec<i32> = db
        .client()
        .await
        .query(
            "SELECT version FROM syncjobs_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(applied, known, "each migration recorded once");
    assert_eq!(
        tables(&db).await,
        [
            "syncjobs_entities",
            "syncjobs_entity_writes",
            "syncjobs_events",
            "syncjobs_migrations"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_command_creates_nothing_and_a_newer_schema_is_refused() {
    let Some(admin) = admin_url("a_reading_command_creates_nothing_and_a_newer_schema_is_refused")
    else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let url = db.url.clone();
    let refused = tokio::task::spawn_blocking(move || PgStore::open(&url, Schema::MustExist))
        .await
        .unwrap();
    let e = refused
        .err()
        .expect("no store in an empty database")
        .to_string();
    assert!(e.contains("no event store in this database"), "{e}");
    assert!(tables(&db).await.is_empty(), "nothing was created");

    drop(db.store().await);
    db.client()
        .await
        .execute(
            "INSERT INTO syncjobs_migrations (version, name) VALUES (999, 'from the future')",
            &[],
        )
        .await
        .unwrap();
    let e = PgStore::connect(&db.url)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("schema version 999 is newer"), "{e}");
}
