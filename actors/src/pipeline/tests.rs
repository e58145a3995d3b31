//! Pipeline runs end to end: the timed source through the worker pool into a destination
//! (the in-memory one where the paused clock must be exact); and the destination contract
//! (`contract.rs`, which has the runs where the rows matter) on SQLite.

use super::contract::{counts, run, run_and_cancel_after, spec};
use super::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_run_that_dies_leaves_the_counts_of_what_it_wrote_in_the_destination() {
    let dest = MemoryDestination::with_write_delay(Duration::from_millis(5));
    let pipeline = Arc::new(Pipeline::new(dest.clone(), 4));
    let scid = Uuid::new_v4();
    let spec = spec(scid, json!({"entity_count": 200, "duration_seconds": 2}));
    let job_id = spec.job_id;
    let (progress, reported) = ProgressSink::new();
    let task = {
        let pipeline = Arc::clone(&pipeline);
        tokio::spawn(async move { pipeline.run(spec, CancellationToken::new(), progress).await })
    };
    tokio::time::sleep(Duration::from_millis(703)).await;
    // The process dies: no outcome, no last report, writes in flight lost.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    let durable = pipeline
        .durable_counts(job_id)
        .await
        .expect("the destination answers");
    assert!(durable.inserted > 0, "{durable:?}");
    assert_eq!(
        durable.inserted,
        dest.count(scid),
        "the counts are the rows"
    );
    let reported = *reported.borrow();
    assert!(
        durable.dominates(&reported),
        "what the run reported is never ahead of the destination: {reported:?} > {durable:?}"
    );
    assert_eq!(
        pipeline.durable_counts(Uuid::new_v4()).await,
        Some(EntityCounts::default())
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_the_run_at_once_not_at_the_end_of_the_sync() {
    let dest = MemoryDestination::new();
    let pipeline = Arc::new(Pipeline::new(dest.clone(), 4));
    let scid = Uuid::new_v4();
    let config = json!({"entity_count": 100, "duration_seconds": 10});
    let (outcome, latency) =
        run_and_cancel_after(pipeline, spec(scid, config), Duration::from_millis(5050)).await;
    // The container and entities 0..=50 (due every 100 ms) were written, nothing after.
    assert_eq!(outcome, RunOutcome::Cancelled(counts(52, 0, 0, 0)));
    assert_eq!(dest.count(scid), 52);
    assert_eq!(latency, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn cancel_waits_for_the_write_in_flight_and_no_longer() {
    // Each write takes 300 ms (the entity's processing time); entities come every 100 ms.
    let dest = MemoryDestination::with_write_delay(Duration::from_millis(300));
    let pipeline = Arc::new(Pipeline::new(dest.clone(), 2));
    let scid = Uuid::new_v4();
    let config = json!({"entity_count": 100, "duration_seconds": 10});
    let (outcome, latency) =
        run_and_cancel_after(pipeline, spec(scid, config), Duration::from_millis(3050)).await;
    let RunOutcome::Cancelled(c) = outcome else {
        panic!("expected Cancelled, got {outcome:?}");
    };
    assert!(latency <= Duration::from_millis(300), "took {latency:?}");
    assert!(c.inserted > 0 && c.inserted < 101, "{c:?}");
    assert_eq!(
        dest.count(scid),
        c.inserted,
        "reported counts are the rows written"
    );
}

#[tokio::test(start_paused = true)]
async fn ignore_cancel_keeps_the_run_going_until_the_source_ends() {
    let dest = MemoryDestination::new();
    let pipeline = Arc::new(Pipeline::new(dest.clone(), 4));
    let scid = Uuid::new_v4();
    let config = json!({"entity_count": 100, "duration_seconds": 10, "ignore_cancel": true});
    let cancel = CancellationToken::new();
    let (progress, _rx) = ProgressSink::new();
    let started = Instant::now();
    let task = {
        let (pipeline, cancel) = (pipeline.clone(), cancel.clone());
        tokio::spawn(async move { pipeline.run(spec(scid, config), cancel, progress).await })
    };
    tokio::time::sleep(Duration::from_millis(1050)).await;
    cancel.cancel();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!task.is_finished(), "the run must not stop on cancel");
    let outcome = task.await.unwrap();
    // It ends only when the deaf source ends (entity 99 is due at 9.9 s), reporting what was
    // written before the stop: the container and entities 0..=10.
    assert_eq!(Instant::now() - started, Duration::from_millis(9900));
    assert_eq!(outcome, RunOutcome::Cancelled(counts(12, 0, 0, 0)));
    assert_eq!(dest.count(scid), 12);
}

#[tokio::test(start_paused = true)]
async fn a_failing_destination_fails_the_run_with_the_counts_written() {
    let dest = MemoryDestination::failing_after(5, Duration::from_millis(10));
    let pipeline = Pipeline::new(dest.clone(), 4);
    let scid = Uuid::new_v4();
    let started = Instant::now();
    let (outcome, progress) = run(&pipeline, spec(scid, json!({"entity_count": 100}))).await;
    let RunOutcome::Failed { error, counts } = outcome else {
        panic!("expected Failed, got {outcome:?}");
    };
    assert_eq!(
        error,
        "destination error: entity store error: disk I/O error (injected)"
    );
    assert!(counts.inserted > 0, "{counts:?}");
    assert_eq!(dest.count(scid), counts.inserted);
    assert_eq!(*progress.borrow(), counts);
    assert!(
        Instant::now() - started < Duration::from_secs(1),
        "fails early, not at the end"
    );
}

#[tokio::test]
async fn unknown_source_or_bad_config_fails_the_run_with_a_clear_error() {
    let pipeline = Pipeline::new(MemoryDestination::new(), 2);
    let mut bad = spec(Uuid::new_v4(), json!({}));
    bad.short_name = "nope".into();
    let (outcome, _) = run(&pipeline, bad).await;
    assert_eq!(
        outcome,
        RunOutcome::Failed {
            error: "Source 'nope' not found".into(),
            counts: EntityCounts::default()
        }
    );
    let (outcome, _) = run(&pipeline, spec(Uuid::new_v4(), json!({"entity_count": 0}))).await;
    assert_eq!(
        outcome,
        RunOutcome::Failed {
            error:
                "invalid config for source 'timed': config.entity_count must be between 1 and 10000"
                    .into(),
            counts: EntityCounts::default()
        }
    );
}

/// A source that yields a fixed list, counting what it handed out.
struct ListSource {
    items: Vec<Result<Entity, SourceError>>,
    yielded: Arc<AtomicUsize>,
}

impl ListSource {
    fn new(items: Vec<Result<Entity, SourceError>>) -> ListSource {
        ListSource {
            items,
            yielded: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Source for ListSource {
    fn short_name(&self) -> &str {
        "list"
    }
    fn stream(&self, stop: CancellationToken) -> EntityStream {
        let yielded = Arc::clone(&self.yielded);
        futures::stream::iter(self.items.clone())
            .take_while(move |_| futures::future::ready(!stop.is_cancelled()))
            .inspect(move |_| {
                yielded.fetch_add(1, Ordering::SeqCst);
            })
            .boxed()
    }
}

fn entity(id: &str) -> Entity {
    Entity {
        entity_id: id.into(),
        entity_type: "Thing".into(),
        content: json!({"id": id}),
    }
}

#[tokio::test]
async fn bad_entities_are_counted_failed_and_the_run_goes_on() {
    let dest = MemoryDestination::new();
    let pipeline = Pipeline::new(dest.clone(), 3);
    let scid = Uuid::new_v4();
    let source = ListSource::new(vec![
        Ok(entity("a")),
        Ok(entity("")),
        Ok(entity("b")),
        Ok(entity("a")),
        Ok(entity("c")),
    ]);
    let (progress, _rx) = ProgressSink::new();
    let outcome = pipeline
        .run_source(
            &source,
            &spec(scid, json!({})),
            CancellationToken::new(),
            progress,
        )
        .await;
    let expected = EntityCounts {
        inserted: 3,
        failed: 1,
        skipped: 1,
        ..EntityCounts::default()
    };
    assert_eq!(outcome, RunOutcome::Completed(expected));
    assert_eq!(dest.count(scid), 3);
}

#[tokio::test]
async fn a_source_error_fails_the_run_and_deletes_nothing() {
    let dest = MemoryDestination::new();
    let pipeline = Pipeline::new(dest.clone(), 2);
    let scid = Uuid::new_v4();
    let (progress, _rx) = ProgressSink::new();
    let full = ListSource::new((0..10).map(|i| Ok(entity(&i.to_string()))).collect());
    pipeline
        .run_source(
            &full,
            &spec(scid, json!({})),
            CancellationToken::new(),
            progress.clone(),
        )
        .await;
    let mut items: Vec<_> = (0..3).map(|i| Ok(entity(&i.to_string()))).collect();
    items.push(Err(SourceError("upstream answered 503".into())));
    items.push(Ok(entity("late")));
    let broken = ListSource::new(items);
    let outcome = pipeline
        .run_source(
            &broken,
            &spec(scid, json!({})),
            CancellationToken::new(),
            progress,
        )
        .await;
    let RunOutcome::Failed { error, counts } = outcome else {
        panic!("expected Failed, got {outcome:?}");
    };
    assert_eq!(error, "source error: upstream answered 503");
    assert_eq!(counts.deleted, 0);
    assert!(counts.kept <= 3 && counts.inserted == 0, "{counts:?}");
    assert_eq!(
        dest.count(scid),
        10,
        "a failed run proves nothing about absence"
    );
}

/// A destination whose writes wait for permits, to hold the workers still.
struct GatedSink {
    inner: Arc<MemoryDestination>,
    gate: Semaphore,
}

#[async_trait]
impl EntitySink for GatedSink {
    async fn write(
        &self,
        scid: Uuid,
        job_id: Uuid,
        records: Vec<EntityRecord>,
        failed: u64,
    ) -> Result<Vec<WriteAction>, DestinationError> {
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| DestinationError::Closed)?;
        permit.forget();
        self.inner.write(scid, job_id, records, failed).await
    }
    async fn delete_unseen(
        &self,
        scid: Uuid,
        job_id: Uuid,
        seen: HashSet<String>,
    ) -> Result<u64, DestinationError> {
        self.inner.delete_unseen(scid, job_id, seen).await
    }
    async fn counts_for_job(&self, job_id: Uuid) -> Result<EntityCounts, DestinationError> {
        self.inner.counts_for_job(job_id).await
    }
    async fn stats(&self, scid: Uuid) -> Result<EntityStats, DestinationError> {
        self.inner.stats(scid).await
    }
    async fn purge(&self, scid: Uuid) -> Result<u64, DestinationError> {
        self.inner.purge(scid).await
    }
}

#[tokio::test]
async fn a_stalled_destination_holds_the_source_back() {
    let sink = Arc::new(GatedSink {
        inner: MemoryDestination::new(),
        gate: Semaphore::new(0),
    });
    let (workers, batch) = (2, 4);
    let pipeline = Arc::new(Pipeline::new(sink.clone(), workers).with_batch_size(batch));
    let source = Arc::new(ListSource::new(
        (0..10_000).map(|i| Ok(entity(&i.to_string()))).collect(),
    ));
    let yielded = Arc::clone(&source.yielded);
    let scid = Uuid::new_v4();
    let task = {
        let (pipeline, source) = (pipeline.clone(), source.clone());
        tokio::spawn(async move {
            let (progress, _rx) = ProgressSink::new();
            pipeline
                .run_source(
                    source.as_ref(),
                    &spec(scid, json!({})),
                    CancellationToken::new(),
                    progress,
                )
                .await
        })
    };
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    // Queue (workers * batch) + one batch held by each worker + the one waiting to be sent.
    let bound = workers * batch + workers * batch + 1;
    let now = yielded.load(Ordering::SeqCst);
    assert!(
        now > 0 && now <= bound,
        "source ran {now} ahead (bound {bound})"
    );
    sink.gate.add_permits(1_000_000);
    let outcome = task.await.unwrap();
    assert_eq!(outcome, RunOutcome::Completed(counts(10_000, 0, 0, 0)));
}

#[tokio::test(start_paused = true)]
async fn progress_is_cumulative_and_never_goes_back() {
    let dest = MemoryDestination::with_write_delay(Duration::from_millis(5));
    let pipeline = Pipeline::new(dest, 4);
    let (progress, mut rx) = ProgressSink::new();
    let watcher = tokio::spawn(async move {
        let mut seen = vec![*rx.borrow()];
        while rx.changed().await.is_ok() {
            seen.push(*rx.borrow_and_update());
        }
        seen
    });
    let outcome = pipeline
        .run(
            spec(
                Uuid::new_v4(),
                json!({"entity_count": 30, "duration_seconds": 3}),
            ),
            CancellationToken::new(),
            progress,
        )
        .await;
    let seen = watcher.await.unwrap();
    assert!(
        seen.len() > 3,
        "progress was reported along the way: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[1].dominates(&w[0])), "{seen:?}");
    assert_eq!(seen.last(), Some(&outcome.counts()));
}

/// A destination that takes `delay` per write and notes which worker tasks wrote and how
/// many writes were in flight at once.
struct WatchedSink {
    inner: Arc<MemoryDestination>,
    delay: Duration,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    writers: Mutex<HashSet<tokio::task::Id>>,
}

impl WatchedSink {
    fn new(delay: Duration) -> Arc<WatchedSink> {
        Arc::new(WatchedSink {
            inner: MemoryDestination::new(),
            delay,
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            writers: Mutex::new(HashSet::new()),
        })
    }
}

#[async_trait]
impl EntitySink for WatchedSink {
    async fn write(
        &self,
        scid: Uuid,
        job_id: Uuid,
        records: Vec<EntityRecord>,
        failed: u64,
    ) -> Result<Vec<WriteAction>, DestinationError> {
        self.writers.lock().unwrap().insert(tokio::task::id());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.inner.write(scid, job_id, records, failed).await
    }
    async fn delete_unseen(
        &self,
        scid: Uuid,
        job_id: Uuid,
        seen: HashSet<String>,
    ) -> Result<u64, DestinationError> {
        self.inner.delete_unseen(scid, job_id, seen).await
    }
    async fn counts_for_job(&self, job_id: Uuid) -> Result<EntityCounts, DestinationError> {
        self.inner.counts_for_job(job_id).await
    }
    async fn stats(&self, scid: Uuid) -> Result<EntityStats, DestinationError> {
        self.inner.stats(scid).await
    }
    async fn purge(&self, scid: Uuid) -> Result<u64, DestinationError> {
        self.inner.purge(scid).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_source_is_served_by_one_worker_and_a_fast_one_by_all() {
    // Slow: 20 entities over 2 s, each written long before the next arrives.
    let sink = WatchedSink::new(Duration::from_millis(1));
    let pipeline = Pipeline::new(sink.clone(), 8);
    let config = json!({"entity_count": 20, "duration_seconds": 2.0});
    let (outcome, _) = run(&pipeline, spec(Uuid::new_v4(), config)).await;
    // The 20 entities and the source's container.
    assert_eq!(outcome, RunOutcome::Completed(counts(21, 0, 0, 0)));
    assert_eq!(
        sink.writers.lock().unwrap().len(),
        1,
        "one worker is enough"
    );

    // Fast: 10,000 entities at once into a destination taking 10 ms per write.
    let sink = WatchedSink::new(Duration::from_millis(10));
    let pipeline = Pipeline::new(sink.clone(), 4).with_batch_size(8);
    let source = ListSource::new((0..10_000).map(|i| Ok(entity(&i.to_string()))).collect());
    let (progress, _rx) = ProgressSink::new();
    let outcome = pipeline
        .run_source(
            &source,
            &spec(Uuid::new_v4(), json!({})),
            CancellationToken::new(),
            progress,
        )
        .await;
    assert_eq!(outcome, RunOutcome::Completed(counts(10_000, 0, 0, 0)));
    assert_eq!(
        sink.most_in_flight.load(Ordering::SeqCst),
        4,
        "every worker wrote at once"
    );
}

/// The destination contract on the embedded SQLite destination, a fresh directory per test.
mod sqlite_contract {
    use super::super::contract::Harness;
    use super::super::destination::ENTITIES_FILE;
    use super::*;

    struct Sqlite(tempfile::TempDir);

    #[async_trait]
    impl Harness for Sqlite {
        async fn open(&self) -> Arc<dyn EntitySink> {
            let dest = SqliteDestination::open(self.0.path()).expect("the destination opens");
            assert!(self.0.path().join(ENTITIES_FILE).is_file());
            dest
        }

        async fn fail_writes_of(&self, entity_id: &str) {
            let conn = rusqlite::Connection::open(self.0.path().join(ENTITIES_FILE)).unwrap();
            conn.execute_batch(&format!(
                "CREATE TRIGGER fail_{n} BEFORE INSERT ON entities WHEN NEW.entity_id = '{entity_id}'
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
                n = Uuid::new_v4().simple()
            ))
            .unwrap();
        }
    }

    async fn harness(_test: &str) -> Option<Sqlite> {
        Some(Sqlite(tempfile::tempdir().unwrap()))
    }

    crate::destination_contract!(harness);
}
