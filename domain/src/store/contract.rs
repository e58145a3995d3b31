//! The contract test suite every EventStore backend must pass (feature `testkit`).
//!
//! A backend's tests implement [`Harness`] and call [`run_all`]. Each check panics with a
//! message that names the broken clause.

use super::{follow, follow_batches, EventStore, ExpectedVersion, StoreError, FOLLOW_BATCH};
use crate::events::{Metadata, NewEvent, SyncJobEvent};
use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

#[async_trait]
pub trait Harness: Sync {
    /// A fresh, empty store.
    async fn open(&self) -> Arc<dyn EventStore>;
    /// Closes `closed` (the harness holds the only other reference) and opens the same store
    /// again; None for a backend that is not durable (the durability check is then skipped).
    async fn reopen(&self, closed: Arc<dyn EventStore>) -> Option<Arc<dyn EventStore>>;
    /// How the backend numbers its global log: dense by default.
    fn positions(&self) -> Positions {
        Positions::Dense
    }
}

/// How a backend numbers its global log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 1, 2, 3, ...: checked exactly.
    Dense,
    /// Increasing with gaps (KurrentDB's commit positions are byte offsets): checked by
    /// order, and against what the log itself holds.
    Sparse,
}

/// The positions of the first `n` events of the global log, read a batch at a time.
pub async fn log_positions(store: &Arc<dyn EventStore>, n: usize) -> Vec<u64> {
    let mut positions: Vec<u64> = Vec::with_capacity(n);
    while positions.len() < n {
        let after = positions.last().copied().unwrap_or(0);
        let batch = store.read_all(after, FOLLOW_BATCH).await.unwrap();
        if batch.is_empty() {
            break;
        }
        positions.extend(batch.iter().map(|e| e.global_position));
    }
    positions.truncate(n);
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "global positions increase along the log"
    );
    positions
}

/// An event whose body tells which writer and sequence number produced it.
pub fn sample(tag: u64) -> NewEvent {
    NewEvent::new(
        SyncJobEvent::JobStarted {
            worker: format!("w{tag}"),
        },
        Utc::now(),
        Metadata {
            caused_by: format!("test:{tag}"),
            causation_id: Some(Uuid::now_v7()),
            correlation_id: None,
        },
    )
}

pub async fn run_all<H: Harness>(h: &H) {
    let positions = h.positions();
    appends_are_ordered_per_stream_and_globally(&h.open().await, positions).await;
    conflicts_are_detected_and_write_nothing(&h.open().await).await;
    multi_event_appends_are_contiguous(&h.open().await, positions).await;
    racing_appenders_get_exactly_one_winner_per_version(h.open().await).await;
    followers_see_every_event_once_in_global_order(h.open().await, positions).await;
    a_follower_catching_up_over_many_reads_misses_nothing(h.open().await, positions).await;
    durable_across_close_and_reopen(h).await;
}

pub async fn appends_are_ordered_per_stream_and_globally(
    store: &Arc<dyn EventStore>,
    positions: Positions,
) {
    let mut expected_ids = Vec::new();
    let mut written: Vec<u64> = Vec::new();
    for i in 0..10u64 {
        let stream = if i % 2 == 0 { "a" } else { "b" };
        let version = i / 2;
        let e = sample(i);
        expected_ids.push(e.event_id);
        let rec = store
            .append(stream, ExpectedVersion::Exact(version), vec![e])
            .await
            .expect("append at the right version succeeds");
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].version, version + 1, "stream versions count from 1");
        match positions {
            Positions::Dense => assert_eq!(
                rec[0].global_position,
                i + 1,
                "global positions count from 1"
            ),
            Positions::Sparse => assert!(
                rec[0].global_position > written.last().copied().unwrap_or(0),
                "global positions increase from above 0"
            ),
        }
        written.push(rec[0].global_position);
        assert_eq!(rec[0].stream_id, stream);
    }
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        expected_ids,
        "the global log keeps append order"
    );
    assert_eq!(
        all.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        written,
        "reads give the positions appends returned"
    );
    let tail = store.read_all(written[6], 100).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        written[7..].to_vec(),
        "a read starts after the position given"
    );
    assert_eq!(
        store.read_all(0, 3).await.unwrap().len(),
        3,
        "limit is honoured"
    );
    let a = store.read_stream("a", 0).await.unwrap();
    assert_eq!(
        a.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let a_tail = store.read_stream("a", 3).await.unwrap();
    assert_eq!(
        a_tail.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert!(store.read_stream("nope", 0).await.unwrap().is_empty());
    assert_eq!(
        *store.watch_head().borrow(),
        written[9],
        "head follows commits"
    );
}

pub async fn conflicts_are_detected_and_write_nothing(store: &Arc<dyn EventStore>) {
    store
        .append("s", ExpectedVersion::Exact(0), vec![sample(1)])
        .await
        .unwrap();
    match store
        .append("s", ExpectedVersion::Exact(0), vec![sample(2)])
        .await
    {
        Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, "s");
            assert_eq!(expected, ExpectedVersion::Exact(0));
            assert_eq!(actual, 1);
        }
        other => panic!("a stale expected version must conflict, got {other:?}"),
    }
    let err = store
        .append("s", ExpectedVersion::Exact(5), vec![sample(3), sample(4)])
        .await
        .unwrap_err();
    assert!(
        err.is_conflict(),
        "an expected version ahead of the stream conflicts"
    );
    assert_eq!(
        store.read_stream("s", 0).await.unwrap().len(),
        1,
        "a conflict writes nothing"
    );
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 1);
    let rec = store
        .append("s", ExpectedVersion::Any, vec![sample(5)])
        .await
        .unwrap();
    assert_eq!(rec[0].version, 2, "Any appends at the end");
}

pub async fn multi_event_appends_are_contiguous(store: &Arc<dyn EventStore>, positions: Positions) {
    let x = store
        .append("x", ExpectedVersion::Exact(0), vec![sample(0)])
        .await
        .unwrap();
    let rec = store
        .append(
            "m",
            ExpectedVersion::Exact(0),
            (1..=4).map(sample).collect(),
        )
        .await
        .unwrap();
    assert_eq!(
        rec.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let appended: Vec<u64> = x.iter().chain(&rec).map(|e| e.global_position).collect();
    if positions == Positions::Dense {
        assert_eq!(
            appended[1..].to_vec(),
            vec![2, 3, 4, 5],
            "one append occupies contiguous global positions"
        );
    }
    assert_eq!(
        log_positions(store, 10).await,
        appended,
        "one append occupies contiguous places in the log"
    );
    let empty = store
        .append("m", ExpectedVersion::Exact(4), vec![])
        .await
        .unwrap();
    assert!(empty.is_empty(), "an empty append records nothing");
}

pub async fn racing_appenders_get_exactly_one_winner_per_version(store: Arc<dyn EventStore>) {
    const TASKS: u64 = 32;
    // Round 1: everyone claims the stream's first version; exactly one may win.
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .append("race", ExpectedVersion::Exact(0), vec![sample(t)])
                .await
        }));
    }
    let mut winners = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => winners += 1,
            Err(e) => assert!(e.is_conflict(), "losers get a conflict, got {e}"),
        }
    }
    assert_eq!(winners, 1, "exactly one appender wins version 1");

    // Round 2: everyone retries (read, append at what it read) until it lands once.
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let event = sample(1000 + t);
            let id = event.event_id;
            loop {
                let v = store.read_stream("race", 0).await.unwrap().len() as u64;
                match store
                    .append("race", ExpectedVersion::Exact(v), vec![event.clone()])
                    .await
                {
                    Ok(rec) => return (id, rec[0].version),
                    Err(e) if e.is_conflict() => tokio::task::yield_now().await,
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }));
    }
    let mut versions = HashSet::new();
    for h in handles {
        let (_, v) = h.await.unwrap();
        assert!(versions.insert(v), "version {v} was granted twice");
    }
    let stream = store.read_stream("race", 0).await.unwrap();
    assert_eq!(stream.len() as u64, TASKS + 1);
    assert_eq!(
        stream.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=TASKS + 1).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    let ids: HashSet<_> = stream.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids.len() as u64,
        TASKS + 1,
        "every event is stored exactly once"
    );
}

pub async fn followers_see_every_event_once_in_global_order(
    store: Arc<dyn EventStore>,
    positions: Positions,
) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 25;
    let total = WRITERS * EACH;
    let early = follow(store.clone(), 0).take(total as usize);
    let collector = tokio::spawn(early.collect::<Vec<_>>());
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .append(
                        &format!("f{w}"),
                        ExpectedVersion::Exact(i),
                        vec![sample(w * 100 + i)],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("the follower keeps up with the writers")
        .unwrap();
    let seen: Vec<u64> = seen
        .into_iter()
        .map(|e| e.unwrap().global_position)
        .collect();
    let log = expected_log(&store, positions, total).await;
    assert_eq!(seen, log, "every event once, in order");

    // A follower that starts late, mid-log, sees exactly the rest.
    let n = total as usize;
    let late: Vec<u64> = follow(store.clone(), log[n - 6])
        .take(5)
        .map(|e| e.unwrap().global_position)
        .collect()
        .await;
    assert_eq!(late, log[n - 5..].to_vec());
}

/// The positions of a log of `total` events: 1..=total when dense, else what it holds (all
/// of them: `total` events, increasing).
async fn expected_log(store: &Arc<dyn EventStore>, positions: Positions, total: u64) -> Vec<u64> {
    match positions {
        Positions::Dense => (1..=total).collect(),
        Positions::Sparse => {
            let log = log_positions(store, total as usize + 1).await;
            assert_eq!(
                log.len() as u64,
                total,
                "the log holds every event appended"
            );
            log
        }
    }
}

/// A backlog of several follower reads, with appends landing while the follower catches
/// up (its reads ahead meet the head part-way): every event once, in order, batch by batch.
pub async fn a_follower_catching_up_over_many_reads_misses_nothing(
    store: Arc<dyn EventStore>,
    positions: Positions,
) {
    const PER_APPEND: u64 = 100;
    let backlog = (FOLLOW_BATCH as u64 * 5 / 2).div_ceil(PER_APPEND) * PER_APPEND;
    for i in 0..backlog / PER_APPEND {
        let events = (0..PER_APPEND)
            .map(|j| sample(i * PER_APPEND + j))
            .collect();
        store
            .append("backlog", ExpectedVersion::Exact(i * PER_APPEND), events)
            .await
            .unwrap();
    }
    const LATE: u64 = 300;
    let total = backlog + LATE;
    let mut batches = follow_batches(store.clone(), 0);
    let follower = tokio::spawn(async move {
        let (mut seen, mut read) = (0, Vec::new());
        while seen < total {
            let batch = batches
                .next()
                .await
                .expect("a follow never ends by itself")
                .expect("the log reads");
            seen += batch.len() as u64;
            read.push(batch);
        }
        read
    });
    for i in 0..LATE {
        store
            .append("late", ExpectedVersion::Exact(i), vec![sample(i)])
            .await
            .unwrap();
    }
    let batches = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the follower catches up")
        .unwrap();
    assert!(
        batches.iter().all(|b| !b.is_empty()),
        "no empty batch is handed out"
    );
    let seen: Vec<u64> = batches
        .iter()
        .flatten()
        .map(|e| e.global_position)
        .collect();
    assert_eq!(
        seen,
        expected_log(&store, positions, total).await,
        "every event once, in order"
    );
}

pub async fn durable_across_close_and_reopen<H: Harness>(h: &H) {
    let store = h.open().await;
    let mut written = Vec::new();
    for i in 0..5 {
        written.extend(
            store
                .append("d", ExpectedVersion::Exact(i), vec![sample(i)])
                .await
                .unwrap(),
        );
    }
    let Some(reopened) = h.reopen(store).await else {
        return;
    };
    let read = reopened.read_stream("d", 0).await.unwrap();
    assert_eq!(
        read, written,
        "everything acknowledged survives a reopen, byte for byte"
    );
    let last = written.last().map_or(0, |e| e.global_position);
    let dense = h.positions() == Positions::Dense;
    if dense {
        assert_eq!(last, 5);
    }
    assert_eq!(
        *reopened.watch_head().borrow(),
        last,
        "head is restored on open"
    );
    let next = reopened
        .append("d", ExpectedVersion::Exact(5), vec![sample(9)])
        .await
        .unwrap();
    if dense {
        assert_eq!(
            next[0].global_position, 6,
            "positions continue after a reopen"
        );
    }
    assert!(
        next[0].global_position > last,
        "positions continue after a reopen"
    );
}
