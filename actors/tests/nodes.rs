//! Several supervisors on one log, as API and worker nodes (issue #15), on tokio's paused
//! clock: the rules of claims, capacity, cancel and watchdog across nodes, decided through
//! the log alone. The multi-process proof (real processes on PostgreSQL) is
//! `tests/cluster` of the server.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_actors::{
    start_supervisor, JobSettings, Jobs, JobsError, Liveness, ProgressSink, RunOutcome, RunSpec,
    SupervisorRole, SupervisorSettings, SyncRunner, WORKER_LOST,
};
use syncjobs_domain::events::{stream, Event, WorkerEvent};
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
    node_with(store.clone(), runner, role, name, capacity, patient(), 1)
}

/// Liveness out of the way: these tests jump the clock by a whole cancel timeout at once,
/// which a worker cannot beat through (liveness is tested below with its own).
fn patient() -> Liveness {
    Liveness {
        timeout: TIMEOUT * 10,
        ..Liveness::default()
    }
}

fn node_with(
    store: Arc<dyn EventStore>,
    runner: Arc<dyn SyncRunner>,
    role: SupervisorRole,
    name: &str,
    capacity: Option<usize>,
    liveness: Liveness,
    max_resumes: u32,
) -> Jobs {
    start_supervisor(
        store,
        runner,
        clock(),
        SupervisorSettings {
            cancel_timeout: TIMEOUT,
            role,
            capacity,
            job: JobSettings {
                worker_name: name.into(),
                progress_every_entities: 1,
                max_resumes,
                ..JobSettings::default()
            },
            liveness,
            ..SupervisorSettings::default()
        },
    )
}

/// Heartbeat every second, lost after 3 s of silence.
const BEAT: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(3);

fn live_worker(
    store: &Arc<InMemoryStore>,
    runner: Arc<dyn SyncRunner>,
    name: &str,
    max_resumes: u32,
) -> Jobs {
    let liveness = Liveness {
        heartbeat: BEAT,
        timeout: SILENCE,
        ..Liveness::default()
    };
    let (role, store) = (SupervisorRole::Worker, store.clone());
    node_with(store, runner, role, name, None, liveness, max_resumes)
}

/// The events of a worker's stream, by type.
async fn worker_events(store: &Arc<InMemoryStore>, name: &str) -> Vec<WorkerEvent> {
    store
        .read_stream(&stream::worker(name), 0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Worker(w) => Some(w),
            _ => None,
        })
        .collect()
}

fn quick() -> Arc<Graceful> {
    Arc::new(Graceful {
        total: 100,
        per_entity: Duration::from_millis(10),
    })
}

fn api(store: &Arc<InMemoryStore>) -> Jobs {
    node(store, slow(), SupervisorRole::Api, "api", None)
}

/// A job created through `jobs` (on a connection of its own); its id.
async fn created(jobs: &Jobs) -> Uuid {
    jobs.create(new_job(Uuid::now_v7()))
        .await
        .unwrap()
        .state
        .job_id
}

fn worker(
    store: &Arc<InMemoryStore>,
    runner: Arc<dyn SyncRunner>,
    name: &str,
    capacity: Option<usize>,
) -> Jobs {
    node(store, runner, SupervisorRole::Worker, name, capacity)
}

/// The workers with a heartbeat row, sorted.
async fn beating(store: &Arc<InMemoryStore>) -> Vec<String> {
    let mut ids: Vec<String> = store
        .heartbeats()
        .await
        .unwrap()
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    ids.sort();
    ids
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

fn types(events: &[RecordedEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type()).collect()
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
        let job = created(&api).await;
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
            jobs.push(created(&api).await);
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
            jobs.push(created(&api).await);
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
        let job = created(&api).await;
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

/// The log as a worker sees it, counting the worker's reads of job streams.
struct CountingStreamReads {
    inner: Arc<InMemoryStore>,
    job_stream_reads: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl EventStore for CountingStreamReads {
    async fn append(
        &self,
        stream: &str,
        expected: syncjobs_domain::ExpectedVersion,
        events: Vec<syncjobs_domain::NewEvent>,
    ) -> Result<Vec<RecordedEvent>, syncjobs_domain::StoreError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        s: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, syncjobs_domain::StoreError> {
        if stream::job_id(s).is_some() {
            self.job_stream_reads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.read_stream(s, after).await
    }
    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, syncjobs_domain::StoreError> {
        self.inner.read_all(after, limit).await
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
    fn backend(&self) -> &'static str {
        "counting"
    }
    async fn heartbeat(
        &self,
        worker: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), syncjobs_domain::StoreError> {
        self.inner.heartbeat(worker, at).await
    }
    async fn heartbeats(
        &self,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, syncjobs_domain::StoreError> {
        self.inner.heartbeats().await
    }
    async fn forget_heartbeat(&self, worker: &str) -> Result<(), syncjobs_domain::StoreError> {
        self.inner.forget_heartbeat(worker).await
    }
}

/// A worker learns of another node's cancel request from the log it follows, and takes the
/// request from there: it does not read the job's stream again (a round trip of every
/// cancel across nodes, bench #14).
#[test]
fn a_worker_takes_another_node_s_cancel_request_from_the_log_without_reading_the_stream() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let counting = Arc::new(CountingStreamReads {
            inner: store.clone(),
            job_stream_reads: Default::default(),
        });
        let role = SupervisorRole::Worker;
        let w = node_with(counting.clone(), slow(), role, "w1", None, patient(), 1);
        w.ready().await;
        let job = created(&api).await;
        run_for(Duration::from_millis(55)).await;
        let before = counting
            .job_stream_reads
            .load(std::sync::atomic::Ordering::SeqCst);
        api.cancel(job, "api-key:x".into()).await.unwrap();
        settle().await;
        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Cancelled, "confirmed by the worker");
        assert_eq!(s.error, None, "not forced");
        let reads = counting
            .job_stream_reads
            .load(std::sync::atomic::Ordering::SeqCst)
            - before;
        assert_eq!(reads, 0, "the worker read the job's stream {reads} times");
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
        let job = created(&api).await;
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
fn a_worker_resumes_only_its_own_interrupted_jobs_at_start() {
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
        // Resumed, then claimed again by this same worker (the only one).
        let mine = state(&store, jobs[0]).await;
        assert_eq!(mine.resumes, 1);
        assert_eq!(
            (mine.status, mine.worker.as_deref()),
            (JobStatus::Running, Some("w-me"))
        );
        let other = state(&store, jobs[1]).await;
        assert_eq!(
            (other.status, other.resumes),
            (JobStatus::Running, 0),
            "another worker's job is not this worker's to rescue"
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

/// A worker is killed (its supervisor and runs stop, nothing written) while its job runs:
/// after the timeout, and not before, it is declared lost once although two nodes watch,
/// and its job is resumed (JobResumed{attempt 1, lost_worker}) and completed by another.
#[test]
fn a_silent_worker_is_declared_lost_once_and_its_running_job_resumes_on_another() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let w1 = live_worker(&store, quick(), "w1", 1);
        w1.ready().await;
        settle().await;
        let job = created(&api).await;
        run_for(Duration::from_millis(300)).await;
        assert_eq!(state(&store, job).await.worker.as_deref(), Some("w1"));
        let (w2, w3) = (
            live_worker(&store, quick(), "w2", 1),
            live_worker(&store, quick(), "w3", 1),
        );
        w2.ready().await;
        w3.ready().await;
        // The kill: right after a beat of w1's (they come every second from its start).
        w1.shutdown().await;
        let head = *store.watch_head().borrow();
        run_for(SILENCE - Duration::from_millis(800)).await;
        assert!(
            !worker_events(&store, "w1")
                .await
                .iter()
                .any(|e| matches!(e, WorkerEvent::WorkerLost { .. })),
            "not lost before its timeout"
        );
        assert_eq!(state(&store, job).await.status, JobStatus::Running);
        assert_eq!(
            *store.watch_head().borrow(),
            head,
            "heartbeats write no event"
        );
        run_for(Duration::from_secs(2)).await;
        let lost: Vec<WorkerEvent> = worker_events(&store, "w1")
            .await
            .into_iter()
            .filter(|e| matches!(e, WorkerEvent::WorkerLost { .. }))
            .collect();
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(
            !beating(&store).await.contains(&"w1".to_owned()),
            "a lost worker's heartbeat is dropped"
        );
        let WorkerEvent::WorkerLost {
            timeout_seconds,
            detected_by,
            ..
        } = &lost[0]
        else {
            unreachable!()
        };
        assert_eq!(*timeout_seconds, 3);
        assert!(
            ["w2", "w3"].contains(&detected_by.as_str()),
            "{detected_by}"
        );
        run_for(Duration::from_secs(2)).await;
        let events = events(&store, job).await;
        let resumed: Vec<(u32, String)> = events
            .iter()
            .filter_map(|e| match e.job_event() {
                Some(SyncJobEvent::JobResumed {
                    attempt,
                    lost_worker,
                    ..
                }) => Some((*attempt, lost_worker.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(resumed, vec![(1, "w1".to_owned())]);
        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Completed, "{:?}", types(&events));
        assert_ne!(s.worker.as_deref(), Some("w1"));
        assert_eq!(s.counts.inserted, 100);
    });
}

/// Past the resume limit the lost worker's job fails, naming the worker and when it was
/// last seen; its cancelling job is cancelled at once (no wait for the 180 s watchdog).
#[test]
fn a_lost_workers_jobs_fail_past_the_resume_limit_or_are_cancelled_at_once() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let w1 = live_worker(&store, Arc::new(Stuck), "w1", 0);
        w1.ready().await;
        settle().await;
        let running = created(&api).await;
        let cancelling = created(&api).await;
        settle().await;
        api.cancel(cancelling, "api-key:x".into()).await.unwrap();
        settle().await;
        assert_eq!(
            state(&store, cancelling).await.status,
            JobStatus::Cancelling
        );
        let w2 = live_worker(&store, Arc::new(Stuck), "w2", 0);
        w2.ready().await;
        w1.shutdown().await;
        run_for(SILENCE + 2 * BEAT).await;

        let WorkerEvent::WorkerLost { last_seen, .. } =
            worker_events(&store, "w1").await.pop().expect("w1 lost")
        else {
            panic!("w1's last event is not WorkerLost");
        };
        let failed = state(&store, running).await;
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.error_category.as_deref(), Some(WORKER_LOST));
        let error = failed.error.unwrap_or_default();
        assert!(
            error.contains("worker w1 was lost")
                && error.contains(&format!("last seen {}", last_seen.to_rfc3339())),
            "{error}"
        );
        let c = state(&store, cancelling).await;
        assert_eq!(c.status, JobStatus::Cancelled);
        let note = c.error_details.unwrap_or_default()["note"].clone();
        assert!(
            note.as_str().is_some_and(|n| n.contains("worker w1")),
            "{note}"
        );
        let evs = events(&store, cancelling).await;
        assert_eq!(count(&evs, "ForceCancelled"), 0, "{:?}", types(&evs));
        assert_eq!(w2.stats().await.unwrap().live_jobs, 0);
    });
}

/// A graceful stop: no more claims, the running job is given a bound to finish, then handed
/// back (pending again, no resume used) and completed by another worker; WorkerStopped
/// records it, and the stopped worker is never declared lost.
#[test]
fn a_draining_worker_hands_its_unfinished_job_back_and_another_completes_it() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let w1 = live_worker(&store, quick(), "w1", 1);
        w1.ready().await;
        settle().await;
        let job = created(&api).await;
        run_for(Duration::from_millis(200)).await;
        let w2 = live_worker(&store, quick(), "w2", 1);
        w2.ready().await;
        let drained = tokio::spawn({
            let w1 = w1.clone();
            async move { w1.drain(Duration::from_millis(300)).await }
        });
        run_for(Duration::from_millis(700)).await;
        assert_eq!(drained.await.unwrap().unwrap(), 1);
        w1.shutdown().await;
        assert!(matches!(
            worker_events(&store, "w1").await.last(),
            Some(WorkerEvent::WorkerStopped { handed_back: 1, .. })
        ));
        assert_eq!(
            beating(&store).await,
            ["w2"],
            "a stopped worker's heartbeat is dropped, a live one's kept"
        );
        run_for(Duration::from_secs(2) + SILENCE).await;
        let evs = events(&store, job).await;
        assert!(
            evs.iter().any(|e| matches!(
                e.job_event(),
                Some(SyncJobEvent::JobResumed {
                    attempt: 0,
                    handed_back: true,
                    ..
                })
            )),
            "{:?}",
            types(&evs)
        );
        assert_eq!(started_by(&evs), ["w1", "w2"]);
        let s = state(&store, job).await;
        assert_eq!((s.status, s.resumes), (JobStatus::Completed, 0));
        assert!(
            !worker_events(&store, "w1")
                .await
                .iter()
                .any(|e| matches!(e, WorkerEvent::WorkerLost { .. })),
            "a stopped worker is not lost"
        );
    });
}

/// A worker that is alive but cannot reach the store for longer than the timeout (a
/// partition) is declared lost; its job is resumed on another worker. Once it sees its own
/// WorkerLost it stops its run (nothing more of it lands on the job) and announces itself
/// again; the job completes once, by the other worker.
#[test]
fn a_worker_declared_lost_while_alive_stops_its_run_and_announces_itself_again() {
    paused(async {
        let store = InMemoryStore::new();
        let api = api(&store);
        let cut_off = syncjobs_domain::store::faults::FaultyStore::new(store.clone());
        let long = || {
            Arc::new(Graceful {
                total: 500,
                per_entity: Duration::from_millis(10),
            })
        };
        let w1 = start_supervisor(
            cut_off.clone(),
            long(),
            clock(),
            SupervisorSettings {
                cancel_timeout: TIMEOUT,
                role: SupervisorRole::Worker,
                job: JobSettings {
                    worker_name: "w1".into(),
                    progress_every_entities: 1,
                    ..JobSettings::default()
                },
                liveness: Liveness {
                    heartbeat: BEAT,
                    timeout: SILENCE,
                    ..Liveness::default()
                },
                ..SupervisorSettings::default()
            },
        );
        w1.ready().await;
        settle().await;
        let job = created(&api).await;
        run_for(Duration::from_millis(300)).await;
        assert_eq!(state(&store, job).await.worker.as_deref(), Some("w1"));
        let w2 = live_worker(&store, long(), "w2", 1);
        w2.ready().await;
        cut_off.fail_writes("network is unreachable");
        run_for(SILENCE + 2 * BEAT).await;
        assert_eq!(
            w1.stats().await.unwrap().running,
            0,
            "its run stopped once it read its WorkerLost"
        );
        cut_off.heal();
        run_for(Duration::from_secs(7)).await;
        let names: Vec<&str> = worker_events(&store, "w1")
            .await
            .iter()
            .map(|e| match e {
                WorkerEvent::WorkerStarted { .. } => "started",
                WorkerEvent::WorkerStopped { .. } => "stopped",
                WorkerEvent::WorkerLost { .. } => "lost",
            })
            .collect();
        assert_eq!(names, ["started", "lost", "started"]);
        let evs = events(&store, job).await;
        assert_eq!(started_by(&evs), ["w1", "w2"], "{:?}", types(&evs));
        let s = state(&store, job).await;
        assert_eq!(s.status, JobStatus::Completed, "{:?}", types(&evs));
        assert_eq!(
            s.counts.inserted, 500,
            "w2's whole run, nothing of w1's after"
        );
        assert_eq!(count(&evs, "JobResumed"), 1);
    });
}
