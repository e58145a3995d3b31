//! Server-sent events built from the event log, shared by the two streaming routes
//! ([`super::history`] and [`super::subscribe`]).
//!
//! [`follow_job`] reads one job's stream and then follows it by stream version: the events
//! come from the process's one follower of the log ([`super::live`]), subscribed to before
//! the first read, so nothing appended between the first read and the live follow is
//! missed or repeated, an open stream costs no store read per commit, and the read model
//! (which may lag) is never polled. It ends after the job's final event, which
//! [`settle_final`] holds back until the read model shows it too.
//!
//! Nothing here spawns a task: a stream lives inside the HTTP response body, and actix drops
//! the body (and with it the stream's subscription) when the client goes away (at the latest
//! on the next write, which a heartbeat forces). [`OpenStreams`] counts live streams, so a
//! leak would show on `/health`, and ends them all when the server is asked to stop.

use super::live::{Next, Subscription};
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::events::stream;
use syncjobs_domain::{RecordedEvent, StoreError};
use syncjobs_projections::Projection;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The media type of a server-sent event stream.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Airweave's heartbeat period.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// True when the request's `Accept` header names `text/event-stream` (any parameters, any
/// position in the list, any case).
pub fn accepts_event_stream(req: &actix_web::HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            range
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(EVENT_STREAM))
        })
}

/// One message: an optional `id:` line, then the data (compact JSON is one line; anything
/// else is split over several `data:` lines, as the format requires).
pub fn frame(id: Option<u64>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// A comment line: ignored by every client (EventSource included), seen by curl users and
/// proxies.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", text.replace(['\n', '\r'], " ")))
}

/// Server-sent event streams being served: counted for `/health`, and ended together when
/// the server is asked to stop (a graceful stop waits for open responses, and a stream that
/// follows a long job would otherwise hold it for the whole shutdown timeout).
#[derive(Debug, Clone, Default)]
pub struct OpenStreams {
    count: Arc<AtomicUsize>,
    closing: CancellationToken,
}

impl OpenStreams {
    pub fn open(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Ends every open stream cleanly (and any opened later at once). Clients of the events
    /// route resume elsewhere, or after the restart, with `Last-Event-ID`.
    pub fn close_all(&self) {
        if !self.closing.is_cancelled() {
            tracing::info!(open = self.open(), "closing event streams");
        }
        self.closing.cancel();
    }

    /// Counts one stream until the returned guard is dropped (with the response body).
    pub fn track(&self, route: &'static str, job_id: Uuid) -> StreamGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(route, %job_id, "event stream opened");
        StreamGuard {
            count: self.count.clone(),
            closing: self.closing.clone(),
            route,
            job_id,
        }
    }
}

/// Held by a stream's body; its drop is the stream's end, whatever the cause.
#[derive(Debug)]
pub struct StreamGuard {
    count: Arc<AtomicUsize>,
    closing: CancellationToken,
    route: &'static str,
    job_id: Uuid,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(route = self.route, job_id = %self.job_id, "event stream closed");
    }
}

/// A 200 `text/event-stream` response sending `frames` until they end or the server stops;
/// `guard` goes with the body.
pub fn response(frames: BoxStream<'static, Bytes>, guard: StreamGuard) -> HttpResponse {
    let stop = guard.closing.clone().cancelled_owned();
    let body = frames.take_until(stop).map(move |bytes| {
        let _held = &guard;
        Ok::<_, Infallible>(bytes)
    });
    HttpResponse::Ok()
        .content_type(EVENT_STREAM)
        // Airweave's headers: no caching or transforming proxy, no buffering by nginx.
        .insert_header((header::CACHE_CONTROL, "no-cache, no-transform"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// Sends `beat` whenever `frames` has been quiet for `every`; ends when `frames` ends.
/// The interval restarts after each message, so a busy stream carries no heartbeats.
pub fn with_heartbeat(
    frames: BoxStream<'static, Bytes>,
    every: Duration,
    beat: Bytes,
) -> BoxStream<'static, Bytes> {
    // A zero period would make tokio's interval panic; a millisecond is already silly.
    let every = every.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    futures::stream::unfold((frames, tick), move |(mut frames, mut tick)| {
        let beat = beat.clone();
        async move {
            // Both arms are cancel-safe: a frame being produced stays inside `frames`.
            tokio::select! {
                biased;
                next = frames.next() => {
                    let bytes = next?;
                    tick.reset();
                    Some((bytes, (frames, tick)))
                }
                _ = tick.tick() => Some((beat, (frames, tick))),
            }
        }
    })
    .boxed()
}

/// The events of the subscription's job with version > `after`: first those of `initial`
/// (what the caller read from the store *after* subscribing: the stream from version 1, in
/// order), then each new one as the follower of the log ([`super::live::LiveJobs`]) hands it
/// over. Ends
/// after the job's final event (even one at or before `after`: a client resuming past the
/// end of a finished job gets nothing and the stream ends), when the follower stops, or
/// after yielding a read error.
///
/// Versions join the two: what the subscription repeats of `initial` is dropped, and a
/// version missing (or the subscription dropped for a slow client) is read from the store
/// after the last version held, so every version comes once, in order.
pub fn follow_job(
    sub: Subscription,
    initial: Vec<RecordedEvent>,
    after: u64,
) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
    struct Follow {
        sub: Subscription,
        stream: String,
        /// The last version held (emitted or not).
        read_upto: u64,
        after: u64,
        buf: VecDeque<RecordedEvent>,
        finished: bool,
        failed: bool,
    }

    impl Follow {
        fn take(&mut self, e: RecordedEvent) {
            self.read_upto = self.read_upto.max(e.version);
            if e.job_event().is_some_and(|j| j.is_final()) {
                self.finished = true;
            }
            if e.version > self.after {
                self.buf.push_back(e);
            }
        }

        /// Everything after the last version held, from the store.
        async fn catch_up(&mut self) -> Result<(), StoreError> {
            let store = self.sub.store().clone();
            for e in store.read_stream(&self.stream, self.read_upto).await? {
                if e.version > self.read_upto {
                    self.take(e);
                }
            }
            Ok(())
        }
    }

    let mut follow = Follow {
        stream: stream::job(sub.job_id()),
        sub,
        read_upto: 0,
        after,
        buf: VecDeque::new(),
        finished: false,
        failed: false,
    };
    for e in initial {
        follow.take(e);
    }
    futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(e) = f.buf.pop_front() {
                return Some((Ok(e), f));
            }
            if f.finished || f.failed {
                return None;
            }
            match f.sub.next().await {
                Next::Event(e) if e.version <= f.read_upto => continue,
                Next::Event(e) if e.version == f.read_upto + 1 => {
                    f.take(Arc::unwrap_or_clone(e));
                    continue;
                }
                Next::Event(e) => {
                    tracing::warn!(job_id = %f.sub.job_id(), version = e.version,
                        held = f.read_upto, "a gap in a followed job stream; reading the log");
                }
                Next::Lagged => {
                    tracing::debug!(job_id = %f.sub.job_id(), after = f.read_upto,
                        "event stream catching up from the log");
                    f.sub.renew();
                }
                Next::Closed => return None,
            }
            if let Err(e) = f.catch_up().await {
                f.failed = true;
                return Some((Err(e), f));
            }
        }
    })
    .boxed()
}

/// Holds a job's final event back until the read model has folded it (bounded, like a
/// command's read-your-writes wait), so a client that saw the job end and then GETs it
/// never finds it still running.
pub fn settle_final(
    events: BoxStream<'static, Result<RecordedEvent, StoreError>>,
    projection: Projection,
    timeout: Duration,
) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
    events
        .then(move |item| {
            let projection = projection.clone();
            async move {
                if let Ok(e) = &item {
                    if e.job_event().is_some_and(|j| j.is_final()) {
                        if let Err(lag) = projection.wait_for(e.global_position, timeout).await {
                            tracing::warn!(%lag, "read model lagging behind a streamed final event");
                        }
                    }
                }
                item
            }
        })
        .boxed()
}

/// What a client of a stream is told about a read error; the cause is logged, never sent.
pub fn store_failure(job_id: Uuid, e: StoreError) -> String {
    let api: super::ApiError = e.into();
    if let super::ApiError::Internal(cause) = &api {
        tracing::error!(%job_id, %cause, "event stream ended by a store error");
    } else {
        tracing::warn!(%job_id, reason = %api, "event stream ended");
    }
    api.to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::live::LiveJobs;
    use chrono::Utc;
    use syncjobs_domain::events::{EntityCounts, SyncJobEvent};
    use syncjobs_domain::{EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent};

    pub(crate) fn ev(e: SyncJobEvent) -> NewEvent {
        NewEvent::new(e, Utc::now(), Metadata::default())
    }

    pub(crate) fn created(job_id: Uuid) -> SyncJobEvent {
        SyncJobEvent::JobCreated {
            job_id,
            source_connection_id: Uuid::new_v4(),
            organization_id: Uuid::new_v4(),
            short_name: "timed".into(),
            config: serde_json::json!({}),
        }
    }

    pub(crate) fn progress(n: u64) -> SyncJobEvent {
        SyncJobEvent::ProgressRecorded {
            counts: EntityCounts {
                inserted: n,
                ..Default::default()
            },
        }
    }

    #[test]
    fn frames_have_an_id_line_data_lines_and_a_blank_line() {
        assert_eq!(frame(Some(7), r#"{"a":1}"#), "id: 7\ndata: {\"a\":1}\n\n");
        assert_eq!(frame(None, "x\r\ny"), "data: x\ndata: y\n\n");
        assert_eq!(comment("heart\nbeat"), ": heart beat\n\n");
    }

    #[test]
    fn the_accept_header_is_read_as_a_list_of_media_ranges() {
        use actix_web::test::TestRequest;
        let with = |v: &str| {
            accepts_event_stream(
                &TestRequest::default()
                    .insert_header(("accept", v))
                    .to_http_request(),
            )
        };
        assert!(with("text/event-stream"));
        assert!(with("application/json, Text/Event-Stream;q=0.9"));
        assert!(!with("application/json"));
        assert!(!with("text/event-streams"));
        assert!(!accepts_event_stream(
            &TestRequest::default().to_http_request()
        ));
    }

    /// Subscribes to `job`, then reads its stream from the store (the handlers' order): what
    /// was read, and the follow from there.
    pub(crate) async fn followed(
        live: &LiveJobs,
        job: Uuid,
        after: u64,
    ) -> (
        Vec<RecordedEvent>,
        BoxStream<'static, Result<RecordedEvent, StoreError>>,
    ) {
        let sub = live.subscribe(job);
        let initial = sub.store().read_stream(&stream::job(job), 0).await.unwrap();
        (initial.clone(), follow_job(sub, initial, after))
    }

    /// A store holding one job's JobCreated, its follower, the job and its stream.
    async fn created_job() -> (Arc<InMemoryStore>, LiveJobs, Uuid, String) {
        let store = InMemoryStore::new();
        let live = LiveJobs::start(store.clone());
        let job = Uuid::new_v4();
        let name = stream::job(job);
        store
            .append(&name, ExpectedVersion::Exact(0), vec![ev(created(job))])
            .await
            .unwrap();
        (store, live, job, name)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn following_sees_every_version_once_while_appends_race_the_first_read() {
        let (store, live, job, name) = created_job().await;
        let writer = {
            let store = store.clone();
            let name = name.clone();
            tokio::spawn(async move {
                for v in 1..=200u64 {
                    store
                        .append(&name, ExpectedVersion::Exact(v), vec![ev(progress(v))])
                        .await
                        .unwrap();
                    if v % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                let done = SyncJobEvent::JobCompleted {
                    counts: EntityCounts::default(),
                };
                store
                    .append(&name, ExpectedVersion::Exact(201), vec![ev(done)])
                    .await
                    .unwrap();
            })
        };
        let (_, s) = followed(&live, job, 0).await;
        let versions: Vec<u64> = s.map(|e| e.unwrap().version).collect().await;
        writer.await.unwrap();
        assert_eq!(versions, (1..=202).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_resume_point_past_the_end_waits_and_the_final_event_still_ends_the_stream() {
        let (store, live, job, name) = created_job().await;
        let (_, mut s) = followed(&live, job, 3).await;
        for v in 1..=4u64 {
            store
                .append(&name, ExpectedVersion::Exact(v), vec![ev(progress(v))])
                .await
                .unwrap();
        }
        assert_eq!(s.next().await.unwrap().unwrap().version, 4);
        assert_eq!(s.next().await.unwrap().unwrap().version, 5);
        // A client that claims to have seen more than exists: the job ends at v6 <= 9.
        let (_, mut beyond) = followed(&live, job, 9).await;
        let done = SyncJobEvent::JobCompleted {
            counts: EntityCounts::default(),
        };
        store
            .append(&name, ExpectedVersion::Exact(5), vec![ev(done)])
            .await
            .unwrap();
        assert!(beyond.next().await.is_none());
        assert_eq!(s.next().await.unwrap().unwrap().version, 6);
        assert!(
            s.next().await.is_none(),
            "the stream ends after the final event"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_beats_every_period_and_a_busy_one_does_not() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let beat = Bytes::from_static(b"beat");
        let mut s = with_heartbeat(rx.boxed(), Duration::from_secs(30), beat.clone());
        let start = Instant::now();
        assert_eq!(s.next().await.unwrap(), beat);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert_eq!(s.next().await.unwrap(), beat);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(20)).await;
        tx.unbounded_send(Bytes::from_static(b"msg")).unwrap();
        assert_eq!(s.next().await.unwrap(), "msg");
        // The period restarts after a message: the next beat is 30 s after it.
        assert_eq!(s.next().await.unwrap(), beat);
        assert_eq!(start.elapsed(), Duration::from_secs(110));
        drop(tx);
        assert!(s.next().await.is_none(), "ends with its frames");
    }

    #[test]
    fn streams_are_counted_until_their_guard_drops() {
        let open = OpenStreams::default();
        let a = open.track("test", Uuid::nil());
        let b = open.track("test", Uuid::nil());
        assert_eq!(open.open(), 2);
        drop(a);
        assert_eq!(open.open(), 1);
        drop(b);
        assert_eq!(open.open(), 0);
    }
}
