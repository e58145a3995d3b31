//! A store that cannot write (a full disk) on tokio's paused clock: the final event of a
//! job is tried again, 100 ms then doubling up to 5 s, until it lands; the job never stays
//! `running` (or `cancelling`) once the store writes again, and its connection takes a new
//! run without a restart.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_actors::{
    start_supervisor, Backoff, Jobs, JobsError, ProgressSink, Recovery, RunOutcome, RunSpec,
    SupervisorSettings, SyncRunner,
};
use syncjobs_domain::events::stream;
use syncjobs_domain::store::faults::FaultyStore;
use syncjobs_domain::{EventStore, InMemoryStore, JobStatus};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;
use support::{clock, counts, job_in_log, new_job, paused, settings, settle, state, TIMEOUT};

const FULL: &str = "database or disk is full";

/// Completes when the test says so.
struct OnSignal(Arc<Notify>);

#[async_trait]
impl SyncRunner for OnSignal {
    async fn run(&self, _: RunSpec, _: CancellationToken, _: ProgressSink) -> RunOutcome {
        self.0.notified().await;
        RunOutcome::Completed(counts(7))
    }
}

/// Never ends, whatever it is told (a hung source): only the watchdog ends its job.
struct Stuck;

#[async_trait]
impl SyncRunner for Stuck {
    async fn run(&self, _: RunSpec, _: CancellationToken, _: ProgressSink) -> RunOutcome {
        std::future::pending().await
    }
}

async fn types(store: &Arc<InMemoryStore>, job: Uuid) -> Vec<&'static str> {
    let events = store.read_stream(&stream::job(job), 0).await.unwrap();
    events.iter().map(|e| e.event_type()).collect()
}

/// Moves the paused clock in `step`s for `total`, noting (in ms from the start) each moment
/// the store refused another write.
async fn refusals_over(faulty: &FaultyStore, total: Duration, step: Duration) -> Vec<u64> {
    let mut seen = faulty.refused().len();
    let mut at = Vec::new();
    let mut elapsed = Duration::ZERO;
    while elapsed < total {
        tokio::time::advance(step).await;
        settle().await;
        elapsed += step;
        let now = faulty.refused().len();
        for _ in seen..now {
            at.push(elapsed.as_millis() as u64);
        }
        seen = now;
    }
    at
}

async fn running_job(inner: &Arc<InMemoryStore>, jobs: &Jobs, sc: Uuid) -> Uuid {
    let job = jobs.create(new_job(sc)).await.unwrap().state.job_id;
    settle().await;
    assert_eq!(state(inner, job).await.status, JobStatus::Running);
    job
}

#[test]
fn the_backoff_doubles_from_100_ms_and_stays_at_5_s() {
    let mut b = Backoff::default();
    let waits: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
    assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
}

#[test]
fn a_final_event_the_store_refuses_is_tried_again_until_it_lands() {
    paused(async {
        let inner = InMemoryStore::new();
        let faulty = FaultyStore::new(inner.clone());
        let signal = Arc::new(Notify::new());
        let jobs = start_supervisor(
            faulty.clone(),
            Arc::new(OnSignal(signal.clone())),
            clock(),
            settings(),
        );
        let sc = Uuid::now_v7();
        let job = running_job(&inner, &jobs, sc).await;

        faulty.fail_writes(FULL);
        signal.notify_one();
        settle().await;
        assert_eq!(faulty.refused(), ["JobCompleted"], "tried at once");
        // The tries that follow, 100 ms then doubling, never more than 5 s apart.
        let at = refusals_over(&faulty, Duration::from_secs(22), Duration::from_millis(5)).await;
        let mut gaps = vec![at[0]];
        gaps.extend(at.windows(2).map(|w| w[1] - w[0]));
        let expected = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000];
        assert_eq!(gaps.len(), expected.len(), "tries at {at:?}");
        for (gap, want) in gaps.iter().zip(expected) {
            assert!(
                gap.abs_diff(want) <= 5,
                "gaps {gaps:?}, expected {expected:?}"
            );
        }
        assert!(faulty.refused().iter().all(|t| *t == "JobCompleted"));
        // Meanwhile the log says running, and so does the answer to a new run.
        assert_eq!(state(&inner, job).await.status, JobStatus::Running);
        let busy = jobs.create(new_job(sc)).await.unwrap_err();
        assert!(
            matches!(
                busy,
                JobsError::AlreadyActive {
                    status: JobStatus::Running,
                    ..
                }
            ),
            "{busy}"
        );

        faulty.heal();
        let tries = faulty.refused().len();
        refusals_over(&faulty, Backoff::MAX, Duration::from_millis(5)).await;
        assert_eq!(faulty.refused().len(), tries, "no refusal once healed");
        let s = state(&inner, job).await;
        assert_eq!(s.status, JobStatus::Completed);
        assert_eq!(s.counts, counts(7));
        assert_eq!(
            types(&inner, job).await,
            ["JobCreated", "JobStarted", "JobCompleted"],
            "exactly one final event"
        );
        let next = jobs
            .create(new_job(sc))
            .await
            .expect("the connection takes a new run without a restart");
        assert_ne!(next.state.job_id, job);
        assert_eq!(jobs.stats().await.unwrap().live_jobs, 1);
    });
}

#[test]
fn a_forced_cancel_the_store_refuses_is_tried_again_until_it_lands() {
    paused(async {
        let inner = InMemoryStore::new();
        let faulty = FaultyStore::new(inner.clone());
        let jobs = start_supervisor(faulty.clone(), Arc::new(Stuck), clock(), settings());
        let sc = Uuid::now_v7();
        let job = running_job(&inner, &jobs, sc).await;
        jobs.cancel(job, "api-key:test".into()).await.unwrap();

        faulty.fail_writes(FULL);
        tokio::time::advance(TIMEOUT).await;
        settle().await;
        assert_eq!(faulty.refused(), ["ForceCancelled"]);
        let at = refusals_over(&faulty, Duration::from_secs(2), Duration::from_millis(5)).await;
        assert_eq!(at.len(), 4, "tried at +100, +300, +700, +1500 ms: {at:?}");
        assert_eq!(state(&inner, job).await.status, JobStatus::Cancelling);

        faulty.heal();
        refusals_over(&faulty, Backoff::MAX, Duration::from_millis(5)).await;
        assert_eq!(state(&inner, job).await.status, JobStatus::Cancelled);
        assert_eq!(
            types(&inner, job).await,
            [
                "JobCreated",
                "JobStarted",
                "CancelRequested",
                "ForceCancelled"
            ]
        );
        jobs.create(new_job(sc))
            .await
            .expect("the connection takes a new run");
    });
}

#[test]
fn a_job_interrupted_by_a_restart_is_resumed_once_the_store_writes_again() {
    paused(async {
        let inner = InMemoryStore::new();
        let clock = clock();
        let running = job_in_log(&inner, &*clock, true).await;
        let faulty = FaultyStore::new(inner.clone());
        faulty.fail_writes(FULL);
        let jobs = start_supervisor(
            faulty.clone(),
            Arc::new(Stuck),
            clock,
            SupervisorSettings {
                recovery: Recovery::ScanLog,
                ..settings()
            },
        );
        jobs.ready().await;
        refusals_over(&faulty, Duration::from_secs(1), Duration::from_millis(5)).await;
        assert!(faulty.refused().len() >= 3, "{:?}", faulty.refused());
        assert!(faulty.refused().iter().all(|t| *t == "JobResumed"));
        assert_eq!(
            state(&inner, running.job_id).await.status,
            JobStatus::Running
        );

        faulty.heal();
        refusals_over(&faulty, Backoff::MAX, Duration::from_millis(5)).await;
        // Resumed, then claimed again and running (its runner never ends).
        let s = state(&inner, running.job_id).await;
        assert_eq!((s.status, s.resumes), (JobStatus::Running, 1));
    });
}
