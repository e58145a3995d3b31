//! The embedded store against the EventStore contract, plus what only it promises: group
//! commit, corruption reported by position, old schema versions upcast on read, and a cache
//! that is not fooled by another writer on the same file.

use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use syncjobs_domain::store::contract::{self, sample};
use syncjobs_domain::{EntityCounts, Event, EventStore, ExpectedVersion, StoreError, SyncJobEvent};
use syncjobs_store_sqlite::{EmbeddedStore, DB_FILE};
use tempfile::TempDir;

async fn open(dir: &Path) -> Arc<EmbeddedStore> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
        .await
        .unwrap()
        .expect("the store opens")
}

/// Every store the harness opened, so `reopen` can close the right one and wait for it.
#[derive(Default)]
struct Harness {
    opened: Mutex<Vec<(TempDir, Arc<EmbeddedStore>)>>,
}

#[async_trait]
impl contract::Harness for Harness {
    async fn open(&self) -> Arc<dyn EventStore> {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        self.opened.lock().unwrap().push((dir, store.clone()));
        store
    }

    async fn reopen(&self, closed: Arc<dyn EventStore>) -> Option<Arc<dyn EventStore>> {
        let (path, store) = {
            let opened = self.opened.lock().unwrap();
            let (dir, store) = opened
                .iter()
                .find(|(_, s)| std::ptr::addr_eq(Arc::as_ptr(s), Arc::as_ptr(&closed)))
                .expect("reopen is given a store this harness opened");
            (dir.path().to_owned(), store.clone())
        };
        drop(closed);
        store.close();
        store.closed().await;
        let reopened = open(&path).await;
        Some(reopened)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_passes_the_contract() {
    contract::run_all(&Harness::default()).await;
}

fn raw(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_committed_in_shared_transactions() {
    const APPENDERS: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let before = store.commits();
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &format!("s{i}"),
                        ExpectedVersion::Exact(0),
                        vec![sample(i as u64)],
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        let rec = t
            .await
            .unwrap()
            .expect("every append to its own stream succeeds");
        assert_eq!(rec[0].version, 1);
    }
    let commits = store.commits() - before;
    assert_eq!(store.read_all(0, 1000).await.unwrap().len(), APPENDERS);
    assert_eq!(*store.watch_head().borrow(), APPENDERS as u64);
    eprintln!("{APPENDERS} appends in {commits} commits");
    assert!(
        commits * 8 <= APPENDERS as u64,
        "{APPENDERS} concurrent appends took {commits} commits: no group commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for i in 0..3 {
        store
            .append("c", ExpectedVersion::Exact(i), vec![sample(i)])
            .await
            .unwrap();
    }
    let changed = raw(dir.path())
        .execute(
            "UPDATE events SET data = '{\"type\": oops' WHERE global_position = 2",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);

    match store.read_all(0, 10).await {
        Err(StoreError::Corrupt { position, reason }) => {
            assert_eq!(position, 2);
            assert!(
                reason.contains("stream c"),
                "the reason names the stream: {reason}"
            );
        }
        other => panic!("a corrupt row must be reported, got {other:?}"),
    }
    match store.read_stream("c", 0).await {
        Err(StoreError::Corrupt { position: 2, .. }) => {}
        other => panic!("reading the stream hits the same row, got {other:?}"),
    }
    let after = store.read_all(2, 10).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        vec![3],
        "rows past the damage still read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_any_column_that_is_decoded_is_reported_with_its_position() {
    let cases = [
        ("event_type = 'CollectionDeleted'", "disagrees with the body"),
        ("event_type = 'Cancelled'", "disagrees with the body"),
        (
            "data = '{\"type\":\"CollectionDeleted\",\"data\":{\"collection_id\":\"00000000-0000-0000-0000-000000000000\"}}'",
            "disagrees with the body",
        ),
        ("event_id = 'not-a-uuid'", "event id is no uuid"),
        ("event_id = X'00'", "event id unreadable"),
        ("recorded_at = '2026-02-30T00:00:00.000000000Z'", "recorded_at"),
        ("causation_id = 'x'", "causation id"),
        ("correlation_id = 42", "correlation id"),
        ("data = CAST('{\"type\":\"JobStarted\"' AS BLOB)", "body unreadable"),
    ];
    for (damage, reason_has) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        for i in 0..3 {
            store
                .append("c", ExpectedVersion::Exact(i), vec![sample(i)])
                .await
                .unwrap();
        }
        let changed = raw(dir.path())
            .execute(
                &format!("UPDATE events SET {damage} WHERE global_position = 2"),
                [],
            )
            .unwrap();
        assert_eq!(changed, 1);
        match store.read_all(0, 10).await {
            Err(StoreError::Corrupt { position, reason }) => {
                assert_eq!(position, 2, "{damage}");
                assert!(
                    reason.contains(reason_has) && reason.contains("stream c version 2"),
                    "{damage}: {reason}"
                );
            }
            other => panic!("{damage}: a corrupt row must be reported, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_row_reads_back_in_the_current_shape() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let at = "2024-03-01T10:00:00.123456789Z";
    raw(dir.path())
        .execute(
            "INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data,
                                 recorded_at, causation_id, correlation_id, caused_by)
             VALUES ('job-old', 1, '0190b2a4-6d2e-7cc0-8000-000000000001', 'ProgressRecorded', 1,
                     '{\"type\":\"ProgressRecorded\",\"data\":{\"inserted\":7,\"updated\":2,\"failed\":1}}',
                     ?1, NULL, NULL, 'worker:old')",
            [at],
        )
        .unwrap();

    let read = store.read_stream("job-old", 0).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        read[0].schema_version, 1,
        "the envelope tells the version it was written at"
    );
    assert_eq!(
        read[0].event,
        Event::Job(SyncJobEvent::ProgressRecorded {
            counts: EntityCounts {
                inserted: 7,
                updated: 2,
                failed: 1,
                ..Default::default()
            }
        })
    );
    assert_eq!(
        read[0]
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        at
    );
    assert_eq!(read[0].metadata.caused_by, "worker:old");

    // The writer had not seen this stream; it must still append after the old event.
    let next = store
        .append("job-old", ExpectedVersion::Exact(1), vec![sample(1)])
        .await
        .unwrap();
    assert_eq!((next[0].version, next[0].global_position), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writer_on_the_same_file_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store
        .append("shared", ExpectedVersion::Exact(0), vec![sample(0)])
        .await
        .unwrap();
    // Another process (a CLI, say) appends version 2 behind the writer's back.
    raw(dir.path())
        .execute(
            "INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data,
                                 recorded_at, causation_id, correlation_id, caused_by)
             VALUES ('shared', 2, '0190b2a4-6d2e-7cc0-8000-000000000002', 'JobStarted', 2,
                     '{\"type\":\"JobStarted\",\"data\":{\"worker\":\"cli\"}}',
                     '2024-03-01T10:00:00.000000000Z', NULL, NULL, 'cli')",
            [],
        )
        .unwrap();

    match store
        .append("shared", ExpectedVersion::Exact(1), vec![sample(1)])
        .await
    {
        Err(StoreError::Conflict { actual: 2, .. }) => {}
        other => panic!("a version taken by another writer must conflict, got {other:?}"),
    }
    let rec = store
        .append("shared", ExpectedVersion::Exact(2), vec![sample(2)])
        .await
        .expect("appending at the real version works");
    assert_eq!((rec[0].version, rec[0].global_position), (3, 3));
    assert_eq!(*store.watch_head().borrow(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_refuses_appends_and_its_directory_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().to_owned();
    let store = open(&path).await;
    store
        .append("x", ExpectedVersion::Exact(0), vec![sample(0)])
        .await
        .unwrap();
    store.close();
    assert!(matches!(
        store
            .append("x", ExpectedVersion::Exact(1), vec![sample(1)])
            .await,
        Err(StoreError::Closed)
    ));
    store.closed().await;
    // Reads of a closed store still work: the file is there.
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 1);
    drop(store);

    let again = open(&path).await;
    let rec = again
        .append("x", ExpectedVersion::Exact(1), vec![sample(1)])
        .await
        .unwrap();
    assert_eq!(rec[0].global_position, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sustained_appends_the_wal_stays_bounded_and_reaches_the_database_file() {
    // Checkpoints run off the append path; they must still keep the WAL from growing
    // without bound while appends never pause, and move the rows into events.db.
    const TASKS: u64 = 4;
    const APPENDS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for v in 0..APPENDS {
                    store
                        .append(&format!("s{t}"), ExpectedVersion::Exact(v), vec![sample(v)])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let size = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    // A WAL frame is a page (4096 bytes) plus a 24-byte header; without checkpoints this
    // many commits leave well over 6,000 frames in it.
    let wal_limit = 5_000 * (4096 + 24);
    assert!(
        size("events.db-wal") < wal_limit,
        "the WAL grew to {} bytes after {} commits",
        size("events.db-wal"),
        store.commits()
    );
    let mut copied = false;
    for _ in 0..100 {
        if size(DB_FILE) > 256 * 1024 {
            copied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        copied,
        "events.db holds {} bytes: nothing was checkpointed into it",
        size(DB_FILE)
    );
    assert_eq!(
        store.read_all(0, 10_000).await.unwrap().len() as u64,
        TASKS * APPENDS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_served_from_memory_miss_nothing_another_process_wrote() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for v in 0..5 {
        store
            .append("mine", ExpectedVersion::Exact(v), vec![sample(v)])
            .await
            .unwrap();
    }
    // What memory serves is what the database holds.
    for after in 0..5 {
        if let Some(recent) = store.read_recent(after, 100) {
            assert_eq!(recent, store.read_all(after, 100).await.unwrap());
        }
    }
    // Another process appends position 6 between two of ours.
    raw(dir.path())
        .execute(
            "INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data,
                                 recorded_at, causation_id, correlation_id, caused_by)
             VALUES ('theirs', 1, '0190b2a4-6d2e-7cc0-8000-000000000009', 'JobStarted', 2,
                     '{\"type\":\"JobStarted\",\"data\":{\"worker\":\"cli\"}}',
                     '2024-03-01T10:00:00.000000000Z', NULL, NULL, 'cli')",
            [],
        )
        .unwrap();
    store
        .append("mine", ExpectedVersion::Exact(5), vec![sample(5)])
        .await
        .unwrap();
    let seen: Vec<(u64, String)> = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        syncjobs_domain::follow(store.clone(), 5)
            .take(2)
            .map(|e| {
                let e = e.unwrap();
                (e.global_position, e.stream_id)
            })
            .collect(),
    )
    .await
    .expect("the follower delivers both events, its own and the other process's");
    assert_eq!(seen, vec![(6, "theirs".to_owned()), (7, "mine".to_owned())]);
}

/// A real SQLITE_FULL (the database capped at its current size): the append fails with the
/// cause a client can read, stores nothing, the store remembers the failure, and the next
/// append after room is made succeeds and clears it, without reopening anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_appends_with_the_cause_until_there_is_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert_eq!(store.write_failure(), None);
    store.limit_pages(Some(1));
    let mut stored = 0;
    let refused = loop {
        assert!(stored < 2000, "the capped database never filled up");
        match store
            .append("s", ExpectedVersion::Exact(stored), vec![sample(stored)])
            .await
        {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
    };
    let full = "database or disk is full".to_string();
    assert!(
        matches!(&refused, StoreError::Unavailable { cause } if *cause == full),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "event store cannot write: database or disk is full"
    );
    assert_eq!(store.write_failure(), Some(full.clone()));
    // An append of several events (under a savepoint) fails the same way.
    let many = (0..20).map(|i| sample(stored + i)).collect();
    let again = store
        .append("s", ExpectedVersion::Exact(stored), many)
        .await
        .unwrap_err();
    assert!(again.is_unavailable(), "{again:?}");
    assert_eq!(store.write_failure(), Some(full));
    assert_eq!(
        store.read_stream("s", 0).await.unwrap().len() as u64,
        stored,
        "nothing of a refused append is stored"
    );

    store.limit_pages(None);
    store
        .append("s", ExpectedVersion::Exact(stored), vec![sample(stored)])
        .await
        .expect("room again: the append succeeds");
    assert_eq!(store.write_failure(), None, "a commit clears the failure");
    assert_eq!(
        store.read_stream("s", 0).await.unwrap().len() as u64,
        stored + 1
    );
}
