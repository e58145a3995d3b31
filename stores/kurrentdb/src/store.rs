//! [`KurrentStore`]: the EventStore on KurrentDB. See the crate docs for the mapping.

use crate::codec::{self, Stored};
use crate::config::{self, Scope};
use crate::error::{client_is_dead, store_error};
use crate::watch;
use async_trait::async_trait;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, Position, ReadAllOptions, ReadStream,
    ReadStreamOptions, ResolvedEvent, StreamPosition,
};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::events::{NewEvent, RecordedEvent};
use syncjobs_domain::{EventStore, ExpectedVersion, StoreError};
use tokio::sync::watch as tokio_watch;
use tokio_util::sync::CancellationToken;

/// The longest a call may take before it fails as unavailable: a request never hangs on a
/// server that is away (the client bounds appends at 10 s itself, but not reads).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs aws-lc-rs (the provider the `kurrentdb` client links) as the process's rustls
/// crypto provider, unless one is installed already. With async-nats' `ring` in the same
/// build, rustls cannot choose by itself, and building a TLS configuration (NATS over TLS,
/// or this client) without one panics: call this first thing in `main`.
pub fn install_crypto_provider() {
    // An error means a provider is installed already: that one stays.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The client, with a generation so that a dead one is replaced once, not once per caller.
struct Conn {
    generation: u64,
    client: Client,
}

/// What the store and its watcher share.
pub(crate) struct Shared {
    settings: ClientSettings,
    pub(crate) scope: Scope,
    handle: tokio::runtime::Handle,
    conn: Mutex<Conn>,
    head: tokio_watch::Sender<u64>,
    /// The cause of the last failed write, until an append succeeds.
    failure: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new(
        settings: ClientSettings,
        scope: Scope,
        handle: tokio::runtime::Handle,
    ) -> Result<Shared, StoreError> {
        let client = Client::with_runtime_handle(handle.clone(), settings.clone())
            .map_err(|e| StoreError::Backend(format!("KurrentDB client: {e}")))?;
        Ok(Shared {
            settings,
            scope,
            handle,
            conn: Mutex::new(Conn {
                generation: 0,
                client,
            }),
            head: tokio_watch::channel(0).0,
            failure: Mutex::new(None),
        })
    }

    pub(crate) fn client(&self) -> (u64, Client) {
        let conn = lock(&self.conn);
        (conn.generation, conn.client.clone())
    }

    /// Replaces the client of `generation` after it died (a failed connect): the
    /// `kurrentdb` client never recovers from one by itself.
    pub(crate) fn replace_dead(&self, generation: u64) {
        let mut conn = lock(&self.conn);
        if conn.generation != generation {
            return; // someone replaced it already
        }
        match Client::with_runtime_handle(self.handle.clone(), self.settings.clone()) {
            Ok(client) => {
                tracing::info!(
                    generation,
                    "KurrentDB client rebuilt after a failed connect"
                );
                conn.client = client;
                conn.generation += 1;
            }
            Err(e) => tracing::warn!(error = %e, "the KurrentDB client could not be rebuilt"),
        }
    }

    /// Runs `op` with the client, bounded by [`CALL_TIMEOUT`]. A client found dead is
    /// replaced; a call that found it already dead (`ConnectionClosed`: nothing was sent)
    /// runs once more on the new one.
    pub(crate) async fn call<T, F, Fut>(&self, op: F) -> Result<T, kurrentdb::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, kurrentdb::Error>>,
    {
        let (generation, client) = self.client();
        match bounded(op(client)).await {
            Err(e) if client_is_dead(&e) => {
                self.replace_dead(generation);
                if !matches!(e, kurrentdb::Error::ConnectionClosed) {
                    return Err(e);
                }
                let (_, client) = self.client();
                bounded(op(client)).await
            }
            other => other,
        }
    }

    /// Every position up to `position` is durable: wake the followers.
    pub(crate) fn committed(&self, position: u64) {
        self.head.send_if_modified(|head| {
            let newer = position > *head;
            if newer {
                *head = position;
            }
            newer
        });
    }

    /// The position of the last event of this store in `$all` (0: none yet).
    pub(crate) async fn read_head(&self) -> Result<u64, kurrentdb::Error> {
        let options = ReadAllOptions::default()
            .position(StreamPosition::End)
            .filter(self.scope.filter())
            .max_count(1);
        self.last_position(options).await
    }

    /// The position of the last event in `$all`, anyone's: where the watcher starts
    /// listening, so that it does not scan the log from its start.
    pub(crate) async fn read_log_end(&self) -> Result<Position, kurrentdb::Error> {
        let options = ReadAllOptions::default()
            .position(StreamPosition::End)
            .max_count(1);
        let last = self
            .call(|client| {
                let options = options.clone();
                async move {
                    let mut read = client.read_all(&options).await?;
                    read.next().await
                }
            })
            .await?;
        Ok(last.map_or(Position::start(), |e| e.get_original_event().position))
    }

    async fn last_position(&self, options: ReadAllOptions) -> Result<u64, kurrentdb::Error> {
        let last = self
            .call(|client| {
                let options = options.clone();
                async move {
                    let mut read = client.read_all(&options).await?;
                    read.next().await
                }
            })
            .await?;
        Ok(last.map_or(0, |e| e.get_original_event().position.commit))
    }

    async fn append(
        &self,
        stream: String,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let name = self.scope.to_kurrent(&stream).into_owned();
        if events.is_empty() {
            // Nothing to write; the expected version is still checked.
            let actual = self
                .stream_version(&name)
                .await
                .map_err(|e| store_error(&e))?;
            if !expected.matches(actual) {
                return Err(StoreError::Conflict {
                    stream,
                    expected,
                    actual,
                });
            }
            return Ok(Vec::new());
        }
        let data = events
            .iter()
            .map(codec::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let options = AppendToStreamOptions::default().stream_state(codec::stream_state(expected));
        let written = self
            .call(|client| {
                let (name, options, data) = (name.clone(), options.clone(), data.clone());
                async move { client.append_to_stream(name, &options, data).await }
            })
            .await;
        let written = match written {
            Ok(written) => written,
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                return Err(codec::conflict(&stream, expected, current))
            }
            Err(e) => return Err(self.write_failed(store_error(&e))),
        };
        // The write's events are at revisions first..=last; each one's position is read back
        // (the append answers one position for the whole write).
        let count = events.len() as u64;
        let last = written.next_expected_version;
        let first = (last + 1).checked_sub(count).ok_or_else(|| {
            StoreError::Backend(format!(
                "KurrentDB answered revision {last} for an append of {count} events"
            ))
        })?;
        let positions = self
            .positions(&name, first, count)
            .await
            .map_err(|e| self.write_failed(e))?;
        let mut recorded = Vec::with_capacity(events.len());
        for (i, (event, (id, position))) in events.into_iter().zip(positions).enumerate() {
            if id != event.event_id {
                return Err(StoreError::Backend(format!(
                    "stream {stream} holds event {id} where the append wrote {}",
                    event.event_id
                )));
            }
            recorded.push(codec::recorded(&stream, event, first + i as u64, position));
        }
        *lock(&self.failure) = None;
        if let Some(last) = recorded.last() {
            self.committed(last.global_position);
        }
        Ok(recorded)
    }

    fn write_failed(&self, e: StoreError) -> StoreError {
        if let StoreError::Unavailable { cause } = &e {
            *lock(&self.failure) = Some(cause.clone());
        }
        e
    }

    /// The ids and commit positions of the `count` events of `name` from revision `first`.
    async fn positions(
        &self,
        name: &str,
        first: u64,
        count: u64,
    ) -> Result<Vec<(uuid::Uuid, u64)>, StoreError> {
        let options = ReadStreamOptions::default()
            .position(StreamPosition::Position(first))
            .max_count(count as usize);
        let events = self
            .call(|client| {
                let options = options.clone();
                let name = name.to_owned();
                async move { stream_events(&client, name, &options).await }
            })
            .await
            .map_err(|e| store_error(&e))?;
        if events.len() as u64 != count {
            return Err(StoreError::Backend(format!(
                "an append of {count} events to {name} read back {} of them",
                events.len()
            )));
        }
        Ok(events
            .iter()
            .map(|e| {
                let e = e.get_original_event();
                (e.id, e.position.commit)
            })
            .collect())
    }

    /// The stream's current version (0: no events).
    async fn stream_version(&self, name: &str) -> Result<u64, kurrentdb::Error> {
        let options = ReadStreamOptions::default()
            .position(StreamPosition::End)
            .max_count(1);
        let last = self
            .call(|client| {
                let options = options.clone();
                let name = name.to_owned();
                async move { stream_events(&client, name, &options).await }
            })
            .await?;
        Ok(last
            .first()
            .map_or(0, |e| e.get_original_event().revision + 1))
    }

    async fn read_stream(
        &self,
        stream: String,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let name = self.scope.to_kurrent(&stream).into_owned();
        let options = ReadStreamOptions::default().position(codec::stream_from(after));
        let events = self
            .call(|client| {
                let options = options.clone();
                let name = name.clone();
                async move { stream_events(&client, name, &options).await }
            })
            .await
            .map_err(|e| store_error(&e))?;
        events
            .iter()
            .map(|e| self.decode(e, Some(&stream)))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().flatten().collect())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One more than asked: the read includes the event at `after`, which is dropped.
        let options = ReadAllOptions::default()
            .position(codec::all_from(after))
            .forwards()
            .filter(self.scope.filter())
            .max_count(limit.saturating_add(1));
        let events = self
            .call(|client| {
                let options = options.clone();
                async move { collect(client.read_all(&options).await?).await }
            })
            .await
            .map_err(|e| store_error(&e))?;
        let mut read = Vec::with_capacity(events.len().min(limit));
        for e in &events {
            if read.len() == limit {
                break;
            }
            if !codec::is_after(e.get_original_event().position, after) {
                continue;
            }
            if let Some(event) = self.decode(e, None)? {
                read.push(event);
            }
        }
        Ok(read)
    }

    /// `e` as our event; None when it is not of this store (the server's filter should have
    /// kept it away; it is skipped, and said so).
    fn decode(
        &self,
        e: &ResolvedEvent,
        stream: Option<&str>,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        let e = e.get_original_event();
        let Some(ours) = stream.or_else(|| self.scope.from_kurrent(e.stream_id())) else {
            tracing::warn!(
                stream = e.stream_id(),
                "skipping an event of a foreign stream in $all"
            );
            return Ok(None);
        };
        codec::decode(Stored {
            id: e.id,
            stream: ours,
            revision: e.revision,
            position: e.position,
            event_type: &e.event_type,
            data: &e.data,
            metadata: &e.custom_metadata,
        })
        .map(Some)
    }
}

/// `call` bounded by [`CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl Future<Output = Result<T, kurrentdb::Error>>,
) -> Result<T, kurrentdb::Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or(Err(kurrentdb::Error::DeadlineExceeded))
}

/// The events of a stream read; a stream that does not exist has none (KurrentDB says
/// "not found" in the read's first answer, or, on some versions, as the call's status).
async fn stream_events(
    client: &Client,
    name: String,
    options: &ReadStreamOptions,
) -> Result<Vec<ResolvedEvent>, kurrentdb::Error> {
    match client.read_stream(name, options).await {
        Ok(read) => collect(read).await,
        Err(kurrentdb::Error::ResourceNotFound) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Every event of a read; a stream that does not exist has none.
async fn collect(mut read: ReadStream) -> Result<Vec<ResolvedEvent>, kurrentdb::Error> {
    let mut events = Vec::new();
    loop {
        match read.next().await {
            Ok(Some(e)) => events.push(e),
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(events),
            Err(e) => return Err(e),
        }
    }
}

/// A runtime of the store's own, shut down without waiting when the store goes (dropping a
/// runtime from async code would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The EventStore on KurrentDB. Open with [`KurrentStore::connect`] (async) or
/// [`KurrentStore::open`] (blocking); dropping the last handle closes it.
pub struct KurrentStore {
    shared: Arc<Shared>,
    head: tokio_watch::Receiver<u64>,
    stop: CancellationToken,
    handle: tokio::runtime::Handle,
    // Last: dropped after everything that runs on it.
    _runtime: OwnRuntime,
}

impl Drop for KurrentStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl KurrentStore {
    /// Connects to `url` (a KurrentDB connection string, see [`config`]), reads the head
    /// and starts the watcher. Works from any runtime: the store drives its client on
    /// threads of its own.
    pub async fn connect(url: &str) -> Result<Arc<KurrentStore>, StoreError> {
        let (runtime, handle) = build_runtime()?;
        let url = url.to_owned();
        let (shared, stop) = handle
            .spawn(start(url, handle.clone()))
            .await
            .map_err(join_error)??;
        Ok(Arc::new(KurrentStore::assemble(
            shared, stop, handle, runtime,
        )))
    }

    /// [`KurrentStore::connect`] for callers that may block (start-up, the CLI), from
    /// inside a runtime or not.
    pub fn open(url: &str) -> Result<Arc<KurrentStore>, StoreError> {
        let (runtime, handle) = build_runtime()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let url = url.to_owned();
        let h = handle.clone();
        handle.spawn(async move {
            let _ = tx.send(start(url, h).await);
        });
        let (shared, stop) = rx.recv().map_err(|_| StoreError::Closed)??;
        Ok(Arc::new(KurrentStore::assemble(
            shared, stop, handle, runtime,
        )))
    }

    fn assemble(
        shared: Arc<Shared>,
        stop: CancellationToken,
        handle: tokio::runtime::Handle,
        runtime: OwnRuntime,
    ) -> Self {
        KurrentStore {
            head: shared.head.subscribe(),
            shared,
            stop,
            handle,
            _runtime: runtime,
        }
    }

    /// Runs `f` on the store's runtime, where its client lives.
    async fn on_runtime<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.handle.spawn(f).await.map_err(join_error)?
    }
}

/// Parses `url`, connects (reading the head proves the server answers and lets us read
/// `$all`) and starts the watcher.
async fn start(
    url: String,
    handle: tokio::runtime::Handle,
) -> Result<(Arc<Shared>, CancellationToken), StoreError> {
    install_crypto_provider();
    let config = config::parse(&url).map_err(|e| StoreError::Backend(e.to_string()))?;
    let shared = Arc::new(Shared::new(config.settings, config.scope, handle)?);
    // The log's end first, then our head: an event of ours landing in between is at or
    // below the head, or after where the watcher starts.
    let log_end = shared.read_log_end().await.map_err(|e| store_error(&e))?;
    let head = shared.read_head().await.map_err(|e| store_error(&e))?;
    shared.committed(head);
    let stop = CancellationToken::new();
    tokio::spawn(watch::run(shared.clone(), log_end, stop.clone()));
    tracing::info!(head, scope = ?shared.scope, "KurrentDB event store open");
    Ok((shared, stop))
}

fn build_runtime() -> Result<(OwnRuntime, tokio::runtime::Handle), StoreError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("syncjobs-kurrentdb")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot start the KurrentDB threads: {e}")))?;
    let handle = runtime.handle().clone();
    Ok((OwnRuntime(Some(runtime)), handle))
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    if e.is_cancelled() {
        StoreError::Closed
    } else {
        StoreError::Backend(format!("event store task failed: {e}"))
    }
}

#[async_trait]
impl EventStore for KurrentStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let shared = self.shared.clone();
        let stream = stream.to_owned();
        self.on_runtime(async move { shared.append(stream, expected, events).await })
            .await
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let shared = self.shared.clone();
        let stream = stream.to_owned();
        self.on_runtime(async move { shared.read_stream(stream, after).await })
            .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let shared = self.shared.clone();
        self.on_runtime(async move { shared.read_all(after, limit).await })
            .await
    }

    fn watch_head(&self) -> tokio_watch::Receiver<u64> {
        self.head.clone()
    }

    fn backend(&self) -> &'static str {
        "kurrentdb"
    }

    fn write_failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UNREACHABLE;

    /// Nothing listens on port 1 of the loopback: a connect is refused at once.
    const REFUSED: &str = "esdb://admin:s3cret@127.0.0.1:1?tls=false";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_dead_after_a_failed_connect_is_rebuilt() {
        install_crypto_provider();
        let config = config::parse(REFUSED).unwrap();
        let shared = Shared::new(
            config.settings,
            config.scope,
            tokio::runtime::Handle::current(),
        )
        .unwrap();
        let (_, old) = shared.client();
        let first = shared.read_head().await.unwrap_err();
        assert!(
            matches!(first, kurrentdb::Error::GrpcConnectionError(_)),
            "{first:?}"
        );
        // The pitfall: the client that failed to connect answers every later call with
        // ConnectionClosed, without trying again.
        let dead = old
            .read_all(&ReadAllOptions::default().max_count(1))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(dead, kurrentdb::Error::ConnectionClosed),
            "{dead:?}"
        );
        assert_eq!(shared.client().0, 1, "the dead client was replaced");
        let again = shared.read_head().await.unwrap_err();
        assert!(
            matches!(again, kurrentdb::Error::GrpcConnectionError(_)),
            "the new client tries the server again: {again:?}"
        );
        assert_eq!(shared.client().0, 2);
    }

    #[test]
    fn an_unreachable_server_is_named_as_such_when_opening() {
        match KurrentStore::open(REFUSED) {
            Err(StoreError::Unavailable { cause }) => assert_eq!(cause, UNREACHABLE),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a store opened on a refused port"),
        }
    }
}
