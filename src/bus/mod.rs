//! The NATS relay: follows the global log from a durable checkpoint and publishes every event
//! to a JetStream stream, so that other systems can react to job lifecycles without polling.
//!
//! Delivery is at-least-once: the checkpoint moves only after JetStream acknowledges, and each
//! message carries `Nats-Msg-Id` = the event id, so JetStream drops the duplicates a restart
//! republishes (within its duplicate window). NATS being down never touches the write path:
//! the relay is a reader of the log like any projection; it just lags, retries with capped
//! exponential backoff and catches up in order. Subjects: see [`subject`]; the contract for
//! subscribers is in `docs/events.md`.

mod checkpoint;
mod relay;
pub mod subject;

use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncjobs_domain::store::EventStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The JetStream stream the relay publishes to, unless configured otherwise.
pub const DEFAULT_STREAM: &str = "SYNCJOBS";
/// The subject prefix; every subject is `<prefix>.<...>`, and the stream holds `<prefix>.>`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "syncjobs.events";
/// The checkpoint's file name under the data dir, for the app's wiring.
pub const DEFAULT_CHECKPOINT_FILE: &str = "nats-relay.checkpoint";

/// How the relay connects and publishes. Build with [`RelayConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `nats://host:port` (or a comma-separated list of servers).
    pub nats_url: String,
    /// Where the acknowledged position is saved (a small file, replaced atomically).
    pub checkpoint_path: PathBuf,
    /// The JetStream stream, created if absent with subjects `<subject_prefix>.>`.
    pub stream_name: String,
    pub subject_prefix: String,
    /// JetStream drops a message whose `Nats-Msg-Id` it saw within this window. Republishing
    /// after a crash falls well within it; a NATS outage longer than it may let a few
    /// duplicates through (subscribers dedup by event id).
    pub duplicate_window: Duration,
    /// Publishes awaiting their ack at once. Pipelining makes catching up fast; acks are
    /// still taken in order, so the checkpoint never jumps a gap.
    pub max_in_flight: usize,
    /// How long one publish may wait for its ack (and JetStream API calls for an answer).
    pub ack_timeout: Duration,
    /// First retry delay after a failure; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the acknowledged position is written to disk while publishing. A crash
    /// loses at most this much progress, which is republished (and deduplicated).
    pub checkpoint_interval: Duration,
}

impl RelayConfig {
    pub fn new(nats_url: impl Into<String>, checkpoint_path: impl Into<PathBuf>) -> Self {
        RelayConfig {
            nats_url: nats_url.into(),
            checkpoint_path: checkpoint_path.into(),
            stream_name: DEFAULT_STREAM.to_owned(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            duplicate_window: Duration::from_secs(120),
            max_in_flight: 256,
            ack_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            checkpoint_interval: Duration::from_millis(200),
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
        if self.checkpoint_interval.is_zero()
            || self.checkpoint_interval > Duration::from_secs(86_400)
        {
            return bad("checkpoint_interval must be between 1ns and 1 day".into());
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
    pub last_error: Option<String>,
}

/// State shared between the relay task and its handle.
#[derive(Default)]
struct Shared {
    connected: AtomicBool,
    published: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Bumped on every new connection, so a late event from a dropped client cannot flip
    /// `connected` for the current one.
    generation: AtomicU64,
    /// Signalled when the client reconnects by itself: the server may be a fresh one without
    /// the stream, so the session checks the stream again.
    reconnected: tokio::sync::Notify,
}

impl Shared {
    fn set_error(&self, e: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
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
    /// checkpoint and returns.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "NATS relay task ended abnormally");
            }
        }
    }

    /// Stops the relay at once, without waiting for acks or saving the checkpoint: what a
    /// crash does. The next relay republishes from the last saved checkpoint.
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
    let shared = Arc::new(Shared::default());
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
        let checkpoint = dir.path().join(DEFAULT_CHECKPOINT_FILE);
        let mut cfg = RelayConfig::new(
            format!("nats://127.0.0.1:{}", closed_port()),
            checkpoint.clone(),
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
        assert!(
            !checkpoint.exists(),
            "nothing was acknowledged, nothing saved"
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
