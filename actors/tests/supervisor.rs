//! The hard parts of the write side: the watchdog on tokio's paused clock, recovery after a
//! restart, and races between cancels and completions.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_actors::{
    start_supervisor, CommandError, Jobs, JobsError, ProgressSink, Recovery, RunOutcome, RunSpec,
    SupervisorSettings, SyncRunner,
};
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    Clock, EntityCounts, EventStore, ExpectedVersion, InMemoryStore, JobCommand, JobError,
    JobStatus, Metadata, NewEvent, RecordedEvent, SyncJobEvent,
};
use tokio::sync::Notify;

mod support;
use support::{
    clock, counts, execute, job_in_log, new_job, paused, run_for, settings, settle, state, TIMEOUT,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A source that never stops by itself and ignores the cancel signal (a hung upstream API).
struct Stuck;

#[async_trait]
impl SyncRunner for Stuck {
    async fn run(&self, _: RunSpec, _: CancellationToken, progress: ProgressSink) -> RunOutcome {
        progress.report(counts(3));
        std::future::pending().await
    }
}

/// Processes one entity per `per_entity`, `total` in all; stops at once when cancelled.
struct Graceful {
    total: u64,
    per_entity: Duration,
}

#[async_trait]
impl SyncRunner for Graceful {
    async fn run(
        &self,
        _: RunSpec,
        cancel: CancellationToken,
        progress: ProgressSink,
    ) -> RunOutcome {
        let mut done = EntityCounts::default();
        for _ in 0..self.total {
            tokio::select! {
                _ = cancel.cancelled() => return RunOutcome::Cancelled(done),
                _ = tokio::time::sleep(self.per_entity) => {}
            }
            done.inserted += 1;
            progress.report(done);
        }
        RunOutcome::Completed(done)
    }
}

/// Completes when the test says so (and not on cancel, like a run already past its last write).
struct OnSignal(Arc<Notify>);

#[async_trait]
impl SyncRunner for OnSignal {
    async fn run(&self, _: RunSpec, _: CancellationToken, _: ProgressSink) -> RunOutcome {
        self.0.notified().await;
        RunOutcome::Completed(counts(7))
    }
}

async fn events(store: &Arc<InMemoryStore>, job: Uuid) -> Vec<RecordedEvent> {
    store.read_stream(&stream::job(job), 0).await.unwrap()
}

fn types(events: &[RecordedEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type()).collect()
}

async fn running_job(store: &Arc<InMemoryStore>, jobs: &Jobs) -> Uuid {
    let created = jobs.create(new_job(Uuid::now_v7())).await.unwrap();
    assert_eq!(created.state.status, JobStatus::Pending);
    settle().await;
    let id = created.state.job_id;
    assert_eq!(state(store, id).await.status, JobStatus::Running);
    id
}

#[test]
fn the_watchdog_fires_at_the_deadline_and_not_a_moment_before() {
    paused(async {
        let store = InMemoryStore::new();
        let clock = clock();
        let jobs = start_supervisor(store.clone(), Arc::new(Stuck), clock.clone(), settings());
        let job = running_job(&store, &jobs).await;

        let cancelled = jobs.cancel(job, "api-key:test".into()).await.unwrap();
        assert_eq!(cancelled.state.status, JobStatus::Cancelling);
        let requested_at = cancelled.state.cancel_requested_at.unwrap();
        assert!(cancelled.position > 0);

        tokio::time::advance(TIMEOUT - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            state(&store, job).await.status,
            JobStatus::Cancelling,
            "fired early"
        );

        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Cancelled);
        let error = s.error.unwrap();
        assert!(
            error.contains("forced") && error.contains("180 seconds"),
            "{error}"
        );
        let last = events(&store, job).await.pop().unwrap();
        assert_eq!(last.event_type(), "ForceCancelled");
        assert_eq!(
            last.recorded_at,
            requested_at + chrono::Duration::seconds(180)
        );
        assert_eq!(last.metadata.caused_by, "watchdog");
        assert_eq!(
            jobs.stats().await.unwrap().live_jobs,
            0,
            "a finished job holds no actor"
        );
    });
}

#[test]
fn the_watchdog_never_fires_when_the_worker_confirms() {
    paused(async {
        let store = InMemoryStore::new();
        let runner = Graceful {
            total: 1000,
            per_entity: Duration::from_millis(10),
        };
        let jobs = start_supervisor(store.clone(), Arc::new(runner), clock(), settings());
        let job = running_job(&store, &jobs).await;
        run_for(Duration::from_millis(55)).await;

        jobs.cancel(job, "test".into()).await.unwrap();
        settle().await;
        let s = state(&store, job).await;
        assert_eq!(
            s.status,
            JobStatus::Cancelled,
            "the worker confirmed at once"
        );
        assert_eq!(
            s.counts,
            counts(5),
            "the confirmation carries what was really done"
        );
        assert_eq!(s.error, None);
        assert_eq!(
            jobs.stats().await.unwrap().armed_watchdogs,
            0,
            "timer dropped"
        );

        tokio::time::advance(Duration::from_secs(3600)).await;
        settle().await;
        assert_eq!(
            types(&events(&store, job).await),
            ["JobCreated", "JobStarted", "CancelRequested", "Cancelled"]
        );
    });
}

#[test]
fn after_a_restart_the_watchdog_honours_the_time_already_elapsed() {
    paused(async {
        let store = InMemoryStore::new();
        let clock = clock();
        let first = start_supervisor(store.clone(), Arc::new(Stuck), clock.clone(), settings());
        let job = running_job(&store, &first).await;
        first.cancel(job, "test".into()).await.unwrap();
        tokio::time::advance(Duration::from_secs(100)).await;
        settle().await;
        first.shutdown().await;
        settle().await;

        // A new process: recovery finds the job cancelling since 100 s.
        let second = start_supervisor(store.clone(), Arc::new(Stuck), clock.clone(), settings());
        second.ready().await;
        settle().await;
        assert_eq!(second.stats().await.unwrap().armed_watchdogs, 1);
        tokio::time::advance(Duration::from_secs(80) - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            state(&store, job).await.status,
            JobStatus::Cancelling,
            "the restart must not extend the deadline... nor fire early"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(state(&store, job).await.status, JobStatus::Cancelled);
        let types = types(&events(&store, job).await);
        assert_eq!(types.last(), Some(&"ForceCancelled"), "{types:?}");
        assert_eq!(types.iter().filter(|t| t.ends_with("Cancelled")).count(), 1);
    });
}

#[test]
fn an_overdue_watchdog_fires_at_once_on_recovery() {
    paused(async {
        let store = InMemoryStore::new();
        let clock = clock();
        let first = start_supervisor(store.clone(), Arc::new(Stuck), clock.clone(), settings());
        let job = running_job(&store, &first).await;
        let requested_at = first
            .cancel(job, "test".into())
            .await
            .unwrap()
            .state
            .cancel_requested_at
            .unwrap();
        first.shutdown().await;
        settle().await;
        // The service is down for 10 minutes, well past the deadline.
        tokio::time::advance(Duration::from_secs(600)).await;

        // Recovery told by a read model which jobs are unfinished re-arms the same way.
        let second = start_supervisor(
            store.clone(),
            Arc::new(Stuck),
            clock.clone(),
            SupervisorSettings {
                recovery: Recovery::Jobs(vec![job]),
                ..settings()
            },
        );
        second.ready().await;
        settle().await;
        let last = events(&store, job).await.pop().unwrap();
        assert_eq!(last.event_type(), "ForceCancelled");
        assert_eq!(
            last.recorded_at,
            requested_at + chrono::Duration::seconds(600)
        );
    });
}

#[test]
fn recovery_starts_pending_jobs_and_resumes_interrupted_ones() {
    recovery_case(|_| Recovery::ScanLog);
}

#[test]
fn recovery_from_a_read_models_list_acts_the_same_and_ignores_finished_jobs() {
    // The list may name jobs that ended meanwhile, or never existed: the log decides.
    recovery_case(|jobs| {
        let mut ids = jobs.to_vec();
        ids.push(Uuid::now_v7());
        Recovery::Jobs(ids)
    });
}

/// Recovery of a pending and a running job left by a dead process, with the supervisor
/// told where to find them by `recovery(&[pending, running])`.
fn recovery_case(recovery: impl FnOnce(&[Uuid]) -> Recovery) {
    paused(async {
        let store = InMemoryStore::new();
        let clock = clock();
        let (pending, running) = (Uuid::now_v7(), Uuid::now_v7());
        for (job, started) in [(pending, false), (running, true)] {
            let mut evs = vec![SyncJobEvent::JobCreated {
                job_id: job,
                source_connection_id: Uuid::now_v7(),
                organization_id: Uuid::from_u128(1),
                short_name: "timed".into(),
                config: serde_json::json!({}),
            }];
            if started {
                evs.push(SyncJobEvent::JobStarted {
                    worker: "old".into(),
                });
                evs.push(SyncJobEvent::ProgressRecorded { counts: counts(4) });
            }
            let evs = evs
                .into_iter()
                .map(|e| NewEvent::new(e, clock.now(), Metadata::default()))
                .collect();
            store
                .append(&stream::job(job), ExpectedVersion::Exact(0), evs)
                .await
                .unwrap();
        }
        let signal = Arc::new(Notify::new());
        let jobs = start_supervisor(
            store.clone(),
            Arc::new(OnSignal(signal.clone())),
            clock,
            SupervisorSettings {
                recovery: recovery(&[pending, running]),
                ..settings()
            },
        );
        jobs.ready().await;
        settle().await;

        // Resumed (the counts recorded before the crash kept in its JobResumed), and
        // claimed again: this node is the only one.
        let r = state(&store, running).await;
        assert_eq!((r.status, r.resumes), (JobStatus::Running, 1));
        let resumed = events(&store, running)
            .await
            .into_iter()
            .find_map(|e| match e.job_event() {
                Some(SyncJobEvent::JobResumed {
                    counts,
                    lost_worker,
                    ..
                }) => Some((*counts, lost_worker.clone())),
                _ => None,
            });
        assert_eq!(resumed, Some((counts(4), "old".to_owned())));

        assert_eq!(state(&store, pending).await.status, JobStatus::Running);
        signal.notify_waiters();
        settle().await;
        for job in [pending, running] {
            let p = state(&store, job).await;
            assert_eq!(p.status, JobStatus::Completed);
            assert_eq!(p.counts, counts(7));
        }
    });
}

#[actix_rt::test]
async fn a_hundred_concurrent_cancels_record_exactly_one_request() {
    let store = InMemoryStore::new();
    let jobs = start_supervisor(store.clone(), Arc::new(Stuck), clock(), settings());
    let job = running_job(&store, &jobs).await;
    let results =
        futures::future::join_all((0..100).map(|i| jobs.cancel(job, format!("client-{i}")))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1);
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                r,
                JobsError::CannotCancel {
                    status: JobStatus::Cancelling,
                    position
                } if *position > 0
            ),
            "{r:?}"
        );
        assert_eq!(
            r.to_string(),
            "a job in cancelling state cannot be cancelled"
        );
    }
    let n = types(&events(&store, job).await)
        .iter()
        .filter(|t| **t == "CancelRequested")
        .count();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cancels_across_writers_record_one_request() {
    // No actor serialises these: only the store's optimistic concurrency stands between
    // 100 writers that all believe the job is running (as separate processes would).
    let store = InMemoryStore::new();
    let clock = clock();
    let running = job_in_log(&store, &*clock, true).await;
    let job = running.job_id;
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let (store, clock, known) = (store.clone(), clock.clone(), running.clone());
            tokio::spawn(async move {
                let cancel = JobCommand::RequestCancel {
                    requested_by: format!("node-{i}"),
                    timeout_seconds: 180,
                };
                execute(
                    &*store,
                    &*clock,
                    job,
                    Some(known),
                    &cancel,
                    &Metadata::default(),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CommandError::Rejected(JobError::CannotCancel(JobStatus::Cancelling))) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        types(&events(&store, job).await),
        ["JobCreated", "JobStarted", "CancelRequested"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_completion_always_ends_in_exactly_one_final_event() {
    let store = InMemoryStore::new();
    let clock = clock();
    let mut outcomes = std::collections::HashMap::new();
    for round in 0..300 {
        let meta = Metadata::default();
        let running = job_in_log(&store, &*clock, true).await;
        let job = running.job_id;
        let race = |cmd: JobCommand| {
            let (store, clock, known) = (store.clone(), clock.clone(), running.clone());
            tokio::spawn(async move {
                execute(
                    &*store,
                    &*clock,
                    job,
                    Some(known),
                    &cmd,
                    &Metadata::default(),
                )
                .await
            })
        };
        let (a, b) = if round % 2 == 0 {
            let a = race(JobCommand::Complete { counts: counts(9) });
            let b = race(JobCommand::RequestCancel {
                requested_by: "c".into(),
                timeout_seconds: 180,
            });
            (a, b)
        } else {
            let b = race(JobCommand::RequestCancel {
                requested_by: "c".into(),
                timeout_seconds: 180,
            });
            let a = race(JobCommand::Complete { counts: counts(9) });
            (a, b)
        };
        let _ = (a.await.unwrap(), b.await.unwrap());
        // If the cancel won, the worker's report then confirms it (as the actor does).
        let s = state(&store, job).await;
        if s.status == JobStatus::Cancelling {
            let confirm = JobCommand::ConfirmCancelled { counts: counts(9) };
            execute(&*store, &*clock, job, None, &confirm, &meta)
                .await
                .unwrap();
        }
        let evs = events(&store, job).await;
        let finals: Vec<_> = evs
            .iter()
            .filter(|e| e.job_event().is_some_and(|j| j.is_final()))
            .collect();
        assert_eq!(finals.len(), 1, "round {round}: {:?}", types(&evs));
        assert_eq!(
            finals[0].version,
            evs.len() as u64,
            "the final event is the last one"
        );
        *outcomes.entry(finals[0].event_type()).or_insert(0) += 1;
    }
    assert!(!outcomes.is_empty());
}

#[actix_rt::test]
async fn cancel_racing_completion_through_the_actors_ends_once() {
    for _ in 0..50 {
        let store = InMemoryStore::new();
        let signal = Arc::new(Notify::new());
        let jobs = start_supervisor(
            store.clone(),
            Arc::new(OnSignal(signal.clone())),
            clock(),
            settings(),
        );
        let job = running_job(&store, &jobs).await;
        signal.notify_one();
        let cancel = jobs.cancel(job, "racer".into()).await;
        settle().await;
        let s = state(&store, job).await;
        assert!(s.status.is_final(), "{:?} after {cancel:?}", s.status);
        let evs = events(&store, job).await;
        let finals = evs
            .iter()
            .filter(|e| e.job_event().is_some_and(|j| j.is_final()))
            .count();
        assert_eq!(finals, 1, "{:?}", types(&evs));
        match cancel {
            Ok(o) => assert_eq!(o.state.status, JobStatus::Cancelling),
            Err(e) => assert_eq!(
                e.to_string(),
                "a job in completed state cannot be cancelled"
            ),
        }
    }
}

#[test]
fn progress_is_reported_in_batches_not_per_entity() {
    paused(async {
        let store = InMemoryStore::new();
        let runner = Graceful {
            total: 1000,
            per_entity: Duration::from_millis(1),
        };
        let jobs = start_supervisor(store.clone(), Arc::new(runner), clock(), settings());
        let job = running_job(&store, &jobs).await;
        run_for(Duration::from_millis(1100)).await;
        let evs = events(&store, job).await;
        let progress: Vec<EntityCounts> = evs
            .iter()
            .filter_map(|e| match e.job_event() {
                Some(SyncJobEvent::ProgressRecorded { counts }) => Some(*counts),
                _ => None,
            })
            .collect();
        assert!(
            (5..=20).contains(&progress.len()),
            "about one progress report per 100 entities, got {}",
            progress.len()
        );
        assert!(progress.windows(2).all(|w| w[1].dominates(&w[0])));
        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Completed);
        assert_eq!(s.counts, counts(1000));
    });
}

#[actix_rt::test]
async fn one_active_job_per_source_connection() {
    let store = InMemoryStore::new();
    let jobs = start_supervisor(
        store.clone(),
        Arc::new(Graceful {
            total: 10,
            per_entity: Duration::from_secs(3600),
        }),
        clock(),
        settings(),
    );
    let sc = Uuid::now_v7();
    let first = jobs.create(new_job(sc)).await.unwrap();
    let err = jobs.create(new_job(sc)).await.unwrap_err();
    assert!(
        matches!(
            err,
            JobsError::AlreadyActive {
                status: JobStatus::Pending | JobStatus::Running,
                ..
            }
        ),
        "{err}"
    );
    settle().await;
    let err = jobs.create(new_job(sc)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the source connection has a sync job running already"
    );
    let started = events(&store, first.state.job_id).await.pop().unwrap();
    assert_eq!(started.event_type(), "JobStarted");
    assert!(
        matches!(err, JobsError::AlreadyActive { job_id, position, .. }
            if job_id == first.state.job_id && position == started.global_position),
        "the refusal names the job and where its state is in the log: {err:?}"
    );
    // Once the job is final (the worker confirms the cancel) the connection is free again.
    jobs.cancel(first.state.job_id, "t".into()).await.unwrap();
    settle().await;
    let second = jobs.create(new_job(sc)).await.unwrap();
    assert_ne!(second.state.job_id, first.state.job_id);
}

#[actix_rt::test]
async fn a_pending_job_is_cancelled_at_once_and_never_starts() {
    let store = InMemoryStore::new();
    let clock = clock();
    let jobs = start_supervisor(store.clone(), Arc::new(Stuck), clock.clone(), settings());
    jobs.ready().await;
    // A job no worker has claimed yet (as another api node would have created it).
    let job = job_in_log(&store, &*clock, false).await.job_id;
    let out = jobs.cancel(job, "t".into()).await.unwrap();
    assert_eq!(out.state.status, JobStatus::Cancelled);
    let s = state(&store, job).await;
    assert_eq!(s.status, JobStatus::Cancelled);
    assert_eq!(s.started_at, None);
    assert_eq!(
        types(&events(&store, job).await),
        ["JobCreated", "CancelRequested", "Cancelled"]
    );
}

#[actix_rt::test]
async fn unknown_and_finished_jobs_cannot_be_cancelled() {
    let store = InMemoryStore::new();
    let signal = Arc::new(Notify::new());
    let jobs = start_supervisor(
        store.clone(),
        Arc::new(OnSignal(signal.clone())),
        clock(),
        settings(),
    );
    let err = jobs.cancel(Uuid::now_v7(), "t".into()).await.unwrap_err();
    assert_eq!(err.to_string(), "no such job");
    let job = running_job(&store, &jobs).await;
    signal.notify_one();
    settle().await;
    let err = jobs.cancel(job, "t".into()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "a job in completed state cannot be cancelled"
    );
    // The refusal says where the state it names is in the log: its stream's last event.
    let last = events(&store, job).await.pop().unwrap();
    assert_eq!(last.event_type(), "JobCompleted");
    assert!(
        matches!(err, JobsError::CannotCancel { status: JobStatus::Completed, position } if position == last.global_position),
        "{err:?}"
    );
}

/// Ignores the cancel signal, then reports long after the watchdog gave up on it.
struct Late;

#[async_trait]
impl SyncRunner for Late {
    async fn run(&self, _: RunSpec, _: CancellationToken, _: ProgressSink) -> RunOutcome {
        tokio::time::sleep(Duration::from_secs(200)).await;
        RunOutcome::Completed(counts(50))
    }
}

#[test]
fn a_report_after_the_watchdog_forced_the_job_is_never_applied() {
    paused(async {
        let store = InMemoryStore::new();
        let jobs = start_supervisor(store.clone(), Arc::new(Late), clock(), settings());
        let job = running_job(&store, &jobs).await;
        jobs.cancel(job, "t".into()).await.unwrap();
        tokio::time::advance(TIMEOUT).await;
        settle().await;
        tokio::time::advance(Duration::from_secs(120)).await;
        settle().await;
        let evs = events(&store, job).await;
        assert_eq!(
            types(&evs),
            [
                "JobCreated",
                "JobStarted",
                "CancelRequested",
                "ForceCancelled"
            ]
        );
        assert_eq!(state(&store, job).await.counts, EntityCounts::default());
    });
}

#[actix_rt::test]
async fn a_connection_whose_job_the_log_shows_final_takes_a_new_run_at_once() {
    // The registry hears of a job's end from its actor, a moment after the final event is
    // durable (and visible to readers). Here the end comes from elsewhere (another node),
    // so the registry never hears of it: a new run must still be accepted.
    let store = InMemoryStore::new();
    let clock = clock();
    let jobs = start_supervisor(store.clone(), Arc::new(Stuck), clock.clone(), settings());
    let sc = Uuid::now_v7();
    let first = jobs.create(new_job(sc)).await.unwrap().state.job_id;
    settle().await;
    let meta = Metadata::default();
    for cmd in [
        JobCommand::RequestCancel {
            requested_by: "other-node".into(),
            timeout_seconds: 180,
        },
        JobCommand::ConfirmCancelled { counts: counts(3) },
    ] {
        execute(&*store, &*clock, first, None, &cmd, &meta)
            .await
            .unwrap();
    }
    let second = jobs
        .create(new_job(sc))
        .await
        .expect("the log says the first job ended");
    assert_ne!(second.state.job_id, first);
    let err = jobs.create(new_job(sc)).await.unwrap_err();
    assert!(matches!(err, JobsError::AlreadyActive { .. }), "{err}");
}
