//! The embedded EventStore: one SQLite file (`events.db`) in WAL mode, the service's default.
//!
//! Writes go through ONE dedicated writer thread that owns the write connection and
//! group-commits: it takes every queued append (up to [`MAX_BATCH`]), checks each one's
//! expected version, inserts the winners in a single transaction and commits once, so one
//! fsync (`synchronous=FULL`) makes a whole batch durable. Throughput therefore grows with
//! the number of concurrent appenders instead of being capped at one fsync per append.
//!
//! Reads use a small pool of separate connections on tokio's blocking pool; in WAL mode they
//! read a committed snapshot and never wait for the writer.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, Row, TransactionBehavior};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
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

/// Room reserved up front for a read's rows (more grows the vector as usual).
const READ_CAPACITY_HINT: usize = 4096;

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
    dir: PathBuf,
}

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
        let conn = open_writer(&path)?;
        let head = conn
            .query_row(HEAD, [], |r| get_u64(r, 0))
            .map_err(|e| sql_error(&path, &e))?;
        let data_version = data_version(&conn).map_err(|e| sql_error(&path, &e))?;

        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (head_tx, head_rx) = watch::channel(head);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            conn,
            versions: HashMap::new(),
            data_version,
            head,
            head_tx,
            commits: commits.clone(),
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
            dir: dir.to_owned(),
        }))
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
                let recorded_at = format_time(&event.recorded_at);
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
            collect(&mut rows, usize::MAX)
        })
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(move |conn| {
            // The limit is applied here, not as `LIMIT ?`: SQLite (3.46+) plans a bound
            // LIMIT as a constant and re-prepares the statement whenever it is bound again,
            // i.e. on every call (`sqlite3Reprepare`, ~8% of a start-up's catch-up). The
            // rowid scan yields rows one step at a time, so stopping early costs nothing.
            let mut stmt = conn.prepare_cached(READ_ALL).map_err(backend)?;
            let mut rows = stmt.query(params![clamp(after)]).map_err(backend)?;
            collect(&mut rows, limit)
        })
        .await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn backend(&self) -> &'static str {
        "embedded"
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
}

type Outcome = Result<Vec<RecordedEvent>, StoreError>;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        tracing::info!(head = self.head, "embedded event store writer stopped");
        // Close the file before the head's sender goes: `closed()` waits for the latter.
        let Writer { conn, head_tx, .. } = self;
        if let Err((_, e)) = conn.close() {
            tracing::warn!(error = %e, "closing the event database failed");
        }
        drop(head_tx);
    }

    fn commit_batch(&mut self, batch: &mut Vec<Request>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut work = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            replies.push(r.reply);
            work.push((r.stream, r.expected, r.events));
        }
        match self.write(work) {
            Ok((outcomes, last_position)) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                if last_position > self.head {
                    self.head = last_position;
                    // Before the replies: whoever got an answer finds the head past it.
                    self.head_tx.send_replace(last_position);
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                // Nothing of the batch is stored; what the cache learned from it is void.
                self.versions.clear();
                tracing::error!(error = %e, requests = replies.len(), "event store commit failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(format!("commit failed: {e}"))));
                }
            }
        }
    }

    /// Runs one transaction for the whole batch. Err means nothing was committed.
    fn write(
        &mut self,
        work: Vec<(String, ExpectedVersion, Vec<Prepared>)>,
    ) -> Result<(Vec<Outcome>, u64), String> {
        let Writer {
            conn,
            versions,
            data_version: known,
            ..
        } = self;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| format!("cannot begin: {e}"))?;
        let now = data_version(&tx).map_err(|e| e.to_string())?;
        if now != *known || versions.len() > VERSION_CACHE_LIMIT {
            versions.clear();
            *known = now;
        }
        let mut outcomes = Vec::with_capacity(work.len());
        let mut last_position = 0;
        for (stream, expected, events) in work {
            let outcome = append_one(&tx, versions, stream, expected, events, &mut last_position);
            // An I/O error can make SQLite roll the whole transaction back by itself; going
            // on would autocommit the rest piecemeal behind the batch's back.
            if tx.is_autocommit() {
                return Err(format!(
                    "the database rolled the batch back ({})",
                    outcome.err().map(|e| e.to_string()).unwrap_or_default()
                ));
            }
            outcomes.push(outcome);
        }
        tx.commit().map_err(|e| e.to_string())?;
        // Our own commit changes no other connection's view, so data_version is unchanged.
        Ok((outcomes, last_position))
    }
}

/// Checks and inserts one request inside the batch transaction, under its own savepoint so
/// that its failure leaves the other requests of the batch untouched.
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
            let v = stream_version(tx, &stream).map_err(backend)?;
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
    tx.execute_batch("SAVEPOINT append").map_err(backend)?;
    let inserted = insert_events(tx, &stream, actual, &events);
    match inserted {
        Ok(positions) => {
            tx.execute_batch("RELEASE append").map_err(backend)?;
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
            tx.execute_batch("ROLLBACK TO append; RELEASE append")
                .map_err(backend)?;
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
                Err(backend(e))
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

fn stream_version(conn: &Connection, stream: &str) -> Result<u64, rusqlite::Error> {
    conn.prepare_cached(STREAM_VERSION)?
        .query_row([stream], |r| get_u64(r, 0))
}

fn data_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.pragma_query_value(None, "data_version", |r| r.get(0))
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

fn collect(rows: &mut rusqlite::Rows<'_>, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut out = Vec::with_capacity(limit.min(READ_CAPACITY_HINT));
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
    let recorded_at = super::time::parse_stored(recorded_at)
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

/// Full precision, fixed width, UTC: the stored text parses back to the identical instant.
fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
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

fn sql_error(path: &Path, e: &rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()))
}
