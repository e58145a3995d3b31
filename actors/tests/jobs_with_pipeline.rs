//! Jobs driven by the real pipeline (timed source -> worker pool -> destination), on tokio's
//! paused clock: the cancel contract end to end at the write side.

use std::sync::Arc;
use std::time::Duration;
use syncjobs_actors::pipeline::{EntitySink, MemoryDestination};
use syncjobs_actors::{
    start_supervisor, JobSettings, Jobs, NewJob, Pipeline, SupervisorSettings, WORKER_LOST,
};
use syncjobs_domain::events::stream;
use syncjobs_domain::{EventStore, InMemoryStore, JobStatus, SyncJobEvent};
use uuid::Uuid;

mod support;
use support::{clock, paused, run_for, settle, state};
use syncjobs_domain::SharedClock;

struct World {
    store: Arc<InMemoryStore>,
    destination: Arc<MemoryDestination>,
    jobs: Jobs,
}

fn world(cancel_timeout: Duration) -> World {
    let store = InMemoryStore::new();
    let destination = MemoryDestination::new();
    let settings = SupervisorSettings {
        cancel_timeout,
        ..Default::default()
    };
    World {
        jobs: process(&store, &destination, clock(), settings),
        store,
        destination,
    }
}

/// A service process on `store` and `destination`: a supervisor that recovers from the log.
fn process(
    store: &Arc<InMemoryStore>,
    destination: &Arc<MemoryDestination>,
    clock: SharedClock,
    settings: SupervisorSettings,
) -> Jobs {
    let sink: Arc<dyn EntitySink> = destination.clone();
    start_supervisor(
        store.clone(),
        Arc::new(Pipeline::new(sink, 4)),
        clock,
        settings,
    )
}

/// Progress reported every `every` only: the rows written since the last one are what a crash
/// or a forced cancel leaves unreported.
fn sparse_progress_reports(every: Duration, cancel_timeout: Duration) -> SupervisorSettings {
    SupervisorSettings {
        cancel_timeout,
        job: JobSettings {
            progress_every_entities: 1000,
            progress_interval: every,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The counts of the job's last progress report, and its final event.
async fn last_report_and_end(store: &Arc<InMemoryStore>, job: Uuid) -> (u64, SyncJobEvent) {
    let events = store.read_stream(&stream::job(job), 0).await.unwrap();
    let reported = events
        .iter()
        .rev()
        .find_map(|e| match e.job_event() {
            Some(SyncJobEvent::ProgressRecorded { counts }) => Some(counts.inserted),
            _ => None,
        })
        .unwrap_or(0);
    let end = events.last().unwrap().job_event().unwrap().clone();
    assert!(end.is_final(), "{end:?}");
    (reported, end)
}

fn timed(sc: Uuid, config: serde_json::Value) -> NewJob {
    NewJob {
        source_connection_id: sc,
        organization_id: Uuid::from_u128(1),
        short_name: "timed".into(),
        config,
        caused_by: "test".into(),
        latest_job: None,
    }
}

#[test]
fn cancel_midway_records_cancelled_with_the_counts_really_written() {
    paused(async {
        let w = world(Duration::from_secs(180));
        let sc = Uuid::now_v7();
        let config = serde_json::json!({"entity_count": 100, "duration_seconds": 10.0});
        let job = w.jobs.create(timed(sc, config)).await.unwrap().state.job_id;
        run_for(Duration::from_millis(3050)).await;
        assert_eq!(state(&w.store, job).await.status, JobStatus::Running);

        let out = w.jobs.cancel(job, "api-key:t".into()).await.unwrap();
        assert_eq!(out.state.status, JobStatus::Cancelling);
        settle().await;
        let s = state(&w.store, job).await;
        assert_eq!(
            s.status,
            JobStatus::Cancelled,
            "cancelled within one entity's time"
        );
        assert_eq!(s.error, None);
        let written = w.destination.count(sc);
        assert!(
            (25..=40).contains(&written),
            "about 3 s of 10 entities/s: {written}"
        );
        assert_eq!(
            s.counts.inserted, written,
            "the counts are the rows really written"
        );
        assert_eq!(s.counts.deleted, 0, "a cancelled run deletes nothing");

        run_for(Duration::from_secs(2)).await;
        assert_eq!(
            w.destination.count(sc),
            written,
            "the entities stay after a cancel"
        );
    });
}

#[test]
fn a_source_that_ignores_cancel_ends_force_cancelled_by_the_watchdog() {
    paused(async {
        let w = world(Duration::from_secs(2));
        let sc = Uuid::now_v7();
        let config = serde_json::json!({
            "entity_count": 1000, "duration_seconds": 600.0, "ignore_cancel": true
        });
        let job = w.jobs.create(timed(sc, config)).await.unwrap().state.job_id;
        run_for(Duration::from_millis(1500)).await;
        w.jobs.cancel(job, "api-key:t".into()).await.unwrap();
        run_for(Duration::from_millis(1999)).await;
        assert_eq!(state(&w.store, job).await.status, JobStatus::Cancelling);
        run_for(Duration::from_millis(1)).await;

        let s = state(&w.store, job).await;
        assert_eq!(s.status, JobStatus::Cancelled);
        assert!(
            s.error.as_deref().unwrap_or_default().contains("2 seconds"),
            "{:?}",
            s.error
        );
        assert_eq!(
            s.error_details,
            Some(serde_json::json!({
                "forced_by": "watchdog", "timeout_seconds": 2, "counts_reconciled": true
            }))
        );
        assert_eq!(s.counts.inserted, w.destination.count(sc));
        let events = w.store.read_stream(&stream::job(job), 0).await.unwrap();
        assert_eq!(events.last().unwrap().event_type(), "ForceCancelled");

        // The abandoned run writes nothing more, and nothing more is recorded.
        let rows = w.destination.count(sc);
        run_for(Duration::from_secs(3)).await;
        assert_eq!(w.destination.count(sc), rows);
        let later = w.store.read_stream(&stream::job(job), 0).await.unwrap();
        assert_eq!(later.len(), events.len());
    });
}

/// A process dies while its job runs; the next start resumes the job (JobResumed with the
/// rows the lost run wrote, read from the destination), claims it again, and the resumed run
/// completes with every entity in the destination.
#[test]
fn a_job_cut_off_by_a_crash_is_resumed_at_restart_and_completes_with_every_row() {
    paused(async {
        let store = InMemoryStore::new();
        let destination = MemoryDestination::new();
        let clock = clock();
        let settings = || sparse_progress_reports(Duration::from_secs(1), Duration::from_secs(180));
        let first = process(&store, &destination, clock.clone(), settings());
        let sc = Uuid::now_v7();
        let config = serde_json::json!({"entity_count": 1000, "duration_seconds": 10.0});
        let job = first.create(timed(sc, config)).await.unwrap().state.job_id;
        run_for(Duration::from_millis(2600)).await;
        first.shutdown().await;
        settle().await;
        let written = destination.count(sc);
        assert!(written > 0 && written < 1000, "{written}");

        let second = process(&store, &destination, clock, settings());
        second.ready().await;
        settle().await;
        let events = store.read_stream(&stream::job(job), 0).await.unwrap();
        let resumed = events
            .iter()
            .find_map(|e| match e.job_event() {
                Some(r @ SyncJobEvent::JobResumed { .. }) => Some(r.clone()),
                _ => None,
            })
            .expect("the job was resumed");
        let SyncJobEvent::JobResumed {
            attempt: 1,
            counts,
            counts_reconciled: true,
            handed_back: false,
            ..
        } = resumed
        else {
            panic!("{resumed:?}");
        };
        assert_eq!(
            counts.inserted, written,
            "the lost run's rows, from the destination"
        );
        run_for(Duration::from_secs(11)).await;
        let s = state(&store, job).await;
        assert_eq!((s.status, s.resumes), (JobStatus::Completed, 1));
        // The source's 1,000 entities and its container, each once.
        assert_eq!(destination.count(sc), 1001, "every entity, once");
        // The resumed run met every one: the lost run's as kept, the rest inserted.
        assert_eq!(s.counts.encountered(), 1001, "{:?}", s.counts);
        assert_eq!(s.counts.inserted, 1001 - written, "{:?}", s.counts);
    });
}

/// With no resume allowed, the job cut off by a crash fails naming its worker, with the
/// counts of the rows it wrote (its last progress report was behind them).
#[test]
fn a_job_cut_off_by_a_crash_with_no_resume_left_fails_with_the_counts_of_the_rows_it_wrote() {
    paused(async {
        let store = InMemoryStore::new();
        let destination = MemoryDestination::new();
        let clock = clock();
        let settings = || {
            let mut s = sparse_progress_reports(Duration::from_secs(1), Duration::from_secs(180));
            s.job.max_resumes = 0;
            s
        };
        let first = process(&store, &destination, clock.clone(), settings());
        let sc = Uuid::now_v7();
        let config = serde_json::json!({"entity_count": 1000, "duration_seconds": 100.0});
        let job = first.create(timed(sc, config)).await.unwrap().state.job_id;
        run_for(Duration::from_millis(2600)).await;
        // The process dies: its actors and runs are dropped, no final event is written.
        first.shutdown().await;
        settle().await;
        let written = destination.count(sc);
        assert_eq!(state(&store, job).await.status, JobStatus::Running);

        let second = process(&store, &destination, clock, settings());
        second.ready().await;
        settle().await;
        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Failed);
        assert_eq!(s.error_category.as_deref(), Some(WORKER_LOST));
        let error = s.error.clone().unwrap_or_default();
        assert!(error.contains("was lost (last seen"), "{error}");
        let (reported, end) = last_report_and_end(&store, job).await;
        assert!(
            reported < written,
            "the crash left rows unreported: reported {reported}, rows {written}"
        );
        assert_eq!(
            s.counts.inserted, written,
            "the final counts are the rows the job wrote"
        );
        assert!(
            matches!(
                end,
                SyncJobEvent::JobFailed {
                    counts_reconciled: true,
                    ..
                }
            ),
            "{end:?}"
        );
        assert_eq!(
            s.error_details,
            Some(serde_json::json!({"counts_reconciled": true}))
        );
    });
}

#[test]
fn a_forced_cancel_records_the_rows_the_stuck_run_wrote() {
    paused(async {
        let store = InMemoryStore::new();
        let destination = MemoryDestination::new();
        // No progress report before the watchdog fires (the run itself stops writing at the
        // cancel, so a report after it would catch up with the rows).
        let settings = sparse_progress_reports(Duration::from_secs(10), Duration::from_secs(3));
        let jobs = process(&store, &destination, clock(), settings);
        let sc = Uuid::now_v7();
        let config = serde_json::json!({
            "entity_count": 1000, "duration_seconds": 100.0, "ignore_cancel": true
        });
        let job = jobs.create(timed(sc, config)).await.unwrap().state.job_id;
        run_for(Duration::from_millis(1500)).await;
        jobs.cancel(job, "api-key:t".into()).await.unwrap();
        run_for(Duration::from_millis(2999)).await;
        assert_eq!(state(&store, job).await.status, JobStatus::Cancelling);
        run_for(Duration::from_millis(1)).await;

        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Cancelled);
        let written = destination.count(sc);
        let (reported, end) = last_report_and_end(&store, job).await;
        assert!(
            reported < written,
            "the stuck run wrote past its last report: reported {reported}, rows {written}"
        );
        assert_eq!(s.counts.inserted, written, "the rows, not the last report");
        assert!(
            matches!(
                end,
                SyncJobEvent::ForceCancelled {
                    counts_reconciled: true,
                    ..
                }
            ),
            "{end:?}"
        );
    });
}

#[test]
fn a_job_recovered_cancelling_is_forced_with_the_rows_its_dead_run_wrote() {
    paused(async {
        let store = InMemoryStore::new();
        let destination = MemoryDestination::new();
        let clock = clock();
        let settings = || sparse_progress_reports(Duration::from_secs(1), Duration::from_secs(3));
        let first = process(&store, &destination, clock.clone(), settings());
        let sc = Uuid::now_v7();
        let config = serde_json::json!({
            "entity_count": 1000, "duration_seconds": 100.0, "ignore_cancel": true
        });
        let job = first.create(timed(sc, config)).await.unwrap().state.job_id;
        run_for(Duration::from_millis(1500)).await;
        first.cancel(job, "api-key:t".into()).await.unwrap();
        run_for(Duration::from_millis(50)).await;
        // Killed within ~60 ms of the cancel.
        first.shutdown().await;
        settle().await;
        let written = destination.count(sc);

        let second = process(&store, &destination, clock, settings());
        second.ready().await;
        run_for(Duration::from_secs(3)).await;
        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Cancelled);
        let (reported, end) = last_report_and_end(&store, job).await;
        assert!(reported < written, "reported {reported}, rows {written}");
        assert_eq!(s.counts.inserted, written);
        assert!(
            matches!(
                end,
                SyncJobEvent::ForceCancelled {
                    counts_reconciled: true,
                    ..
                }
            ),
            "{end:?}"
        );
    });
}

#[test]
fn a_full_run_completes_with_every_entity_counted() {
    paused(async {
        let w = world(Duration::from_secs(180));
        let sc = Uuid::now_v7();
        let config = serde_json::json!({"entity_count": 20, "duration_seconds": 0.5});
        let job = w.jobs.create(timed(sc, config)).await.unwrap().state.job_id;
        run_for(Duration::from_millis(700)).await;
        let s = state(&w.store, job).await;
        assert_eq!(s.status, JobStatus::Completed);
        assert_eq!(s.counts.inserted, 21, "the container and 20 entities");
        assert_eq!(w.destination.count(sc), 21);
        let took = s.duration_seconds().unwrap();
        assert!(
            (0.45..0.7).contains(&took),
            "spread over the configured 0.5 s: {took}"
        );
    });
}
