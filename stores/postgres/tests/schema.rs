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
            "syncjobs_leases",
            "syncjobs_migrations",
            "syncjobs_worker_heartbeats"
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

/// Heartbeats are one row per worker, overwritten, shared by every node on the database, and
/// never events: the log's head does not move however often workers beat. A late (older)
/// beat never moves a worker back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_one_row_per_worker_shared_by_every_node_and_no_event() {
    use chrono::{TimeZone, Utc};
    use syncjobs_domain::EventStore;
    let Some(admin) =
        admin_url("heartbeats_are_one_row_per_worker_shared_by_every_node_and_no_event")
    else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let (a, b) = (db.store().await, db.store().await);
    let at = |s: i64| Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap();
    for i in 0..50 {
        a.heartbeat("w1", at(i)).await.unwrap();
    }
    b.heartbeat("w2", at(7)).await.unwrap();
    a.heartbeat("w1", at(3)).await.unwrap();
    let mut seen = b.heartbeats().await.unwrap();
    seen.sort();
    assert_eq!(
        seen,
        vec![("w1".to_owned(), at(49)), ("w2".to_owned(), at(7))]
    );
    assert_eq!(*a.watch_head().borrow(), 0, "no event written");
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM syncjobs_worker_heartbeats", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
    // A worker recorded stopped or lost: its row goes, for every node.
    b.forget_heartbeat("w1").await.unwrap();
    assert_eq!(
        a.heartbeats().await.unwrap(),
        vec![("w2".to_owned(), at(7))]
    );
    a.forget_heartbeat("w1").await.unwrap();
}
