//! A store wrapper that refuses writes on demand, as a full disk would: for tests of what the
//! layers above do when the store cannot write, and that they recover once it can.

use super::{EventStore, ExpectedVersion, StoreError};
use crate::events::{NewEvent, RecordedEvent};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Wraps a store. While a fault is set ([`FaultyStore::fail_writes`]) every append fails
/// with [`StoreError::Unavailable`] and stores nothing; reads always go through. Like a real
/// backend it remembers the last failure ([`EventStore::write_failure`]) until an append
/// succeeds again.
pub struct FaultyStore {
    inner: Arc<dyn EventStore>,
    fault: Mutex<Option<String>>,
    failure: Mutex<Option<String>>,
    refused: Mutex<Vec<&'static str>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn EventStore>) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner,
            fault: Mutex::new(None),
            failure: Mutex::new(None),
            refused: Mutex::new(Vec::new()),
        })
    }

    /// From now on appends fail with `cause` (e.g. `database or disk is full`).
    pub fn fail_writes(&self, cause: &str) {
        *lock(&self.fault) = Some(cause.to_owned());
    }

    /// Appends work again (the failure stays remembered until one succeeds).
    pub fn heal(&self) {
        *lock(&self.fault) = None;
    }

    /// The type of every event an append was refused for, in order (a retried event shows
    /// once per try).
    pub fn refused(&self) -> Vec<&'static str> {
        lock(&self.refused).clone()
    }
}

#[async_trait]
impl EventStore for FaultyStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let fault = lock(&self.fault).clone();
        if let Some(cause) = fault {
            lock(&self.refused).extend(events.iter().map(|e| e.event.event_type()));
            *lock(&self.failure) = Some(cause.clone());
            return Err(StoreError::Unavailable { cause });
        }
        let appended = self.inner.append(stream, expected, events).await?;
        *lock(&self.failure) = None;
        Ok(appended)
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, after).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    fn read_recent(&self, after: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        self.inner.read_recent(after, limit)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn write_failure(&self) -> Option<String> {
        lock(&self.failure)
            .clone()
            .or_else(|| self.inner.write_failure())
    }

    /// Heartbeats are writes too: refused while writes are.
    async fn heartbeat(
        &self,
        worker: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        if let Some(cause) = lock(&self.fault).clone() {
            return Err(StoreError::Unavailable { cause });
        }
        self.inner.heartbeat(worker, at).await
    }

    async fn heartbeats(&self) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StoreError> {
        self.inner.heartbeats().await
    }

    async fn forget_heartbeat(&self, worker: &str) -> Result<(), StoreError> {
        self.inner.forget_heartbeat(worker).await
    }

    async fn try_lease(&self, duty: &str, holder: &str) -> Result<super::LeaseTry, StoreError> {
        self.inner.try_lease(duty, holder).await
    }
}
