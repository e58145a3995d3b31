//! The EventStore contract every backend implements, a follower built on it, and an
//! in-memory backend for unit tests of the layers above (never used to serve).

use crate::events::{NewEvent, RecordedEvent, CURRENT_SCHEMA_VERSION};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What the appender believes the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check: for streams with a single writer by construction. Decisions never use it.
    Any,
    /// The stream's current version must be exactly this (0 = the stream must not exist).
    Exact(u64),
}

impl ExpectedVersion {
    pub fn matches(&self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::Exact(v) => *v == actual,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Someone else appended first. Reload, decide again; never overwrite.
    #[error("version conflict on stream {stream}: expected {expected:?}, actual {actual}")]
    Conflict {
        stream: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    #[error("stored event at position {position} is unreadable: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("event store is closed")]
    Closed,
    /// The backend cannot write at all (disk full, I/O error, read-only file system...):
    /// nothing of the append is stored, and the same append may well succeed once the
    /// operator has fixed the cause, so callers answer 503 or retry, not 500. `cause` is
    /// short and names no file (it reaches clients); the backend logs the full error.
    #[error("event store cannot write: {cause}")]
    Unavailable { cause: String },
    #[error("event store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// A write the backend could not make (see [`StoreError::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` atomically if the stream is at `expected`; returns them as recorded.
    /// Returns only once the events are durable.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's events with version > `after`, in order.
    async fn read_stream(&self, stream: &str, after: u64)
        -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of the global log with position > `after`, in order.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events with position > `after`, answered from memory when the backend
    /// still holds them (its own latest commits), so a follower that keeps up costs no I/O
    /// and no decoding. `None`: not at hand, ask [`EventStore::read_all`]. When `Some`, it
    /// is exactly what `read_all` would return for the durable log up to the head.
    fn read_recent(&self, _after: u64, _limit: usize) -> Option<Vec<RecordedEvent>> {
        None
    }

    /// The last durable global position, updated after every commit.
    fn watch_head(&self) -> watch::Receiver<u64>;

    /// A backend's name, for logs and `/health`.
    fn backend(&self) -> &'static str;

    /// While writes fail: the cause of the last one that did ([`StoreError::Unavailable`]'s
    /// `cause`). A backend sets it when a write fails and clears it with its next
    /// successful commit, so `/health` can say `degraded` exactly while the disk is full.
    fn write_failure(&self) -> Option<String> {
        None
    }

    /// While the backend has lost its connection to a database it shares with other nodes
    /// (and is making it again): why. Reads and writes then fail as unavailable, and other
    /// nodes' commits go unseen, even when this node tries nothing: `/health` says so. None
    /// for a backend with nothing to lose (the embedded store).
    fn connection_failure(&self) -> Option<String> {
        None
    }

    /// Records that worker `worker` is alive at `at` (its heartbeat). Heartbeats are not log
    /// events: one row per worker, overwritten, so they never grow the log, the read model or
    /// NATS; what is decided from them (a worker lost) is. A backend that cannot share them
    /// between processes (the embedded store, one process by construction) refuses; only a
    /// `worker` node beats, and it runs on PostgreSQL only.
    async fn heartbeat(&self, _worker: &str, _at: DateTime<Utc>) -> Result<(), StoreError> {
        Err(StoreError::Backend(format!(
            "the {} store keeps no worker heartbeats",
            self.backend()
        )))
    }

    /// Every worker's latest heartbeat. Empty on a backend that keeps none.
    async fn heartbeats(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        Ok(Vec::new())
    }

    /// Drops the heartbeat of a worker the log has recorded stopped or lost: nothing is
    /// decided from it any more, and a node starting up reads the stream of every worker
    /// that has one (with ids generated at each start, one more per restart, for ever).
    /// A worker that beats again has one again. Nothing to do on a backend that keeps none.
    async fn forget_heartbeat(&self, _worker: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Tries once to take the lease on `duty` for `holder` (this node's id): a duty only one
    /// node performs at a time ([`lease`]). The default suits a store that one process owns:
    /// granted at once, never lost. A store shared by several nodes must override it, and a
    /// wrapper must pass it through.
    async fn try_lease(&self, _duty: &str, _holder: &str) -> Result<LeaseTry, StoreError> {
        Ok(LeaseTry::Taken(Lease::sole()))
    }
}

/// How many events a follower asks for at a time.
pub const FOLLOW_BATCH: usize = 1024;

/// Reads a follower keeps in flight while it is behind the head. The store decodes each
/// read on its own (the embedded store: a blocking thread per read), so while the caller
/// folds one batch the next ones are already being read and decoded, on other cores; a
/// start-up catching up with a long log was serial before (read, then fold, then read).
pub const FOLLOW_READ_AHEAD: usize = 3;

/// Every event with position > `after`, in global order, then each new one as it lands.
/// Never ends by itself; drop the stream to stop. Errors are yielded and the follow goes on
/// from where it was, so a caller may log and keep reading.
pub fn follow(
    store: Arc<dyn EventStore>,
    after: u64,
) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
    use futures::StreamExt;
    follow_batches(store, after)
        .flat_map(|batch| {
            let items: Vec<Result<RecordedEvent, StoreError>> = match batch {
                Ok(events) => events.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
        .boxed()
}

/// [`follow`] a batch at a time (never an empty one): for a caller that folds many events
/// at once, without handing them over one by one.
///
/// While the follower is behind the store's head it reads ahead: up to
/// [`FOLLOW_READ_AHEAD`] reads of [`FOLLOW_BATCH`] events are in flight, each starting
/// where the one before it should end (`after + FOLLOW_BATCH`). A read is used only if it
/// joins on to what was already handed out: when the read before it came back short (it
/// reached the head as it was then), the reads after it are dropped and reading goes on from
/// the last event handed out, so nothing that landed in between is skipped. Events a read
/// returns at or below the last position handed out (a backend whose positions have gaps
/// makes reads overlap) are dropped, so every event comes once, in order. A follower with no
/// read in flight (one keeping up) first asks the store for what it still holds in memory
/// ([`EventStore::read_recent`]).
pub fn follow_batches(
    store: Arc<dyn EventStore>,
    after: u64,
) -> BoxStream<'static, Result<Vec<RecordedEvent>, StoreError>> {
    use futures::stream::FuturesOrdered;
    use futures::{FutureExt, StreamExt};
    type Read = futures::future::BoxFuture<'static, (u64, Result<Vec<RecordedEvent>, StoreError>)>;
    struct S {
        store: Arc<dyn EventStore>,
        head: watch::Receiver<u64>,
        /// The last position handed out.
        after: u64,
        /// Where the next read starts.
        next: u64,
        /// Reads in flight, oldest first, each with the position it reads after.
        ahead: FuturesOrdered<Read>,
    }
    let head = store.watch_head();
    let init = S {
        store,
        head,
        after,
        next: after,
        ahead: FuturesOrdered::new(),
    };
    futures::stream::unfold(init, |mut s| async move {
        loop {
            if s.ahead.is_empty() {
                s.next = s.after;
            }
            // Mark the current head seen *before* reading, so a commit landing during a
            // read wakes us up again instead of being missed.
            let head = *s.head.borrow_and_update();
            if s.ahead.is_empty() && head > s.after {
                // Keeping up: the store may still hold its latest commits in memory.
                if let Some(batch) = s.store.read_recent(s.after, FOLLOW_BATCH) {
                    if let Some(last) = batch.last() {
                        s.after = last.global_position;
                        return Some((Ok(batch), s));
                    }
                }
            }
            while s.ahead.len() < FOLLOW_READ_AHEAD && s.next < head {
                let (store, from) = (s.store.clone(), s.next);
                s.ahead.push_back(
                    async move { (from, store.read_all(from, FOLLOW_BATCH).await) }.boxed(),
                );
                s.next = from.saturating_add(FOLLOW_BATCH as u64);
            }
            let Some((from, read)) = s.ahead.next().await else {
                // Nothing in flight: caught up with the head as last seen.
                if s.head.changed().await.is_err() {
                    return None; // the store is gone
                }
                continue;
            };
            if from > s.after {
                // The read before this one came back short: this one may not join on.
                s.ahead = FuturesOrdered::new();
                continue;
            }
            match read {
                Ok(mut batch) => {
                    batch.retain(|e| e.global_position > s.after);
                    if let Some(last) = batch.last() {
                        s.after = last.global_position;
                        return Some((Ok(batch), s));
                    }
                    if s.ahead.is_empty() && s.head.changed().await.is_err() {
                        return None;
                    }
                }
                Err(e) => {
                    // Go on from where we were: the reads after the failed one go too.
                    s.ahead = FuturesOrdered::new();
                    return Some((Err(e), s));
                }
            }
        }
    })
    .boxed()
}

/// Process-local store for unit tests of the layers above. Not durable; never served.
pub struct InMemoryStore {
    inner: Mutex<Inner>,
    head: watch::Sender<u64>,
    beats: Mutex<HashMap<String, DateTime<Utc>>>,
}

#[derive(Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    streams: HashMap<String, Vec<usize>>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        InMemoryStore {
            inner: Mutex::new(Inner::default()),
            head: watch::channel(0).0,
            beats: Mutex::new(HashMap::new()),
        }
    }
}

impl InMemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the log half-written (pushes happen
        // after every check), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut inner = self.lock();
        let actual = inner.streams.get(stream).map_or(0, |v| v.len() as u64);
        if !expected.matches(actual) {
            return Err(StoreError::Conflict {
                stream: stream.to_owned(),
                expected,
                actual,
            });
        }
        let mut recorded = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let position = inner.log.len() as u64 + 1;
            let r = RecordedEvent {
                event_id: e.event_id,
                stream_id: stream.to_owned(),
                version: actual + i as u64 + 1,
                global_position: position,
                recorded_at: e.recorded_at,
                schema_version: CURRENT_SCHEMA_VERSION,
                metadata: e.metadata,
                event: e.event,
            };
            let idx = inner.log.len();
            inner.log.push(r.clone());
            inner
                .streams
                .entry(stream.to_owned())
                .or_default()
                .push(idx);
            recorded.push(r);
        }
        let head = inner.log.len() as u64;
        drop(inner);
        self.head.send_replace(head);
        Ok(recorded)
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .streams
            .get(stream)
            .map(|idx| {
                idx.iter()
                    .skip(after as usize)
                    .map(|&i| inner.log[i].clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .log
            .iter()
            .skip(after as usize)
            .take(limit)
            .cloned()
            .collect())
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn heartbeat(&self, worker: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        let seen = beats.entry(worker.to_owned()).or_insert(at);
        // A late write (a retry that lost a race) never moves a worker back in time.
        *seen = (*seen).max(at);
        Ok(())
    }

    async fn heartbeats(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        Ok(beats.iter().map(|(w, at)| (w.clone(), *at)).collect())
    }

    async fn forget_heartbeat(&self, worker: &str) -> Result<(), StoreError> {
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.remove(worker);
        Ok(())
    }
}

#[cfg(any(test, feature = "testkit"))]
pub mod contract;

#[cfg(any(test, feature = "testkit"))]
pub mod faults;
pub mod lease;

pub use lease::{Lease, LeaseState, LeaseTry};

#[cfg(test)]
mod tests {
    use super::*;

    struct Memory;

    #[async_trait]
    impl contract::Harness for Memory {
        async fn open(&self) -> Arc<dyn EventStore> {
            InMemoryStore::new()
        }
        async fn reopen(&self, _closed: Arc<dyn EventStore>) -> Option<Arc<dyn EventStore>> {
            None
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_in_memory_store_passes_the_contract() {
        contract::run_all(&Memory).await;
    }

    /// The in-memory store with positions three apart: a backend like KurrentDB, whose
    /// positions are offsets, for the contract's sparse checks.
    struct Gapped {
        inner: Arc<InMemoryStore>,
        head: watch::Sender<u64>,
    }

    fn gapped(mut events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
        for e in &mut events {
            e.global_position *= 3;
        }
        events
    }

    #[async_trait]
    impl EventStore for Gapped {
        async fn append(
            &self,
            stream: &str,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            let recorded = gapped(self.inner.append(stream, expected, events).await?);
            let head = *self.inner.watch_head().borrow() * 3;
            self.head.send_if_modified(|h| {
                let newer = head > *h;
                *h = (*h).max(head);
                newer
            });
            Ok(recorded)
        }
        async fn read_stream(
            &self,
            stream: &str,
            after: u64,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            Ok(gapped(self.inner.read_stream(stream, after).await?))
        }
        async fn read_all(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            Ok(gapped(self.inner.read_all(after / 3, limit).await?))
        }
        fn watch_head(&self) -> watch::Receiver<u64> {
            self.head.subscribe()
        }
        fn backend(&self) -> &'static str {
            "gapped"
        }
    }

    struct GappedHarness;

    #[async_trait]
    impl contract::Harness for GappedHarness {
        async fn open(&self) -> Arc<dyn EventStore> {
            Arc::new(Gapped {
                inner: InMemoryStore::new(),
                head: watch::channel(0).0,
            })
        }
        async fn reopen(&self, _closed: Arc<dyn EventStore>) -> Option<Arc<dyn EventStore>> {
            None
        }
        fn positions(&self) -> contract::Positions {
            contract::Positions::Sparse
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_with_gaps_between_positions_passes_the_sparse_contract() {
        contract::run_all(&GappedHarness).await;
    }

    /// A backend whose positions have gaps (here: three apart) and whose reads may return
    /// fewer events than asked for (a page of at most `page`), as the trait allows.
    struct Sparse {
        inner: Arc<InMemoryStore>,
        page: usize,
        head: watch::Sender<u64>,
    }

    impl Sparse {
        async fn with_events(n: u64, page: usize) -> Arc<Sparse> {
            let inner = InMemoryStore::new();
            for i in 0..n {
                inner
                    .append("s", ExpectedVersion::Exact(i), vec![contract::sample(i)])
                    .await
                    .unwrap();
            }
            Arc::new(Sparse {
                inner,
                page,
                head: watch::channel(n * 3).0,
            })
        }
    }

    #[async_trait]
    impl EventStore for Sparse {
        async fn append(
            &self,
            _: &str,
            _: ExpectedVersion,
            _: Vec<NewEvent>,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            Err(StoreError::Backend("read-only".into()))
        }
        async fn read_stream(&self, _: &str, _: u64) -> Result<Vec<RecordedEvent>, StoreError> {
            Ok(Vec::new())
        }
        async fn read_all(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            let mut events = self.inner.read_all(after / 3, limit.min(self.page)).await?;
            for e in &mut events {
                e.global_position *= 3;
            }
            Ok(events)
        }
        fn watch_head(&self) -> watch::Receiver<u64> {
            self.head.subscribe()
        }
        fn backend(&self) -> &'static str {
            "sparse"
        }
    }

    async fn followed(store: Arc<Sparse>, after: u64, n: usize) -> Vec<u64> {
        use futures::StreamExt;
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            follow(store, after)
                .take(n)
                .map(|e| e.unwrap().global_position)
                .collect::<Vec<_>>(),
        )
        .await
        .expect("the follower reaches the head")
    }

    #[tokio::test]
    async fn a_follower_over_positions_with_gaps_sees_each_event_once() {
        let n = FOLLOW_BATCH as u64 * 4 + 10;
        let store = Sparse::with_events(n, usize::MAX).await;
        let all: Vec<u64> = (1..=n).map(|p| p * 3).collect();
        assert_eq!(followed(store.clone(), 0, all.len()).await, all);
        let from = 1500 * 3;
        let rest: Vec<u64> = all.iter().copied().filter(|p| *p > from).collect();
        assert_eq!(followed(store, from, rest.len()).await, rest);
    }

    #[tokio::test]
    async fn a_follower_over_short_pages_sees_each_event_once() {
        let n = FOLLOW_BATCH as u64 * 3 + 10;
        let store = Sparse::with_events(n, FOLLOW_BATCH / 3).await;
        let all: Vec<u64> = (1..=n).map(|p| p * 3).collect();
        assert_eq!(followed(store, 0, all.len()).await, all);
    }
}
