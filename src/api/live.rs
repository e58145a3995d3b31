//! One follower of the global log per process, fanning each committed job event out to the
//! server-sent event streams of that job ([`super::sse::follow_job`]).
//!
//! Before this, every open stream woke on every commit and re-read its job's stream from the
//! store: 1,000 open streams cost 1,000 reads per commit. Now the follower reads each event
//! once and hands it to the subscribers of its job (a map job id -> subscribers), so a
//! commit costs one read however many streams are open.
//!
//! - **Hand-over.** A stream subscribes *before* it reads its job's stream from the store.
//!   Every event the follower delivers after that goes into the subscription; every event it
//!   delivered before was committed before, so the store read has it. The stream drops what
//!   it already has by stream version, and repairs a gap in versions (which the rules above
//!   say cannot happen) with a store read, so nothing is missed or repeated.
//! - **Slow clients.** Each subscription buffers at most [`STREAM_BUFFER`] events. When a
//!   client reads so slowly that its buffer is full, the follower drops that subscription
//!   (it never waits for a client); the stream drains what it has, subscribes again and
//!   re-reads its job's stream from the store after its last version, so nothing is lost
//!   and neither the follower nor the other streams ever wait for it.
//! - **Errors.** A read the store fails is retried with a growing pause ([`MAX_BACKOFF`]);
//!   streams stay open meanwhile (heartbeats go on) and receive what was committed once the
//!   follower reads again.
//! - **Idle.** With no stream open the follower reads nothing: it only moves its position
//!   to the head (decided under the subscribers' lock, so a stream subscribing just after
//!   finds everything up to there in its own store read).
//! - **Positions** are compared, never counted: a backend's log may have gaps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use syncjobs_domain::events::stream;
use syncjobs_domain::{EventStore, RecordedEvent, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events a stream may have waiting for its client before it is dropped from the fan-out
/// (and catches up from the store): a job's burst of reports fits, a stalled client does not.
pub const STREAM_BUFFER: usize = 256;
/// Events the follower reads at a time.
const READ_BATCH: usize = 1024;
/// The first pause after a failed read; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two reads of a failing store.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One event as handed to every subscriber of its job (shared, not copied per stream).
pub type Shared = Arc<RecordedEvent>;

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Shared>,
}

struct Hub {
    store: Arc<dyn EventStore>,
    subscribers: Mutex<HashMap<Uuid, Vec<Subscriber>>>,
    next_id: AtomicU64,
    /// Set when the follower has ended (the store is gone or the server stops): a
    /// subscription whose channel closes then ends its stream instead of catching up.
    closed: AtomicBool,
    buffer: usize,
    /// Subscriptions dropped because their buffer was full (for tests and logs).
    overflows: AtomicU64,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Vec<Subscriber>>> {
        // A panic while holding the lock leaves the map consistent (each operation is one
        // insert or retain), so a poisoned lock is still usable.
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands each event of `batch` (in log order) to the subscribers of its job.
    fn deliver(&self, batch: Vec<RecordedEvent>) {
        let mut subscribers = self.lock();
        if subscribers.is_empty() {
            return;
        }
        for e in batch {
            let Some(job_id) = stream::job_id(&e.stream_id) else {
                continue;
            };
            let Some(list) = subscribers.get_mut(&job_id) else {
                continue;
            };
            let e = Arc::new(e);
            list.retain(|s| match s.tx.try_send(e.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.overflows.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%job_id, version = e.version,
                        "event stream fell behind its client; it catches up from the log");
                    false
                }
                // Its stream is gone; its guard removes it too, whichever comes first.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if list.is_empty() {
                subscribers.remove(&job_id);
            }
        }
    }

    /// Ends the fan-out: every subscription's channel closes once drained, and so do those
    /// made later.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.lock().clear();
    }
}

/// The process's follower of the log for live streams; clones share it. Dropping the last
/// clone stops the follower.
#[derive(Clone)]
pub struct LiveJobs {
    hub: Arc<Hub>,
    /// Cancels the follower when the last clone goes.
    _stop_on_drop: Arc<tokio_util::sync::DropGuard>,
    stop: CancellationToken,
}

impl std::fmt::Debug for LiveJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveJobs")
            .field("subscriptions", &self.subscriptions())
            .finish()
    }
}

impl LiveJobs {
    /// Starts following `store` from its head, on the current tokio runtime.
    pub fn start(store: Arc<dyn EventStore>) -> LiveJobs {
        LiveJobs::with_buffer(store, STREAM_BUFFER)
    }

    /// [`LiveJobs::start`] with `buffer` events per subscription (tests use small ones).
    pub fn with_buffer(store: Arc<dyn EventStore>, buffer: usize) -> LiveJobs {
        let hub = Arc::new(Hub {
            store,
            subscribers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            buffer: buffer.max(1),
            overflows: AtomicU64::new(0),
        });
        let token = CancellationToken::new();
        // The starting point is taken now, not when the task first runs: a stream may
        // subscribe and read the store before that.
        let head = hub.store.watch_head();
        let from = *head.borrow();
        tokio::spawn(follow(hub.clone(), head, from, token.clone()));
        LiveJobs {
            hub,
            _stop_on_drop: Arc::new(token.clone().drop_guard()),
            stop: token,
        }
    }

    /// Subscribes to the events of job `job_id` committed from now on. Subscribe first,
    /// then read the job's stream from the store (see the module's hand-over).
    pub fn subscribe(&self, job_id: Uuid) -> Subscription {
        let (id, rx) = subscribe(&self.hub, job_id);
        Subscription {
            hub: self.hub.clone(),
            job_id,
            id,
            rx,
        }
    }

    /// Subscriptions held now (one per open live stream).
    pub fn subscriptions(&self) -> usize {
        self.hub.lock().values().map(Vec::len).sum()
    }

    /// Subscriptions dropped so far because their client read too slowly.
    pub fn overflows(&self) -> u64 {
        self.hub.overflows.load(Ordering::Relaxed)
    }

    /// Stops the follower; open streams end once they have sent what they hold.
    pub fn shutdown(&self) {
        self.stop.cancel();
        // The follower closes the hub as it ends; closing here too makes the end immediate
        // for subscriptions made from now on, whatever the follower is doing.
        self.hub.close();
    }
}

/// Registers a new subscriber of `job_id`; an already closed channel once the hub is closed.
fn subscribe(hub: &Hub, job_id: Uuid) -> (u64, mpsc::Receiver<Shared>) {
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(hub.buffer);
    let mut subscribers = hub.lock();
    // Checked under the lock: `close` clears the map after setting the flag.
    if !hub.closed.load(Ordering::SeqCst) {
        subscribers
            .entry(job_id)
            .or_default()
            .push(Subscriber { id, tx });
    }
    (id, rx)
}

/// One stream's share of the fan-out: the events of its job, in log order. Dropping it
/// (with the stream, when the client goes away) removes it from the follower's map.
pub struct Subscription {
    hub: Arc<Hub>,
    job_id: Uuid,
    id: u64,
    rx: mpsc::Receiver<Shared>,
}

/// What [`Subscription::next`] says.
pub enum Next {
    Event(Shared),
    /// The follower dropped this subscription (its buffer was full): subscribe again with
    /// [`Subscription::renew`] and read the store from the last version seen.
    Lagged,
    /// The follower has stopped: nothing more will come.
    Closed,
}

impl Subscription {
    pub fn job_id(&self) -> Uuid {
        self.job_id
    }

    /// The store the follower reads, for a stream's own reads of its job.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.hub.store
    }

    /// The next event of the job (cancel-safe).
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Some(e) => Next::Event(e),
            None if self.hub.closed.load(Ordering::SeqCst) => Next::Closed,
            None => Next::Lagged,
        }
    }

    /// Subscribes again after [`Next::Lagged`]; read the store after this, as at the start.
    pub fn renew(&mut self) {
        self.unsubscribe();
        let (id, rx) = subscribe(&self.hub, self.job_id);
        self.id = id;
        self.rx = rx;
    }

    fn unsubscribe(&self) {
        let mut subscribers = self.hub.lock();
        if let Some(list) = subscribers.get_mut(&self.job_id) {
            list.retain(|s| s.id != self.id);
            if list.is_empty() {
                subscribers.remove(&self.job_id);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

/// The follower: from the store's head at its start, reads each committed event once and
/// delivers it; ends when stopped or when the store is gone, closing the hub.
async fn follow(
    hub: Arc<Hub>,
    mut head: watch::Receiver<u64>,
    mut position: u64,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    tracing::debug!(from = position, "live stream follower started");
    loop {
        // Mark the head seen *before* reading: a commit landing during the read wakes the
        // wait below.
        let seen = *head.borrow_and_update();
        let mut more = false;
        if seen > position {
            if hub.lock().is_empty() {
                // Nobody to deliver to. Decided under the lock: a stream subscribing after
                // this reads the store after it, so it finds every event up to `seen`.
                position = seen;
            } else {
                match read(&*hub.store, position).await {
                    Ok(batch) => {
                        backoff = FIRST_BACKOFF;
                        if let Some(last) = batch.last() {
                            position = position.max(last.global_position);
                            more = batch.len() >= READ_BATCH;
                            hub.deliver(batch);
                        }
                    }
                    Err(StoreError::Closed) => break,
                    Err(err) => {
                        tracing::warn!(%err, after = position, retry_in = ?backoff,
                            "live stream follower cannot read the log; retrying");
                        let pause = tokio::time::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        tokio::select! {
                            _ = pause => continue,
                            _ = stop.cancelled() => break,
                        }
                    }
                }
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => break,
        }
    }
    hub.close();
    tracing::debug!(at = position, "live stream follower stopped");
}

/// Up to [`READ_BATCH`] events after `position`: from the store's memory when it still holds
/// them, else from the log.
async fn read(store: &dyn EventStore, position: u64) -> Result<Vec<RecordedEvent>, StoreError> {
    match store.read_recent(position, READ_BATCH) {
        Some(batch) => Ok(batch),
        None => store.read_all(position, READ_BATCH).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sse::tests::{created, ev, followed, progress};
    use async_trait::async_trait;
    use futures::StreamExt;
    use std::sync::atomic::AtomicUsize;
    use syncjobs_domain::events::{EntityCounts, SyncJobEvent};
    use syncjobs_domain::{ExpectedVersion, InMemoryStore, NewEvent};

    /// An in-memory store that counts the reads made of it, fails `read_all` on demand, and
    /// spreads its global positions `spread` apart (a log with gaps, as PostgreSQL's after a
    /// rollback or KurrentDB's commit positions).
    struct Counting {
        inner: InMemoryStore,
        spread: u64,
        head: watch::Sender<u64>,
        /// Reads of the log or of a stream (read_all, read_recent that answers, read_stream).
        reads: AtomicUsize,
        failing: AtomicBool,
        failed: AtomicUsize,
    }

    impl Default for Counting {
        fn default() -> Self {
            Counting::spread(1)
        }
    }

    impl Counting {
        fn spread(spread: u64) -> Self {
            Counting {
                inner: InMemoryStore::default(),
                spread,
                head: watch::channel(0).0,
                reads: AtomicUsize::new(0),
                failing: AtomicBool::new(false),
                failed: AtomicUsize::new(0),
            }
        }

        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }

        fn spread_out(&self, mut events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
            for e in &mut events {
                e.global_position *= self.spread;
            }
            events
        }
    }

    #[async_trait]
    impl EventStore for Counting {
        async fn append(
            &self,
            stream: &str,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            let recorded = self.spread_out(self.inner.append(stream, expected, events).await?);
            if let Some(last) = recorded.last().map(|e| e.global_position) {
                // Concurrent appends may return out of order: the head only moves forward.
                self.head.send_if_modified(|head| {
                    let newer = last > *head;
                    *head = (*head).max(last);
                    newer
                });
            }
            Ok(recorded)
        }

        async fn read_stream(
            &self,
            stream: &str,
            after: u64,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.spread_out(self.inner.read_stream(stream, after).await?))
        }

        async fn read_all(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err(StoreError::Backend("the disk is on fire".into()));
            }
            let events = self.inner.read_all(after / self.spread, limit).await?;
            Ok(self.spread_out(events))
        }

        fn read_recent(&self, after: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
            // Counted only when it answers (the in-memory store never does).
            let events = self.inner.read_recent(after / self.spread, limit)?;
            self.reads.fetch_add(1, Ordering::SeqCst);
            Some(self.spread_out(events))
        }

        fn watch_head(&self) -> watch::Receiver<u64> {
            self.head.subscribe()
        }

        fn backend(&self) -> &'static str {
            "counting"
        }
    }

    async fn append(store: &dyn EventStore, job: Uuid, expected: u64, e: SyncJobEvent) {
        store
            .append(
                &stream::job(job),
                ExpectedVersion::Exact(expected),
                vec![ev(e)],
            )
            .await
            .unwrap();
    }

    fn done() -> SyncJobEvent {
        SyncJobEvent::JobCompleted {
            counts: EntityCounts::default(),
        }
    }

    /// Collects a followed stream to its end (bounded: a hang fails the test).
    async fn collect(
        s: futures::stream::BoxStream<'static, Result<RecordedEvent, StoreError>>,
    ) -> Vec<RecordedEvent> {
        tokio::time::timeout(
            Duration::from_secs(20),
            s.map(|e| e.unwrap()).collect::<Vec<_>>(),
        )
        .await
        .expect("the stream ends with its job")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hundred_streams_each_receive_exactly_their_own_jobs_events_in_order() {
        const JOBS: usize = 200;
        const REPORTS: u64 = 20;
        // Positions 7 apart: nothing may count on position + 1 being the next event.
        let store = Arc::new(Counting::spread(7));
        let live = LiveJobs::start(store.clone());
        let jobs: Vec<Uuid> = (0..JOBS).map(|_| Uuid::new_v4()).collect();
        for job in &jobs {
            append(&*store, *job, 0, created(*job)).await;
        }
        // Writers commit to every job, interleaved, while the streams open and follow.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (store, jobs) = (store.clone(), jobs.clone());
                tokio::spawn(async move {
                    for v in 1..=REPORTS {
                        for job in jobs.iter().skip(w).step_by(4) {
                            append(&*store, *job, v, progress(v)).await;
                        }
                        tokio::task::yield_now().await;
                    }
                    for job in jobs.iter().skip(w).step_by(4) {
                        append(&*store, *job, REPORTS + 1, done()).await;
                    }
                })
            })
            .collect();
        let mut readers = Vec::new();
        for job in &jobs {
            let (_, s) = followed(&live, *job, 0).await;
            readers.push(tokio::spawn(collect(s)));
        }
        for w in writers {
            w.await.unwrap();
        }
        for (job, reader) in jobs.iter().zip(readers) {
            let got = reader.await.unwrap();
            let versions: Vec<u64> = got.iter().map(|e| e.version).collect();
            assert_eq!(versions, (1..=REPORTS + 2).collect::<Vec<_>>(), "job {job}");
            assert!(
                got.iter().all(|e| e.stream_id == stream::job(*job)),
                "another job's event in the stream of {job}"
            );
        }
        assert_eq!(
            live.subscriptions(),
            0,
            "ended streams hold no subscription"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_client_holds_up_no_other_stream_and_then_gets_everything() {
        let store = InMemoryStore::new();
        let live = LiveJobs::with_buffer(store.clone(), 4);
        let (job, other) = (Uuid::new_v4(), Uuid::new_v4());
        append(&*store, job, 0, created(job)).await;
        append(&*store, other, 0, created(other)).await;
        // Never read until the end: its buffer of 4 overflows.
        let (_, stalled) = followed(&live, job, 0).await;
        let (_, same_job) = followed(&live, job, 0).await;
        let (_, other_job) = followed(&live, other, 0).await;
        let same_job = tokio::spawn(collect(same_job));
        let other_job = tokio::spawn(collect(other_job));
        for v in 1..=50 {
            append(&*store, job, v, progress(v)).await;
            append(&*store, other, v, progress(v)).await;
        }
        append(&*store, job, 51, done()).await;
        append(&*store, other, 51, done()).await;
        let want: Vec<u64> = (1..=52).collect();
        for reader in [same_job, other_job] {
            let got = reader.await.unwrap();
            assert_eq!(got.iter().map(|e| e.version).collect::<Vec<_>>(), want);
        }
        assert!(live.overflows() >= 1, "the stalled stream was dropped");
        let got = collect(stalled).await;
        assert_eq!(
            got.iter().map(|e| e.version).collect::<Vec<_>>(),
            want,
            "what overflowed is read back from the store"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_costs_a_constant_number_of_reads_however_many_streams_are_open() {
        const STREAMS: usize = 100;
        const COMMITS: u64 = 50;
        let store = Arc::new(Counting::default());
        let live = LiveJobs::start(store.clone());
        let jobs: Vec<Uuid> = (0..STREAMS).map(|_| Uuid::new_v4()).collect();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        for job in &jobs {
            append(&*store, *job, 0, created(*job)).await;
            let (_, mut s) = followed(&live, *job, 1).await;
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                while let Some(e) = s.next().await {
                    let _ = seen_tx.send(e.unwrap().global_position);
                }
            });
        }
        let before = store.reads();
        for c in 0..COMMITS {
            let job = jobs[c as usize % STREAMS];
            let v = 1 + c / STREAMS as u64;
            append(&*store, job, v, progress(v)).await;
            // The commit reached its stream before the next one is made.
            let position = *store.watch_head().borrow();
            let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .unwrap();
            assert_eq!(got, Some(position));
        }
        // The follower reads once per commit here (each is delivered before the next is
        // made); the streams read nothing. Re-reading per stream would be 100 per commit.
        let reads = store.reads() - before;
        assert!(
            reads <= COMMITS as usize + 2,
            "{reads} reads for {COMMITS} commits with {STREAMS} streams open"
        );
        assert_eq!(live.overflows(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_follower_rides_out_store_errors_and_the_streams_go_on() {
        let store = Arc::new(Counting::default());
        let live = LiveJobs::start(store.clone());
        let job = Uuid::new_v4();
        append(&*store, job, 0, created(job)).await;
        let (_, mut s) = followed(&live, job, 1).await;
        store.failing.store(true, Ordering::SeqCst);
        append(&*store, job, 1, progress(1)).await;
        let wait = Duration::from_secs(10);
        tokio::time::timeout(wait, async {
            while store.failed.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the follower retries");
        store.failing.store(false, Ordering::SeqCst);
        let next = tokio::time::timeout(wait, s.next()).await.unwrap();
        assert_eq!(next.unwrap().unwrap().version, 2);
        append(&*store, job, 2, done()).await;
        let last = tokio::time::timeout(wait, s.next()).await.unwrap();
        assert_eq!(last.unwrap().unwrap().version, 3);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn gone_streams_free_their_subscriptions_and_an_idle_follower_reads_nothing() {
        let store = Arc::new(Counting::default());
        let live = LiveJobs::start(store.clone());
        let job = Uuid::new_v4();
        append(&*store, job, 0, created(job)).await;
        let (_, a) = followed(&live, job, 0).await;
        let (_, b) = followed(&live, job, 0).await;
        assert_eq!(live.subscriptions(), 2);
        drop(a);
        assert_eq!(live.subscriptions(), 1);
        drop(b);
        assert_eq!(live.subscriptions(), 0);
        let before = store.reads();
        for v in 1..=10 {
            append(&*store, job, v, progress(v)).await;
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.reads(), before, "no stream open: nothing is read");
        // A stream opened now still gets what comes next, and the end.
        let (initial, mut s) = followed(&live, job, 11).await;
        assert_eq!(initial.len(), 11);
        append(&*store, job, 11, done()).await;
        assert_eq!(s.next().await.unwrap().unwrap().version, 12);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_shutdown_ends_open_streams_and_those_opened_after() {
        let store = InMemoryStore::new();
        let live = LiveJobs::start(store.clone());
        let job = Uuid::new_v4();
        append(&*store, job, 0, created(job)).await;
        let (_, mut open) = followed(&live, job, 1).await;
        live.shutdown();
        assert!(open.next().await.is_none());
        let (_, mut later) = followed(&live, job, 1).await;
        assert!(later.next().await.is_none());
        assert_eq!(live.subscriptions(), 0);
    }
}
