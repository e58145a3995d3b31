//! What one process cannot show: a transaction held open while others commit, several
//! store instances (separate pools: separate "processes") on one database, followers woken
//! by another instance's commit and surviving their listener's connection being cut.

use futures::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_domain::store::contract::sample;
use syncjobs_domain::{follow, EventStore, ExpectedVersion, RecordedEvent};
use syncjobs_store_postgres::testkit::{admin_url, TestDb};
use syncjobs_store_postgres::writer::{APPEND_LOCK, NOTIFY_CHANNEL};
use syncjobs_store_postgres::{PgStore, LISTENER_NAME};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Follows `store` from the start, handing every event on as it arrives.
fn follower(store: Arc<PgStore>) -> mpsc::UnboundedReceiver<RecordedEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = follow(store, 0);
        while let Some(e) = events.next().await {
            if tx.send(e.expect("the log reads")).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next `n` events a follower hands on, within `within`.
async fn next(rx: &mut mpsc::UnboundedReceiver<RecordedEvent>, n: usize) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the follower gets the events")
            .expect("the follower runs");
        out.push(e);
    }
    out
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.global_position).collect()
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

/// Nothing more arrives for a while.
async fn quiet(rx: &mut mpsc::UnboundedReceiver<RecordedEvent>, what: &str) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("{what}: got position {} early", e.global_position);
    }
}

/// Another process's append, as the store makes it (lock, head + 1, insert, notify),
/// left open: the caller commits or rolls back.
async fn begin_held_append<'c>(
    client: &'c mut tokio_postgres::Client,
    stream: &str,
    version: i64,
) -> (tokio_postgres::Transaction<'c>, Uuid) {
    let e = sample(99);
    let id = e.event_id;
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])
        .await
        .unwrap();
    let head: i64 = tx
        .query_one(
            "SELECT coalesce(max(position), 0) FROM syncjobs_events",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    insert_raw(&tx, head + 1, stream, version, &e).await;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&NOTIFY_CHANNEL, &(head + 1).to_string()],
    )
    .await
    .unwrap();
    (tx, id)
}

async fn insert_raw(
    tx: &tokio_postgres::Transaction<'_>,
    position: i64,
    stream: &str,
    version: i64,
    e: &syncjobs_domain::NewEvent,
) {
    tx.execute(
        "INSERT INTO syncjobs_events (position, stream_id, version, event_id, event_type, \
         schema_version, data, recorded_at_ns, caused_by) \
         VALUES ($1, $2, $3, $4, $5, 2, $6::text::json, $7, $8)",
        &[
            &position,
            &stream,
            &version,
            &e.event_id,
            &e.event.event_type(),
            &e.event.to_json().unwrap(),
            &e.recorded_at.timestamp_nanos_opt().unwrap(),
            &e.metadata.caused_by,
        ],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_append_is_delivered_once_in_order_and_nothing_passes_it() {
    let Some(admin) = admin_url("a_held_append_is_delivered_once_in_order_and_nothing_passes_it")
    else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let (a, b) = (db.store().await, db.store().await);
    for i in 0..3 {
        a.append("before", ExpectedVersion::Exact(i), vec![sample(i)])
            .await
            .unwrap();
    }
    let (mut fa, mut fb) = (follower(a.clone()), follower(b.clone()));
    assert_eq!(positions(&next(&mut fa, 3).await), vec![1, 2, 3]);
    assert_eq!(positions(&next(&mut fb, 3).await), vec![1, 2, 3]);

    // Another process takes position 4 and holds its transaction open...
    let mut raw = db.client().await;
    let (held, held_id) = begin_held_append(&mut raw, "held", 1).await;
    // ...while both instances append: they wait for it, nothing commits past it.
    let later: Vec<_> = [(a.clone(), "x"), (b.clone(), "y"), (a.clone(), "z")]
        .into_iter()
        .map(|(s, stream)| {
            tokio::spawn(async move {
                s.append(stream, ExpectedVersion::Exact(0), vec![sample(7)])
                    .await
            })
        })
        .collect();
    quiet(&mut fa, "a follower while an append is held").await;
    quiet(&mut fb, "a follower while an append is held").await;
    assert!(
        later.iter().all(|h| !h.is_finished()),
        "no append commits past a held one"
    );
    held.commit().await.unwrap();
    let mut landed = Vec::new();
    for h in later {
        landed.extend(h.await.unwrap().expect("the later appends land"));
    }
    let mut landed = positions(&landed);
    landed.sort_unstable();
    assert_eq!(
        landed,
        vec![5, 6, 7],
        "the later appends come after the held one"
    );

    let (seen_a, seen_b) = (next(&mut fa, 4).await, next(&mut fb, 4).await);
    assert_eq!(positions(&seen_a), vec![4, 5, 6, 7]);
    assert_eq!(
        seen_a[0].event_id, held_id,
        "the held event, once it commits"
    );
    assert_eq!(ids(&seen_a), ids(&seen_b), "every follower sees one order");
    quiet(&mut fa, "after the log's end").await;
    quiet(&mut fb, "after the log's end").await;
    let all = a.read_all(0, 100).await.unwrap();
    assert_eq!(positions(&all), (1..=7).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_taken_outside_the_lock_is_a_conflict_not_an_error() {
    let Some(admin) = admin_url("a_version_taken_outside_the_lock_is_a_conflict_not_an_error")
    else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let store = db.store().await;
    // A writer that ignores the lock inserts version 1 of `s` and has not committed yet:
    // the store's check cannot see it, the unique index can.
    let mut raw = db.client().await;
    let tx = raw.transaction().await.unwrap();
    insert_raw(&tx, 1000, "s", 1, &sample(1)).await;
    let append = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append("s", ExpectedVersion::Exact(0), vec![sample(2)])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.commit().await.unwrap();
    match append.await.unwrap() {
        Err(syncjobs_domain::StoreError::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, "s");
            assert_eq!(expected, ExpectedVersion::Exact(0));
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(store.write_failure().is_none(), "a conflict is no failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_instances_on_one_database_keep_every_guarantee() {
    let Some(admin) = admin_url("several_instances_on_one_database_keep_every_guarantee") else {
        return;
    };
    const INSTANCES: usize = 4;
    const TASKS: u64 = 8;
    let db = TestDb::create(&admin).await;
    // Started together: the schema is created once.
    let stores: Vec<Arc<PgStore>> =
        futures::future::join_all((0..INSTANCES).map(|_| db.store())).await;
    let mut followers: Vec<_> = stores.iter().map(|s| follower(s.clone())).collect();

    // Everyone, on every instance, claims version 1 of one stream: exactly one wins.
    let claims = futures::future::join_all((0..INSTANCES as u64 * TASKS).map(|t| {
        let s = stores[t as usize % INSTANCES].clone();
        async move {
            s.append("claim", ExpectedVersion::Exact(0), vec![sample(t)])
                .await
        }
    }))
    .await;
    let winners = claims.iter().filter(|c| c.is_ok()).count();
    assert_eq!(winners, 1, "exactly one claim wins");
    assert!(claims
        .iter()
        .all(|c| c.as_ref().map_or_else(|e| e.is_conflict(), |_| true)));

    // Everyone appends to one stream until it lands, reading and retrying on conflicts.
    let landed = futures::future::join_all((0..INSTANCES as u64 * TASKS).map(|t| {
        let s = stores[t as usize % INSTANCES].clone();
        tokio::spawn(async move {
            let event = sample(1000 + t);
            loop {
                let v = s.read_stream("race", 0).await.unwrap().len() as u64;
                match s
                    .append("race", ExpectedVersion::Exact(v), vec![event.clone()])
                    .await
                {
                    Ok(rec) => return rec[0].version,
                    Err(e) if e.is_conflict() => tokio::task::yield_now().await,
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        })
    }))
    .await;
    let versions: HashSet<u64> = landed.into_iter().map(|v| v.unwrap()).collect();
    let n = INSTANCES as u64 * TASKS;
    assert_eq!(versions, (1..=n).collect(), "each version granted once");

    let total = 1 + n as usize;
    let mut orders = Vec::new();
    for f in &mut followers {
        let seen = next(f, total).await;
        assert_eq!(positions(&seen), (1..=total as u64).collect::<Vec<_>>());
        orders.push(ids(&seen));
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every follower on every instance sees one order"
    );
}

/// How long `rx` takes to hand on the next event after `append` commits on `writer`.
async fn delay(
    writer: &PgStore,
    rx: &mut mpsc::UnboundedReceiver<RecordedEvent>,
    stream: &str,
    version: u64,
) -> Duration {
    let rec = writer
        .append(
            stream,
            ExpectedVersion::Exact(version),
            vec![sample(version)],
        )
        .await
        .unwrap();
    let committed = Instant::now();
    let got = next(rx, 1).await;
    assert_eq!(got[0].event_id, rec[0].event_id);
    committed.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_are_woken_by_another_instance_and_survive_a_cut_listener() {
    let Some(admin) =
        admin_url("followers_are_woken_by_another_instance_and_survive_a_cut_listener")
    else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let (writer, reader) = (db.store().await, db.store().await);
    let mut rx = follower(reader.clone());
    let mut delays = Vec::new();
    for v in 0..5 {
        delays.push(delay(&writer, &mut rx, "w", v).await);
    }
    delays.sort_unstable();
    // The median, not the worst: the machine may be busy; a poller would not come close.
    assert!(
        delays[2] < Duration::from_millis(200),
        "woken within milliseconds of another instance's commit: {delays:?}"
    );

    // Cut every listener connection, and append while they are away.
    let admin_client = db.client().await;
    let cut: i64 = admin_client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&LISTENER_NAME],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cut >= 2, "both instances' listeners were cut ({cut})");
    let mut written = Vec::new();
    for v in 5..10 {
        written.extend(
            writer
                .append("w", ExpectedVersion::Exact(v), vec![sample(v)])
                .await
                .unwrap(),
        );
    }
    let seen = next(&mut rx, 5).await;
    assert_eq!(
        ids(&seen),
        ids(&written),
        "nothing missed while it was away"
    );
    quiet(&mut rx, "after catching up").await;
    // Listening again: woken by the next commit as before.
    let mut delays = Vec::new();
    for v in 10..13 {
        delays.push(delay(&writer, &mut rx, "w", v).await);
    }
    delays.sort_unstable();
    assert!(
        delays[1] < Duration::from_millis(200),
        "woken again after reconnecting: {delays:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listening: i64 = admin_client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
                &[&LISTENER_NAME],
            )
            .await
            .unwrap()
            .get(0);
        if listening == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "each instance listens again ({listening})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_cut_by_the_server_cost_no_append() {
    let Some(admin) = admin_url("pooled_connections_cut_by_the_server_cost_no_append") else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let store = db.store().await;
    store
        .append("s", ExpectedVersion::Exact(0), vec![sample(0)])
        .await
        .unwrap();
    // The server closes every connection of the store's pool (as a restart would).
    let cut: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'syncjobs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cut >= 1, "the pool's connections were cut ({cut})");
    assert_eq!(store.read_all(0, 10).await.expect("reads go on").len(), 1);
    let rec = store
        .append("s", ExpectedVersion::Exact(1), vec![sample(1)])
        .await
        .expect("the append goes through on a fresh connection");
    assert_eq!(rec[0].global_position, 2);
    assert_eq!(store.read_stream("s", 0).await.unwrap().len(), 2);
    assert!(store.write_failure().is_none());
}

/// A node's own commits are kept for its followers keeping up (`read_recent`): what it
/// answers is exactly what a read of the log answers, and it answers only for a run of
/// positions it holds whole: an event another node committed between is read from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_s_own_commits_are_handed_to_its_followers_exactly_as_the_log_has_them() {
    let Some(admin) = admin_url("a_node_s_own_commits_are_handed_to_its_followers") else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let (a, b) = (db.store().await, db.store().await);
    a.append("s", ExpectedVersion::Exact(0), (0..3).map(sample).collect())
        .await
        .unwrap();
    a.append("s", ExpectedVersion::Exact(3), (3..5).map(sample).collect())
        .await
        .unwrap();
    for after in 0..5 {
        assert_eq!(
            a.read_recent(after, 100),
            Some(a.read_all(after, 100).await.unwrap()),
            "after {after}"
        );
    }
    assert_eq!(a.read_recent(1, 2), Some(a.read_all(1, 2).await.unwrap()));
    assert_eq!(a.read_recent(5, 100), None, "nothing after the head");
    assert_eq!(
        b.read_recent(0, 100),
        None,
        "another node's commits are read"
    );

    b.append("t", ExpectedVersion::Exact(0), vec![sample(5)])
        .await
        .unwrap();
    assert_eq!(
        a.read_recent(5, 100),
        None,
        "position 6 is b's: read from the log"
    );
    a.append("s", ExpectedVersion::Exact(5), vec![sample(6)])
        .await
        .unwrap();
    assert_eq!(
        a.read_recent(6, 100),
        Some(a.read_all(6, 100).await.unwrap())
    );
    assert_eq!(
        a.read_recent(4, 100),
        None,
        "a follower at 4 must not jump b's event"
    );
    assert_eq!(b.read_recent(5, 100), Some(b.read_all(5, 1).await.unwrap()));
}
