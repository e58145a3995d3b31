//! Several supervisors on one log, as API and worker nodes (issue #15), on tokio's paused
//! clock: the rules of claims, capacity, cancel and watchdog across nodes, decided through
//! the log alone. The multi-process proof (real processes on PostgreSQL) is
//! `tests/cluster` of the server.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_actors::{
    start_supervisor, JobSettings, Jobs, JobsError, ProgressSink, RunOutcome, RunSpec,
    SupervisorRole, SupervisorSettings, SyncRunner, INTERRUPTED,
};
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    EntityCounts, EventStore, InMemoryStore, JobCommand, JobStatus, Metadata, RecordedEvent,
    SyncJobEvent,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;
use support::{clock, counts, execute, new_job, paused, run_for, settle, state, TIMEOUT};

/// One entity per `per_entity`, `total` in all; stops at once when cancelled.
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

/// Never ends and ignores the cancel signal.
struct Stuck;

#[async_trait]
impl SyncRunner for Stuck {
    async fn run(&self, _: RunSpec, _: CancellationToken, progress: ProgressSink) -> RunOutcome {
        progress.report(counts(3));
        std::future::pending().await
    }
}

fn slow() -> Arc<Graceful> {
    Arc::new(Graceful {
        total: 1000,
        per_entity: Duration::from_millis(10),
    })
}

fn node(
    store: &Arc<InMemoryStore>,
    runner: Arc<dyn SyncRunner>,
    role: SupervisorRole,
    name: &str,
    capacity: Option<usize>,
) -> Jobs {
    start_supervisor(
        store.clone(),
        runner,
        clock(),
        SupervisorSettings {
            cancel_timeout: TIMEOUT,
            role,
            capacity,
            job: JobSettings {
                worker_name: name.into(),
                progress_every_entities: 1,
                ..JobSettings::default()
            },
            ..SupervisorSettings::default()
        },
    )
}

fn api(store: &Arc<InMemoryStore>) -> Jobs {
    node(store, slow(), SupervisorRole::Api, "api", None)
}

fn worker(
    store: &Arc<InMemoryStore>,
    runner: Arc<dyn SyncRunner>,
    name: &str,
    capacity: Option<usize>,
) -> Jobs {
    node(store, runner, SupervisorRole::Worker, name, capacity)
}

async fn events(store: &Arc<InMemoryStore>, job: Uuid) -> Vec<RecordedEvent> {
    store.read_stream(&stream::job(job), 0).await.unwrap()
}

fn started_by(events: &[RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e.job_event() {
            Some(SyncJobEvent::JobStarted { worker }) => Some(worker.clone()),
            _ => None,
        })
        .collect()
}

fn count(events: &[RecordedEvent], event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event_type() == event_type)
        .count()
}

#[test]
fn an_api_node_runs_nothing_and_a_worker_claims_what_it_creates() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        api.ready().await;
        let job = api
            .create(new_job(Uuid::now_v7()))
            .await
            .unwrap()
            .state
            .job_id;
        run_for(Duration::from_millis(50)).await;
        assert_eq!(
            state(&store, job).await.status,
            JobStatus::Pending,
            "no worker yet"
        );

        let w = worker(&store, slow(), "w1", None);
        w.ready().await;
        settle().await;
        assert_eq!(state(&store, job).await.status, JobStatus::Running);
        assert_eq!(started_by(&events(&store, job).await), ["w1"]);
        assert_eq!(w.stats().await.unwrap().running, 1);
        assert_eq!(api.stats().await.unwrap().running, 0);
    });
}

#[test]
fn a_full_worker_leaves_jobs_pending_and_takes_the_oldest_when_a_slot_frees() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let short = Arc::new(Graceful {
            total: 5,
            per_entity: Duration::from_millis(10),
        });
        let w = worker(&store, short, "w1", Some(1));
        w.ready().await;
        let mut jobs = Vec::new();
        for _ in 0..3 {
            jobs.push(
                api.create(new_job(Uuid::now_v7()))
                    .await
                    .unwrap()
                    .state
                    .job_id,
            );
        }
        settle().await;
        let statuses = |store: Arc<InMemoryStore>, jobs: Vec<Uuid>| async move {
            let mut out = Vec::new();
            for j in jobs {
                out.push(state(&store, j).await.status);
            }
            out
        };
        use JobStatus::*;
        assert_eq!(
            statuses(store.clone(), jobs.clone()).await,
            [Running, Pending, Pending]
        );
        assert_eq!(w.stats().await.unwrap().pending, 2);
        run_for(Duration::from_millis(55)).await;
        assert_eq!(
            statuses(store.clone(), jobs.clone()).await,
            [Completed, Running, Pending],
            "oldest first"
        );
        run_for(Duration::from_millis(200)).await;
        assert_eq!(
            statuses(store.clone(), jobs.clone()).await,
            [Completed, Completed, Completed]
        );
    });
}

#[test]
fn three_workers_claim_each_job_exactly_once() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let short = || {
            Arc::new(Graceful {
                total: 3,
                per_entity: Duration::from_millis(5),
            })
        };
        let workers: Vec<Jobs> = (1..=3)
            .map(|i| worker(&store, short(), &format!("w{i}"), Some(4)))
            .collect();
        for w in &workers {
            w.ready().await;
        }
        let mut jobs = Vec::new();
        for _ in 0..30 {
            jobs.push(
                api.create(new_job(Uuid::now_v7()))
                    .await
                    .unwrap()
                    .state
                    .job_id,
            );
        }
        run_for(Duration::from_millis(300)).await;
        let mut per_worker = std::collections::HashMap::<String, usize>::new();
        for job in jobs {
            let events = events(&store, job).await;
            let started = started_by(&events);
            assert_eq!(started.len(), 1, "{events:?}");
            assert_eq!(count(&events, "JobCompleted"), 1, "{events:?}");
            *per_worker.entry(started[0].clone()).or_default() += 1;
        }
        assert_eq!(per_worker.len(), 3, "every worker got some: {per_worker:?}");
        for w in &workers {
            let s = w.stats().await.unwrap();
            assert_eq!((s.running, s.pending, s.live_jobs), (0, 0, 0), "{s:?}");
        }
    });
}

#[test]
fn a_cancel_recorded_by_an_api_node_stops_the_run_on_its_worker() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let w = worker(&store, slow(), "w1", None);
        w.ready().await;
        let job = api
            .create(new_job(Uuid::now_v7()))
            .await
            .unwrap()
            .state
            .job_id;
        run_for(Duration::from_millis(55)).await;

        let asked = api.cancel(job, "api-key:x".into()).await.unwrap();
        assert_eq!(asked.state.status, JobStatus::Cancelling);
        settle().await;
        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Cancelled, "confirmed by the worker");
        assert_eq!(s.error, None, "not forced");
        assert!(s.counts.inserted >= 4, "{:?}", s.counts);
        let again = api.cancel(job, "api-key:x".into()).await.unwrap_err();
        assert!(
            matches!(
                again,
                JobsError::CannotCancel {
                    status: JobStatus::Cancelled,
                    ..
                }
            ),
            "{again}"
        );
        assert_eq!(w.stats().await.unwrap().running, 0);
    });
}

#[test]
fn every_worker_arms_the_watchdog_and_one_force_cancel_lands() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let workers: Vec<Jobs> = (1..=3)
            .map(|i| worker(&store, Arc::new(Stuck), &format!("w{i}"), None))
            .collect();
        for w in &workers {
            w.ready().await;
        }
        let job = api
            .create(new_job(Uuid::now_v7()))
            .await
            .unwrap()
            .state
            .job_id;
        settle().await;
        api.cancel(job, "api-key:x".into()).await.unwrap();
        settle().await;
        for w in &workers {
            assert_eq!(w.stats().await.unwrap().armed_watchdogs, 1);
        }
        assert_eq!(api.stats().await.unwrap().armed_watchdogs, 0);
        tokio::time::advance(TIMEOUT - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(state(&store, job).await.status, JobStatus::Cancelling);
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        let events = events(&store, job).await;
        assert_eq!(count(&events, "ForceCancelled"), 1, "{events:?}");
        assert_eq!(count(&events, "Cancelled"), 0, "{events:?}");
        for w in &workers {
            let s = w.stats().await.unwrap();
            assert_eq!(
                (s.armed_watchdogs, s.live_jobs, s.running),
                (0, 0, 0),
                "{s:?}"
            );
        }
    });
}

#[test]
fn a_worker_fails_only_its_own_interrupted_jobs_at_start() {
    paused(async {
        let store = InMemoryStore::new();
        let clock = clock();
        let meta = Metadata::default();
        let mut jobs = Vec::new();
        for name in ["w-me", "w-other"] {
            let job = support::job_in_log(&store, &*clock, false).await;
            execute(
                &*store,
                &*clock,
                job.job_id,
                Some(job.clone()),
                &JobCommand::Start {
                    worker: name.into(),
                },
                &meta,
            )
            .await
            .unwrap();
            jobs.push(job.job_id);
        }
        let w = worker(&store, slow(), "w-me", None);
        w.ready().await;
        settle().await;
        let mine = state(&store, jobs[0]).await;
        assert_eq!(mine.status, JobStatus::Failed);
        assert_eq!(mine.error.as_deref(), Some(INTERRUPTED));
        assert_eq!(
            state(&store, jobs[1]).await.status,
            JobStatus::Running,
            "another worker's job is not this worker's to fail"
        );
    });
}

#[test]
fn two_api_nodes_creating_on_one_connection_at_once_make_one_job() {
    paused(async {
        let store = InMemoryStore::new();
        let (a, b) = (api(&store), api(&store));
        for round in 0..10 {
            let sc = Uuid::now_v7();
            if round % 2 == 1 {
                // A connection whose chain does not start empty.
                let first = a.create(new_job(sc)).await.unwrap().state.job_id;
                a.cancel(first, "x".into()).await.unwrap();
            }
            let (x, y) = tokio::join!(a.create(new_job(sc)), b.create(new_job(sc)));
            let (won, lost) = match (x, y) {
                (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
                other => panic!("round {round}: {other:?}"),
            };
            match lost {
                JobsError::AlreadyActive { job_id, status, .. } => {
                    assert_eq!(job_id, won.state.job_id);
                    assert_eq!(status, JobStatus::Pending);
                }
                other => panic!("round {round}: {other}"),
            }
        }
    });
}
