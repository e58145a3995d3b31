//! The NATS relay: follows the global log from a durable cursor and publishes every event
//! to a JetStream stream, so that other systems can react to job lifecycles without polling.
//!
//! Delivery is at-least-once: the cursor moves only after JetStream acknowledges, and each
//! message carries `Nats-Msg-Id` = the event id, so JetStream drops the duplicates a restart
//! republishes (within its duplicate window). NATS being down never touches the write path:
//! the relay is a reader of the log like any projection; it just lags, retries with capped
//! exponential backoff and catches up in order. Subjects: see [`subject`]; the contract for
//! subscribers is in `docs/events.md`.
//!
//! The NATS URL may carry a password or token: it is only ever printed redacted
//! ([`syncjobs_domain::redact`]), in logs, errors, `/health` and `Debug`.

mod cursor;
mod relay;
pub mod subject;

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::redact::{redact, redact_url};
use syncjobs_domain::store::{EventStore, Lease};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The JetStream stream the relay publishes to, unless configured otherwise.
pub const DEFAULT_STREAM: &str = "SYNCJOBS";
/// The subject prefix; every subject is `<prefix>.<...>`, and the stream holds `<prefix>.>`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "syncjobs.events";
/// The cursor's file name under the data dir, for the app's wiring. It keeps the relay's
/// earlier word for its cursor: data dirs of earlier releases hold a file of this name.
pub const DEFAULT_CURSOR_FILE: &str = "nats-relay.checkpoint";

/// How the relay connects and publishes. Build with [`RelayConfig::new`] and adjust fields.
/// Its `Debug` masks the URL's credentials.
#[derive(Clone)]
pub struct RelayConfig {
    /// `nats://host:port` (or a comma-separated list of servers), with credentials if the
    /// server wants them: `nats://user:password@host:port` or `nats://token@host:port`.
    pub nats_url: String,
    /// Where the acknowledged position is saved (a small file, replaced atomically), unless
    /// `lease` keeps it.
    pub cursor_path: PathBuf,
    /// The lease this relay runs under (one relay at a time across the nodes): when its
    /// store keeps state with it (PostgreSQL), the cursor is kept there, shared by whichever
    /// node holds the lease next, and `cursor_path` is only read while it holds none.
    pub lease: Option<Arc<Lease>>,
    /// The JetStream stream, created if absent with subjects `<subject_prefix>.>`.
    pub stream_name: String,
    pub subject_prefix: String,
    /// JetStream drops a message whose `Nats-Msg-Id` it saw within this window. Republishing
    /// after a crash falls well within it; a NATS outage longer than it may let a few
    /// duplicates through (subscribers dedup by event id).
    pub duplicate_window: Duration,
    /// Publishes awaiting their ack at once. Pipelining makes catching up fast; acks are
    /// still taken in order, so the cursor never jumps a gap.
    pub max_in_flight: usize,
    /// How long one publish may wait for its ack (and JetStream API calls for an answer).
    pub ack_timeout: Duration,
    /// First retry delay after a failure; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the acknowledged position is written to disk while publishing. A crash
    /// loses at most this much progress, which is republished (and deduplicated).
    pub cursor_save_interval: Duration,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("nats_url", &redact_url(&self.nats_url))
            .field("cursor_path", &self.cursor_path)
            .field("lease", &self.lease)
            .field("stream_name", &self.stream_name)
            .field("subject_prefix", &self.subject_prefix)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_in_flight", &self.max_in_flight)
            .field("ack_timeout", &self.ack_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("cursor_save_interval", &self.cursor_save_interval)
            .finish()
    }
}

impl RelayConfig {
    pub fn new(nats_url: impl Into<String>, cursor_path: impl Into<PathBuf>) -> Self {
        RelayConfig {
            nats_url: nats_url.into(),
            cursor_path: cursor_path.into(),
            lease: None,
            stream_name: DEFAULT_STREAM.to_owned(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            duplicate_window: Duration::from_secs(120),
            max_in_flight: 256,
            ack_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            cursor_save_interval: Duration::from_millis(200),
        }
    }

    /// Rejects settings that could never work (bad names, zero window), so startup can fail
    /// fast instead of the relay retrying forever.
    pub fn validate(&self) -> Result<(), RelayError> {
        let bad = |m: String| Err(RelayError::Config(m));
        if self.nats_url.trim().is_empty() {
            return bad("NATS URL is empty".into());
        }
        subject::validate_prefix(&self.subject_prefix).map_err(RelayError::Config)?;
        subject::validate_stream_name(&self.stream_name).map_err(RelayError::Config)?;
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return bad("backoff must be positive and backoff_max >= backoff_initial".into());
        }
        if self.ack_timeout.is_zero() {
            return bad("ack_timeout must be positive".into());
        }
        if self.cursor_save_interval.is_zero()
            || self.cursor_save_interval > Duration::from_secs(86_400)
        {
            return bad("cursor_save_interval must be between 1ns and 1 day".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid relay configuration: {0}")]
    Config(String),
}

/// What `/health` shows about the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayStatus {
    /// A JetStream session is up: connected, and the stream checked since the last
    /// (re)connect.
    pub connected: bool,
    /// The highest global position JetStream has acknowledged (or that needs no publish).
    pub published_position: u64,
    /// The store's last durable global position.
    pub head_position: u64,
    /// `head_position - published_position`: events not yet on NATS.
    pub lag: u64,
    /// The last failure, kept until the next success so an operator can see why it lags.
    /// URL credentials in it are masked.
    pub last_error: Option<String>,
    /// Set when this relay found the log behind its cursor at start (a lost tail, a
    /// restored backup) and went back to it: what it did, for the operator to check.
    pub realigned: Option<Realignment>,
}

/// The relay went back from position `from` (its cursor) to `to` (where the log still
/// holds what it had published) and publishes the `republish` events then after `to`.
/// JetStream still holds what was published for the lost positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Realignment {
    pub at: DateTime<Utc>,
    pub from: u64,
    pub to: u64,
    pub republish: u64,
}

/// State shared between the relay task and its handle.
#[derive(Default)]
struct Shared {
    connected: AtomicBool,
    published: AtomicU64,
    last_error: Mutex<Option<String>>,
    realigned: Mutex<Option<Realignment>>,
    /// Bumped on every new connection, so a late event from a dropped client cannot flip
    /// `connected` for the current one.
    generation: AtomicU64,
    /// Signalled when the client reconnects by itself: the server may be a fresh one without
    /// the stream, so the session checks the stream again.
    reconnected: tokio::sync::Notify,
}

impl Shared {
    /// Keeps `e` for `/health`, with URL credentials masked (whoever made the error).
    fn set_error(&self, e: impl std::fmt::Display) {
        let text = redact(&e.to_string()).into_owned();
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }
    fn clear_error(&self) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A running relay. Dropping it asks the relay to stop (like [`RelayHandle::shutdown`], but
/// without waiting).
pub struct RelayHandle {
    monitor: RelayMonitor,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// A cheap, cloneable view of a relay's status, for `/health` handlers on every worker while
/// the [`RelayHandle`] itself stays with whoever shuts the relay down.
#[derive(Clone)]
pub struct RelayMonitor {
    shared: Arc<Shared>,
    head: watch::Receiver<u64>,
}

impl RelayMonitor {
    pub fn status(&self) -> RelayStatus {
        let published = self.shared.published.load(Ordering::Acquire);
        let head = *self.head.borrow();
        RelayStatus {
            connected: self.shared.connected.load(Ordering::Acquire),
            published_position: published,
            head_position: head,
            lag: head.saturating_sub(published),
            last_error: self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            realigned: self
                .shared
                .realigned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl RelayHandle {
    pub fn status(&self) -> RelayStatus {
        self.monitor.status()
    }

    pub fn monitor(&self) -> RelayMonitor {
        self.monitor.clone()
    }

    /// Stops the relay: waits for the acks in flight (bounded by the ack timeout), saves the
    /// cursor and returns.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "NATS relay task ended abnormally");
            }
        }
    }

    /// Stops the relay at once, without waiting for acks or saving the cursor: what a
    /// crash does. The next relay republishes from the last saved cursor.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        // After `abort` there is no task left to stop, and a cancel would let a relay caught
        // in the middle of a poll still drain and save: not what a crash does.
        if self.task.is_some() {
            self.cancel.cancel();
        }
    }
}

/// Starts the relay as a tokio task. Invalid settings do not panic: the relay reports them in
/// `last_error` and stays idle (call [`RelayConfig::validate`] first to fail fast).
pub fn spawn_relay(store: Arc<dyn EventStore>, cfg: RelayConfig) -> RelayHandle {
    let monitor = RelayMonitor::new(store.as_ref());
    spawn_relay_on(&monitor, store, cfg)
}

impl RelayMonitor {
    /// A monitor for the relays a node runs one after the other (each time it takes the
    /// relay's lease), so that `/health` and `/metrics` keep one view of them.
    pub fn new(store: &dyn EventStore) -> RelayMonitor {
        RelayMonitor {
            shared: Arc::new(Shared::default()),
            head: store.watch_head(),
        }
    }
}

/// [`spawn_relay`], reporting to `monitor` (whose previous relay must have stopped).
pub fn spawn_relay_on(
    monitor: &RelayMonitor,
    store: Arc<dyn EventStore>,
    cfg: RelayConfig,
) -> RelayHandle {
    let shared = monitor.shared.clone();
    shared.connected.store(false, Ordering::Release);
    shared.clear_error();
    let head = store.watch_head();
    let cancel = CancellationToken::new();
    let task = match cfg.validate() {
        Ok(()) => tokio::spawn(relay::run(store, cfg, shared.clone(), cancel.clone())),
        Err(e) => {
            tracing::error!(error = %e, "NATS relay not started");
            shared.set_error(e);
            tokio::spawn(async {})
        }
    };
    RelayHandle {
        monitor: RelayMonitor { shared, head },
        cancel,
        task: Some(task),
    }
}

/// The relay as a duty of one node at a time ([`crate::duty`]): a relay per lease, each
/// reporting to the same monitor.
pub struct RelayDuty {
    store: Arc<dyn EventStore>,
    cfg: RelayConfig,
    monitor: RelayMonitor,
}

impl RelayDuty {
    pub fn new(store: Arc<dyn EventStore>, cfg: RelayConfig) -> RelayDuty {
        RelayDuty {
            monitor: RelayMonitor::new(store.as_ref()),
            store,
            cfg,
        }
    }

    pub fn monitor(&self) -> RelayMonitor {
        self.monitor.clone()
    }
}

#[async_trait::async_trait(?Send)]
impl crate::duty::Duty for RelayDuty {
    type Running = RelayHandle;

    fn start(&mut self, lease: Arc<Lease>) -> Result<RelayHandle, String> {
        let mut cfg = self.cfg.clone();
        cfg.lease = Some(lease);
        Ok(spawn_relay_on(&self.monitor, self.store.clone(), cfg))
    }

    /// A lost lease stops the relay at once (its successor publishes from the shared
    /// cursor; what this one had in flight is deduplicated by `Nats-Msg-Id`); a node that
    /// stops lets the acks in flight come and saves the cursor first.
    async fn stop(&mut self, relay: RelayHandle, lost: bool) {
        if lost {
            relay.abort();
        } else {
            relay.shutdown().await;
        }
        self.monitor
            .shared
            .connected
            .store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::time::Instant;
    use syncjobs_domain::events::{stream, Metadata, NewEvent, SyncJobEvent};
    use syncjobs_domain::store::{ExpectedVersion, InMemoryStore};
    use uuid::Uuid;

    /// A port where nothing listens (bound, then released).
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    async fn wait_for(relay: &RelayHandle, what: &str, ok: impl Fn(&RelayStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok(&relay.status()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                relay.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_nats_unreachable_appends_go_on_and_health_shows_the_lag() {
        let store = InMemoryStore::new();
        let dir = tempfile::tempdir().unwrap();
        let cursor = dir.path().join(DEFAULT_CURSOR_FILE);
        let mut cfg = RelayConfig::new(
            format!("nats://127.0.0.1:{}", closed_port()),
            cursor.clone(),
        );
        cfg.backoff_initial = Duration::from_millis(10);
        cfg.backoff_max = Duration::from_millis(40);
        let relay = spawn_relay(store.clone(), cfg);

        let job = Uuid::new_v4();
        for _ in 0..100 {
            let t = Instant::now();
            let e = NewEvent::new(
                SyncJobEvent::JobStarted { worker: "w".into() },
                Utc::now(),
                Metadata::default(),
            );
            store
                .append(&stream::job(job), ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
            assert!(
                t.elapsed() < Duration::from_millis(200),
                "append waited on NATS"
            );
        }
        wait_for(&relay, "a connect error", |s| s.last_error.is_some()).await;
        // Several retries happen (the backoff is short), and the state stays honest.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = relay.status();
        assert!(!s.connected);
        assert_eq!(
            (s.head_position, s.published_position, s.lag),
            (100, 0, 100)
        );
        assert!(
            s.last_error
                .as_deref()
                .unwrap_or("")
                .contains("cannot connect"),
            "{s:?}"
        );

        let t = Instant::now();
        relay.shutdown().await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "shutdown waited out a retry"
        );
        assert!(!cursor.exists(), "nothing was acknowledged, nothing saved");
    }

    /// Log lines written while the returned guard lives, on this thread (a current-thread
    /// runtime keeps the relay's task on it), every level and target included.
    fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        // tracing-core caches a callsite's interest from the *registering* thread's default
        // while at most one dispatcher is registered (tokio-rs/tracing#3611): a parallel test
        // with no subscriber that reaches a relay callsite first would silence it for the whole
        // process, and this capture would stay empty. A second dispatcher that lives as long as
        // the process makes tracing ask every registered dispatcher; the rebuild re-asks the
        // callsites cached before it existed.
        static KEEPER: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        KEEPER.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let guard = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
        (buf, guard)
    }

    fn text(buf: &Mutex<Vec<u8>>) -> String {
        String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
    }

    #[tokio::test]
    async fn credentials_in_the_nats_url_never_show_but_host_port_and_cause_do() {
        let (logs, _guard) = capture_logs();
        let store = InMemoryStore::new();
        let dir = tempfile::tempdir().unwrap();
        let port = closed_port();
        let mut cfg = RelayConfig::new(
            format!("nats://user:s3cret@127.0.0.1:{port}"),
            dir.path().join(DEFAULT_CURSOR_FILE),
        );
        cfg.backoff_initial = Duration::from_millis(10);
        cfg.backoff_max = Duration::from_millis(20);
        assert!(!format!("{cfg:?}").contains("s3cret"), "{cfg:?}");
        assert!(format!("{cfg:?}").contains("user:***@127.0.0.1"), "{cfg:?}");
        let relay = spawn_relay(store, cfg);
        wait_for(&relay, "a connect error", |s| s.last_error.is_some()).await;
        // A few retries, each logged.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = relay.status();
        relay.shutdown().await;

        // What /health shows.
        let health = serde_json::to_string(&status).unwrap();
        assert!(!health.contains("s3cret"), "{health}");
        let error = status.last_error.unwrap_or_default();
        assert!(
            error.contains(&format!("nats://user:***@127.0.0.1:{port}")),
            "{error}"
        );
        assert!(error.contains("refused"), "the cause is kept: {error}");

        let logs = text(&logs);
        assert!(!logs.contains("s3cret"), "{logs}");
        assert!(
            logs.lines().any(|l| l.contains("WARN")
                && l.contains(&format!("127.0.0.1:{port}"))
                && l.contains("refused")),
            "{logs}"
        );
    }

    #[tokio::test]
    async fn a_cursor_ahead_of_the_log_is_realigned_and_said_so() {
        let (logs, _guard) = capture_logs();
        let store = InMemoryStore::new();
        let job = Uuid::new_v4();
        let mut ids = vec![];
        for _ in 0..3 {
            let e = NewEvent::new(
                SyncJobEvent::JobStarted { worker: "w".into() },
                Utc::now(),
                Metadata::default(),
            );
            let r = store
                .append(&stream::job(job), ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
            ids.push(r[0].event_id);
        }
        // The relay had published 5 events; the log lost the last 2 (a torn WAL).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_CURSOR_FILE);
        let mut marks = cursor::Marks::default();
        for (p, id) in ids
            .iter()
            .copied()
            .chain([Uuid::new_v4(), Uuid::new_v4()])
            .enumerate()
        {
            marks.note(p as u64 + 1, id);
        }
        cursor::save(&path, DEFAULT_STREAM, 5, marks.list())
            .await
            .unwrap();
        let mut cfg = RelayConfig::new(format!("nats://127.0.0.1:{}", closed_port()), &path);
        cfg.backoff_initial = Duration::from_millis(10);
        cfg.backoff_max = Duration::from_millis(20);
        let relay = spawn_relay(store, cfg);
        wait_for(&relay, "the realignment", |s| s.realigned.is_some()).await;
        let s = relay.status();
        relay.shutdown().await;
        let r = s.realigned.unwrap();
        assert_eq!((r.from, r.to, r.republish), (5, 3, 0), "{r:?}");
        assert_eq!((s.published_position, s.lag), (3, 0));
        assert_eq!(
            cursor::load(&path, DEFAULT_STREAM).await.unwrap().position,
            3,
            "the realigned cursor is saved"
        );
        let logs = text(&logs);
        assert!(
            logs.lines().any(|l| l.contains("WARN")
                && l.contains("realigning")
                && l.contains("from=5")
                && l.contains("to=3")),
            "{logs}"
        );
    }

    #[tokio::test]
    async fn an_invalid_configuration_is_reported_not_retried() {
        let store = InMemoryStore::new();
        let mut cfg = RelayConfig::new("nats://127.0.0.1:4222", "/nonexistent/c");
        cfg.subject_prefix = "bad.>".into();
        assert!(cfg.validate().is_err());
        let relay = spawn_relay(store, cfg);
        let s = relay.status();
        assert!(!s.connected);
        assert!(
            s.last_error
                .as_deref()
                .unwrap_or("")
                .contains("subject prefix"),
            "{s:?}"
        );
        relay.shutdown().await;
    }
}
