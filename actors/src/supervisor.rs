//! `Supervisor`: the registry of live jobs, claims, the watchdog, and recovery after a restart.
//!
//! The log is the only channel between nodes (../shared/DISTRIBUTED.md). A node that runs
//! jobs (`--role all` or `worker`) follows the global log and keeps every job that is not
//! final in its registry, whoever created or runs it:
//! - Claims: a pending job is claimed, oldest first, while this node has capacity, by
//!   appending JobStarted{worker: this node} expecting the version it saw; one node wins,
//!   the others meet a conflict and move on. The winner's [`JobActor`] runs the job.
//! - Cancel: an API node records CancelRequested on the job's stream; the node running the
//!   job sees it in the log and its actor stops the run gracefully and records `Cancelled`.
//! - Watchdog: every node that runs jobs arms a timer for every `cancelling` job at
//!   recorded_at(CancelRequested) + the timeout recorded with it. The deadline is taken from
//!   the log, never from boot, so a restart neither resets nor loses it; the first node to
//!   fire appends ForceCancelled with the expected version, the others conflict and stop.
//! - Recovery (on start, before any message): the unfinished jobs are loaded; pending ones
//!   wait for a claim, running ones this node ran (an `all` node: all of them) are rescued
//!   (resumed while resumes remain, else failed: [`JobCommand::Rescue`]), cancelling ones
//!   get their watchdog re-armed (firing at once when overdue). Both record the counts the
//!   destination durably holds for the job: the dead (or stuck) run's last progress report
//!   may be behind them. Jobs held by a worker found lost or stopped are rescued too.
//! - Liveness (../shared/DISTRIBUTED.md, "Liveness", "Dead worker"): a worker beats (a row
//!   in the store, not an event) and announces itself (WorkerStarted) before it claims;
//!   every node that runs jobs declares a silent worker lost (WorkerLost, expected version:
//!   once), and every node that sees it rescues that worker's jobs, each by an append with
//!   the expected version. A graceful stop drains ([`Jobs::drain`]).
//! - One active job per source connection: decided on the log too ([`job_after`]).
//!
//! An API node (`--role api`) keeps no registry: it creates and cancels through the log.
//! [`Jobs`] is the cheap, cloneable handle the API uses.

use crate::command::{self, CommandError, Executed};
use crate::job::{
    Backoff, ForceCancel, HandBack, JobActor, JobEnv, JobGone, JobResult, JobSettings, JobUpdate,
    Refresh, RequestCancel, RescueOrder, Shutdown,
};
use crate::runner::SyncRunner;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::events::{stream, Event, NewEvent, RecordedEvent, SyncJobEvent, WorkerEvent};
use syncjobs_domain::{
    follow_batches, Aggregate, EventStore, ExpectedVersion, FoldError, Job, JobCommand, JobError,
    JobState, JobStatus, Metadata, SharedClock, StoreError, WorkerState, WorkerStatus,
};
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

/// What this process does with jobs (`syncjobs serve --role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SupervisorRole {
    /// Creates, runs and watches jobs, assuming no other process runs any: a running job
    /// found at start died with this process's last run (today's single process).
    #[default]
    All,
    /// Creates and cancels jobs through the log; runs none and arms no watchdog.
    Api,
    /// Runs the jobs it claims from the log and watches every cancelling one and every
    /// worker's liveness. At start it rescues only the running jobs its own node id started:
    /// the others run on other workers (or are rescued once those are declared lost).
    Worker,
}

impl SupervisorRole {
    /// Whether this node claims and runs jobs (and so follows the log and arms watchdogs).
    pub fn runs_jobs(&self) -> bool {
        !matches!(self, SupervisorRole::Api)
    }
}

#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// How long a job may stay `cancelling` before the watchdog forces it (API: 3 minutes).
    pub cancel_timeout: Duration,
    pub job: JobSettings,
    pub recovery: Recovery,
    pub role: SupervisorRole,
    /// The most jobs this node runs at once (None: no bound). A pending job waits while
    /// every node that runs jobs is full.
    pub capacity: Option<usize>,
    /// The global position after which the log is followed once recovery is done: the
    /// position the recovery's list of jobs is true at. None: where recovery's own scan of
    /// the log ended, or the log's head when recovery was given its jobs.
    pub follow_after: Option<u64>,
    pub liveness: Liveness,
}

/// Worker liveness (../shared/DISTRIBUTED.md, "Liveness", "Dead worker").
#[derive(Debug, Clone)]
pub struct Liveness {
    /// How often a worker beats, and every node that runs jobs looks for silent workers
    /// (`SYNCJOBS_WORKER_HEARTBEAT_SECONDS`).
    pub heartbeat: Duration,
    /// Silence after which a worker is declared lost (`SYNCJOBS_WORKER_TIMEOUT_SECONDS`).
    /// Compared across nodes' clocks: their skew must stay well below it.
    pub timeout: Duration,
    /// What WorkerStarted records of this process.
    pub host: String,
    pub pid: u32,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            heartbeat: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            host: std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            pid: std::process::id(),
        }
    }
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            cancel_timeout: Duration::from_secs(180),
            job: JobSettings::default(),
            recovery: Recovery::ScanLog,
            role: SupervisorRole::All,
            capacity: None,
            follow_after: None,
            liveness: Liveness::default(),
        }
    }
}

/// Where recovery learns which jobs are unfinished. Either way each of them is then rebuilt
/// from its own stream, so the decisions (start, rescue, re-arm the watchdog)
/// come from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Fold the whole global log: needs nothing else, costs a full read of the log.
    ScanLog,
    /// These jobs, as a read model caught up with the log's head says (the API's start-up:
    /// its projection has just read the log, so a second full scan would only repeat it).
    Jobs(Vec<Uuid>),
}

/// A request to create and start a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub source_connection_id: Uuid,
    pub organization_id: Uuid,
    pub short_name: String,
    pub config: serde_json::Value,
    /// The principal, e.g. `api-key:<key id>`.
    pub caused_by: String,
    /// The connection's latest job as the caller's read model shows it (None: no job, or
    /// not known). Only a hint where to start looking: the log decides (see [`job_after`]).
    pub latest_job: Option<Uuid>,
}

/// A command's effect as the API needs it.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    pub state: JobState,
    /// Global position of the last event appended (0 if none): what read-your-writes waits for.
    pub position: u64,
}

impl TryFrom<Executed<Job>> for CommandOutcome {
    type Error = JobsError;

    /// Every command that does not refuse leaves a job (a decision on none creates or
    /// refuses), so the `NotFound` here is only a guard.
    fn try_from(e: Executed<Job>) -> Result<Self, JobsError> {
        let position = e.position();
        let state = e.state.0.ok_or(JobError::NotFound)?;
        Ok(CommandOutcome { state, position })
    }
}

/// Why the write side refused or failed a command.
///
/// The refusals that name a job's state carry where that state is in the log, so that an
/// answer revealing it can wait, as a 200 does, until the read model shows it too: a client
/// told `completed` must not read `running` on its next GET.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Job(#[from] JobError),
    /// The job is not pending or running. `position`: the global position of the last
    /// event of its stream once the refusal was decided (0 if unknown).
    #[error("a job in {status} state cannot be cancelled")]
    CannotCancel { status: JobStatus, position: u64 },
    /// The source connection already has a job (`job_id`) in this (non-final) status.
    /// `position` as for `CannotCancel` (the log names it: the job is read before the refusal).
    #[error("the source connection has a sync job {status} already")]
    AlreadyActive {
        status: JobStatus,
        job_id: Uuid,
        position: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job stream is corrupt: {0}")]
    Corrupt(String),
    #[error("the job supervisor is not running")]
    Unavailable,
}

impl From<CommandError<JobError>> for JobsError {
    fn from(e: CommandError<JobError>) -> Self {
        match e {
            CommandError::Rejected(JobError::CannotCancel(status)) => JobsError::CannotCancel {
                status,
                position: 0,
            },
            CommandError::Rejected(e) => JobsError::Job(e),
            CommandError::Store(e) => JobsError::Store(e),
            e @ CommandError::Corrupt { .. } => JobsError::Corrupt(e.to_string()),
            // As a store that cannot write now: the API answers 500, the actor tries again.
            e @ CommandError::Contention { .. } => {
                JobsError::Store(StoreError::Backend(e.to_string()))
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "Result<CommandOutcome, JobsError>")]
struct CreateJob(NewJob);

#[derive(Message)]
#[rtype(result = "Result<CommandOutcome, JobsError>")]
struct CancelJob {
    job_id: Uuid,
    requested_by: String,
}

#[derive(Message)]
#[rtype(result = "SupervisorStats")]
struct GetStats;

#[derive(Message)]
#[rtype(result = "()")]
struct StopAll;

#[derive(Message)]
#[rtype(result = "()")]
struct WatchdogFired {
    job_id: Uuid,
}

/// Drain, step by step (see [`Jobs::drain`]).
#[derive(Message)]
#[rtype(result = "()")]
enum Drain {
    /// Claim nothing more.
    StopClaiming,
    /// Stop the runs still going and record each job pending again.
    HandBackAll,
}

/// Records WorkerStopped on this node's stream; answers how many jobs were handed back.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
struct RecordStopped {
    handed_back: u64,
}

/// What `/health` shows of the write side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, MessageResponse)]
pub struct SupervisorStats {
    /// Jobs not final that this node knows of (its own and, on a node that runs jobs,
    /// every other one it follows in the log).
    pub live_jobs: usize,
    pub armed_watchdogs: usize,
    /// Jobs this node runs now (its job actors), and how many it may run at once.
    pub running: usize,
    pub capacity: Option<usize>,
    /// Jobs waiting for a worker, as this node sees the log.
    pub pending: usize,
}

/// A job not final, as this node knows it: its state folded from the log, and what this
/// node does for it.
struct Entry {
    /// The job as the log says, folded by the follower (or loaded at recovery).
    state: JobState,
    /// Global position of its JobCreated: claims go oldest first.
    created_position: u64,
    /// This node's actor for it: the job runs here (or is being rescued from a gone worker).
    addr: Option<Addr<JobActor>>,
    /// A claim of it by this node is being appended.
    claiming: bool,
    watchdog: Option<(DateTime<Utc>, SpawnHandle)>,
    /// Waits between tries of a ForceCancelled the store refused.
    force_retry: Backoff,
    /// A rescue of it from its gone worker was started here (not again until it is claimed
    /// again: the follower may not have folded the rescue yet).
    rescued: bool,
}

impl Entry {
    fn new(state: JobState, created_position: u64) -> Entry {
        Entry {
            state,
            created_position,
            addr: None,
            claiming: false,
            watchdog: None,
            force_retry: Backoff::default(),
            rescued: false,
        }
    }
}

pub struct Supervisor {
    env: Arc<JobEnv>,
    recovery: Recovery,
    role: SupervisorRole,
    capacity: Option<usize>,
    follow_after: Option<u64>,
    cancel_timeout: Duration,
    jobs: HashMap<Uuid, Entry>,
    /// Pending jobs by the position of their JobCreated: the claim order.
    pending: BTreeSet<(u64, Uuid)>,
    /// This node's job actors plus its claims in flight: what counts against capacity.
    running: usize,
    claiming: usize,
    /// Waits before claiming again after the store refused a claim (not a conflict).
    claim_retry: Backoff,
    claim_retry_armed: bool,
    ready: watch::Sender<bool>,
    liveness: Liveness,
    /// Every worker this node knows of, folded from the worker streams.
    workers: HashMap<String, WorkerState>,
    /// A worker node: its WorkerStarted is recorded (it claims only once it is).
    announced: bool,
    announce_retry: Backoff,
    /// Stopping gracefully: claims nothing more.
    draining: bool,
}

/// Starts the supervisor on the current actix arbiter and returns its handle. It recovers
/// from the log before it handles any command; `Jobs::ready` tells when that is done.
pub fn start_supervisor(
    store: Arc<dyn EventStore>,
    runner: Arc<dyn SyncRunner>,
    clock: SharedClock,
    settings: SupervisorSettings,
) -> Jobs {
    let (ready, ready_rx) = watch::channel(false);
    let env = Arc::new(JobEnv {
        store,
        clock,
        runner,
        settings: settings.job,
    });
    let addr = Supervisor {
        env,
        recovery: settings.recovery,
        role: settings.role,
        capacity: settings.capacity,
        follow_after: settings.follow_after,
        cancel_timeout: settings.cancel_timeout,
        jobs: HashMap::new(),
        pending: BTreeSet::new(),
        running: 0,
        claiming: 0,
        claim_retry: Backoff::default(),
        claim_retry_armed: false,
        ready,
        liveness: settings.liveness,
        workers: HashMap::new(),
        announced: false,
        announce_retry: Backoff::default(),
        draining: false,
    }
    .start();
    Jobs {
        addr,
        ready: ready_rx,
    }
}

/// A job found unfinished at start: its state, where it was created, the worker its
/// JobStarted names (if it started), and when its last event was recorded.
struct Found {
    state: JobState,
    created_position: u64,
    worker: Option<String>,
    last_event_at: Option<DateTime<Utc>>,
}

/// What recovery hands the supervisor: the unfinished jobs, the workers known (folded from
/// their streams) with their latest heartbeats, and where to follow the log from.
struct Recovered {
    jobs: Vec<Found>,
    workers: HashMap<String, WorkerState>,
    beats: Beats,
    after: u64,
}

/// Folds one job's events (all of them, from its JobCreated) into what recovery needs.
fn found_from(events: &[RecordedEvent]) -> Result<Option<Found>, FoldError> {
    let mut job = Job::initial();
    let mut worker = None;
    for e in events {
        job.evolve(e)?;
        if let Some(SyncJobEvent::JobStarted { worker: w }) = e.job_event() {
            worker = Some(w.clone());
        }
    }
    Ok(job.0.map(|state| Found {
        state,
        created_position: events.first().map_or(0, |e| e.global_position),
        worker,
        last_event_at: events.last().map(|e| e.recorded_at),
    }))
}

impl Supervisor {
    /// Whether this node may take one more job now.
    fn has_capacity(&self) -> bool {
        self.role.runs_jobs()
            && !self.draining
            && (self.announced || self.role != SupervisorRole::Worker)
            && self
                .capacity
                .is_none_or(|c| self.running + self.claiming < c)
    }

    /// This node's id (the worker name its claims record).
    fn me(&self) -> &str {
        &self.env.settings.worker_name
    }

    /// Starts an actor that rescues the job from its gone worker (see [`RescueOrder`]),
    /// unless this node already runs or rescues it.
    fn rescue(&mut self, job_id: Uuid, order: RescueOrder, ctx: &mut Context<Self>) {
        let Some(entry) = self.jobs.get(&job_id) else {
            return;
        };
        if entry.addr.is_some() || entry.rescued {
            return;
        }
        tracing::warn!(%job_id, worker = %order.lost_worker, "rescuing the job of a gone worker");
        let me = ctx.address();
        let addr = JobActor::new(
            job_id,
            self.env.clone(),
            me.clone().recipient(),
            me.recipient(),
        )
        .rescuing(order)
        .start();
        self.running += 1;
        if let Some(entry) = self.jobs.get_mut(&job_id) {
            entry.addr = Some(addr);
            entry.rescued = true;
        }
    }

    /// Rescues every job still held by `worker` if it is lost or stopped: its running jobs
    /// are resumed (or failed past the limit), its cancelling ones cancelled at once.
    fn rescue_orphans_of(&mut self, worker: &str, ctx: &mut Context<Self>) {
        let Some(w) = self.workers.get(worker) else {
            return;
        };
        if w.status == WorkerStatus::Live {
            return;
        }
        let last_seen = w.last_seen;
        let held: Vec<Uuid> = self
            .jobs
            .iter()
            .filter(|(_, e)| {
                e.state.worker.as_deref() == Some(worker)
                    && matches!(e.state.status, JobStatus::Running | JobStatus::Cancelling)
            })
            .map(|(id, _)| *id)
            .collect();
        for job_id in held {
            let order = RescueOrder {
                lost_worker: worker.to_owned(),
                last_seen,
                cancel_now: true,
            };
            self.rescue(job_id, order, ctx);
        }
    }

    /// Folds one event of a worker stream; a worker newly lost has its jobs rescued, and
    /// this node, if it is the one declared lost (it was silent: a pause, a partition),
    /// stops its runs (others resume them) and announces itself again.
    fn observe_worker(&mut self, e: &RecordedEvent, event: &WorkerEvent, ctx: &mut Context<Self>) {
        let Some(id) = stream::worker_id(&e.stream_id) else {
            return;
        };
        let before = self.workers.get(id).cloned();
        if before.as_ref().is_some_and(|w| e.version <= w.version) {
            return;
        }
        let Some(after) = WorkerState::evolve(before, event, e.recorded_at, e.version) else {
            return;
        };
        let status = after.status;
        self.workers.insert(id.to_owned(), after);
        if status == WorkerStatus::Live {
            return;
        }
        if id == self.me() && self.role == SupervisorRole::Worker && !self.draining {
            tracing::error!(worker = %id, "this node was declared lost: its runs stop, it announces itself again");
            for entry in self.jobs.values() {
                if let Some(addr) = &entry.addr {
                    addr.do_send(Shutdown);
                }
            }
            self.announced = false;
            self.announce(ctx);
        }
        let id = id.to_owned();
        self.rescue_orphans_of(&id, ctx);
    }

    /// Records this worker's WorkerStarted (after a first heartbeat), expecting the version of
    /// its stream as folded; then it claims. Tried again until it lands.
    fn announce(&mut self, ctx: &mut Context<Self>) {
        if self.role != SupervisorRole::Worker || self.announced {
            return;
        }
        let env = self.env.clone();
        let me = self.me().to_owned();
        let liveness = self.liveness.clone();
        let capacity = self.capacity.map(|c| c as u64);
        let stream_name = stream::worker(&me);
        let fut = async move {
            let now = env.clock.now();
            env.store.heartbeat(&me, now).await?;
            let version = env
                .store
                .read_stream(&stream_name, 0)
                .await?
                .last()
                .map_or(0, |e| e.version);
            let started = NewEvent::new(
                WorkerEvent::WorkerStarted {
                    id: me.clone(),
                    host: liveness.host,
                    pid: liveness.pid,
                    capacity,
                },
                now,
                Metadata::caused_by(format!("worker:{me}")),
            );
            env.store
                .append(&stream_name, ExpectedVersion::Exact(version), vec![started])
                .await
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(recorded) => {
                for e in &recorded {
                    if let Event::Worker(w) = &e.event {
                        act.observe_worker(e, w, ctx);
                    }
                }
                act.announced = true;
                act.announce_retry = Backoff::default();
                tracing::info!(worker = %act.me(), "worker announced");
                act.try_claim(ctx);
            }
            Err(error) => {
                let delay = act.announce_retry.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "worker not announced; trying again");
                ctx.run_later(delay, |act, ctx| act.announce(ctx));
            }
        }));
    }

    /// Every heartbeat interval: a worker beats; every node that runs jobs looks for live
    /// workers silent for the timeout and declares each lost (one append, expected version:
    /// whichever node is first, once).
    fn liveness_tick(&mut self, ctx: &mut Context<Self>) {
        let env = self.env.clone();
        // A draining worker beats on: it is alive until it records WorkerStopped, and its
        // drain may outlast the timeout.
        let beat = self.role == SupervisorRole::Worker && self.announced;
        let me = self.me().to_owned();
        let fut = async move {
            if beat {
                if let Err(error) = env.store.heartbeat(&me, env.clock.now()).await {
                    tracing::warn!(%error, "heartbeat not recorded");
                }
            }
            env.store.heartbeats().await
        };
        ctx.spawn(fut.into_actor(self).map(|beats, act, ctx| match beats {
            Ok(beats) => act.declare_lost(beats.into_iter().collect(), ctx),
            Err(error) => tracing::warn!(%error, "cannot read heartbeats"),
        }));
    }

    fn declare_lost(&mut self, beats: HashMap<String, DateTime<Utc>>, ctx: &mut Context<Self>) {
        let now = self.env.clock.now();
        let me = self.me().to_owned();
        for w in self.workers.values() {
            if w.id == me {
                continue;
            }
            let Some(lost) =
                w.decide_lost(beats.get(&w.id).copied(), now, self.liveness.timeout, &me)
            else {
                continue;
            };
            let stream_name = stream::worker(&w.id);
            let expected = ExpectedVersion::Exact(w.version);
            let worker = w.id.clone();
            let event = NewEvent::new(lost, now, Metadata::caused_by(format!("worker:{me}")));
            let store = self.env.store.clone();
            let forget = worker.clone();
            ctx.spawn(
                async move {
                    let recorded = store.append(&stream_name, expected, vec![event]).await?;
                    // Recorded lost: its heartbeat has no more use (see `forget_heartbeat`).
                    if let Err(error) = store.forget_heartbeat(&forget).await {
                        tracing::warn!(worker = %forget, %error, "heartbeat of a lost worker not dropped");
                    }
                    Ok::<_, StoreError>(recorded)
                }
                .into_actor(self)
                    .map(move |res, act, ctx| match res {
                        Ok(recorded) => {
                            tracing::warn!(%worker, "worker declared lost");
                            for e in &recorded {
                                if let Event::Worker(w) = &e.event {
                                    act.observe_worker(e, w, ctx);
                                }
                            }
                        }
                        // Another node declared it first, or it started again.
                        Err(e) if e.is_conflict() => tracing::debug!(%worker, "worker not declared lost here: its stream moved"),
                        Err(error) => tracing::warn!(%worker, %error, "cannot declare the worker lost; next tick tries again"),
                    }),
            );
        }
    }

    /// Takes a job found unfinished at start into the registry and does what its state asks.
    fn recover(&mut self, found: Found, beats: &Beats, ctx: &mut Context<Self>) {
        let job_id = found.state.job_id;
        let status = found.state.status;
        let deadline = found.state.watchdog_deadline();
        let entry = Entry::new(found.state, found.created_position);
        let ours = match self.role {
            SupervisorRole::All => true,
            SupervisorRole::Worker => found.worker.as_deref() == Some(self.me()),
            SupervisorRole::Api => false,
        };
        if status == JobStatus::Pending {
            self.pending.insert((entry.created_position, job_id));
        }
        self.jobs.insert(job_id, entry);
        if let Some(deadline) = deadline {
            self.arm_watchdog(job_id, deadline, ctx);
        }
        let worker = found.worker.unwrap_or_default();
        match status {
            // Its run died with this node's last process: resumed while resumes remain, else
            // failed naming the worker and when it was last seen (its last heartbeat, else its
            // job's last event). A cancelling one keeps its watchdog, as before.
            JobStatus::Running if ours => {
                let last_seen = beats.get(&worker).copied().or(found.last_event_at);
                let order = RescueOrder {
                    lost_worker: worker,
                    last_seen,
                    cancel_now: false,
                };
                self.rescue(job_id, order, ctx);
            }
            // Held by a worker found lost or stopped: rescued like any orphan (below, once
            // every job is in).
            _ => {}
        }
    }

    fn arm_watchdog(&mut self, job_id: Uuid, deadline: DateTime<Utc>, ctx: &mut Context<Self>) {
        if !self.role.runs_jobs() {
            return;
        }
        let Some(entry) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if let Some((armed_for, _)) = entry.watchdog {
            if armed_for == deadline {
                return;
            }
        }
        let remaining = (deadline - self.env.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tracing::info!(%job_id, %deadline, remaining_ms = remaining.as_millis() as u64, "watchdog armed");
        let handle = ctx.notify_later(WatchdogFired { job_id }, remaining);
        if let Some((_, old)) = entry.watchdog.replace((deadline, handle)) {
            ctx.cancel_future(old);
        }
    }

    /// Drops a job from the registry unless this node still has an actor or a claim for it
    /// (they report back when they end).
    fn forget(&mut self, job_id: Uuid, ctx: &mut Context<Self>) {
        let Some(entry) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if let Some((_, handle)) = entry.watchdog.take() {
            ctx.cancel_future(handle);
        }
        if entry.addr.is_none() && !entry.claiming {
            let created = entry.created_position;
            self.jobs.remove(&job_id);
            self.pending.remove(&(created, job_id));
        }
    }

    /// Folds one event of the global log into the registry (the follower's step). Events of
    /// a job already folded further (recovery loaded its stream past the follow point) are
    /// skipped, so each is folded once.
    fn observe(&mut self, e: &RecordedEvent, ctx: &mut Context<Self>) {
        if let Event::Worker(w) = &e.event {
            self.observe_worker(e, w, ctx);
            return;
        }
        let (Some(job_id), Some(event)) = (stream::job_id(&e.stream_id), e.job_event()) else {
            return;
        };
        let Some(entry) = self.jobs.get_mut(&job_id) else {
            // A job this node does not know: new if this is its creation; otherwise one that
            // ended before the follow point (or whose creation came before it, and so was
            // final at recovery).
            if let SyncJobEvent::JobCreated { .. } = event {
                match JobState::created(event.clone(), e.recorded_at) {
                    Ok(state) => {
                        self.pending.insert((e.global_position, job_id));
                        self.jobs
                            .insert(job_id, Entry::new(state, e.global_position));
                    }
                    Err(error) => {
                        tracing::error!(%job_id, %error, "a job creation that does not fold")
                    }
                }
            }
            return;
        };
        if e.version <= entry.state.version {
            return;
        }
        let before = entry.state.status;
        if let Err(error) = entry.state.evolve_in_place(event, e.recorded_at) {
            tracing::error!(%job_id, %error, "a job event that does not fold; the job is dropped from the registry");
            self.forget(job_id, ctx);
            return;
        }
        entry.state.version = e.version;
        let status = entry.state.status;
        if before == JobStatus::Pending && status != JobStatus::Pending {
            self.pending.remove(&(entry.created_position, job_id));
        }
        match event {
            // Resumed: claimable again (after the batch).
            SyncJobEvent::JobResumed { .. } => {
                self.pending.insert((entry.created_position, job_id));
            }
            // Claimed again: a later loss of this worker is a new rescue.
            SyncJobEvent::JobStarted { .. } => entry.rescued = false,
            _ => {}
        }
        // The job's actor here learns of another node's cancel request (or of the
        // watchdog's verdict, or of a rescue from it) from its stream.
        if event.is_final()
            || matches!(
                event,
                SyncJobEvent::CancelRequested { .. } | SyncJobEvent::JobResumed { .. }
            )
        {
            if let Some(addr) = &entry.addr {
                addr.do_send(Refresh(Some(e.clone())));
            }
        }
        let claimed_by = match event {
            SyncJobEvent::JobStarted { worker } => Some(worker.clone()),
            _ => None,
        };
        if status.is_final() {
            self.forget(job_id, ctx);
        } else if let Some(deadline) = entry.state.watchdog_deadline() {
            self.arm_watchdog(job_id, deadline, ctx);
        }
        // Claimed by a worker already lost (its claim landed just before it was declared).
        if let Some(worker) = claimed_by {
            self.rescue_orphans_of(&worker, ctx);
        }
    }

    /// Claims pending jobs, oldest first, while this node has capacity: each claim appends
    /// JobStarted{worker: this node} expecting the version this node saw. Exactly one
    /// node's append lands; the others get a conflict and move on to the next job (the
    /// follower then sees who won).
    fn try_claim(&mut self, ctx: &mut Context<Self>) {
        while self.has_capacity() {
            let Some(&(position, job_id)) = self.pending.first() else {
                return;
            };
            self.pending.remove(&(position, job_id));
            let Some(entry) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            if entry.state.status != JobStatus::Pending || entry.addr.is_some() || entry.claiming {
                continue;
            }
            entry.claiming = true;
            self.claiming += 1;
            let seen = entry.state.clone();
            let env = self.env.clone();
            let worker = env.settings.worker_name.clone();
            let meta = Metadata::caused_by(format!("worker:{worker}")).with_correlation(job_id);
            let started = NewEvent::new(SyncJobEvent::JobStarted { worker }, env.clock.now(), meta);
            ctx.spawn(
                async move {
                    let expected = ExpectedVersion::Exact(seen.version);
                    let appended = env
                        .store
                        .append(&stream::job(job_id), expected, vec![started])
                        .await;
                    (seen, appended)
                }
                .instrument(tracing::info_span!("claim", %job_id))
                .into_actor(self)
                .map(move |(seen, appended), act, ctx| {
                    act.claimed(job_id, seen, appended, ctx);
                    act.try_claim(ctx);
                }),
            );
        }
    }

    /// What a claim came to: the job's actor starts its run, or the job is left to the
    /// node that won it, or it waits to be claimed again.
    fn claimed(
        &mut self,
        job_id: Uuid,
        mut seen: JobState,
        appended: Result<Vec<RecordedEvent>, StoreError>,
        ctx: &mut Context<Self>,
    ) {
        self.claiming -= 1;
        if let Some(entry) = self.jobs.get_mut(&job_id) {
            entry.claiming = false;
        }
        match appended {
            Ok(recorded) => {
                for e in &recorded {
                    if let Some(event) = e.job_event() {
                        if let Err(error) = seen.evolve_in_place(event, e.recorded_at) {
                            tracing::error!(%job_id, %error, "the claim does not fold");
                        }
                    }
                }
                self.claim_retry = Backoff::default();
                tracing::info!(%job_id, worker = %self.env.settings.worker_name, "job claimed");
                let claimed_version = seen.version;
                let me = ctx.address();
                let addr = JobActor::new(
                    job_id,
                    self.env.clone(),
                    me.clone().recipient(),
                    me.recipient(),
                )
                .claimed(seen)
                .start();
                self.running += 1;
                let Some(entry) = self.jobs.get_mut(&job_id) else {
                    return;
                };
                // The follower may have folded later events (a cancel) before this claim
                // reported: the actor reads them.
                if entry.state.version > claimed_version {
                    addr.do_send(Refresh(None));
                }
                entry.addr = Some(addr);
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(%job_id, "job claimed by another node (or cancelled) first");
                if self
                    .jobs
                    .get(&job_id)
                    .is_some_and(|entry| entry.state.status.is_final())
                {
                    self.forget(job_id, ctx);
                }
            }
            Err(error) => {
                // Not a lost race: the store could not write. The job stays pending here and
                // is claimed again after a wait.
                let Some(entry) = self.jobs.get(&job_id) else {
                    return;
                };
                if entry.state.status == JobStatus::Pending {
                    self.pending.insert((entry.created_position, job_id));
                }
                let delay = self.claim_retry.next_delay();
                tracing::warn!(%job_id, %error, retry_in_ms = delay.as_millis() as u64, "claim not recorded; trying again");
                if !self.claim_retry_armed {
                    self.claim_retry_armed = true;
                    ctx.run_later(delay, |act, ctx| {
                        act.claim_retry_armed = false;
                        act.try_claim(ctx);
                    });
                }
            }
        }
    }
}

/// The global position of the last event of a job's stream (0 if it has none or cannot be
/// read: then the answer waits for nothing, as before).
async fn stream_head(store: &dyn EventStore, job_id: Uuid) -> u64 {
    match store.read_stream(&stream::job(job_id), 0).await {
        Ok(events) => events.last().map_or(0, |e| e.global_position),
        Err(error) => {
            tracing::warn!(%job_id, %error, "cannot read the job's stream for a refusal");
            0
        }
    }
}

/// Folds the whole global log into the jobs that are not final, each in place through the
/// job aggregate's own fold; and the position the scan ended at.
async fn unfinished_jobs(
    store: &dyn EventStore,
) -> Result<(Vec<Found>, u64), CommandError<JobError>> {
    /// Per job: its fold, where it was created, its worker, its last event's time.
    type Scanned = (Job, u64, Option<String>, Option<DateTime<Utc>>);
    let mut jobs: HashMap<Uuid, Scanned> = HashMap::new();
    let mut after = 0;
    loop {
        let batch = store.read_all(after, 4096).await?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        for e in &batch {
            let (Some(job_id), Some(event)) = (stream::job_id(&e.stream_id), e.job_event()) else {
                continue;
            };
            let (job, _, worker, last_event_at) = jobs
                .entry(job_id)
                .or_insert_with(|| (Job::initial(), e.global_position, None, None));
            if let SyncJobEvent::JobStarted { worker: w } = event {
                *worker = Some(w.clone());
            }
            *last_event_at = Some(e.recorded_at);
            match job.evolve(e) {
                Ok(()) if job.0.as_ref().is_some_and(|s| s.status.is_final()) => {
                    jobs.remove(&job_id);
                }
                Ok(()) => {}
                Err(err) => {
                    jobs.remove(&job_id);
                    tracing::error!(%job_id, error = %err, "job stream does not fold; skipped by recovery");
                }
            }
        }
    }
    let mut found: Vec<Found> = jobs
        .into_values()
        .filter_map(|(job, created_position, worker, last_event_at)| {
            job.0.map(|state| Found {
                state,
                created_position,
                worker,
                last_event_at,
            })
        })
        .collect();
    found.sort_by_key(|f| f.created_position);
    Ok((found, after))
}

/// Each worker's latest heartbeat.
type Beats = HashMap<String, DateTime<Utc>>;

/// The workers recovery must know: those holding an unfinished job, those with a heartbeat
/// row, and this node; each folded from its stream (none: never announced). And the
/// heartbeats.
async fn known_workers(
    store: &dyn EventStore,
    jobs: &[Found],
    me: &str,
) -> Result<(HashMap<String, WorkerState>, Beats), CommandError<JobError>> {
    let beats: Beats = store.heartbeats().await?.into_iter().collect();
    let mut ids: BTreeSet<String> = beats.keys().cloned().collect();
    ids.extend(jobs.iter().filter_map(|f| f.worker.clone()));
    ids.insert(me.to_owned());
    let mut workers = HashMap::new();
    for id in ids {
        let mut state = None;
        for e in store.read_stream(&stream::worker(&id), 0).await? {
            if let Event::Worker(w) = &e.event {
                state = WorkerState::evolve(state, w, e.recorded_at, e.version);
            }
        }
        if let Some(state) = state {
            workers.insert(id, state);
        }
    }
    Ok((workers, beats))
}

/// The jobs of `ids`, each folded from its own stream, keeping those not final.
async fn unfinished_of(
    store: &dyn EventStore,
    ids: &[Uuid],
) -> Result<Vec<Found>, CommandError<JobError>> {
    let mut jobs = Vec::with_capacity(ids.len());
    for &job_id in ids {
        let events = store.read_stream(&stream::job(job_id), 0).await?;
        match found_from(&events) {
            Ok(Some(found)) if !found.state.status.is_final() => jobs.push(found),
            Ok(_) => {}
            Err(reason) => {
                tracing::error!(%job_id, %reason, "job stream does not fold; skipped by recovery");
            }
        }
    }
    jobs.sort_by_key(|f| f.created_position);
    Ok(jobs)
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        if !self.role.runs_jobs() {
            // An API node creates and cancels through the log; it keeps no registry.
            self.ready.send_replace(true);
            return;
        }
        let store = self.env.store.clone();
        let recovery = std::mem::replace(&mut self.recovery, Recovery::ScanLog);
        let follow_after = self.follow_after;
        let me = self.me().to_owned();
        ctx.wait(
            async move {
                let (jobs, after) = match recovery {
                    Recovery::ScanLog => unfinished_jobs(&*store)
                        .await
                        .map(|(jobs, end)| (jobs, follow_after.unwrap_or(end)))?,
                    Recovery::Jobs(ids) => {
                        let head = *store.watch_head().borrow();
                        let jobs = unfinished_of(&*store, &ids).await?;
                        (jobs, follow_after.unwrap_or(head))
                    }
                };
                let (workers, beats) = known_workers(&*store, &jobs, &me).await?;
                Ok::<_, CommandError<JobError>>(Recovered {
                    jobs,
                    workers,
                    beats,
                    after,
                })
            }
            .into_actor(self)
            .map(|found, act, ctx| {
                let after = match found {
                    Ok(recovered) => {
                        tracing::info!(
                            jobs = recovered.jobs.len(),
                            workers = recovered.workers.len(),
                            "recovering unfinished jobs"
                        );
                        act.workers = recovered.workers;
                        for found in recovered.jobs {
                            act.recover(found, &recovered.beats, ctx);
                        }
                        let gone: Vec<String> = act
                            .workers
                            .values()
                            .filter(|w| w.status != WorkerStatus::Live)
                            .map(|w| w.id.clone())
                            .collect();
                        for worker in gone {
                            act.rescue_orphans_of(&worker, ctx);
                        }
                        recovered.after
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "recovery could not read the log");
                        *act.env.store.watch_head().borrow()
                    }
                };
                // From here on the log tells this node of every job: created, claimed,
                // cancelled, ended, by whichever node.
                ctx.add_stream(follow_batches(act.env.store.clone(), after));
                act.ready.send_replace(true);
                act.announce(ctx);
                ctx.run_interval(act.liveness.heartbeat, |act, ctx| act.liveness_tick(ctx));
                act.try_claim(ctx);
            }),
        );
    }
}

impl StreamHandler<Result<Vec<RecordedEvent>, StoreError>> for Supervisor {
    fn handle(&mut self, batch: Result<Vec<RecordedEvent>, StoreError>, ctx: &mut Context<Self>) {
        match batch {
            Ok(events) => {
                for e in &events {
                    self.observe(e, ctx);
                }
                // After the whole batch: a job created and claimed within it is not claimed again.
                self.try_claim(ctx);
            }
            // The follow goes on from where it was.
            Err(error) => tracing::warn!(%error, "cannot follow the log; trying again"),
        }
    }

    /// The store is gone (the process is stopping): the supervisor stays for its actors.
    fn finished(&mut self, _ctx: &mut Context<Self>) {
        tracing::info!("the log's follower stopped");
    }
}

/// The job that comes after `previous` on source connection `sc` (the first one when
/// `previous` is None).
///
/// This is how "one active job per source connection" holds across API nodes, through the
/// log alone: a connection's jobs form a chain whose ids are derived, each from the one
/// before it (the connection, and the previous job's place in the chain). A job is created
/// only after its predecessor is seen final in the log, and its creation is an append of
/// JobCreated to its derived stream expecting the stream to be empty. Two creates that
/// raced after the same final job derive the same id, so exactly one append lands; the
/// other meets a conflict, reads the job that won, finds it active and answers "already
/// active". A create that started from a stale hint (its read model lags) walks the chain
/// forward, one read per job it did not know, until it finds the active job or the free
/// slot. One append, on any backend with expected versions; no second step that a crash
/// could leave half done. Jobs created before the chain (random ids, or the first chain's
/// hashed ids) are where it starts from: the read model names one as the connection's
/// latest job.
///
/// The id's layout (a version-8, "custom", UUID), in byte order, which is the order every
/// index of job ids sorts in:
/// - bytes 0-8: a SHA-256 of the connection (the same for all of its jobs);
/// - bytes 9-12: the job's place in the chain, big-endian (the next job's is one more);
/// - bytes 13-15: a SHA-256 of the connection and the previous job.
///
/// So a connection's jobs sit together, in the order they were created, in the indexes by
/// job id: deleting a connection removes one run of index entries instead of a hundred
/// thousand scattered ones (bench #9: the purge of 100k jobs took 2.7 s with random ids,
/// 0.5 s with these, in a SQLite experiment of the same shape), and a first start inserts
/// them in order. The ids are predictable from the connection's id; they grant nothing:
/// every read and command checks the caller's organization.
pub fn job_after(sc: Uuid, previous: Option<Uuid>) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(JOB_CHAIN_DOMAIN);
    hash.update(sc.as_bytes());
    let of_connection = hash.clone().finalize();
    hash.update(previous.unwrap_or_else(Uuid::nil).as_bytes());
    let of_link = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes[..9].copy_from_slice(&of_connection[..9]);
    let place = match previous {
        None => 0,
        // After a job of this layout on the same connection: its place, plus one. After
        // anything else (a job from before this layout): a fresh run, from 1.
        Some(p) if p.as_bytes()[..9] == stamped(bytes)[..9] => chain_place(p).wrapping_add(1),
        Some(_) => 1,
    };
    bytes[9..13].copy_from_slice(&place.to_be_bytes());
    bytes[13..].copy_from_slice(&of_link[..3]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The bytes as [`uuid::Builder::from_custom_bytes`] leaves them (version and variant
/// bits set), to compare a stored id's connection part with.
fn stamped(bytes: [u8; 16]) -> [u8; 16] {
    *uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .as_bytes()
}

/// A chain job's place in its connection's chain (see [`job_after`]).
fn chain_place(job: Uuid) -> u32 {
    let b = job.as_bytes();
    u32::from_be_bytes([b[9], b[10], b[11], b[12]])
}

/// Keeps [`job_after`]'s ids apart from any other name-based id (v1 hashed the connection
/// and the previous job into all 16 bytes).
const JOB_CHAIN_DOMAIN: &[u8] = b"syncjobs job chain v2";

/// How many jobs a create walks along a connection's chain before it gives up (and answers
/// that the store is busy): far more than a read model lags behind.
const MAX_CHAIN_WALK: usize = 10_000;

/// Creates the connection's next job if its latest one is final (see [`job_after`]). Each
/// job of the chain is read before anything is appended, so a busy connection is refused
/// even while the store cannot write.
async fn create_on_log(env: Arc<JobEnv>, req: NewJob) -> Result<CommandOutcome, JobsError> {
    let sc = req.source_connection_id;
    let first = job_after(sc, None);
    let mut candidate = req.latest_job.unwrap_or(first);
    for _ in 0..MAX_CHAIN_WALK {
        let (job, position) =
            command::load_with_position::<Job>(&*env.store, &stream::job(candidate)).await?;
        match job.0 {
            Some(state) if !state.status.is_final() => {
                return Err(JobsError::AlreadyActive {
                    status: state.status,
                    job_id: candidate,
                    position,
                });
            }
            Some(_) => {
                candidate = job_after(sc, Some(candidate));
                continue;
            }
            // A hint naming no job in this log: the chain is walked from its start.
            None if Some(candidate) == req.latest_job && candidate != first => {
                candidate = first;
                continue;
            }
            None => {}
        }
        let cmd = JobCommand::Create {
            job_id: candidate,
            source_connection_id: sc,
            organization_id: req.organization_id,
            short_name: req.short_name.clone(),
            config: req.config.clone(),
        };
        let meta = Metadata::caused_by(req.caused_by.clone()).with_correlation(candidate);
        let stream = stream::job(candidate);
        match command::execute(
            &*env.store,
            &*env.clock,
            &stream,
            Some(Job::initial()),
            &cmd,
            &meta,
        )
        .await
        {
            Ok(executed) => {
                tracing::info!(job_id = %candidate, source_connection_id = %sc, "job created");
                return CommandOutcome::try_from(executed);
            }
            // A racing create appended it first: read it (active, most likely) and decide.
            Err(CommandError::Rejected(JobError::AlreadyExists)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(JobsError::Store(StoreError::Backend(format!(
        "source connection {sc}: more than {MAX_CHAIN_WALK} jobs past the read model"
    ))))
}

impl Handler<CreateJob> for Supervisor {
    type Result = ResponseFuture<Result<CommandOutcome, JobsError>>;

    fn handle(&mut self, msg: CreateJob, _ctx: &mut Context<Self>) -> Self::Result {
        Box::pin(create_on_log(self.env.clone(), msg.0))
    }
}

impl Handler<CancelJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<CommandOutcome, JobsError>>;

    fn handle(&mut self, msg: CancelJob, _ctx: &mut Context<Self>) -> Self::Result {
        let addr = self.jobs.get(&msg.job_id).and_then(|e| e.addr.clone());
        let env = self.env.clone();
        let timeout_seconds = self.cancel_timeout.as_secs();
        let job_id = msg.job_id;
        let requested_by = msg.requested_by;
        let meta = Metadata::caused_by(requested_by.clone()).with_correlation(job_id);
        let store = env.store.clone();
        let decided = async move {
            if let Some(addr) = addr {
                let asked = addr
                    .send(RequestCancel {
                        requested_by: requested_by.clone(),
                        timeout_seconds,
                        metadata: meta.clone(),
                    })
                    .await;
                match asked {
                    Ok(result) => return result,
                    // The actor stopped meanwhile (its job just ended): decide on the log.
                    Err(MailboxError::Closed) | Err(MailboxError::Timeout) => {}
                }
            }
            // No actor here: the job runs on another node, or is pending, final, unknown.
            // The log decides (expected version; a racing cancel is read and decided on);
            // the node running it sees the request in the log.
            let cancel = JobCommand::RequestCancel {
                requested_by,
                timeout_seconds,
            };
            let stream = stream::job(job_id);
            command::execute(&*env.store, &*env.clock, &stream, None, &cancel, &meta).await
        };
        Box::pin(
            async move {
                match decided.await {
                    Ok(executed) => CommandOutcome::try_from(executed),
                    Err(CommandError::Rejected(JobError::CannotCancel(status))) => {
                        // Decided on the stream as it was, at the latest, now: the read model
                        // shows the state named once it has folded the stream's head.
                        let position = stream_head(&*store, job_id).await;
                        Err(JobsError::CannotCancel { status, position })
                    }
                    Err(e) => Err(e.into()),
                }
            }
            .into_actor(self),
        )
    }
}

impl Handler<JobUpdate> for Supervisor {
    type Result = ();

    /// The actor's word comes before the follower's: a watchdog is armed as soon as the
    /// actor recorded the cancel request here.
    fn handle(&mut self, msg: JobUpdate, ctx: &mut Context<Self>) {
        if let Some(deadline) = msg.watchdog_deadline {
            self.arm_watchdog(msg.job_id, deadline, ctx);
        }
    }
}

impl Handler<JobGone> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: JobGone, ctx: &mut Context<Self>) {
        let Some(entry) = self.jobs.get_mut(&msg.job_id) else {
            return;
        };
        if entry.addr.take().is_some() {
            self.running = self.running.saturating_sub(1);
        }
        let worker = entry.state.worker.clone();
        // Its rescue here made it pending again (the follower may have offered it for a
        // claim while this actor was still on it, and the claim passed it by).
        if entry.state.status == JobStatus::Pending && !entry.claiming {
            self.pending.insert((entry.created_position, msg.job_id));
        }
        // A final job leaves; one that is not (its actor failed to load it, or a cancelling
        // one whose run was abandoned) stays known from the log, and keeps its watchdog.
        if entry.state.status.is_final() {
            self.forget(msg.job_id, ctx);
        } else if let Some(worker) = worker {
            // This node's run was stopped because the node was declared lost: rescued
            // here too, should no other node do it.
            self.rescue_orphans_of(&worker, ctx);
        }
        self.try_claim(ctx);
    }
}

impl Handler<WatchdogFired> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: WatchdogFired, _ctx: &mut Context<Self>) -> Self::Result {
        let job_id = msg.job_id;
        let Some(entry) = self.jobs.get_mut(&job_id) else {
            return Box::pin(fut::ready(()));
        };
        entry.watchdog = None;
        let addr = entry.addr.clone();
        let env = self.env.clone();
        Box::pin(
            async move {
                if let Some(addr) = addr {
                    if let Ok(result) = addr.send(ForceCancel).await {
                        return result;
                    }
                }
                // No live actor to ask (the job ran on another node, or its run here is
                // gone): ask the destination what the job's run wrote, as the actor would,
                // since that run will never report it. Every node that runs jobs fires for
                // every cancelling job; the append expects the version it decided on, so
                // one lands and the others find the job final and stop.
                let cmd = JobCommand::ForceCancel {
                    now: env.clock.now(),
                    durable: env.runner.durable_counts(job_id).await,
                };
                let meta = Metadata::caused_by("watchdog").with_correlation(job_id);
                let stream = stream::job(job_id);
                command::execute(&*env.store, &*env.clock, &stream, None, &cmd, &meta).await
            }
            .into_actor(self)
            .map(move |res: JobResult, act, ctx| match res {
                Ok(executed) => {
                    tracing::warn!(%job_id, "job force-cancelled by the watchdog");
                    if executed.state.0.is_some_and(|s| s.status.is_final()) {
                        if let Some(entry) = act.jobs.get_mut(&job_id) {
                            entry.state.status = JobStatus::Cancelled;
                        }
                        act.forget(job_id, ctx);
                    }
                }
                Err(CommandError::Rejected(JobError::NotYetDue { deadline })) => {
                    act.arm_watchdog(job_id, deadline, ctx);
                }
                Err(CommandError::Rejected(e)) => {
                    // Already final (its worker confirmed at the last moment, or another
                    // node's watchdog fired first): nothing to force.
                    tracing::debug!(%job_id, error = %e, "watchdog found nothing to force");
                    if let Some(entry) = act.jobs.get_mut(&job_id) {
                        entry.state.status = JobStatus::Cancelled;
                    }
                    act.forget(job_id, ctx);
                }
                Err(e) => {
                    // The job must not stay `cancelling` for ever: try until it lands.
                    let Some(entry) = act.jobs.get_mut(&job_id) else {
                        return;
                    };
                    let delay = entry.force_retry.next_delay();
                    tracing::error!(
                        %job_id,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "watchdog could not force-cancel; trying again"
                    );
                    let retry_at = act.env.clock.now()
                        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                    act.arm_watchdog(job_id, retry_at, ctx);
                }
            }),
        )
    }
}

impl Handler<StopAll> for Supervisor {
    type Result = ();

    fn handle(&mut self, _msg: StopAll, ctx: &mut Context<Self>) {
        tracing::info!(live_jobs = self.jobs.len(), "supervisor stopping");
        for (_, entry) in self.jobs.drain() {
            if let Some((_, handle)) = entry.watchdog {
                ctx.cancel_future(handle);
            }
            if let Some(addr) = entry.addr {
                addr.do_send(Shutdown);
            }
        }
        self.pending.clear();
        ctx.stop();
    }
}

impl Handler<Drain> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Drain, _ctx: &mut Context<Self>) {
        match msg {
            Drain::StopClaiming => {
                tracing::info!(running = self.running, "draining: no more claims");
                self.draining = true;
            }
            Drain::HandBackAll => {
                for (job_id, entry) in &self.jobs {
                    if let Some(addr) = &entry.addr {
                        tracing::info!(%job_id, "draining: handing the job back");
                        addr.do_send(HandBack);
                    }
                }
            }
        }
    }
}

impl Handler<RecordStopped> for Supervisor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: RecordStopped, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.env.store.clone();
        let me = self.me().to_owned();
        let now = self.env.clock.now();
        let announced = self.role == SupervisorRole::Worker && self.announced;
        Box::pin(async move {
            if !announced {
                return Ok(());
            }
            let stream_name = stream::worker(&me);
            // The stream's own head: a WorkerLost recorded meanwhile is not overwritten by
            // a stop that did not see it (a lost worker's jobs are being rescued already).
            let events = store.read_stream(&stream_name, 0).await?;
            if matches!(
                events.last().map(|e| &e.event),
                Some(Event::Worker(WorkerEvent::WorkerLost { .. }))
            ) {
                return Ok(());
            }
            let version = events.last().map_or(0, |e| e.version);
            let stopped = NewEvent::new(
                WorkerEvent::WorkerStopped {
                    id: me.clone(),
                    handed_back: msg.handed_back,
                },
                now,
                Metadata::caused_by(format!("worker:{me}")),
            );
            store
                .append(&stream_name, ExpectedVersion::Exact(version), vec![stopped])
                .await?;
            tracing::info!(worker = %me, handed_back = msg.handed_back, "worker stopped");
            // Recorded stopped: its heartbeat row has no more use (a failure only leaves it
            // for the next node that declares nothing from it).
            if let Err(error) = store.forget_heartbeat(&me).await {
                tracing::warn!(worker = %me, %error, "heartbeat of a stopped worker not dropped");
            }
            Ok(())
        })
    }
}

impl Handler<GetStats> for Supervisor {
    type Result = SupervisorStats;

    fn handle(&mut self, _msg: GetStats, _ctx: &mut Context<Self>) -> SupervisorStats {
        SupervisorStats {
            live_jobs: self.jobs.len(),
            armed_watchdogs: self.jobs.values().filter(|e| e.watchdog.is_some()).count(),
            running: self.running,
            capacity: self.capacity,
            pending: self.pending.len(),
        }
    }
}

/// How often a drain looks whether the node's runs have ended.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The API's handle on the write side. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    addr: Addr<Supervisor>,
    ready: watch::Receiver<bool>,
}

impl Jobs {
    /// Creates a pending job for the source connection; a node that runs jobs claims it
    /// from the log.
    pub async fn create(&self, req: NewJob) -> Result<CommandOutcome, JobsError> {
        self.addr
            .send(CreateJob(req))
            .await
            .map_err(|_| JobsError::Unavailable)?
    }

    /// Requests cancellation; answers once `cancelling` (or `cancelled`) is durable.
    pub async fn cancel(
        &self,
        job_id: Uuid,
        requested_by: String,
    ) -> Result<CommandOutcome, JobsError> {
        self.addr
            .send(CancelJob {
                job_id,
                requested_by,
            })
            .await
            .map_err(|_| JobsError::Unavailable)?
    }

    /// True once recovery from the log has finished.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until recovery from the log has finished.
    pub async fn ready(&self) {
        let mut rx = self.ready.clone();
        // An Err means the supervisor is gone; then there is nothing to wait for.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// A graceful stop of a node that runs jobs: it claims nothing more, lets its running
    /// jobs finish for up to `bound`, then stops the runs still going and hands their jobs
    /// back (pending again, for another worker; a cancelling one confirms its cancel), waits
    /// up to `bound` again for that, and records WorkerStopped. Returns how many jobs were
    /// handed back. What is still running after that is left to recovery or to the other
    /// nodes' lost-worker rescue, as after a crash. Call [`Jobs::shutdown`] afterwards.
    pub async fn drain(&self, bound: Duration) -> Result<u64, JobsError> {
        self.addr
            .send(Drain::StopClaiming)
            .await
            .map_err(|_| JobsError::Unavailable)?;
        let mut handed_back = 0;
        if !self.settle(bound).await? {
            handed_back = self.stats().await?.running as u64;
            self.addr
                .send(Drain::HandBackAll)
                .await
                .map_err(|_| JobsError::Unavailable)?;
            if !self.settle(bound).await? {
                tracing::warn!("draining: some runs did not stop in time; left to recovery");
            }
        }
        self.addr
            .send(RecordStopped { handed_back })
            .await
            .map_err(|_| JobsError::Unavailable)??;
        Ok(handed_back)
    }

    /// Waits up to `bound` for this node to run no job; true if it came to that.
    async fn settle(&self, bound: Duration) -> Result<bool, JobsError> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if self.stats().await?.running == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Stops the supervisor and its job actors without writing anything: what a process
    /// exit does. Unfinished jobs are picked up by the next start's recovery.
    pub async fn shutdown(&self) {
        // An Err means it is already gone.
        let _ = self.addr.send(StopAll).await;
    }

    pub async fn stats(&self) -> Result<SupervisorStats, JobsError> {
        self.addr
            .send(GetStats)
            .await
            .map_err(|_| JobsError::Unavailable)
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    fn chain(sc: Uuid, from: Option<Uuid>, n: usize) -> Vec<Uuid> {
        let mut out = Vec::with_capacity(n);
        let mut previous = from;
        for _ in 0..n {
            let next = job_after(sc, previous);
            out.push(next);
            previous = Some(next);
        }
        out
    }

    #[test]
    fn a_connections_jobs_are_derived_alike_by_every_node() {
        let sc = Uuid::new_v4();
        assert_eq!(chain(sc, None, 5), chain(sc, None, 5));
        let ids = chain(sc, None, 5);
        assert_eq!(job_after(sc, Some(ids[2])), ids[3]);
        assert!(ids.iter().all(|id| id.get_version_num() == 8));
    }

    #[test]
    fn a_connections_jobs_sort_together_in_the_order_they_were_created() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let ids_a = chain(a, None, 300);
        let mut sorted = ids_a.clone();
        sorted.sort();
        assert_eq!(sorted, ids_a, "byte order is creation order");
        let ids_b = chain(b, None, 300);
        // No job of b falls between the first and the last job of a.
        let (lo, hi) = (ids_a[0], ids_a[299]);
        assert!(ids_b.iter().all(|id| *id < lo || *id > hi));
        let mut all: Vec<Uuid> = ids_a.iter().chain(&ids_b).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 600, "no id repeats");
    }

    #[test]
    fn a_chain_goes_on_from_a_job_of_an_older_layout() {
        let sc = Uuid::new_v4();
        let legacy = Uuid::new_v4();
        let ids = chain(sc, Some(legacy), 3);
        assert_eq!(
            ids.iter().map(|id| chain_place(*id)).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_ne!(ids[0], job_after(sc, None));
        // Another connection's job is not this chain's: a fresh run, not its place + 1.
        let other = chain(Uuid::new_v4(), None, 4);
        assert_eq!(chain_place(job_after(sc, Some(other[3]))), 1);
    }
}
