//! The EventStore contract every backend implements, a follower built on it, and an
//! in-memory backend for unit tests of the layers above (never used to serve).

use crate::events::{NewEvent, RecordedEvent, CURRENT_SCHEMA_VERSION};
use async_trait::async_trait;
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

#[derive(Debug, thiserror::Error)]
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
    #[error("event store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
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
}

/// How many events a follower asks for at a time.
pub const FOLLOW_BATCH: usize = 1024;

/// Every event with position > `after`, in global order, then each new one as it lands.
/// Never ends by itself; drop the stream to stop. Errors are yielded and the follow goes on
/// from where it was, so a caller may log and keep reading.
pub fn follow(
    store: Arc<dyn EventStore>,
    after: u64,
) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
    use futures::StreamExt;
    struct S {
        store: Arc<dyn EventStore>,
        head: watch::Receiver<u64>,
        after: u64,
        buf: std::collections::VecDeque<RecordedEvent>,
    }
    let head = store.watch_head();
    let init = S {
        store,
        head,
        after,
        buf: Default::default(),
    };
    futures::stream::unfold(init, |mut s| async move {
        loop {
            if let Some(e) = s.buf.pop_front() {
                s.after = e.global_position;
                return Some((Ok(e), s));
            }
            // Mark the current head seen *before* reading, so a commit landing during the
            // read wakes us up again instead of being missed.
            let head = *s.head.borrow_and_update();
            if head > s.after {
                let recent = s.store.read_recent(s.after, FOLLOW_BATCH);
                let read = match recent {
                    Some(batch) if !batch.is_empty() => Ok(batch),
                    _ => s.store.read_all(s.after, FOLLOW_BATCH).await,
                };
                match read {
                    Ok(batch) if !batch.is_empty() => {
                        s.buf.extend(batch);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => return Some((Err(e), s)),
                }
            }
            if s.head.changed().await.is_err() {
                // The store is gone: drain anything left, then end.
                return None;
            }
        }
    })
    .boxed()
}

/// Process-local store for unit tests of the layers above. Not durable; never served.
pub struct InMemoryStore {
    inner: Mutex<Inner>,
    head: watch::Sender<u64>,
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
}

#[cfg(any(test, feature = "testkit"))]
pub mod contract;

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
}
