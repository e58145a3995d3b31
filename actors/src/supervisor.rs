//! `Supervisor`: the registry of live jobs, the watchdog, and recovery after a restart.
//!
//! - One live [`JobActor`] per non-final job; at most one active job per source connection.
//! - Watchdog: when a job enters `cancelling` a timer is armed for
//!   recorded_at(CancelRequested) + the timeout recorded with it. The deadline is taken from
//!   the log, never from boot, so a restart neither resets nor loses it.
//! - Recovery (on start, before any message): the global log is folded; pending jobs are
//!   started, running ones are failed as interrupted, cancelling ones get their watchdog
//!   re-armed (firing at once when overdue). Both endings record the counts the destination
//!   durably holds for the job: the dead (or stuck) run's last progress report may be behind them.
//!
//! [`Jobs`] is the cheap, cloneable handle the API uses.

use crate::command::{self, CommandError, Executed};
use crate::job::{
    Backoff, ForceCancel, JobActor, JobEnv, JobGone, JobResult, JobSettings, JobUpdate,
    RequestCancel, Shutdown,
};
use crate::runner::SyncRunner;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    Aggregate, EventStore, Job, JobCommand, JobError, JobState, JobStatus, Metadata, SharedClock,
    StoreError,
};
use tokio::sync::watch;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// How long a job may stay `cancelling` before the watchdog forces it (API: 3 minutes).
    pub cancel_timeout: Duration,
    pub job: JobSettings,
    pub recovery: Recovery,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            cancel_timeout: Duration::from_secs(180),
            job: JobSettings::default(),
            recovery: Recovery::ScanLog,
        }
    }
}

/// Where recovery learns which jobs are unfinished. Either way each of them is then rebuilt
/// from its own stream, so the decisions (start, fail as interrupted, re-arm the watchdog)
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
    /// `position` as for `CannotCancel`; 0 when the job's creation is still being appended.
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

/// What `/health` shows of the write side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, MessageResponse)]
pub struct SupervisorStats {
    pub live_jobs: usize,
    pub armed_watchdogs: usize,
}

struct Entry {
    source_connection_id: Uuid,
    status: JobStatus,
    addr: Option<Addr<JobActor>>,
    watchdog: Option<(DateTime<Utc>, SpawnHandle)>,
    /// Waits between tries of a ForceCancelled the store refused.
    force_retry: Backoff,
}

pub struct Supervisor {
    env: Arc<JobEnv>,
    recovery: Recovery,
    cancel_timeout: Duration,
    jobs: HashMap<Uuid, Entry>,
    active_by_connection: HashMap<Uuid, Uuid>,
    ready: watch::Sender<bool>,
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
        cancel_timeout: settings.cancel_timeout,
        jobs: HashMap::new(),
        active_by_connection: HashMap::new(),
        ready,
    }
    .start();
    Jobs {
        addr,
        ready: ready_rx,
    }
}

impl Supervisor {
    fn spawn_job(&mut self, job_id: Uuid, ctx: &mut Context<Self>) -> Addr<JobActor> {
        let me = ctx.address();
        JobActor::new(
            job_id,
            self.env.clone(),
            me.clone().recipient(),
            me.recipient(),
        )
        .start()
    }

    fn register(&mut self, state: &JobState, ctx: &mut Context<Self>) {
        let addr = self.spawn_job(state.job_id, ctx);
        self.active_by_connection
            .insert(state.source_connection_id, state.job_id);
        self.jobs.insert(
            state.job_id,
            Entry {
                source_connection_id: state.source_connection_id,
                status: state.status,
                addr: Some(addr),
                watchdog: None,
                force_retry: Backoff::default(),
            },
        );
    }

    fn arm_watchdog(&mut self, job_id: Uuid, deadline: DateTime<Utc>, ctx: &mut Context<Self>) {
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

    fn forget(&mut self, job_id: Uuid, ctx: &mut Context<Self>) {
        if let Some(entry) = self.jobs.remove(&job_id) {
            if let Some((_, handle)) = entry.watchdog {
                ctx.cancel_future(handle);
            }
            if self.active_by_connection.get(&entry.source_connection_id) == Some(&job_id) {
                self.active_by_connection
                    .remove(&entry.source_connection_id);
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

/// Folds the whole global log into the states of the jobs that are not final, each in
/// place through the job aggregate's own fold.
async fn unfinished_jobs(store: &dyn EventStore) -> Result<Vec<JobState>, CommandError<JobError>> {
    let mut jobs: HashMap<Uuid, Job> = HashMap::new();
    let mut after = 0;
    loop {
        let batch = store.read_all(after, 4096).await?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        for e in &batch {
            let (Some(job_id), Some(_)) = (stream::job_id(&e.stream_id), e.job_event()) else {
                continue;
            };
            let job = jobs.entry(job_id).or_default();
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
    let mut jobs: Vec<JobState> = jobs.into_values().filter_map(|j| j.0).collect();
    jobs.sort_by_key(|s| s.created_at);
    Ok(jobs)
}

/// The states of `ids`, each folded from its own stream, keeping those not final.
async fn unfinished_of(
    store: &dyn EventStore,
    ids: &[Uuid],
) -> Result<Vec<JobState>, CommandError<JobError>> {
    let mut jobs = Vec::with_capacity(ids.len());
    for &job_id in ids {
        match command::load::<Job>(store, &stream::job(job_id)).await {
            Ok(Job(Some(state))) if !state.status.is_final() => jobs.push(state),
            Ok(_) => {}
            Err(CommandError::Corrupt { reason, .. }) => {
                tracing::error!(%job_id, %reason, "job stream does not fold; skipped by recovery");
            }
            Err(e) => return Err(e),
        }
    }
    jobs.sort_by_key(|s| s.created_at);
    Ok(jobs)
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        let store = self.env.store.clone();
        let recovery = std::mem::replace(&mut self.recovery, Recovery::ScanLog);
        ctx.wait(
            async move {
                match recovery {
                    Recovery::ScanLog => unfinished_jobs(&*store).await,
                    Recovery::Jobs(ids) => unfinished_of(&*store, &ids).await,
                }
            }
            .into_actor(self)
            .map(|found, act, ctx| {
                match found {
                    Ok(jobs) => {
                        tracing::info!(jobs = jobs.len(), "recovering unfinished jobs");
                        for state in &jobs {
                            // Each actor loads its stream, then starts, fails or waits;
                            // a cancelling one reports back and gets its watchdog.
                            act.register(state, ctx);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "recovery could not read the log"),
                }
                act.ready.send_replace(true);
            }),
        );
    }
}

impl Supervisor {
    /// The job the registry holds as active on a connection, with its last known status.
    fn active_on(&self, source_connection_id: Uuid) -> Option<(Uuid, JobStatus)> {
        let job = self.active_by_connection.get(&source_connection_id)?;
        Some((*job, self.jobs.get(job)?.status))
    }

    /// Reserves the connection, appends JobCreated and starts the job's actor.
    fn create(
        &mut self,
        req: NewJob,
    ) -> ResponseActFuture<Self, Result<CommandOutcome, JobsError>> {
        let sc = req.source_connection_id;
        if let Some((job_id, status)) = self.active_on(sc) {
            return Box::pin(fut::ready(Err(JobsError::AlreadyActive {
                status,
                job_id,
                position: 0,
            })));
        }
        // Reserve the connection before the append so a second create cannot slip in.
        let job_id = Uuid::now_v7();
        self.active_by_connection.insert(sc, job_id);
        self.jobs.insert(
            job_id,
            Entry {
                source_connection_id: sc,
                status: JobStatus::Pending,
                addr: None,
                watchdog: None,
                force_retry: Backoff::default(),
            },
        );
        let env = self.env.clone();
        let cmd = JobCommand::Create {
            job_id,
            source_connection_id: sc,
            organization_id: req.organization_id,
            short_name: req.short_name,
            config: req.config,
        };
        let meta = Metadata::caused_by(req.caused_by).with_correlation(job_id);
        Box::pin(
            async move {
                let stream = stream::job(job_id);
                command::execute(&*env.store, &*env.clock, &stream, None, &cmd, &meta).await
            }
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(executed) => {
                    tracing::info!(%job_id, source_connection_id = %sc, "job created");
                    let addr = act.spawn_job(job_id, ctx);
                    if let Some(entry) = act.jobs.get_mut(&job_id) {
                        entry.addr = Some(addr);
                    }
                    CommandOutcome::try_from(executed)
                }
                Err(e) => {
                    act.forget(job_id, ctx);
                    Err(e.into())
                }
            }),
        )
    }
}

impl Handler<CreateJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<CommandOutcome, JobsError>>;

    fn handle(&mut self, msg: CreateJob, _ctx: &mut Context<Self>) -> Self::Result {
        let req = msg.0;
        let Some((active, status)) = self.active_on(req.source_connection_id) else {
            return self.create(req);
        };
        // The registry learns that a job ended from its actor, a moment after the final event
        // is durable; a client that already saw the job final must not be told it is active.
        // The log decides.
        let store = self.env.store.clone();
        Box::pin(
            async move { command::load_with_position::<Job>(&*store, &stream::job(active)).await }
                .into_actor(self)
                .then(move |loaded, act, ctx| match loaded {
                    Ok((Job(Some(state)), _)) if state.status.is_final() => {
                        act.forget(active, ctx);
                        act.create(req)
                    }
                    Ok((Job(Some(state)), position)) => {
                        Box::pin(fut::ready(Err(JobsError::AlreadyActive {
                            status: state.status,
                            job_id: active,
                            position,
                        })))
                    }
                    // Not in the log yet: another create is appending it right now.
                    Ok((Job(None), _)) => Box::pin(fut::ready(Err(JobsError::AlreadyActive {
                        status,
                        job_id: active,
                        position: 0,
                    }))),
                    Err(e) => Box::pin(fut::ready(Err(e.into()))),
                }),
        )
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
            // No live actor: the job is final, unknown, or being created. The log decides.
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

    fn handle(&mut self, msg: JobUpdate, ctx: &mut Context<Self>) {
        if msg.status.is_final() {
            self.forget(msg.job_id, ctx);
            return;
        }
        let Some(entry) = self.jobs.get_mut(&msg.job_id) else {
            return;
        };
        entry.status = msg.status;
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
        entry.addr = None;
        if entry.status.is_final() || entry.watchdog.is_none() {
            self.forget(msg.job_id, ctx);
        }
        // A cancelling job whose actor died keeps its watchdog: it acts on the log directly.
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
                // No live actor to ask: ask the destination what the job's run wrote, as
                // the actor would, since that run will never report it.
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
                        act.forget(job_id, ctx);
                    }
                }
                Err(CommandError::Rejected(JobError::NotYetDue { deadline })) => {
                    act.arm_watchdog(job_id, deadline, ctx);
                }
                Err(CommandError::Rejected(e)) => {
                    // Already final (the worker confirmed at the last moment): nothing to force.
                    tracing::debug!(%job_id, error = %e, "watchdog found nothing to force");
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
        self.active_by_connection.clear();
        ctx.stop();
    }
}

impl Handler<GetStats> for Supervisor {
    type Result = SupervisorStats;

    fn handle(&mut self, _msg: GetStats, _ctx: &mut Context<Self>) -> SupervisorStats {
        SupervisorStats {
            live_jobs: self.jobs.len(),
            armed_watchdogs: self.jobs.values().filter(|e| e.watchdog.is_some()).count(),
        }
    }
}

/// The API's handle on the write side. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    addr: Addr<Supervisor>,
    ready: watch::Receiver<bool>,
}

impl Jobs {
    /// Creates a pending job for the source connection and starts it.
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
