//! The sync pipeline, the real [`SyncRunner`]: a source streams entities through a bounded
//! channel to a pool of workers, which hash them and resolve them against the destination
//! (new id: inserted; changed hash: updated; same hash: kept; bad entity: failed).
//!
//! Stopping: the run's token stops the source stream and the workers; a worker finishes the
//! write it has in flight, entities still queued are dropped, and the run reports what was
//! really written. Only a run that completed deletes the entities it did not see: a partial
//! run proves nothing about absence.
//!
//! - [`source`]: the `Source` trait, the registry, config validation.
//! - [`timed`]: Airweave's `timed` test source.
//! - [`stub`]: Airweave's `stub` test source (weighted kinds of entities, `fail_after`).
//! - [`entity`]: entities and their content hash.
//! - [`destination`]: the `EntitySink` trait and the embedded SQLite destination.
//! - [`memory`]: an in-memory destination for tests.
//! - `contract` (feature `testkit`): the suite every destination backend passes.

#[cfg(any(test, feature = "testkit"))]
pub mod contract;
pub mod destination;
pub mod entity;
pub mod memory;
pub mod source;
pub mod stub;
pub mod timed;

#[cfg(test)]
mod tests;

pub use destination::{
    DestinationError, EntitySink, EntityStats, SqliteDestination, TypeStats, WriteAction,
};
pub use entity::{Entity, EntityRecord, ProcessingError};
pub use memory::MemoryDestination;
pub use source::{
    known_sources, open_source, validate_credentials, validate_source_config, EntityStream, Source,
    SourceConfigError, SourceError,
};

use crate::runner::{ProgressSink, RunOutcome, RunSpec, SyncRunner};
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use syncjobs_domain::EntityCounts;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most entities a worker takes from the queue for one destination write. A worker never
/// waits for a batch to fill: it takes what is already queued, so batches only grow when the
/// destination is the bottleneck, and a stop waits at most for one such write.
const DEFAULT_BATCH: usize = 128;

/// The sync pipeline. One value serves every job; each `run` has its own channel and pool.
pub struct Pipeline {
    destination: Arc<dyn EntitySink>,
    workers: usize,
    batch_size: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("workers", &self.workers)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl Pipeline {
    /// A pipeline writing to `destination` with `workers` workers per run (at least 1).
    pub fn new(destination: Arc<dyn EntitySink>, workers: usize) -> Pipeline {
        Pipeline {
            destination,
            workers: workers.max(1),
            batch_size: DEFAULT_BATCH,
        }
    }

    /// Four workers per core, between 4 and 32: the work waits on the destination more than
    /// it computes.
    pub fn default_workers() -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores * 4).clamp(4, 32)
    }

    /// Caps how many entities a worker writes in one destination call (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Pipeline {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The destination this pipeline writes to (for stats and purge).
    pub fn destination(&self) -> &Arc<dyn EntitySink> {
        &self.destination
    }

    /// Entities queued between the source and the workers at most.
    fn channel_capacity(&self) -> usize {
        self.workers * self.batch_size
    }

    /// Runs `source` for `spec` to its end, a stop, or a failure.
    pub async fn run_source(
        &self,
        source: &dyn Source,
        spec: &RunSpec,
        cancel: CancellationToken,
        progress: ProgressSink,
    ) -> RunOutcome {
        let scid = spec.source_connection_id;
        // `stop` ends the run early: the caller's cancel, or a failure inside the run.
        let stop = cancel.child_token();
        let shared = Arc::new(Shared::new(progress));
        let (tx, rx) = mpsc::channel::<Entity>(self.channel_capacity());
        // The workers share the receiver behind a per-run async lock: whoever holds it waits
        // for the next entity while the others wait for the lock, which is what idle workers
        // would do anyway. It is never shared across runs.
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut pool = Pool {
            workers: JoinSet::new(),
            max: self.workers,
            crew: Crew {
                rx,
                sink: Arc::clone(&self.destination),
                scid,
                job_id: spec.job_id,
                stop: stop.clone(),
                shared: Arc::clone(&shared),
                batch_size: self.batch_size,
            },
        };
        pool.grow();
        tracing::info!(job_id = %spec.job_id, source = source.short_name(), max_workers = self.workers, "sync run started");

        let seen = produce(source.stream(stop.clone()), tx, &stop, &shared, &mut pool).await;
        let mut workers = pool.workers;
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined {
                shared.fail(format!("pipeline worker stopped: {e}"));
            }
        }

        let counts = shared.counts();
        let failure = shared.failure();
        if cancel.is_cancelled() {
            if let Some(error) = failure {
                tracing::warn!(job_id = %spec.job_id, %error, "error during a cancelled run");
            }
            tracing::info!(job_id = %spec.job_id, ?counts, "sync run cancelled");
            return RunOutcome::Cancelled(counts);
        }
        if let Some(error) = failure {
            tracing::warn!(job_id = %spec.job_id, %error, ?counts, "sync run failed");
            return RunOutcome::Failed { error, counts };
        }
        match self
            .destination
            .delete_unseen(scid, spec.job_id, seen)
            .await
        {
            Ok(deleted) => {
                shared.update(|c| c.deleted += deleted);
                let counts = shared.counts();
                tracing::info!(job_id = %spec.job_id, ?counts, "sync run completed");
                RunOutcome::Completed(counts)
            }
            Err(e) => {
                let error = format!("destination error: {e}");
                tracing::warn!(job_id = %spec.job_id, %error, "deleting stale entities failed");
                RunOutcome::Failed { error, counts }
            }
        }
    }
}

#[async_trait]
impl SyncRunner for Pipeline {
    async fn run(
        &self,
        spec: RunSpec,
        cancel: CancellationToken,
        progress: ProgressSink,
    ) -> RunOutcome {
        let source = match open_source(&spec.short_name, &spec.config) {
            Ok(source) => source,
            Err(e) => {
                let error = match e {
                    SourceConfigError::UnknownSource(_) => e.to_string(),
                    SourceConfigError::Invalid { message, .. } => {
                        format!("invalid config for source '{}': {message}", spec.short_name)
                    }
                };
                tracing::warn!(job_id = %spec.job_id, %error, "sync run cannot start");
                return RunOutcome::Failed {
                    error,
                    counts: EntityCounts::default(),
                };
            }
        };
        self.run_source(source.as_ref(), &spec, cancel, progress)
            .await
    }

    async fn durable_counts(&self, job_id: Uuid) -> Option<EntityCounts> {
        match self.destination.counts_for_job(job_id).await {
            Ok(counts) => Some(counts),
            Err(error) => {
                tracing::warn!(%job_id, %error, "cannot read the job's counts from the destination");
                None
            }
        }
    }
}

/// Counts and the first failure of one run, shared by its workers.
struct Shared {
    counts: Mutex<EntityCounts>,
    failure: Mutex<Option<String>>,
    progress: ProgressSink,
}

impl Shared {
    fn new(progress: ProgressSink) -> Shared {
        Shared {
            counts: Mutex::new(EntityCounts::default()),
            failure: Mutex::new(None),
            progress,
        }
    }

    /// Applies a change and reports the new totals under the same lock, so the reported
    /// sequence never goes backwards.
    fn update(&self, change: impl FnOnce(&mut EntityCounts)) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut counts);
        self.progress.report(*counts);
    }

    fn counts(&self) -> EntityCounts {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the run's failure; the first one wins.
    fn fail(&self, error: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            *failure = Some(error);
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The workers of one run. It starts with one and adds one whenever a full batch is waiting
/// in the queue, up to `max`: a slow source (most of them, most of the time) keeps a single
/// idle task per run instead of a full pool, which is what lets thousands of jobs run at
/// once in little memory (BENCHMARKS.md, #5), while a fast one gets every worker at once.
struct Pool {
    /// Dropping the run (a forced stop) drops the JoinSet, which aborts the workers.
    workers: JoinSet<()>,
    max: usize,
    crew: Crew,
}

/// What every worker of a run shares.
#[derive(Clone)]
struct Crew {
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Entity>>>,
    sink: Arc<dyn EntitySink>,
    scid: Uuid,
    job_id: Uuid,
    stop: CancellationToken,
    shared: Arc<Shared>,
    batch_size: usize,
}

impl Pool {
    fn grow(&mut self) {
        if self.workers.len() < self.max {
            self.workers.spawn(work(self.crew.clone()));
        }
    }

    /// Adds a worker if the ones running leave a full batch waiting.
    fn keep_up(&mut self, tx: &mpsc::Sender<Entity>) {
        let queued = tx.max_capacity() - tx.capacity();
        if queued >= self.crew.batch_size {
            self.grow();
        }
    }
}

/// Feeds the source's entities to the workers and returns the ids it saw. After a stop it
/// keeps reading until the source ends its stream (dropping what comes): ending the stream is
/// the source's part of the stop, and a source that does not end it keeps the run alive.
async fn produce(
    mut stream: EntityStream,
    tx: mpsc::Sender<Entity>,
    stop: &CancellationToken,
    shared: &Shared,
    pool: &mut Pool,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut dropped = 0u64;
    while let Some(item) = stream.next().await {
        if stop.is_cancelled() {
            dropped += 1;
            continue;
        }
        let entity = match item {
            Ok(entity) => entity,
            Err(e) => {
                shared.fail(e.to_string());
                stop.cancel();
                break;
            }
        };
        if !seen.insert(entity.entity_id.clone()) {
            tracing::warn!(entity_id = %entity.entity_id, "source yielded a duplicate entity id; skipped");
            shared.update(|c| c.skipped += 1);
            continue;
        }
        pool.keep_up(&tx);
        tokio::select! {
            biased;
            _ = stop.cancelled() => dropped += 1,
            sent = tx.send(entity) => {
                if sent.is_err() {
                    shared.fail("pipeline workers stopped".to_string());
                    stop.cancel();
                }
            }
        }
    }
    if dropped > 0 {
        tracing::debug!(dropped, "entities dropped after the stop");
    }
    seen
}

/// One worker: take a batch of what is queued, hash it, write it, count it; stop taking
/// work once `stop` fires (the write in flight finishes first).
async fn work(crew: Crew) {
    let Crew {
        rx,
        sink,
        scid,
        job_id,
        stop,
        shared,
        batch_size,
    } = crew;
    // Grows with what is really queued: a slow source never fills a batch, and thousands of
    // idle workers each holding room for a full one cost hundreds of MB (BENCHMARKS.md, #5).
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                queue = rx.lock() => queue,
            };
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                next = queue.recv() => match next {
                    Some(entity) => entity,
                    None => return,
                },
            };
            batch.push(first);
            while batch.len() < batch_size {
                match queue.try_recv() {
                    Ok(entity) => batch.push(entity),
                    Err(_) => break,
                }
            }
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut failed = 0u64;
        for entity in batch.drain(..) {
            match entity.into_record() {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::warn!(error = %e, "entity failed processing");
                    failed += 1;
                }
            }
        }
        // Failures are counted with the batch's write, in the destination's transaction,
        // and reported after it: reported counts are never ahead of the destination's.
        if records.is_empty() && failed == 0 {
            continue;
        }
        match sink.write(scid, job_id, records, failed).await {
            Ok(actions) => shared.update(|c| {
                c.failed += failed;
                for action in actions {
                    match action {
                        WriteAction::Inserted => c.inserted += 1,
                        WriteAction::Updated => c.updated += 1,
                        WriteAction::Kept => c.kept += 1,
                    }
                }
            }),
            Err(e) => {
                shared.fail(format!("destination error: {e}"));
                stop.cancel();
                return;
            }
        }
    }
}
