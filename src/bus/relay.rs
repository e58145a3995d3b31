//! The relay task: load the cursor, then forever connect, ensure the stream, follow the
//! log and publish, retrying with capped exponential backoff after any failure.
//!
//! Publishes are pipelined (up to `max_in_flight`) on one connection, which keeps them in
//! order; acks are taken in publish order and the position only moves to the highest
//! contiguous acknowledged event. Any failed publish or ack ends the session: the next one
//! starts from the acknowledged position, so what follows is republished in order and
//! JetStream drops what it already has by `Nats-Msg-Id`.
//!
//! Before publishing, the relay checks that the log still holds what it published (see
//! [`cursor::agreed_position`]); if the log went back, it realigns to it and publishes
//! what now stands at the lost positions.

use super::cursor::{self, Marks, Saved};
use super::subject::{job_id_of, Route, Router};
use super::{Realignment, RelayConfig, Shared};
use async_nats::jetstream::context::{Context, ContextBuilder, GetStreamErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::ErrorCode;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_domain::events::RecordedEvent;
use syncjobs_domain::redact::{redact, redact_url, split_credentials};
use syncjobs_domain::store::{follow, EventStore};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One publish awaiting its ack: position, event id (for the cursor's marks), job id (for
/// logs), and the outcome (`Ok(true)` when JetStream reported a duplicate).
type PendingAck = BoxFuture<'static, (u64, Uuid, Option<Uuid>, Result<bool, String>)>;

/// An error's text with any URL credentials masked: errors of the NATS client may quote the
/// server URL, and these texts reach the logs and `/health`.
fn scrub(e: impl std::fmt::Display) -> String {
    redact(&e.to_string()).into_owned()
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("cannot ensure JetStream stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error("publish of the event at global position {position} failed: {detail}")]
    Publish { position: u64, detail: String },
}

/// Why a session (or one pump of it) ended without an error.
enum End {
    Shutdown,
    StoreClosed,
    /// The client reconnected on its own; ensure the stream again and go on.
    Reconnected,
}

pub(super) async fn run(
    store: Arc<dyn EventStore>,
    cfg: RelayConfig,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let router = Router::new(cfg.subject_prefix.clone());
    let mut relay = Relay {
        store,
        cfg,
        shared,
        cancel,
        router,
        published: 0,
        saved: 0,
        marks: Marks::default(),
        error_shown: false,
    };
    relay.main().await;
}

struct Relay {
    store: Arc<dyn EventStore>,
    cfg: RelayConfig,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    router: Router,
    /// Highest contiguous position acknowledged by JetStream (or skipped).
    published: u64,
    /// What the cursor file holds.
    saved: u64,
    /// Ids of events passed up to `published`, saved with it to tell a log that went back.
    marks: Marks,
    /// `last_error` holds something to clear on the next success.
    error_shown: bool,
}

/// The delay before retry number `attempt` (0-based): `initial * 2^attempt`, capped.
pub(super) fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

/// Sleeps unless cancelled first; false when cancelled.
async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

impl Relay {
    async fn main(&mut self) {
        let mut attempt = 0u32;
        let saved = loop {
            let loaded = match &self.cfg.lease {
                Some(lease) if lease.keeps_state() => {
                    cursor::load_shared(lease, &self.cfg.cursor_path, &self.cfg.stream_name).await
                }
                _ => cursor::load(&self.cfg.cursor_path, &self.cfg.stream_name).await,
            };
            match loaded {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the NATS relay cursor; retrying");
                    self.note_error(&e);
                    if !self.pause(attempt).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        self.set_published(saved.position);
        self.saved = saved.position;
        self.marks = Marks::from_saved(&saved.marks);
        attempt = 0;
        loop {
            match self.realign(&saved).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "NATS relay cannot check its cursor against the log; retrying");
                    self.note_error(&e);
                    if !self.pause(attempt).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }

        attempt = 0;
        loop {
            let began = Instant::now();
            let before = self.published;
            let result = self.session().await;
            self.shared.connected.store(false, Ordering::Release);
            self.persist().await;
            match result {
                Ok(End::Shutdown) => {
                    tracing::info!(published = self.published, "NATS relay stopped");
                    return;
                }
                Ok(End::StoreClosed) => {
                    tracing::warn!(
                        published = self.published,
                        "event store closed; NATS relay stops"
                    );
                    self.note_error("event store closed");
                    return;
                }
                // session() handles reconnects itself; a new session is the safe reading.
                Ok(End::Reconnected) => {}
                Err(e) => {
                    tracing::warn!(error = %e, published = self.published, "NATS relay session ended; will retry");
                    self.note_error(&e);
                }
            }
            // A session that got somewhere (or lasted) resets the backoff; one that fails at
            // once keeps growing it, so a dead server is not hammered.
            if self.published != before || began.elapsed() >= self.cfg.backoff_max {
                attempt = 0;
            }
            if !self.pause(attempt).await {
                return;
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// Goes back to where the log still holds what was published, when the log went back under
    /// the cursor (a torn WAL lost the last commit, an older backup was restored): without
    /// this the relay would wait for the head to pass its cursor and never publish the
    /// events that then take the lost positions, while JetStream keeps the lost ones.
    async fn realign(&mut self, saved: &Saved) -> Result<(), syncjobs_domain::StoreError> {
        let head = *self.store.watch_head().borrow();
        let to = cursor::agreed_position(self.store.as_ref(), saved, head).await?;
        if to == saved.position {
            return Ok(());
        }
        let republish = head.saturating_sub(to);
        tracing::warn!(
            from = saved.position,
            to,
            head,
            republish,
            "NATS relay cursor is ahead of the log (lost tail or restored backup); \
             realigning to the log and publishing the {republish} event(s) now after position {to}"
        );
        *self
            .shared
            .realigned
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Realignment {
            at: chrono::Utc::now(),
            from: saved.position,
            to,
            republish,
        });
        self.set_published(to);
        self.marks.truncate(to);
        self.persist().await;
        Ok(())
    }

    /// Waits out the backoff of `attempt`, with jitter so that many nodes do not reconnect in
    /// lockstep. False when cancelled.
    async fn pause(&self, attempt: u32) -> bool {
        let d = backoff_delay(attempt, self.cfg.backoff_initial, self.cfg.backoff_max);
        let d = d.mul_f64(rand::random_range(0.5..=1.0));
        sleep_or_cancel(&self.cancel, d).await
    }

    /// Shows `e` in `/health` until the next acknowledged event or new session.
    fn note_error(&mut self, e: impl std::fmt::Display) {
        self.shared.set_error(e);
        self.error_shown = true;
    }

    fn set_published(&mut self, p: u64) {
        self.published = p;
        self.shared.published.store(p, Ordering::Release);
    }

    /// Saves the acknowledged position if it moved. A failed save only costs duplicates later,
    /// so it is reported, not fatal.
    async fn persist(&mut self) {
        if self.published == self.saved {
            return;
        }
        let cfg = &self.cfg;
        let marks = self.marks.list();
        let saved = match &cfg.lease {
            Some(lease) if lease.keeps_state() => {
                cursor::save_shared(lease, &cfg.stream_name, self.published, marks).await
            }
            _ => cursor::save(&cfg.cursor_path, &cfg.stream_name, self.published, marks).await,
        };
        match saved {
            Ok(()) => self.saved = self.published,
            Err(e) => {
                tracing::warn!(error = %e, "cannot save the NATS relay cursor");
                self.note_error(&e);
            }
        }
    }

    async fn session(&mut self) -> Result<End, SessionError> {
        let cancel = self.cancel.clone();
        let js = tokio::select! {
            _ = cancel.cancelled() => return Ok(End::Shutdown),
            r = self.connect() => r?,
        };
        loop {
            let created = tokio::select! {
                _ = cancel.cancelled() => return Ok(End::Shutdown),
                r = self.ensure_stream(&js) => r?,
            };
            if created && self.published > 0 {
                // The stream was lost (a NATS server without its storage, or deleted by
                // hand): rebuild it from the log, which is the source of truth.
                tracing::warn!(
                    stream = %self.cfg.stream_name,
                    // The log field keeps its name for those who search the logs by it.
                    checkpoint = self.published,
                    "JetStream stream was absent; republishing the whole log"
                );
                self.set_published(0);
                self.marks = Marks::default();
                self.persist().await;
            }
            self.shared.connected.store(true, Ordering::Release);
            self.shared.clear_error();
            self.error_shown = false;
            tracing::info!(
                url = %redact_url(&self.cfg.nats_url),
                stream = %self.cfg.stream_name,
                from = self.published,
                "NATS relay publishing"
            );
            match self.pump(&js).await? {
                End::Reconnected => continue,
                end => return Ok(end),
            }
        }
    }

    async fn connect(&self) -> Result<Context, SessionError> {
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let shared = self.shared.clone();
        // The first Connected event is the initial connect; later ones are reconnects.
        let connects = Arc::new(AtomicU64::new(0));
        // The client gets the credentials apart from the addresses: it logs the addresses it
        // tries (at debug, as `Debug` of a parsed URL), password included.
        let (servers, credentials) = split_credentials(&self.cfg.nats_url);
        let options = match credentials {
            Some((user, Some(password))) => {
                async_nats::ConnectOptions::new().user_and_password(user, password)
            }
            Some((token, None)) => async_nats::ConnectOptions::new().token(token),
            None => async_nats::ConnectOptions::new(),
        };
        let client = options
            .name("syncjobs-relay")
            .connection_timeout(self.cfg.ack_timeout)
            .event_callback(move |event| {
                let shared = shared.clone();
                let connects = connects.clone();
                async move {
                    if shared.generation.load(Ordering::Acquire) != generation {
                        return;
                    }
                    match event {
                        async_nats::Event::Connected => {
                            if connects.fetch_add(1, Ordering::AcqRel) > 0 {
                                // `connected` comes back once the session has checked
                                // the stream, so it never claims a stream that is gone.
                                tracing::info!("NATS relay reconnected");
                                shared.reconnected.notify_one();
                            }
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS relay disconnected");
                            shared.connected.store(false, Ordering::Release);
                        }
                        other => tracing::debug!(event = %other, "NATS relay connection event"),
                    }
                }
            })
            .connect(servers.as_str())
            .await
            .map_err(|e| SessionError::Connect {
                url: redact_url(&self.cfg.nats_url).into_owned(),
                detail: scrub(&e),
            })?;
        Ok(ContextBuilder::new()
            .timeout(self.cfg.ack_timeout)
            .build(client))
    }

    /// Makes sure the stream exists; true when this call created it.
    async fn ensure_stream(&self, js: &Context) -> Result<bool, SessionError> {
        let name = &self.cfg.stream_name;
        let err = |detail: String| SessionError::Stream {
            stream: name.clone(),
            detail,
        };
        match js.get_stream(name).await {
            Ok(_) => Ok(false),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(je)
                    if je.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    let config = StreamConfig {
                        name: name.clone(),
                        description: Some("syncjobs event log (published by the relay)".into()),
                        subjects: vec![format!("{}.>", self.cfg.subject_prefix)],
                        storage: StorageType::File,
                        duplicate_window: self.cfg.duplicate_window,
                        ..Default::default()
                    };
                    js.create_stream(config).await.map_err(|e| err(scrub(&e)))?;
                    tracing::info!(stream = %name, "created JetStream stream");
                    Ok(true)
                }
                _ => Err(err(scrub(&e))),
            },
        }
    }

    /// Follows the log and publishes until shutdown, the end of the store, or a failure.
    async fn pump(&mut self, js: &Context) -> Result<End, SessionError> {
        let mut events = follow(self.store.clone(), self.published);
        let mut acks: FuturesOrdered<PendingAck> = FuturesOrdered::new();
        let every = self.cfg.cursor_save_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let cancel = self.cancel.clone();
        let shared = self.shared.clone();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.drain(&mut acks).await;
                    return Ok(End::Shutdown);
                }
                Some(ack) = acks.next(), if !acks.is_empty() => self.take_ack(ack)?,
                // In-flight publishes may be lost with the old connection: start again from
                // the acknowledged position (JetStream drops what it already has).
                _ = shared.reconnected.notified() => return Ok(End::Reconnected),
                _ = tick.tick() => self.persist().await,
                next = events.next(), if acks.len() < self.cfg.max_in_flight => match next {
                    None => {
                        self.drain(&mut acks).await;
                        return Ok(End::StoreClosed);
                    }
                    Some(Err(e)) => {
                        // follow() goes on from where it was; wait a little so a broken
                        // store is not polled in a tight loop.
                        tracing::warn!(error = %e, "NATS relay cannot read the log; retrying");
                        self.note_error(&e);
                        if !sleep_or_cancel(&cancel, self.cfg.backoff_initial).await {
                            self.drain(&mut acks).await;
                            return Ok(End::Shutdown);
                        }
                    }
                    Some(Ok(ev)) => match self.publish(js, &ev).await? {
                        Some(ack) => acks.push_back(ack),
                        None => {
                            self.drain(&mut acks).await;
                            return Ok(End::Shutdown);
                        }
                    },
                },
            }
        }
    }

    /// Takes the acks already in flight (each bounded by the ack timeout), so a clean stop
    /// saves as far as JetStream got.
    async fn drain(&mut self, acks: &mut FuturesOrdered<PendingAck>) {
        while let Some(ack) = acks.next().await {
            if self.take_ack(ack).is_err() {
                break;
            }
        }
    }

    fn take_ack(
        &mut self,
        (position, event_id, job_id, result): (u64, Uuid, Option<Uuid>, Result<bool, String>),
    ) -> Result<(), SessionError> {
        match result {
            Ok(duplicate) => {
                if self.error_shown {
                    self.shared.clear_error();
                    self.error_shown = false;
                }
                if duplicate {
                    tracing::debug!(position, ?job_id, "JetStream already had this event");
                }
                self.set_published(position);
                self.marks.note(position, event_id);
                Ok(())
            }
            Err(detail) => {
                tracing::warn!(position, ?job_id, error = %detail, "JetStream did not acknowledge an event");
                Err(SessionError::Publish { position, detail })
            }
        }
    }

    /// Sends one event and returns its pending ack (an already-settled one when the event is
    /// not published). `None` when shutdown came while retrying a store read.
    async fn publish(
        &mut self,
        js: &Context,
        ev: &RecordedEvent,
    ) -> Result<Option<PendingAck>, SessionError> {
        let position = ev.global_position;
        let event_id = ev.event_id;
        let job_id = job_id_of(ev);
        let settled = |r: Result<bool, String>| {
            Some(futures::future::ready((position, event_id, job_id, r)).boxed())
        };
        // Routing may read the store on a cache miss; retry it rather than skip the event.
        let mut attempt = 0u32;
        let route = loop {
            match self.router.route(self.store.as_ref(), ev).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(position, ?job_id, error = %e, "cannot find the event's owner; retrying");
                    self.note_error(&e);
                    if !self.pause(attempt).await {
                        return Ok(None);
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        let subject = match route {
            Route::Skip => return Ok(settled(Ok(false))),
            Route::Publish(s) => s,
        };
        let payload = match serde_json::to_vec(ev) {
            Ok(p) => p,
            Err(e) => {
                // Cannot happen for a RecordedEvent; retrying could never succeed either.
                tracing::error!(position, ?job_id, error = %e, "cannot serialise event; not published");
                return Ok(settled(Ok(false)));
            }
        };
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(ev.event_id.to_string());
        let ack = js
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| SessionError::Publish {
                position,
                detail: scrub(&e),
            })?;
        tracing::debug!(position, ?job_id, %subject, "published to NATS");
        Ok(Some(
            async move {
                let r = ack.await.map(|a| a.duplicate).map_err(scrub);
                (position, event_id, job_id, r)
            }
            .boxed(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap() {
        let ms = Duration::from_millis;
        let delays: Vec<_> = (0..8)
            .map(|a| backoff_delay(a, ms(100), ms(2_000)))
            .collect();
        assert_eq!(
            delays,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1_600),
                ms(2_000),
                ms(2_000),
                ms(2_000)
            ]
        );
        // No overflow however long the outage.
        assert_eq!(backoff_delay(u32::MAX, ms(100), ms(2_000)), ms(2_000));
        assert_eq!(
            backoff_delay(40, Duration::from_secs(1), Duration::MAX),
            Duration::from_secs(u32::MAX as u64)
        );
    }
}
