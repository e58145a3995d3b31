//! [`PgStore`]: the EventStore on PostgreSQL. See the crate docs for the method.

use crate::error::{connection_gone, pool_error, store_error};
use crate::writer::{Prepared, Request};
use crate::{lease, listen, migrate, writer};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::events::{Event, Metadata, NewEvent, RecordedEvent};
use syncjobs_domain::redact::redact;
use syncjobs_domain::store::LeaseTry;
use syncjobs_domain::{EventStore, ExpectedVersion, StoreError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{NoTls, Row};
use tokio_util::sync::CancellationToken;

pub(crate) const HEAD: &str = include_str!("sql/head.sql");
const READ_ALL: &str = include_str!("sql/read_all.sql");
const READ_STREAM: &str = include_str!("sql/read_stream.sql");

/// Connections a node keeps to the database (besides the listener's).
pub const POOL_SIZE: usize = 8;

/// How long each kind of wait on the database may last before it fails as
/// [`StoreError::Unavailable`]: a request never hangs on a database that is away, whether
/// it refuses connections, drops them, or (a network partition, a frozen server) accepts
/// and then answers nothing, which TCP alone would notice only after many minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection, the startup handshake included.
    pub connect: Duration,
    /// Waiting for a pooled connection while all are busy.
    pub pool_wait: Duration,
    /// One read, or one append's commit (its outcome is then unknown, as with a connection
    /// lost during `COMMIT`). The connection is closed, never reused.
    pub operation: Duration,
    /// How often the listener proves its idle connection alive (a notification is only
    /// missed silently on a connection that died without a word).
    pub listener_check: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            pool_wait: Duration::from_secs(10),
            operation: Duration::from_secs(10),
            listener_check: Duration::from_secs(5),
        }
    }
}

/// TCP keepalives on every connection: a peer that vanished is noticed by the kernel too.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// tokio-postgres's (and libpq's) keepalive idle time, which [`tune`] replaces.
const LIBPQ_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// Appends that may wait for the writer before appenders wait in turn (backpressure).
const QUEUE_CAPACITY: usize = 4 * writer::MAX_BATCH;

/// What the writer, the listener and the store share.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) timeouts: Timeouts,
    head: watch::Sender<u64>,
    /// The cause of the last failed write, until a commit succeeds.
    failure: Mutex<Option<String>>,
    /// Whether the listener is listening (false while it reconnects).
    pub(crate) listening: watch::Sender<bool>,
    /// Why the listener cannot listen, while it cannot (set once a reconnect fails, so a
    /// lost connection that is made again at once never shows).
    pub(crate) unreachable: Mutex<Option<String>>,
    /// The connection settings, for the connections of the node's own (leases).
    pub(crate) config: tokio_postgres::Config,
    /// Standbys' lease connections, kept for their next try.
    pub(crate) standbys: crate::lease::Standbys,
    /// This node's latest commits, one run of consecutive positions (see
    /// [`Shared::remember`]).
    recent: Mutex<VecDeque<RecordedEvent>>,
}

/// The most events of this node's own commits kept for followers keeping up.
const RECENT_EVENTS: usize = 1024;

impl Shared {
    /// Every position up to `position` is committed (appends commit in position order).
    pub(crate) fn committed(&self, position: u64) {
        self.head.send_if_modified(|head| {
            let newer = position > *head;
            if newer {
                *head = position;
            }
            newer
        });
    }

    /// Keeps events this node has just committed, in position order, for
    /// [`EventStore::read_recent`]: a follower keeping up (this node's projector, its
    /// supervisor, its event streams) gets them without a read, a round trip on the way of
    /// every command that waits for its own event to be folded (bench #14). Positions are
    /// dense (see the crate docs), so a run of consecutive positions held here is exactly
    /// what a read of the log would return for it; an event that does not follow the last
    /// one held (another node committed between) starts a new run.
    pub(crate) fn remember(&self, events: Vec<RecordedEvent>) {
        if events.is_empty() {
            return;
        }
        let mut recent = lock(&self.recent);
        for e in events {
            if recent
                .back()
                .is_some_and(|last| last.global_position + 1 != e.global_position)
            {
                recent.clear();
            }
            recent.push_back(e);
        }
        while recent.len() > RECENT_EVENTS {
            recent.pop_front();
        }
    }

    /// Up to `limit` of the events after `after`, if those held here start right after it.
    fn recent_after(&self, after: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        let recent = lock(&self.recent);
        let first = recent.front()?.global_position;
        let last = recent.back()?.global_position;
        if after + 1 < first || after >= last {
            return None;
        }
        let from = usize::try_from(after + 1 - first).ok()?;
        Some(recent.iter().skip(from).take(limit).cloned().collect())
    }

    /// This node's commit succeeded: writes work (again).
    pub(crate) fn wrote(&self) {
        *lock(&self.failure) = None;
    }

    pub(crate) fn failed(&self, e: &StoreError) {
        if let StoreError::Unavailable { cause } = e {
            *lock(&self.failure) = Some(cause.clone());
        }
    }

    /// The stream's current version (0: no events).
    pub(crate) async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(|e| pool_error(&e))?;
        let row = bounded(self.timeouts.operation, client, async |client| {
            client
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM syncjobs_events WHERE stream_id = $1",
                    &[&stream],
                )
                .await
        })
        .await?
        .map_err(|e| store_error(&e))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}

/// What a client sees when the database did not answer in time.
pub(crate) fn timed_out(limit: Duration) -> StoreError {
    tracing::warn!(
        ?limit,
        "event store unavailable: the database did not answer in time"
    );
    StoreError::Unavailable {
        cause: format!("the database did not answer within {} s", limit.as_secs()),
    }
}

/// Runs `op` on a pooled connection for at most `limit`. Past it the connection is closed
/// (taken out of the pool, never handed out again: it may be stuck mid-statement) and the
/// wait fails as unavailable.
pub(crate) async fn bounded<T>(
    limit: Duration,
    client: deadpool_postgres::Object,
    op: impl AsyncFnOnce(&deadpool_postgres::ClientWrapper) -> T,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, op(&client)).await {
        Ok(done) => Ok(done),
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(timed_out(limit))
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A runtime of a component's own (the store, the destination, the read model), shut down
/// without waiting when the component goes (dropping a runtime from async code would panic).
pub struct OwnRuntime(pub Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The EventStore on PostgreSQL. Open with [`PgStore::connect`] (async) or
/// [`PgStore::open`] (blocking); dropping the last handle closes it.
pub struct PgStore {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    head: watch::Receiver<u64>,
    stop: CancellationToken,
    handle: tokio::runtime::Handle,
    // Last: dropped after everything that runs on it.
    _runtime: OwnRuntime,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Whether opening may create the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Create it, or bring it up to this build's (`serve`, `keys create`).
    Migrate,
    /// It must be there already; nothing is created (the reading commands).
    MustExist,
}

struct Started {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    stop: CancellationToken,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), brings the schema up to date and
    /// starts the writer and the listener. Works from any runtime, or none is needed
    /// beyond the caller's: the store drives its connections on threads of its own.
    pub async fn connect(url: &str) -> Result<Arc<PgStore>, StoreError> {
        PgStore::connect_with(url, Timeouts::default()).await
    }

    /// [`PgStore::connect`] with waits of other lengths than the defaults.
    pub async fn connect_with(url: &str, timeouts: Timeouts) -> Result<Arc<PgStore>, StoreError> {
        let runtime = OwnRuntime(Some(build_runtime()?));
        let handle = runtime_handle(&runtime)?;
        let url = url.to_owned();
        let started = handle
            .spawn(start(url, Schema::Migrate, timeouts))
            .await
            .map_err(join_error)??;
        Ok(Arc::new(PgStore::assemble(started, handle, runtime)))
    }

    /// [`PgStore::connect`] for callers that may block (start-up, the CLI), from inside a
    /// runtime or not; with [`Schema::MustExist`] a database without the store's schema is
    /// refused, and nothing is created in it.
    pub fn open(url: &str, schema: Schema) -> Result<Arc<PgStore>, StoreError> {
        let runtime = OwnRuntime(Some(build_runtime()?));
        let handle = runtime_handle(&runtime)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let url = url.to_owned();
        handle.spawn(async move {
            let _ = tx.send(start(url, schema, Timeouts::default()).await);
        });
        let started = rx.recv().map_err(|_| StoreError::Closed)??;
        Ok(Arc::new(PgStore::assemble(started, handle, runtime)))
    }

    fn assemble(started: Started, handle: tokio::runtime::Handle, runtime: OwnRuntime) -> Self {
        PgStore {
            head: started.shared.head.subscribe(),
            shared: started.shared,
            requests: started.requests,
            stop: started.stop,
            handle,
            _runtime: runtime,
        }
    }

    /// Runs `f` on the store's runtime, where its connections live.
    async fn on_runtime<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.handle.spawn(f).await.map_err(join_error)?
    }

    async fn query(
        &self,
        sql: &'static str,
        stream: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let pool = self.shared.pool.clone();
        let bound = self.shared.timeouts.operation;
        self.on_runtime(async move {
            let (after, count) = (clamp(after), clamp(limit as u64));
            // A read on a connection the server has closed is simply made again on the
            // next one (see the writer); the pool's size bounds the tries.
            let mut tries = 0;
            let rows = loop {
                let client = pool.get().await.map_err(|e| pool_error(&e))?;
                let read = bounded(bound, client, async |client| {
                    let statement = client.prepare_cached(sql).await?;
                    match &stream {
                        Some(stream) => client.query(&statement, &[stream, &after]).await,
                        None => client.query(&statement, &[&after, &count]).await,
                    }
                })
                .await?;
                match read {
                    Err(e) if connection_gone(&e) && tries < POOL_SIZE => tries += 1,
                    read => break read.map_err(|e| store_error(&e))?,
                }
            };
            // Collected into a vector of the exact size: a `Result` collect grows it by
            // doubling, and each regrowth moved every event read so far (344 bytes each).
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                decode_row_into(row, &mut events)?;
            }
            Ok(events)
        })
        .await
    }
}

pub(crate) fn build_runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("syncjobs-pg")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot start the PostgreSQL threads: {e}")))
}

pub(crate) fn runtime_handle(rt: &OwnRuntime) -> Result<tokio::runtime::Handle, StoreError> {
    rt.0.as_ref()
        .map(|rt| rt.handle().clone())
        .ok_or(StoreError::Closed)
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> StoreError {
    if e.is_cancelled() {
        StoreError::Closed
    } else {
        StoreError::Backend(format!("event store task failed: {e}"))
    }
}

/// What the URL leaves unset, set so that a vanished peer is noticed: a bound on connecting,
/// TCP keepalives (libpq's defaults wait two hours), a bound on unacknowledged sends, and a
/// server-side end to a session left idle inside a transaction, since an append transaction
/// holds the append lock and a node cut off mid-append must not hold every other node's
/// appends for long.
pub fn tune(config: &mut tokio_postgres::Config, timeouts: &Timeouts) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeouts.connect);
    }
    if config.get_keepalives() {
        if config.get_keepalives_idle() == LIBPQ_KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(timeouts.operation);
    }
    let options = config.get_options().unwrap_or("").to_owned();
    if !options.contains("idle_in_transaction_session_timeout") {
        let idle = 2 * timeouts.operation.as_millis().max(1);
        config.options(
            format!("{options} -c idle_in_transaction_session_timeout={idle}").trim_start(),
        );
    }
}

/// The connection settings of `url`, with the bounds every connection of this crate has.
pub(crate) fn parse_config(
    url: &str,
    timeouts: &Timeouts,
) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        StoreError::Backend(format!("not a PostgreSQL URL: {}", redact(&e.to_string())))
    })?;
    tune(&mut config, timeouts);
    if config.get_application_name().is_none() {
        config.application_name("syncjobs");
    }
    Ok(config)
}

/// A pool of up to `size` connections; waiting for one and making one are bounded, so a
/// request fails as unavailable rather than hang on a database that is away.
pub(crate) fn build_pool(
    config: &tokio_postgres::Config,
    size: usize,
    timeouts: &Timeouts,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeouts.pool_wait))
        .create_timeout(Some(timeouts.connect))
        .recycle_timeout(Some(timeouts.connect))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Backend(format!("PostgreSQL pool: {e}")))
}

/// On the store's runtime: the pool, the schema, the head, the writer and the listener.
async fn start(url: String, schema: Schema, timeouts: Timeouts) -> Result<Started, StoreError> {
    let config = parse_config(&url, &timeouts)?;
    let pool = build_pool(&config, POOL_SIZE, &timeouts)?;
    let head = {
        let mut client = pool.get().await.map_err(|e| pool_error(&e))?;
        match schema {
            Schema::Migrate => {
                migrate::migrate(&mut client).await?;
            }
            Schema::MustExist => migrate::require(&client).await?,
        }
        listen::head(&client).await.map_err(|e| store_error(&e))?
    };
    let shared = Arc::new(Shared {
        pool,
        timeouts,
        head: watch::channel(head).0,
        failure: Mutex::new(None),
        listening: watch::channel(false).0,
        unreachable: Mutex::new(None),
        config: config.clone(),
        standbys: Default::default(),
        recent: Default::default(),
    });
    let (requests, rx) = mpsc::channel(QUEUE_CAPACITY);
    let stop = CancellationToken::new();
    tokio::spawn(writer::run(shared.clone(), rx));
    tokio::spawn(listen::run(shared.clone(), config, stop.clone()));
    // Ready once other nodes' commits wake this one's followers.
    let mut listening = shared.listening.subscribe();
    if tokio::time::timeout(timeouts.connect, listening.wait_for(|l| *l))
        .await
        .is_err()
    {
        tracing::warn!("event store listener is not listening yet; it keeps trying");
    }
    Ok(Started {
        shared,
        requests,
        stop,
    })
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = events
            .into_iter()
            .map(prepare)
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        let appended = answer.await.map_err(|_| StoreError::Closed)?;
        if appended.is_ok() {
            self.shared.wrote();
        }
        appended
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.query(READ_STREAM, Some(stream.to_owned()), after, 0)
            .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.query(READ_ALL, None, after, limit).await
    }

    fn read_recent(&self, after: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        self.shared.recent_after(after, limit)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn write_failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }

    fn connection_failure(&self) -> Option<String> {
        lock(&self.shared.unreachable).clone()
    }

    /// An upsert of the worker's row; a beat older than the stored one (a retry that lost a
    /// race) leaves it as it is.
    async fn heartbeat(
        &self,
        worker: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        let pool = self.shared.pool.clone();
        let bound = self.shared.timeouts.operation;
        let worker = worker.to_owned();
        self.on_runtime(async move {
            let client = pool.get().await.map_err(|e| pool_error(&e))?;
            bounded(bound, client, async |client| {
                client
                    .execute(
                        "INSERT INTO syncjobs_worker_heartbeats (worker, seen_at) VALUES ($1, $2) \
                         ON CONFLICT (worker) DO UPDATE SET seen_at = \
                         GREATEST(syncjobs_worker_heartbeats.seen_at, EXCLUDED.seen_at)",
                        &[&worker, &at],
                    )
                    .await
            })
            .await?
            .map_err(|e| store_error(&e))?;
            Ok(())
        })
        .await
    }

    /// A session advisory lock on a connection of the lease's own: see [`crate::lease`].
    async fn try_lease(&self, duty: &str, holder: &str) -> Result<LeaseTry, StoreError> {
        let (shared, duty, holder) = (self.shared.clone(), duty.to_owned(), holder.to_owned());
        self.on_runtime(lease::try_lease(shared, duty, holder))
            .await
    }

    async fn forget_heartbeat(&self, worker: &str) -> Result<(), StoreError> {
        let pool = self.shared.pool.clone();
        let bound = self.shared.timeouts.operation;
        let worker = worker.to_owned();
        self.on_runtime(async move {
            let client = pool.get().await.map_err(|e| pool_error(&e))?;
            bounded(bound, client, async |client| {
                client
                    .execute(
                        "DELETE FROM syncjobs_worker_heartbeats WHERE worker = $1",
                        &[&worker],
                    )
                    .await
            })
            .await?
            .map_err(|e| store_error(&e))?;
            Ok(())
        })
        .await
    }

    async fn heartbeats(&self) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StoreError> {
        let pool = self.shared.pool.clone();
        let bound = self.shared.timeouts.operation;
        self.on_runtime(async move {
            let client = pool.get().await.map_err(|e| pool_error(&e))?;
            let rows = bounded(bound, client, async |client| {
                client
                    .query(
                        "SELECT worker, seen_at FROM syncjobs_worker_heartbeats",
                        &[],
                    )
                    .await
            })
            .await?
            .map_err(|e| store_error(&e))?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<_, String>(0).map_err(|e| store_error(&e))?,
                        r.try_get::<_, chrono::DateTime<chrono::Utc>>(1)
                            .map_err(|e| store_error(&e))?,
                    ))
                })
                .collect()
        })
        .await
    }
}

/// Serialises the body off the writer, which then does nothing but database work.
fn prepare(event: NewEvent) -> Result<Prepared, StoreError> {
    let data = event
        .event
        .to_json()
        .map_err(|e| StoreError::Backend(format!("cannot serialise the event: {e}")))?;
    let recorded_at_ns = event.recorded_at.timestamp_nanos_opt().ok_or_else(|| {
        StoreError::Backend(format!(
            "recorded_at {} is out of the storable range",
            event.recorded_at
        ))
    })?;
    Ok(Prepared {
        event,
        data,
        recorded_at_ns,
    })
}

/// Rebuilds the envelope of one stored row onto `events`; anything unreadable names the
/// row's position. Pushed here rather than returned: each return and `?` of the 344-byte
/// event was one more copy of it.
fn decode_row_into(row: &Row, events: &mut Vec<RecordedEvent>) -> Result<(), StoreError> {
    let position: i64 = row.try_get(0).map_err(|e| store_error(&e))?;
    let position = u64::try_from(position).unwrap_or(0);
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let stream_id: String = row
        .try_get(1)
        .map_err(|e| corrupt(format!("stream id unreadable: {e}")))?;
    let at =
        |what: &str, e: &dyn std::fmt::Display| corrupt(format!("stream {stream_id}: {what}: {e}"));
    let version: i64 = row.try_get(2).map_err(|e| at("version unreadable", &e))?;
    let version = u64::try_from(version).map_err(|e| at("negative version", &e))?;
    let event_id = row.try_get(3).map_err(|e| at("event id unreadable", &e))?;
    let event_type: &str = row
        .try_get(4)
        .map_err(|e| at("event type unreadable", &e))?;
    let schema_version: i32 = row
        .try_get(5)
        .map_err(|e| at("schema version unreadable", &e))?;
    let schema_version =
        u32::try_from(schema_version).map_err(|e| at("negative schema version", &e))?;
    let data: &str = row.try_get(6).map_err(|e| at("body unreadable", &e))?;
    let event = Event::from_stored_as(schema_version, event_type, data)
        .map_err(|e| at(&format!("{event_type} body does not decode"), &e))?;
    if event.event_type() != event_type {
        return Err(at(
            "event type column disagrees with the body",
            &format!("{event_type} != {}", event.event_type()),
        ));
    }
    let ns: i64 = row
        .try_get(7)
        .map_err(|e| at("recorded_at unreadable", &e))?;
    let metadata = Metadata {
        causation_id: row.try_get(8).map_err(|e| at("causation id", &e))?,
        correlation_id: row.try_get(9).map_err(|e| at("correlation id", &e))?,
        caused_by: row
            .try_get(10)
            .map_err(|e| at("caused_by unreadable", &e))?,
    };
    events.push(RecordedEvent {
        event_id,
        stream_id,
        version,
        global_position: position,
        recorded_at: DateTime::<Utc>::from_timestamp_nanos(ns),
        schema_version,
        metadata,
        event,
    });
    Ok(())
}

/// Positions and versions never get near `i64::MAX`.
pub(crate) fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
