//! The projector: a task that follows the store's global log from the model's position and
//! folds every event into the shared read model, plus the [`Projection`] handle readers use.
//!
//! Readers take a short read lock (never across an await). Writers to the store learn the
//! global position of their append and call [`Projection::wait_for`] before answering, which
//! is what makes read-your-writes hold: a 200 means the next GET already shows the change.

use crate::model::ReadModel;
use crate::snapshot;
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use syncjobs_domain::{follow_batches, EventStore, RecordedEvent};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The shared read model and its position. Cheap to clone.
#[derive(Clone)]
pub struct Projection {
    shared: Arc<Shared>,
}

struct Shared {
    model: RwLock<ReadModel>,
    position: watch::Sender<u64>,
}

/// The projection did not reach a position within the time allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the read model is at position {reached}, still short of {wanted}")]
pub struct Lagging {
    pub wanted: u64,
    pub reached: u64,
}

impl Projection {
    pub fn new(model: ReadModel) -> Self {
        let position = model.position();
        Projection {
            shared: Arc::new(Shared {
                model: RwLock::new(model),
                position: watch::channel(position).0,
            }),
        }
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, ReadModel> {
        // Writers only fold events, which cannot panic half-way through a meaningful
        // change; a poisoned lock still holds a usable model.
        self.shared.model.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, ReadModel> {
        self.shared.model.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` against the model under a read lock. Keep `f` short and never await in it.
    pub fn read<R>(&self, f: impl FnOnce(&ReadModel) -> R) -> R {
        f(&self.read_guard())
    }

    /// The position of the last event folded in.
    pub fn position(&self) -> u64 {
        *self.shared.position.borrow()
    }

    /// A receiver of the position, for callers that wait on changes themselves.
    pub fn watch_position(&self) -> watch::Receiver<u64> {
        self.shared.position.subscribe()
    }

    /// Folds a batch in under one write lock and publishes the new position.
    pub fn apply_batch(&self, events: impl IntoIterator<Item = RecordedEvent>) -> u64 {
        let position = {
            let mut m = self.write_guard();
            for e in events {
                m.apply_owned(e);
            }
            m.position()
        };
        self.shared.position.send_if_modified(|p| {
            let changed = *p != position;
            *p = position;
            changed
        });
        position
    }

    /// Waits until the model has folded in the event at `position` (bounded by `timeout`).
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), Lagging> {
        let mut rx = self.shared.position.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Lagging {
                wanted: position,
                reached: self.position(),
            }),
        }
    }

    /// Waits until `pred` holds on the model, re-checking after every change of position.
    /// Returns whether it held before `timeout`.
    pub async fn wait_until(
        &self,
        mut pred: impl FnMut(&ReadModel) -> bool,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.position.subscribe();
        loop {
            // Subscribed (and marked seen) before checking, so no change can slip between.
            rx.borrow_and_update();
            if self.read(&mut pred) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.read(&mut pred),
            }
        }
    }

    /// Encodes a snapshot of the model (under the read lock) and its position.
    fn encode_snapshot(&self) -> Result<(Vec<u8>, u64), snapshot::SnapshotError> {
        let m = self.read_guard();
        Ok((snapshot::encode(&m)?, m.position()))
    }
}

/// How the projector runs.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Where the snapshot (the persisted checkpoint) lives; None keeps nothing on disk.
    pub snapshot_path: Option<PathBuf>,
    /// How often a snapshot is written when the model has moved since the last one.
    pub snapshot_every: Duration,
    /// How often to look for events another process appended (the store's head only
    /// announces this process's commits; `syncjobs keys create` runs as another process).
    /// None: only this process writes.
    pub poll_every: Option<Duration>,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            snapshot_path: None,
            snapshot_every: Duration::from_secs(10),
            poll_every: None,
        }
    }
}

/// Loads the snapshot at `path` if it is usable against `store`, else an empty model.
/// A snapshot ahead of the store's head belongs to another store and is ignored.
pub fn load_model(path: Option<&std::path::Path>, store: &dyn EventStore) -> ReadModel {
    let Some(path) = path else {
        return ReadModel::new();
    };
    match snapshot::load(path) {
        Ok(Some(m)) => {
            let head = *store.watch_head().borrow();
            if m.position() > head {
                tracing::warn!(
                    snapshot_position = m.position(),
                    store_head = head,
                    "read model snapshot is ahead of the store; rebuilding from the log"
                );
                ReadModel::new()
            } else {
                tracing::info!(position = m.position(), "read model loaded from snapshot");
                m
            }
        }
        Ok(None) => ReadModel::new(),
        Err(err) => {
            tracing::warn!(%err, "read model snapshot unusable; rebuilding from the log");
            ReadModel::new()
        }
    }
}

/// The running projector task.
pub struct ProjectorHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ProjectorHandle {
    /// Stops following and writes a last snapshot.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProjectorHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// How long to pause after a read error before following on (the follower retries itself).
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Most events folded under one write lock.
const MAX_BATCH: usize = 512;

/// Spawns the projector on the current tokio runtime, following from the model's position.
pub fn spawn_projector(
    store: Arc<dyn EventStore>,
    projection: Projection,
    config: ProjectorConfig,
) -> ProjectorHandle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(store, projection, config, stop_rx));
    ProjectorHandle {
        stop: Some(stop_tx),
        task: Some(task),
    }
}

async fn run(
    store: Arc<dyn EventStore>,
    projection: Projection,
    config: ProjectorConfig,
    mut stop: oneshot::Receiver<()>,
) {
    let start = projection.position();
    tracing::info!(
        from = start,
        backend = store.backend(),
        "projector following the log"
    );
    let mut events = follow_batches(store.clone(), start);
    // Without polling the interval still exists but never fires in practice.
    let mut poll = tokio::time::interval(
        config
            .poll_every
            .unwrap_or(Duration::from_secs(86_400 * 365))
            .max(Duration::from_millis(1)),
    );
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let mut saved = start;
    let mut tick = tokio::time::interval(config.snapshot_every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut polled_at = start;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            next = events.next() => match next {
                None => {
                    tracing::info!("event store closed; projector stops");
                    break;
                }
                Some(Ok(batch)) => {
                    let mut batch = batch.into_iter();
                    while batch.len() > 0 {
                        projection.apply_batch(batch.by_ref().take(MAX_BATCH));
                    }
                }
                Some(Err(err)) => {
                    tracing::error!(%err, "projector cannot read the log");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            },
            _ = poll.tick() => {
                // Events of other processes: the follower would only see them at the next
                // local commit. Poll only while the follower is idle (a busy one will get
                // there itself, and a poll racing it would read the backlog twice); after
                // folding what the poll found, follow on from there instead of re-reading it.
                let position = projection.position();
                if position != polled_at {
                    polled_at = position;
                    continue;
                }
                let mut found_any = false;
                loop {
                    match store.read_all(projection.position(), MAX_BATCH).await {
                        Ok(found) if !found.is_empty() => {
                            projection.apply_batch(found);
                            found_any = true;
                        }
                        Ok(_) => break,
                        Err(err) => {
                            tracing::warn!(%err, "projector cannot poll the log");
                            break;
                        }
                    }
                }
                polled_at = projection.position();
                if found_any {
                    events = follow_batches(store.clone(), polled_at);
                }
            }
            _ = tick.tick() => {
                if projection.position() > saved {
                    saved = save_snapshot(&projection, &config, saved).await;
                }
            }
        }
    }
    if projection.position() > saved {
        save_snapshot(&projection, &config, saved).await;
    }
}

/// Writes a snapshot off the async threads; returns the position now saved.
async fn save_snapshot(projection: &Projection, config: &ProjectorConfig, saved: u64) -> u64 {
    let Some(path) = config.snapshot_path.clone() else {
        return saved;
    };
    let projection = projection.clone();
    let result = tokio::task::spawn_blocking(move || {
        let (bytes, position) = projection.encode_snapshot().map_err(|e| e.to_string())?;
        snapshot::write_atomic(&path, &bytes).map_err(|e| e.to_string())?;
        Ok::<u64, String>(position)
    })
    .await;
    match result {
        Ok(Ok(position)) => {
            tracing::debug!(position, "read model snapshot written");
            position
        }
        Ok(Err(err)) => {
            tracing::warn!(%err, "read model snapshot not written");
            saved
        }
        Err(err) => {
            tracing::warn!(%err, "read model snapshot task failed");
            saved
        }
    }
}
