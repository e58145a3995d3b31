//! The projector: a task that follows the store's global log from the read model's stored
//! position and commits every batch into the read model's database (SQLite's
//! `read_model.db`, or PostgreSQL's tables), plus the [`Projection`] handle readers use.
//!
//! A batch's rows and position commit in one transaction; the position is published (and
//! the readers' caches invalidated) only after the commit. Writers to the store learn the
//! global position of their append and call [`Projection::wait_for`] before answering,
//! which is what makes read-your-writes hold: a 200 means the next GET already shows the
//! change. Readers never wait for the writer (WAL).

use crate::db::fold::Committed;
use crate::db::pg::{PgDb, PgWriter};
use crate::db::view::Conn;
use crate::db::{Engine, ReadDb, ReadError, ReadView, Writer};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::{follow_batches, EventStore, RecordedEvent, StoreError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The read model and its published position. Cheap to clone.
#[derive(Clone)]
pub struct Projection {
    shared: Arc<Shared>,
}

struct Shared {
    db: ReadDb,
    position: watch::Sender<u64>,
    /// The directory of a [`Projection::temporary`] read model, removed with it.
    _temporary: Option<tempfile::TempDir>,
}

/// The projection did not reach a position within the time allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the read model is at position {reached}, still short of {wanted}")]
pub struct Lagging {
    pub wanted: u64,
    pub reached: u64,
}

/// The writer of a [`Projection`] (this node's; on PostgreSQL every node has one).
pub struct ProjectionWriter {
    writer: WriterHandle,
    projection: Projection,
}

/// SQLite's writer is shared with the blocking threads it commits on; PostgreSQL's awaits.
#[derive(Clone)]
enum WriterHandle {
    Sqlite(Arc<Mutex<Writer>>),
    Postgres(Arc<tokio::sync::Mutex<PgWriter>>),
}

impl Projection {
    /// Opens the read model at `path` (see [`ReadDb::open`]): the handle readers use and
    /// the writer the projector (or a test) folds with. `head` is the log's head: a read
    /// model ahead of it belongs to another log and is rebuilt.
    pub fn open(path: &Path, head: u64) -> Result<(Projection, ProjectionWriter), ReadError> {
        Self::open_in(path, head, None)
    }

    /// An empty read model in a temporary directory, removed when the last handle goes
    /// (tests, and tools that fold a log once).
    pub fn temporary() -> Result<(Projection, ProjectionWriter), ReadError> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("read_model.db");
        Self::open_in(&path, u64::MAX, Some(dir))
    }

    fn open_in(
        path: &Path,
        head: u64,
        temporary: Option<tempfile::TempDir>,
    ) -> Result<(Projection, ProjectionWriter), ReadError> {
        let opened = ReadDb::open(path, head)?;
        let projection = Projection {
            shared: Arc::new(Shared {
                db: opened.db,
                position: watch::channel(opened.writer.position()).0,
                _temporary: temporary,
            }),
        };
        let writer = ProjectionWriter {
            writer: WriterHandle::Sqlite(Arc::new(Mutex::new(opened.writer))),
            projection: projection.clone(),
        };
        Ok((projection, writer))
    }

    /// Opens the read model in the PostgreSQL database at `url` (the event store's): its
    /// tables are created, or rebuilt when of another schema version or when `rebuild`
    /// (`syncjobs rebuild-read-model`; no node may be running then).
    /// `timeouts` bound every wait on the database (the store's, so one setting bounds both).
    pub async fn open_postgres(
        url: &str,
        rebuild: bool,
        timeouts: syncjobs_store_postgres::Timeouts,
    ) -> Result<(Projection, ProjectionWriter), ReadError> {
        let (db, writer) = PgDb::open(url, rebuild, timeouts).await?;
        let projection = Projection {
            shared: Arc::new(Shared {
                db: ReadDb::new(Engine::Postgres(db)),
                position: watch::channel(writer.position()).0,
                _temporary: None,
            }),
        };
        let writer = ProjectionWriter {
            writer: WriterHandle::Postgres(Arc::new(tokio::sync::Mutex::new(writer))),
            projection: projection.clone(),
        };
        Ok((projection, writer))
    }

    /// Whether the rows live in PostgreSQL (else in SQLite).
    pub fn is_postgres(&self) -> bool {
        matches!(self.shared.db.engine, Engine::Postgres(_))
    }

    /// Runs `f` against the model on a pooled read connection, held until `f`'s future ends
    /// (returned to the pool even if that future is dropped half-way).
    pub async fn read<R, E: From<ReadError>>(
        &self,
        f: impl AsyncFnOnce(&ReadView<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        // Taken before the read: the rows seen are at least this recent.
        let position = self.position();
        let db = &self.shared.db;
        match &db.engine {
            Engine::Sqlite(sqlite) => {
                let reader = sqlite.reader()?;
                f(&ReadView {
                    db,
                    conn: Conn::Sqlite(&reader),
                    position,
                })
                .await
            }
            Engine::Postgres(pg) => {
                let client = pg.client().await?;
                let view = ReadView {
                    db,
                    conn: Conn::Postgres(&client),
                    position,
                };
                let limit = pg.operation_timeout();
                match tokio::time::timeout(limit, f(&view)).await {
                    Ok(read) => read,
                    Err(_) => {
                        // It may be stuck mid-statement: closed, never handed out again.
                        drop(deadpool_postgres::Object::take(client));
                        tracing::warn!(
                            ?limit,
                            "read model unavailable: the database did not answer in time"
                        );
                        Err(ReadError::Unavailable(format!(
                            "the read model's database did not answer within {} s",
                            limit.as_secs()
                        ))
                        .into())
                    }
                }
            }
        }
    }

    /// [`ReadView::authenticate`]'s answer if the key cache holds it, without a read: the
    /// request extractor answers a hit at once (no future to box on every request).
    pub fn authenticate_cached(
        &self,
        key_hash: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Option<crate::ApiKey>> {
        let found = self.shared.db.keys.get(key_hash).ok()?;
        Some(crate::db::view::usable(found, now))
    }

    /// The position of the last event committed and published.
    pub fn position(&self) -> u64 {
        *self.shared.position.borrow()
    }

    /// A receiver of the position, for callers that wait on changes themselves.
    pub fn watch_position(&self) -> watch::Receiver<u64> {
        self.shared.position.subscribe()
    }

    /// Invalidates what the batch changed, then moves the position on (never back: a
    /// batch of events already folded publishes no older position).
    fn publish(&self, c: Committed) {
        self.shared.db.invalidate(c.jobs_changed, c.keys_changed);
        self.shared.position.send_if_modified(|p| {
            let newer = c.position > *p;
            if newer {
                *p = c.position;
            }
            newer
        });
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
    /// Returns whether it held before `timeout` (a read error counts as not yet).
    pub async fn wait_until(
        &self,
        mut pred: impl AsyncFnMut(&ReadView<'_>) -> Result<bool, ReadError>,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.position.subscribe();
        loop {
            // Subscribed (and marked seen) before checking, so no change can slip between.
            rx.borrow_and_update();
            if self.check(&mut pred).await {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.check(&mut pred).await,
            }
        }
    }

    async fn check(
        &self,
        pred: &mut impl AsyncFnMut(&ReadView<'_>) -> Result<bool, ReadError>,
    ) -> bool {
        self.read(async |m| pred(m).await)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(%err, "read model unreadable while waiting");
                false
            })
    }
}

fn lock(w: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    // A panic in a fold leaves the writer at its last committed state (the batch rolled
    // back with its transaction).
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProjectionWriter {
    /// The position of the last event committed (published right after each commit; read
    /// without waiting for a commit in progress).
    pub fn position(&self) -> u64 {
        self.projection.position()
    }

    /// Commits a batch and publishes its position (SQLite: on this thread; tests, tools);
    /// the position published after it.
    pub async fn apply_batch(
        &self,
        events: impl IntoIterator<Item = RecordedEvent>,
    ) -> Result<u64, ReadError> {
        let events: Vec<RecordedEvent> = events.into_iter().collect();
        let committed = match &self.writer {
            WriterHandle::Sqlite(w) => lock(w).apply_batch(events)?,
            WriterHandle::Postgres(w) => w.lock().await.apply_batch(events).await?,
        };
        self.projection.publish(committed);
        Ok(self.projection.position())
    }

    /// Keeps webhook messages for `retention` (None: for ever): older events become no
    /// message when folded, and the purge steps remove older messages.
    pub async fn set_retention(&self, retention: Option<crate::db::fold::Retention>) {
        match &self.writer {
            WriterHandle::Sqlite(w) => lock(w).set_retention(retention),
            WriterHandle::Postgres(w) => w.lock().await.set_retention(retention),
        }
    }

    /// One purge step (SQLite: on this thread): final jobs of deleted source connections,
    /// then webhook messages past retention when that is due; whether more remains.
    pub async fn purge_step(&self) -> Result<bool, ReadError> {
        match &self.writer {
            WriterHandle::Sqlite(w) => lock(w).purge_step(),
            WriterHandle::Postgres(w) => w.lock().await.purge_step().await,
        }
    }

    /// Most events folded in one transaction. SQLite's writer commits without an fsync
    /// (`synchronous=NORMAL`), and a command waits for its own event's batch, so its batches
    /// stay small. A PostgreSQL batch costs more than its events: the WAL flush of its
    /// commit, and the run counters of every connection it touches (on a first start, all
    /// of them, each batch). While catching up those made most of the time, so its batches
    /// are larger: 32,768 events (16,384 before) took a first start of 1M events from
    /// 2.4 x a `COPY` of the log to 1.7 x (bench #12). A node keeping up folds what
    /// arrived, far less than this.
    fn max_batch(&self) -> usize {
        match &self.writer {
            WriterHandle::Sqlite(_) => MAX_BATCH,
            WriterHandle::Postgres(_) => MAX_PG_BATCH,
        }
    }

    /// Whether the log is read on its own task ahead of the fold: for PostgreSQL, whose
    /// fold waits on the network. SQLite's projector keeps up from the store's memory
    /// (`read_recent`), where a hop between tasks would only add to each command's wait.
    fn reads_ahead(&self) -> bool {
        matches!(self.writer, WriterHandle::Postgres(_))
    }

    /// [`ProjectionWriter::apply_batch`], SQLite's on a blocking thread.
    async fn commit(&self, events: Vec<RecordedEvent>) -> Result<u64, ReadError> {
        let WriterHandle::Sqlite(w) = &self.writer else {
            return self.apply_batch(events).await;
        };
        let (w, projection) = (w.clone(), self.projection.clone());
        tokio::task::spawn_blocking(move || {
            let committed = lock(&w).apply_batch(events)?;
            projection.publish(committed);
            Ok(projection.position())
        })
        .await
        .map_err(|e| ReadError::Task(e.to_string()))?
    }

    /// One purge step (SQLite's on a blocking thread); whether more remains.
    async fn purge(&self) -> bool {
        let step = match &self.writer {
            WriterHandle::Postgres(_) => Ok(self.purge_step().await),
            WriterHandle::Sqlite(w) => {
                let w = w.clone();
                tokio::task::spawn_blocking(move || lock(&w).purge_step()).await
            }
        };
        match step {
            Ok(Ok(more)) => more,
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot purge jobs of deleted source connections");
                false
            }
            Err(err) => {
                tracing::warn!(%err, "purge task failed");
                false
            }
        }
    }
}

/// How the projector runs.
#[derive(Debug, Clone, Default)]
pub struct ProjectorConfig {
    /// How often to look for events another process appended (the store's head only
    /// announces this process's commits; `syncjobs keys create` runs as another process).
    /// None: only this process writes.
    pub poll_every: Option<Duration>,
}

/// The running projector task.
pub struct ProjectorHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ProjectorHandle {
    /// Stops following (everything folded is already committed).
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

/// How long to pause after a read or commit error before following on.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// How often an idle projector lets the retention purge look (it runs only when due by the
/// service's clock, see `db::fold::RETENTION_EVERY`).
const RETENTION_TICK: Duration = Duration::from_secs(60);
/// Most events folded in one SQLite transaction.
const MAX_BATCH: usize = 512;
/// Most events folded in one PostgreSQL transaction (see `ProjectionWriter::max_batch`).
const MAX_PG_BATCH: usize = 32768;
/// Most reads of the log taken together when several are ready at once (a backlog): as
/// many as a PostgreSQL batch holds.
const READY_READS: usize = READS_AHEAD;

/// Spawns the projector on the current tokio runtime, following from the stored position.
pub fn spawn_projector(
    store: Arc<dyn EventStore>,
    writer: ProjectionWriter,
    config: ProjectorConfig,
) -> ProjectorHandle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(store, writer, config, stop_rx));
    ProjectorHandle {
        stop: Some(stop_tx),
        task: Some(task),
    }
}

/// Reads of the log a follower on its own task may have done ahead of the fold: a whole
/// batch's worth, read while the last one commits.
const READS_AHEAD: usize = MAX_PG_BATCH / syncjobs_domain::store::FOLLOW_BATCH;

/// [`follow_batches`] on its own task, up to [`READS_AHEAD`] reads ahead: the reading and
/// decoding of the next events overlap the fold of the last ones. A first start on
/// PostgreSQL spent a third of its time reading while the fold waited. Dropping the stream
/// stops the task.
fn follow_ahead(
    store: Arc<dyn EventStore>,
    after: u64,
) -> BoxStream<'static, Result<Vec<RecordedEvent>, StoreError>> {
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(READS_AHEAD);
    let task = tokio::spawn(async move {
        let mut events = follow_batches(store, after);
        while let Some(read) = events.next().await {
            if tx.send(read).await.is_err() {
                break;
            }
        }
    });
    futures::stream::unfold((rx, AbortOnDrop(task)), |(mut rx, task)| async move {
        rx.recv().await.map(|read| (read, (rx, task)))
    })
    .boxed()
}

/// Commits `events` in batches of at most the writer's size; false after an error (logged).
async fn commit_all(writer: &ProjectionWriter, events: Vec<RecordedEvent>) -> bool {
    let max = writer.max_batch();
    // Events that fit one batch are handed over whole: an event is 344 bytes, and each
    // move of a million of them showed as memmove in a first start's profile.
    let chunks = if events.len() <= max {
        vec![events]
    } else {
        let mut events = events.into_iter();
        let mut chunks = Vec::new();
        while events.len() > 0 {
            chunks.push(events.by_ref().take(max).collect());
        }
        chunks
    };
    for chunk in chunks {
        if let Err(err) = writer.commit(chunk).await {
            tracing::error!(%err, "projector cannot commit to the read model");
            return false;
        }
    }
    true
}

async fn run(
    store: Arc<dyn EventStore>,
    writer: ProjectionWriter,
    config: ProjectorConfig,
    mut stop: oneshot::Receiver<()>,
) {
    let start = writer.position();
    tracing::info!(
        from = start,
        backend = store.backend(),
        "projector following the log"
    );
    // The reads already done are folded together (one transaction for several of them).
    let ahead = writer.reads_ahead();
    let follow = |after| {
        let events = if ahead {
            follow_ahead(store.clone(), after)
        } else {
            follow_batches(store.clone(), after)
        };
        events.ready_chunks(READY_READS)
    };
    let mut events = follow(start);
    // Without polling the interval still exists but never fires in practice.
    let mut poll = tokio::time::interval(
        config
            .poll_every
            .unwrap_or(Duration::from_secs(86_400 * 365))
            .max(Duration::from_millis(1)),
    );
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    // The retention purge looks when the service's clock says it is due, after a batch or
    // at this tick when no event comes.
    let mut retention = tokio::time::interval(RETENTION_TICK);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retention.tick().await;
    let mut polled_at = start;
    // Deleted connections whose final jobs may still have rows (one left by a crash too).
    let mut purging = true;
    loop {
        tokio::select! {
            // In this order: events are folded before anything else starts, and a purge
            // step (which cannot be interrupted once running) starts only when no batch is
            // waiting, so a command's fold waits behind one step at most.
            biased;
            _ = &mut stop => break,
            next = events.next() => match next {
                None => {
                    tracing::info!("event store closed; projector stops");
                    break;
                }
                Some(reads) => {
                    // After a failed read the follower goes on from where it was, so the reads
                    // after an error join on to those before it: fold them all, then wait.
                    // Sized once: growing it by doubling moved each event again.
                    let total: usize = reads.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum();
                    let mut batch = Vec::new();
                    let mut failed = false;
                    for read in reads {
                        match read {
                            Ok(events) if batch.is_empty() && events.len() == total => {
                                batch = events
                            }
                            Ok(events) => {
                                batch.reserve_exact(total - batch.len());
                                batch.extend(events)
                            }
                            Err(err) => {
                                tracing::error!(%err, "projector cannot read the log");
                                failed = true;
                            }
                        }
                    }
                    if !batch.is_empty() {
                        purging = true;
                        if !commit_all(&writer, batch).await {
                            tokio::time::sleep(ERROR_BACKOFF).await;
                            // What was read but not committed is read again.
                            events = follow(writer.position());
                            continue;
                        }
                    }
                    if failed {
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                }
            },
            _ = poll.tick() => {
                // Events of other processes: the follower would only see them at the next
                // local commit. Poll only while the follower is idle (a busy one will get
                // there itself, and a poll racing it would read the backlog twice); after
                // folding what the poll found, follow on from there instead of re-reading it.
                let position = writer.position();
                if position != polled_at {
                    polled_at = position;
                    continue;
                }
                let mut found_any = false;
                loop {
                    match store.read_all(writer.position(), MAX_BATCH).await {
                        Ok(found) if !found.is_empty() => {
                            found_any = true;
                            if !commit_all(&writer, found).await {
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(err) => {
                            tracing::warn!(%err, "projector cannot poll the log");
                            break;
                        }
                    }
                }
                polled_at = writer.position();
                if found_any {
                    events = follow(polled_at);
                }
            }
            more = writer.purge(), if purging => purging = more,
            _ = retention.tick() => purging = true,
        }
    }
}
