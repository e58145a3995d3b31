//! The embedded EventStore: one SQLite file (`events.db`) in WAL mode, the service's default.
//!
//! Writes go through ONE dedicated writer thread that owns the write connection and
//! group-commits: it opens a transaction with the first waiting append, checks each queued
//! append's expected version and inserts the winners as they come (up to [`MAX_BATCH`]),
//! waits briefly for appenders its last commit answered, and commits once, so one fsync
//! (`synchronous=FULL`) makes a whole batch durable. Throughput therefore grows with the
//! number of concurrent appenders instead of being capped at one fsync per append.
//!
//! Reads use a small pool of separate connections on tokio's blocking pool; in WAL mode they
//! read a committed snapshot and never wait for the writer.
//!
//! A write SQLite cannot make (disk full, I/O error, read-only file system, a lock held too
//! long) fails with [`StoreError::Unavailable`] naming the cause, and the store remembers it
//! ([`EventStore::write_failure`]) until a commit succeeds again, so `/health` can say so.

use crate::wal_checkpoint::{self, Checkpointer};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, Row};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use syncjobs_domain::events::{Event, Metadata, NewEvent, RecordedEvent, CURRENT_SCHEMA_VERSION};
use syncjobs_domain::store::{EventStore, ExpectedVersion, StoreError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use uuid::Uuid;

/// The database file inside the store's directory.
pub const DB_FILE: &str = "events.db";

/// The most append requests one commit carries: bounds the latency a batch adds and the
/// time the write lock is held.
pub const MAX_BATCH: usize = 512;

/// Appends that may wait for the writer before appenders are made to wait in turn
/// (backpressure). Larger than [`MAX_BATCH`] so a full batch can queue up during a commit.
const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

/// Read connections open at once; more concurrent readers wait for one to free up.
const READ_CONNECTIONS: usize = 4;

/// Most room a read of the global log reserves up front for its rows (more grows the
/// vector as usual).
const READ_CAPACITY_HINT: usize = 4096;

/// The longest the writer waits for returning appenders before a commit (see [`linger`]);
/// the wait is also never longer than the previous commit took.
const MAX_LINGER: Duration = Duration::from_millis(2);

/// A pause this long with no new append ends the wait: the answered appenders are busy
/// elsewhere.
const LINGER_GAP: Duration = Duration::from_micros(100);

/// The fewest appends a commit must have answered for the writer to wait for them.
const LINGER_MIN_GROUP: usize = 4;

/// How often a lingering writer looks at the queue.
const LINGER_POLL: Duration = Duration::from_micros(10);

/// Streams whose version the writer remembers; past this the cache starts over (a miss
/// only costs one indexed lookup).
const VERSION_CACHE_LIMIT: usize = 100_000;

/// How long a connection waits for a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The layout `schema.sql` creates, recorded in `PRAGMA user_version`.
const DB_LAYOUT_VERSION: i64 = 1;

const SCHEMA: &str = include_str!("sql/schema.sql");
const INSERT_EVENT: &str = include_str!("sql/insert_event.sql");
const STREAM_VERSION: &str = include_str!("sql/stream_version.sql");
const HEAD: &str = include_str!("sql/head.sql");
const READ_ALL: &str = include_str!("sql/read_all.sql");
const READ_STREAM: &str = include_str!("sql/read_stream.sql");

type Reply = oneshot::Sender<Result<Vec<RecordedEvent>, StoreError>>;

/// One append waiting for the writer. Bodies are serialised by the appender, off the writer
/// thread, so the writer does nothing but database work.
struct Request {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<Prepared>,
    reply: Reply,
}

struct Prepared {
    event: NewEvent,
    data: String,
    recorded_at: String,
}

/// SQLite-backed EventStore. Open with [`EmbeddedStore::open`]; see the module docs.
pub struct EmbeddedStore {
    /// None once closed. A clone is taken per append, so the writer exits only after every
    /// append already under way has been queued and answered.
    requests: RwLock<Option<mpsc::Sender<Request>>>,
    head: watch::Receiver<u64>,
    reads: Arc<ReadPool>,
    /// Bounds the read connections in use to [`READ_CONNECTIONS`].
    read_permits: Arc<Semaphore>,
    commits: Arc<AtomicU64>,
    recent: Arc<Mutex<Recent>>,
    dir: PathBuf,
    /// The cause of the last failed write, until a commit succeeds (shared with the writer).
    write_failure: Arc<Mutex<Option<String>>>,
    /// A `max_page_count` for the writer to apply before its next transaction (see
    /// [`EmbeddedStore::limit_pages`]); [`NO_PAGE_LIMIT_CHANGE`] when there is none.
    page_limit: Arc<AtomicU64>,
}

/// [`EmbeddedStore::page_limit`] when no change is pending.
const NO_PAGE_LIMIT_CHANGE: u64 = 0;
/// SQLite's own largest `max_page_count`: what lifting a limit goes back to.
const SQLITE_MAX_PAGE_COUNT: u64 = 4_294_967_294;

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` and starts its writer thread.
    ///
    /// Blocking (file I/O): call it before the runtime starts or inside `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Arc<EmbeddedStore>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create store directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE);
        let mut conn = open_writer(&path)?;
        let head = conn
            .query_row(HEAD, [], |r| get_u64(r, 0))
            .map_err(|e| sql_error(&path, &e))?;
        let data_version = data_version(&conn).map_err(|e| sql_error(&path, &e))?;

        let checkpointer = wal_checkpoint::attach(&mut conn, &path)
            .map_err(|e| StoreError::Backend(e.to_string()))?;

        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (head_tx, head_rx) = watch::channel(head);
        let commits = Arc::new(AtomicU64::new(0));
        let recent = Arc::new(Mutex::new(Recent::default()));
        let write_failure = Arc::new(Mutex::new(None));
        let page_limit = Arc::new(AtomicU64::new(NO_PAGE_LIMIT_CHANGE));
        let writer = Writer {
            write_failure: write_failure.clone(),
            page_limit: page_limit.clone(),
            recent: recent.clone(),
            conn,
            versions: HashMap::new(),
            data_version,
            head,
            head_tx,
            commits: commits.clone(),
            checkpointer,
        };
        std::thread::Builder::new()
            .name("syncjobs-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the store writer: {e}")))?;
        tracing::info!(path = %path.display(), head, "embedded event store open");

        Ok(Arc::new(EmbeddedStore {
            requests: RwLock::new(Some(tx)),
            head: head_rx,
            reads: Arc::new(ReadPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            read_permits: Arc::new(Semaphore::new(READ_CONNECTIONS)),
            commits,
            recent,
            dir: dir.to_owned(),
            write_failure,
            page_limit,
        }))
    }

    /// Caps the database at `pages` pages (SQLite's `max_page_count`, never below its
    /// current size) from the writer's next transaction on, or lifts the cap (`None`).
    /// Appends that need more room then fail exactly as on a full disk (`SQLITE_FULL`):
    /// the way tests and fire drills make a real "disk full" without filling a disk.
    pub fn limit_pages(&self, pages: Option<u64>) {
        let pages = pages
            .unwrap_or(SQLITE_MAX_PAGE_COUNT)
            .clamp(1, SQLITE_MAX_PAGE_COUNT);
        self.page_limit.store(pages, Ordering::Relaxed);
    }

    /// Stops taking appends (they fail with [`StoreError::Closed`]). Appends already queued
    /// are still committed and answered; then the writer closes the database and exits.
    /// Does not wait: see [`EmbeddedStore::closed`]. Dropping the store closes it too.
    pub fn close(&self) {
        let mut requests = self.requests.write().unwrap_or_else(|p| p.into_inner());
        if requests.take().is_some() {
            tracing::info!(dir = %self.dir.display(), "embedded event store closing");
        }
    }

    /// Resolves once the writer thread has answered its last append and closed the
    /// database: from then on the directory may be reopened with no writer of ours left on
    /// it. The writer only stops after [`EmbeddedStore::close`], so call that first.
    pub async fn closed(&self) {
        let mut head = self.head.clone();
        // The writer owns the head's sender and drops it last, after the connection.
        while head.changed().await.is_ok() {}
    }

    /// How many transactions the writer has committed: with concurrent appenders, far
    /// fewer than the appends it acknowledged.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>, StoreError> {
        let requests = self.requests.read().unwrap_or_else(|p| p.into_inner());
        requests.clone().ok_or(StoreError::Closed)
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reads = self.reads.clone();
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let result = reads.with(f);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl EventStore for EmbeddedStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = events
            .into_iter()
            .map(|event| {
                let data = event.event.to_json().map_err(|e| {
                    StoreError::Backend(format!(
                        "cannot serialise a {}: {e}",
                        event.event.event_type()
                    ))
                })?;
                let recorded_at = syncjobs_domain::time::nanos(&event.recorded_at);
                Ok(Prepared {
                    event,
                    data,
                    recorded_at,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
        };
        // If this future is dropped after the send, the append still happens: like a
        // request lost on the wire, the caller learns the outcome by reading the stream.
        self.sender()?
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(READ_STREAM).map_err(backend)?;
            let mut rows = stmt.query(params![stream, clamp(after)]).map_err(backend)?;
            collect(&mut rows, usize::MAX, 0)
        })
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(move |conn| {
            // The limit is applied here, not as `LIMIT ?`: the bundled SQLite (3.54) plans a
            // bound LIMIT as a constant and re-prepares the statement whenever it is bound
            // again, i.e. on every call (`sqlite3Reprepare`, ~8% of a start-up's catch-up).
            // The rowid scan yields rows one step at a time, so stopping early costs nothing.
            let mut stmt = conn.prepare_cached(READ_ALL).map_err(backend)?;
            let mut rows = stmt.query(params![clamp(after)]).map_err(backend)?;
            collect(&mut rows, limit, limit.min(READ_CAPACITY_HINT))
        })
        .await
    }

    fn read_recent(&self, after: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        lock(&self.recent).after(after, limit)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn write_failure(&self) -> Option<String> {
        lock(&self.write_failure).clone()
    }
}

/// The single owner of the write connection.
struct Writer {
    conn: Connection,
    /// Current version of recently written streams, as of the last commit (and, during a
    /// batch, including the batch's own appends so requests in one batch see each other).
    versions: HashMap<String, u64>,
    /// `PRAGMA data_version` when the cache was last known good: it changes when another
    /// connection (another process, a CLI) commits, and then the cache may lie.
    data_version: i64,
    head: u64,
    head_tx: watch::Sender<u64>,
    commits: Arc<AtomicU64>,
    /// Stopped after the connection is closed.
    checkpointer: Checkpointer,
    recent: Arc<Mutex<Recent>>,
    write_failure: Arc<Mutex<Option<String>>>,
    page_limit: Arc<AtomicU64>,
}

/// How many of the latest committed events the store keeps in memory for followers.
const RECENT_EVENTS: usize = 4096;

/// The latest events this process committed, in global order and without gaps, so that
/// followers keeping up (the projector, the relay, live streams) read them without going
/// to the database and decoding them again.
#[derive(Default)]
struct Recent {
    events: VecDeque<RecordedEvent>,
}

impl Recent {
    fn push(&mut self, event: &RecordedEvent) {
        // A gap means another process wrote in between: what is held no longer runs on.
        if let Some(last) = self.events.back() {
            if last.global_position + 1 != event.global_position {
                self.events.clear();
            }
        }
        if self.events.len() == RECENT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
    }

    /// Everything after `after` (up to `limit`), if it is all held here.
    fn after(&self, after: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        let first = self.events.front()?.global_position;
        let last = self.events.back()?.global_position;
        if after.checked_add(1)? < first || after >= last {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).ok()?;
        Some(self.events.range(skip..).take(limit).cloned().collect())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks half-way through a change.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Outcome = Result<Vec<RecordedEvent>, StoreError>;

/// The transaction under way: the replies owed, in order, and what each append came to.
#[derive(Default)]
struct Batch {
    replies: Vec<Reply>,
    outcomes: Vec<Outcome>,
    last_position: u64,
    /// Set once the transaction cannot commit: every append of the batch then fails with it.
    failed: Option<StoreError>,
}

impl Writer {
    /// The writer's loop. Each turn opens a transaction with the first waiting append and
    /// inserts appends as they arrive, then commits them all with one fsync. While it waits
    /// for more (see [`Writer::gather`]) the inserts already made are done, so the wait
    /// costs the disk nothing.
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        // Requests the last commit answered, and how long it took.
        let mut answered = 0;
        let mut last_commit = Duration::ZERO;
        let mut waiting = Vec::with_capacity(MAX_BATCH);
        loop {
            // Whatever queued up during the last commit came from other appenders than the
            // ones it answered; those tend to come straight back with their next append.
            let queued = drain(&mut rx, &mut waiting, MAX_BATCH);
            if waiting.is_empty() {
                match rx.blocking_recv() {
                    Some(first) => waiting.push(first),
                    None => break,
                }
            }
            // A few answered appenders are not worth a wait: they are as likely to be
            // sporadic writers (jobs recording progress) as a group coming back.
            let expected = if answered >= LINGER_MIN_GROUP {
                (queued + answered).min(MAX_BATCH)
            } else {
                0
            };
            let started = Instant::now();
            let mut batch = self.begin();
            for request in waiting.drain(..) {
                self.add(&mut batch, request);
            }
            let max_wait = last_commit.min(MAX_LINGER);
            self.gather(&mut rx, &mut waiting, &mut batch, expected, max_wait);
            answered = batch.replies.len();
            self.finish(batch);
            last_commit = started.elapsed();
        }
        tracing::info!(head = self.head, "embedded event store writer stopped");
        // Close the file before the head's sender goes: `closed()` waits for the latter.
        let Writer {
            conn,
            head_tx,
            checkpointer,
            ..
        } = self;
        if let Err((_, e)) = conn.close() {
            tracing::warn!(error = %e, "closing the event database failed");
        }
        checkpointer.stop();
        drop(head_tx);
    }

    /// Adds what is queued to the batch, and waits a little for the appenders the last
    /// commit answered, so that groups of appenders share commits instead of settling into
    /// alternating half-size ones (each commit costs an fsync and rewrites index pages).
    /// Stops once `expected` appends are in, when none arrived for [`LINGER_GAP`] (the
    /// answered appenders are busy elsewhere: nothing is gained by waiting), or after `max`.
    /// `arrived` is an empty vector the writer keeps, so gathering allocates nothing.
    fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<Request>,
        arrived: &mut Vec<Request>,
        batch: &mut Batch,
        expected: usize,
        max: Duration,
    ) {
        let started = Instant::now();
        let mut last_arrival = started;
        loop {
            let room = MAX_BATCH.saturating_sub(batch.replies.len());
            if drain(rx, arrived, room) > 0 {
                for request in arrived.drain(..) {
                    self.add(batch, request);
                }
                last_arrival = Instant::now();
                continue;
            }
            if batch.replies.len() >= expected || room == 0 {
                return;
            }
            let now = Instant::now();
            if now.duration_since(last_arrival) >= LINGER_GAP || now.duration_since(started) >= max
            {
                return;
            }
            std::thread::sleep(LINGER_POLL);
        }
    }

    /// Opens the batch's transaction. A failure is kept in the batch and given to each of
    /// its appends.
    fn begin(&mut self) -> Batch {
        let mut batch = Batch::default();
        let limit = self
            .page_limit
            .swap(NO_PAGE_LIMIT_CHANGE, Ordering::Relaxed);
        if limit != NO_PAGE_LIMIT_CHANGE {
            match self
                .conn
                .pragma_update_and_check(None, "max_page_count", clamp(limit), |r| {
                    r.get::<_, i64>(0)
                }) {
                Ok(pages) => tracing::warn!(pages, "event store size limit set"),
                Err(e) => tracing::error!(error = %e, "cannot set the event store's size limit"),
            }
        }
        let opened = run_cached(&self.conn, "BEGIN IMMEDIATE")
            .and_then(|()| data_version(&self.conn).map_err(|e| write_error(&e)));
        match opened {
            Ok(now) => {
                if now != self.data_version || self.versions.len() > VERSION_CACHE_LIMIT {
                    self.versions.clear();
                    self.data_version = now;
                }
            }
            Err(e) => batch.failed = Some(prefixed("cannot begin", e)),
        }
        batch
    }

    /// Checks and inserts one append inside the open transaction.
    fn add(&mut self, batch: &mut Batch, request: Request) {
        let Request {
            stream,
            expected,
            events,
            reply,
        } = request;
        batch.replies.push(reply);
        if batch.failed.is_some() {
            return;
        }
        let outcome = append_one(
            &self.conn,
            &mut self.versions,
            stream,
            expected,
            events,
            &mut batch.last_position,
        );
        // An I/O error can make SQLite roll the whole transaction back by itself; going on
        // would autocommit the rest piecemeal behind the batch's back.
        if self.conn.is_autocommit() {
            batch.failed = Some(match outcome {
                Err(e @ StoreError::Unavailable { .. }) => e,
                other => StoreError::Backend(format!(
                    "the database rolled the batch back ({})",
                    other.err().map(|e| e.to_string()).unwrap_or_default()
                )),
            });
            return;
        }
        batch.outcomes.push(outcome);
    }

    /// Commits the batch (one fsync) and answers every append in it.
    fn finish(&mut self, mut batch: Batch) {
        if batch.failed.is_none() {
            if let Err(e) = run_cached(&self.conn, "COMMIT") {
                batch.failed = Some(prefixed("commit failed", e));
            }
        }
        match batch.failed {
            None => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                {
                    let mut recent = lock(&self.recent);
                    for events in batch.outcomes.iter().flatten() {
                        for event in events {
                            recent.push(event);
                        }
                    }
                }
                if batch.last_position > self.head {
                    self.head = batch.last_position;
                    // Before the replies: whoever got an answer finds the head past it.
                    self.head_tx.send_replace(batch.last_position);
                }
                // An append of the batch may still have found no room.
                let refused = batch.outcomes.iter().find_map(|o| match o {
                    Err(StoreError::Unavailable { cause }) => Some(cause.clone()),
                    _ => None,
                });
                self.note_write(refused);
                for (reply, outcome) in batch.replies.into_iter().zip(batch.outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Some(e) => {
                if !self.conn.is_autocommit() {
                    if let Err(rollback) = run_cached(&self.conn, "ROLLBACK") {
                        tracing::error!(error = %rollback, "event store rollback failed");
                    }
                }
                // Nothing of the batch is stored; what the cache learned from it is void.
                self.versions.clear();
                tracing::error!(error = %e, requests = batch.replies.len(), "event store commit failed");
                if let StoreError::Unavailable { cause } = &e {
                    self.note_write(Some(cause.clone()));
                }
                for reply in batch.replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Writer {
    /// Records how the last commit went: `Some(cause)` while writes fail, `None` once one
    /// worked. Logged only when that changes, so a full disk does not flood the log.
    fn note_write(&self, refused: Option<String>) {
        let mut failure = lock(&self.write_failure);
        if *failure == refused {
            return;
        }
        match &refused {
            Some(cause) => tracing::error!(%cause, "event store cannot write"),
            None => tracing::info!("event store writes again"),
        }
        *failure = refused;
    }
}

/// Moves up to `room` queued requests into `into` without waiting; returns how many.
fn drain(rx: &mut mpsc::Receiver<Request>, into: &mut Vec<Request>, room: usize) -> usize {
    let mut moved = 0;
    while moved < room {
        match rx.try_recv() {
            Ok(r) => {
                into.push(r);
                moved += 1;
            }
            Err(_) => break,
        }
    }
    moved
}

/// Checks and inserts one request inside the batch transaction so that its failure leaves
/// the other requests of the batch untouched: a single INSERT undoes itself when it fails,
/// several run under a savepoint.
fn append_one(
    tx: &Connection,
    versions: &mut HashMap<String, u64>,
    stream: String,
    expected: ExpectedVersion,
    events: Vec<Prepared>,
    last_position: &mut u64,
) -> Outcome {
    let actual = match versions.get(&stream) {
        Some(v) => *v,
        None => {
            let v = stream_version(tx, &stream).map_err(|e| write_error(&e))?;
            versions.insert(stream.clone(), v);
            v
        }
    };
    if !expected.matches(actual) {
        return Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        });
    }
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // One INSERT that fails undoes itself; several need a savepoint to go back to.
    let savepoint = events.len() > 1;
    if savepoint {
        run_cached(tx, "SAVEPOINT append")?;
    }
    let inserted = insert_events(tx, &stream, actual, &events);
    match inserted {
        Ok(positions) => {
            if savepoint {
                run_cached(tx, "RELEASE append")?;
            }
            versions.insert(stream.clone(), actual + events.len() as u64);
            if let Some(&p) = positions.last() {
                *last_position = (*last_position).max(p);
            }
            Ok(events
                .into_iter()
                .zip(positions)
                .enumerate()
                .map(|(i, (p, position))| RecordedEvent {
                    event_id: p.event.event_id,
                    stream_id: stream.clone(),
                    version: actual + i as u64 + 1,
                    global_position: position,
                    recorded_at: p.event.recorded_at,
                    schema_version: CURRENT_SCHEMA_VERSION,
                    metadata: p.event.metadata,
                    event: p.event.event,
                })
                .collect())
        }
        Err(e) => {
            // A full disk or an I/O error may have rolled the whole transaction back, and
            // the savepoint with it: then there is nothing to go back to.
            if savepoint && !tx.is_autocommit() {
                run_cached(tx, "ROLLBACK TO append")?;
                run_cached(tx, "RELEASE append")?;
            }
            if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
                // Someone the cache did not know about holds this version.
                let actual = stream_version(tx, &stream).map_err(backend)?;
                versions.insert(stream.clone(), actual);
                tracing::warn!(%stream, actual, "version cache was stale; the unique index caught it");
                Err(StoreError::Conflict {
                    stream,
                    expected,
                    actual,
                })
            } else {
                Err(write_error(&e))
            }
        }
    }
}

fn insert_events(
    tx: &Connection,
    stream: &str,
    actual: u64,
    events: &[Prepared],
) -> Result<Vec<u64>, rusqlite::Error> {
    let mut stmt = tx.prepare_cached(INSERT_EVENT)?;
    let mut positions = Vec::with_capacity(events.len());
    for (i, p) in events.iter().enumerate() {
        let m = &p.event.metadata;
        stmt.execute(params![
            stream,
            clamp(actual + i as u64 + 1),
            p.event.event_id.to_string(),
            p.event.event.event_type(),
            CURRENT_SCHEMA_VERSION,
            p.data,
            p.recorded_at,
            m.causation_id.map(|u| u.to_string()),
            m.correlation_id.map(|u| u.to_string()),
            m.caused_by,
        ])?;
        positions.push(u64::try_from(tx.last_insert_rowid()).unwrap_or(0));
    }
    Ok(positions)
}

/// Runs a parameterless statement, prepared once per connection (the writer's).
fn run_cached(tx: &Connection, sql: &str) -> Result<(), StoreError> {
    tx.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .map_err(|e| write_error(&e))
}

fn stream_version(conn: &Connection, stream: &str) -> Result<u64, rusqlite::Error> {
    conn.prepare_cached(STREAM_VERSION)?
        .query_row([stream], |r| get_u64(r, 0))
}

fn data_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let fail = |e: rusqlite::Error| sql_error(path, &e);
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(fail)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "{}: the database refused WAL mode (got {mode})",
            path.display()
        )));
    }
    // FULL: a commit is fsynced before it returns, so an acknowledged append survives a
    // power cut, not only a crash of this process.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(fail)?;
    let layout: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    if layout > DB_LAYOUT_VERSION {
        return Err(StoreError::Backend(format!(
            "{}: the database layout {layout} is newer than this build understands ({DB_LAYOUT_VERSION})",
            path.display()
        )));
    }
    conn.execute_batch(SCHEMA).map_err(fail)?;
    if layout < DB_LAYOUT_VERSION {
        conn.pragma_update(None, "user_version", DB_LAYOUT_VERSION)
            .map_err(fail)?;
    }
    Ok(conn)
}

/// Read connections, opened on demand and kept for reuse.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    /// Runs `f` on an idle connection (or a new one). Blocking: call on the blocking pool.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => open_reader(&self.path).map_err(|e| sql_error(&self.path, &e))?,
        };
        let result = f(&conn);
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        result
    }
}

impl Drop for ReadPool {
    /// Closing a connection can checkpoint the WAL (file I/O), so when the last handle to
    /// the store goes away on an async worker, the closing happens on the blocking pool.
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        if idle.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || drop(idle));
            }
            Err(_) => drop(idle),
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Readers never write, whatever a bug might ask of them.
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Decodes up to `limit` rows, with room for `expected` reserved up front.
fn collect(
    rows: &mut rusqlite::Rows<'_>,
    limit: usize,
    expected: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut out = Vec::with_capacity(expected);
    while out.len() < limit {
        let Some(row) = rows.next().map_err(backend)? else {
            break;
        };
        out.push(decode_row(row)?);
    }
    Ok(out)
}

/// Rebuilds the envelope of one stored row; anything unreadable names the row's position.
///
/// Only what the envelope keeps is copied out of SQLite (the stream id and `caused_by`);
/// the other text columns are parsed where SQLite holds them: a start-up decodes every row
/// of the log, and allocations were a sixth of its CPU.
fn decode_row(row: &Row<'_>) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.get(0).map_err(backend)?;
    let position = u64::try_from(position).unwrap_or(0);
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let stream_id: String = row
        .get(1)
        .map_err(|e| corrupt(format!("stream id unreadable: {e}")))?;
    let version = get_u64(row, 2)
        .map_err(|e| corrupt(format!("stream {stream_id}: version unreadable: {e}")))?;
    let at = |what: &str, e: &dyn std::fmt::Display| {
        corrupt(format!("stream {stream_id} version {version}: {what}: {e}"))
    };
    let event_id = text(row, 3).map_err(|e| at("event id unreadable", &e))?;
    let event_id = Uuid::try_parse(event_id).map_err(|e| at("event id is no uuid", &e))?;
    let event_type = text(row, 4).map_err(|e| at("event type unreadable", &e))?;
    let schema_version: u32 = row
        .get(5)
        .map_err(|e| at("schema version unreadable", &e))?;
    let data = text(row, 6).map_err(|e| at("body unreadable", &e))?;
    let event = Event::from_stored_as(schema_version, event_type, data)
        .map_err(|e| at(&format!("{event_type} body does not decode"), &e))?;
    if event.event_type() != event_type {
        return Err(at(
            "event type column disagrees with the body",
            &format!("{event_type} != {}", event.event_type()),
        ));
    }
    let recorded_at = text(row, 7).map_err(|e| at("recorded_at unreadable", &e))?;
    let recorded_at = crate::time::parse_stored(recorded_at)
        .map_err(|e| at("recorded_at is no RFC 3339 time", &e))?;
    let uuid_at = |i: usize, what: &str| -> Result<Option<Uuid>, StoreError> {
        let raw = optional_text(row, i).map_err(|e| at(what, &e))?;
        raw.map(|s| Uuid::try_parse(s).map_err(|e| at(what, &e)))
            .transpose()
    };
    let causation_id = uuid_at(8, "causation id")?;
    let correlation_id = uuid_at(9, "correlation id")?;
    let caused_by: String = row.get(10).map_err(|e| at("caused_by unreadable", &e))?;
    Ok(RecordedEvent {
        event_id,
        stream_id,
        version,
        global_position: position,
        recorded_at,
        schema_version,
        metadata: Metadata {
            causation_id,
            correlation_id,
            caused_by,
        },
        event,
    })
}

/// A TEXT column borrowed from SQLite (valid only until the row moves on).
fn text<'r>(row: &'r Row<'_>, i: usize) -> Result<&'r str, rusqlite::Error> {
    let value = row.get_ref(i)?;
    value
        .as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e)))
}

/// A nullable TEXT column borrowed from SQLite.
fn optional_text<'r>(row: &'r Row<'_>, i: usize) -> Result<Option<&'r str>, rusqlite::Error> {
    let value = row.get_ref(i)?;
    value
        .as_str_or_null()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e)))
}

/// An INTEGER column that must not be negative (SQLite integers are signed).
fn get_u64(row: &Row<'_>, i: usize) -> Result<u64, rusqlite::Error> {
    let n: i64 = row.get(i)?;
    u64::try_from(n).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Integer, Box::new(e))
    })
}

/// SQLite integers are i64; positions and versions never get near the limit.
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A failed write: [`StoreError::Unavailable`] when SQLite could not write at all (what an
/// operator fixes: space, the disk, permissions, another process's lock), with a fixed,
/// path-free cause for clients; anything else stays a backend error. The full error is
/// logged here, since the cause leaves out SQLite's own message.
fn write_error(e: &rusqlite::Error) -> StoreError {
    let cause = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "database or disk is full",
        Some(ErrorCode::SystemIoFailure) => "disk I/O error",
        Some(ErrorCode::ReadOnly) => "the database is read-only",
        Some(ErrorCode::CannotOpen) => "unable to open the database file",
        Some(ErrorCode::PermissionDenied) => "access permission denied",
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "the database is locked by another process"
        }
        _ => return StoreError::Backend(e.to_string()),
    };
    tracing::warn!(error = %e, "event store write failed");
    StoreError::Unavailable {
        cause: cause.to_owned(),
    }
}

/// Adds where a backend error happened; a cause meant for clients stays as it is.
fn prefixed(context: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Backend(m) => StoreError::Backend(format!("{context}: {m}")),
        other => other,
    }
}

fn sql_error(path: &Path, e: &rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: std::os::raw::c_int, message: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(message.to_owned()))
    }

    #[test]
    fn writes_sqlite_cannot_make_are_unavailable_with_a_cause_that_names_no_file() {
        for (code, cause) in [
            (ffi::SQLITE_FULL, "database or disk is full"),
            (ffi::SQLITE_IOERR_WRITE, "disk I/O error"),
            (ffi::SQLITE_IOERR_FSYNC, "disk I/O error"),
            (ffi::SQLITE_READONLY, "the database is read-only"),
            (ffi::SQLITE_CANTOPEN, "unable to open the database file"),
            (
                ffi::SQLITE_BUSY,
                "the database is locked by another process",
            ),
        ] {
            let e = write_error(&failure(code, "disk trouble at /srv/secret/events.db"));
            assert!(
                matches!(&e, StoreError::Unavailable { cause: c } if c == cause),
                "{code}: {e:?}"
            );
            assert!(!e.to_string().contains("/srv"), "{e}");
        }
        let other = write_error(&failure(ffi::SQLITE_MISMATCH, "datatype mismatch"));
        assert!(matches!(other, StoreError::Backend(_)), "{other:?}");
    }
}
