//! Shared by the actors' integration tests: an actix System on tokio's paused clock, ways to
//! let it run, and jobs written straight to the log (as another process would).

#![allow(dead_code)] // each test binary uses its own subset

use chrono::{TimeZone, Utc};
use std::sync::Arc;
use std::time::Duration;
use syncjobs_actors::{command, JobResult, NewJob, SupervisorSettings};
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    Clock, EntityCounts, EventStore, InMemoryStore, Job, JobCommand, JobState, Metadata, TokioClock,
};
use uuid::Uuid;

/// Runs a test on an actix System whose tokio clock is paused from the start: time moves
/// only by `tokio::time::advance` (or, when every task is idle, to the next timer).
/// `#[actix_rt::test]` plus `tokio::time::pause()` does not do: its runtime does not fire
/// timers on `advance` while the test body keeps yielding.
pub fn paused<F: std::future::Future>(body: F) -> F::Output {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    })
    .block_on(body)
}

/// Lets every actor and task run until nothing is left to do, without moving the clock.
pub async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// Advances the paused clock in 1 ms steps, letting everything run after each.
pub async fn run_for(d: Duration) {
    for _ in 0..d.as_millis() {
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
    }
}

/// Wall time that moves with tokio's (paused) clock, from a fixed start.
pub fn clock() -> Arc<TokioClock> {
    Arc::new(TokioClock::starting_at(
        Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap(),
    ))
}

/// Writes JobCreated (and JobStarted if `started`) for a new job straight to the log.
pub async fn job_in_log(store: &Arc<InMemoryStore>, clock: &dyn Clock, started: bool) -> JobState {
    let job_id = Uuid::now_v7();
    let meta = Metadata::default();
    let create = JobCommand::Create {
        job_id,
        source_connection_id: Uuid::now_v7(),
        organization_id: Uuid::from_u128(1),
        short_name: "timed".into(),
        config: serde_json::json!({}),
    };
    let mut state = execute(&**store, clock, job_id, None, &create, &meta)
        .await
        .unwrap()
        .state;
    if started {
        let start = JobCommand::Start { worker: "w".into() };
        let known = state.0.clone();
        state = execute(&**store, clock, job_id, known, &start, &meta)
            .await
            .unwrap()
            .state;
    }
    state.0.expect("the job was created")
}

/// Runs `cmd` on a job's stream through the one command path, as another node would.
pub async fn execute(
    store: &dyn EventStore,
    clock: &dyn Clock,
    job_id: Uuid,
    known: Option<JobState>,
    cmd: &JobCommand,
    meta: &Metadata,
) -> JobResult {
    let known = known.map(Job::from);
    command::execute(store, clock, &stream::job(job_id), known, cmd, meta).await
}

/// The watchdog's timeout in these tests (the API's default).
pub const TIMEOUT: Duration = Duration::from_secs(180);

pub fn counts(n: u64) -> EntityCounts {
    EntityCounts {
        inserted: n,
        ..Default::default()
    }
}

pub fn settings() -> SupervisorSettings {
    SupervisorSettings {
        cancel_timeout: TIMEOUT,
        ..Default::default()
    }
}

pub fn new_job(sc: Uuid) -> NewJob {
    NewJob {
        source_connection_id: sc,
        organization_id: Uuid::from_u128(1),
        short_name: "timed".into(),
        config: serde_json::json!({}),
        caused_by: "test".into(),
        latest_job: None,
    }
}

/// The job's state as its stream says.
pub async fn state(store: &Arc<InMemoryStore>, job: Uuid) -> JobState {
    command::load::<Job>(&**store, &stream::job(job))
        .await
        .unwrap()
        .0
        .expect("job exists")
}
