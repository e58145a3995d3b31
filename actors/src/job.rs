//! `JobActor`: one per live job, its state rebuilt from its stream before any message.
//!
//! Commands are handled one at a time (`AtomicResponse`): decide -> append -> apply runs to
//! its end before the next message, so the actor never decides on a state it has not yet
//! applied. The sync run itself is a separate task holding a cancellation token; it reports
//! counts through a watch channel that a throttle turns into ProgressRecorded reports.
//! The actor stops once its job is final: a finished job holds no actor.

use crate::command::{self, CommandError, Executed};
use crate::runner::{ProgressSink, RunOutcome, RunSpec, SyncRunner};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    Aggregate, EntityCounts, EventStore, Job, JobCommand, JobError, JobState, JobStatus, Metadata,
    RecordedEvent, SharedClock, StoreError,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub use syncjobs_domain::job::WORKER_LOST;

/// What a command to a job comes to: the job after it and its events, or why not.
pub type JobResult = Result<Executed<Job>, CommandError<JobError>>;

/// What every job actor shares: the store, the clock, the runner and the knobs.
pub struct JobEnv {
    pub store: Arc<dyn EventStore>,
    pub clock: SharedClock,
    pub runner: Arc<dyn SyncRunner>,
    pub settings: JobSettings,
}

#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Record a progress report once this many more entities reached a verdict...
    pub progress_every_entities: u64,
    /// ...or this long after the last one, whichever comes first.
    pub progress_interval: Duration,
    /// This node's id: named in the JobStarted of the jobs it claims; a worker that starts
    /// again under the same id resumes its own interrupted jobs (and no other node's).
    pub worker_name: String,
    /// How many times a job whose worker was lost (or restarted under it) is resumed before
    /// it fails (`SYNCJOBS_MAX_RESUMES`).
    pub max_resumes: u32,
    /// Where sync runs are spawned; None runs them on the actor's own runtime.
    pub run_handle: Option<tokio::runtime::Handle>,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            progress_every_entities: 100,
            progress_interval: Duration::from_millis(500),
            worker_name: format!("syncjobs-{}", std::process::id()),
            max_resumes: 1,
            run_handle: None,
        }
    }
}

/// The waits between tries of a write a job cannot do without (its final event, the start
/// of a pending job) that the store refused: 100 ms, doubling up to 5 s, for as long as it
/// takes. A store that cannot write (a full disk) usually recovers without a restart, and a
/// job left `running` with no run would hold its connection's next run off until one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(5);

    /// The wait before the next try; each one is twice the last, up to [`Backoff::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

/// Whether a command that failed this way is worth trying again later: the store could
/// not write, or gave up on conflicts. Not a rejection (the job moved on: nothing to
/// write), a corrupt stream, or a closed store (the process is stopping; the next start's
/// recovery takes the job over).
fn worth_retrying(result: &JobResult) -> Option<&dyn std::error::Error> {
    match result {
        Err(CommandError::Store(e))
            if !matches!(e, StoreError::Closed | StoreError::Corrupt { .. }) =>
        {
            Some(e)
        }
        Err(e @ CommandError::Contention { .. }) => Some(e),
        _ => None,
    }
}

/// Sent to the supervisor whenever the job's status may have changed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct JobUpdate {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub watchdog_deadline: Option<DateTime<Utc>>,
}

/// Sent to the supervisor when the actor has stopped.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct JobGone {
    pub job_id: Uuid,
}

/// Ask the job to stop (API cancel or delete).
#[derive(Message)]
#[rtype(result = "JobResult")]
pub struct RequestCancel {
    pub requested_by: String,
    pub timeout_seconds: u64,
    pub metadata: Metadata,
}

/// The watchdog's verdict: the deadline passed without a confirmation.
#[derive(Message)]
#[rtype(result = "JobResult")]
pub struct ForceCancel;

/// Read the job's stream for events this actor did not write (another node's cancel
/// request, another node's watchdog verdict) and act on them. Sent by the supervisor,
/// which follows the log, with the event it saw: when that is the stream's next after the
/// actor's state, it is taken as is, with no read (a round trip off every cancel that
/// another node records, bench #14).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refresh(pub Option<RecordedEvent>);

/// A draining node gives the job back: its run is stopped and the job recorded pending again
/// (JobResumed, handed back) for another worker; a cancelling job's run confirms the cancel.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandBack;

/// Why an actor is started for a job it will not run: the worker holding the job is gone.
#[derive(Debug, Clone)]
pub struct RescueOrder {
    /// The worker the job's JobStarted names.
    pub lost_worker: String,
    /// When that worker was last seen alive, for the failure's text.
    pub last_seen: Option<DateTime<Utc>>,
    /// A cancelling job is cancelled at once (its worker was lost: nothing will confirm);
    /// otherwise (this node restarted) it waits for its watchdog as before.
    pub cancel_now: bool,
}

/// Stop the actor without touching the log (process shutdown). Its run is abandoned; the
/// next boot's recovery decides what happened to the job.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

#[derive(Message)]
#[rtype(result = "()")]
struct RecordProgress(EntityCounts);

#[derive(Message)]
#[rtype(result = "()")]
struct RunFinished(RunOutcome);

struct Run {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub struct JobActor {
    job_id: Uuid,
    env: Arc<JobEnv>,
    supervisor: Recipient<JobUpdate>,
    gone: Recipient<JobGone>,
    state: Option<JobState>,
    run: Option<Run>,
    span: tracing::Span,
    /// Waits between tries of a refused write the job needs (see [`Backoff`]).
    retry: Backoff,
    /// This node has just claimed the job (its state is given): run it. Otherwise the
    /// actor loads the job and recovers it.
    claimed: bool,
    /// The job's worker is gone: the actor rescues the job (see [`RescueOrder`]).
    rescue: Option<RescueOrder>,
    /// The node drains: the run's end gives the job back instead of failing it.
    handing_back: bool,
}

impl JobActor {
    pub fn new(
        job_id: Uuid,
        env: Arc<JobEnv>,
        supervisor: Recipient<JobUpdate>,
        gone: Recipient<JobGone>,
    ) -> Self {
        JobActor {
            job_id,
            env,
            supervisor,
            gone,
            state: None,
            run: None,
            span: tracing::info_span!("job", job_id = %job_id),
            retry: Backoff::default(),
            claimed: false,
            rescue: None,
            handing_back: false,
        }
    }

    /// An actor that loads the job and rescues it from its gone worker (resume, fail or
    /// cancel at once: [`JobCommand::Rescue`]), then stops.
    pub fn rescuing(mut self, order: RescueOrder) -> Self {
        self.rescue = Some(order);
        self
    }

    /// An actor for a job this node has just claimed: `state` is the job with this node's
    /// JobStarted folded in, so the actor starts the run without reading the stream again.
    pub fn claimed(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self.claimed = true;
        self
    }

    /// What to do with a job this node claimed: run it; or, if a cancel was recorded
    /// between the claim and now (the run never started), confirm it.
    fn run_claimed(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state.clone() else {
            ctx.stop();
            return;
        };
        self.supervisor.do_send(JobUpdate {
            job_id: self.job_id,
            status: state.status,
            watchdog_deadline: state.watchdog_deadline(),
        });
        match state.status {
            JobStatus::Running => self.start_run(ctx),
            JobStatus::Cancelling => {
                let meta = self.metadata("worker");
                let cmd = self.as_worker(JobCommand::ConfirmCancelled {
                    counts: state.counts,
                });
                ctx.wait(self.command(cmd, meta).map(|res, act, ctx| {
                    act.applied(&res, ctx);
                    if let Some(delay) = act.retry_delay(&res, "final event") {
                        ctx.run_later(delay, |act, ctx| act.run_claimed(ctx));
                    }
                }));
            }
            _ => ctx.stop(),
        }
    }

    /// A report of this node's run: it counts only while the job is this node's.
    fn as_worker(&self, command: JobCommand) -> JobCommand {
        JobCommand::AsWorker {
            worker: self.env.settings.worker_name.clone(),
            command: Box::new(command),
        }
    }

    fn metadata(&self, caused_by: &str) -> Metadata {
        Metadata {
            causation_id: None,
            correlation_id: Some(self.job_id),
            caused_by: caused_by.to_owned(),
        }
    }

    /// A future that runs `cmd` against the current state; apply its result with
    /// [`JobActor::applied`].
    fn command(
        &self,
        cmd: JobCommand,
        metadata: Metadata,
    ) -> impl ActorFuture<Self, Output = JobResult> {
        self.command_from(async move { cmd }, metadata)
    }

    /// [`JobActor::command`] for a command that ends the job without its run's report: it
    /// first asks the runner what the job durably wrote, so that the final event records
    /// those counts rather than the last progress report's.
    fn command_reconciled(
        &self,
        make: impl FnOnce(Option<EntityCounts>) -> JobCommand + 'static,
        metadata: Metadata,
    ) -> impl ActorFuture<Self, Output = JobResult> {
        let runner = self.env.runner.clone();
        let job_id = self.job_id;
        self.command_from(
            async move { make(runner.durable_counts(job_id).await) },
            metadata,
        )
    }

    /// Runs the command `cmd` resolves to against the current state.
    fn command_from(
        &self,
        cmd: impl std::future::Future<Output = JobCommand> + 'static,
        metadata: Metadata,
    ) -> impl ActorFuture<Self, Output = JobResult> {
        let env = self.env.clone();
        let known = self.state.clone().map(Job::from);
        let stream = stream::job(self.job_id);
        async move {
            let cmd = cmd.await;
            command::execute(&*env.store, &*env.clock, &stream, known, &cmd, &metadata).await
        }
        .instrument(self.span.clone())
        .into_actor(self)
    }

    /// Folds a command's result into the actor and reacts to the new status.
    fn applied(&mut self, result: &JobResult, ctx: &mut Context<Self>) {
        let state = match result {
            Ok(Executed {
                state: Job(Some(state)),
                ..
            }) => state,
            // A refusal changed nothing; and no command that is not refused leaves no job
            // (a decision on none creates or refuses).
            Ok(_) | Err(CommandError::Rejected(_)) => return,
            Err(e) => {
                tracing::error!(parent: &self.span, error = %e, "command failed");
                return;
            }
        };
        let status = state.status;
        let before = self.state.as_ref().map(|s| s.status);
        self.state = Some(state.clone());
        self.retry = Backoff::default();
        if before != Some(status) {
            tracing::info!(parent: &self.span, status = %status, "job status");
            self.supervisor.do_send(JobUpdate {
                job_id: self.job_id,
                status,
                watchdog_deadline: state.watchdog_deadline(),
            });
        }
        match status {
            JobStatus::Cancelling => {
                if let Some(run) = &self.run {
                    run.token.cancel();
                }
            }
            s if s.is_final() => ctx.stop(),
            // Resumed (by this actor's rescue or hand-back, or another node's): it runs here
            // no more; another claim will run it.
            JobStatus::Pending if before.is_some_and(|b| b != JobStatus::Pending) => ctx.stop(),
            _ => {}
        }
    }

    /// After a write the job needs (`what`) was refused by the store: the wait before trying
    /// again (logged), or None when a retry would not help (see [`worth_retrying`]).
    fn retry_delay(&mut self, result: &JobResult, what: &'static str) -> Option<Duration> {
        let error = worth_retrying(result)?;
        let delay = self.retry.next_delay();
        tracing::warn!(
            parent: &self.span,
            job_id = %self.job_id,
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "{what} not recorded; trying again"
        );
        Some(delay)
    }

    /// What to do with a job just loaded from its stream (and again, later, when the write
    /// that decision made was refused by the store).
    fn resume(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state.clone() else {
            ctx.stop();
            return;
        };
        // Tell the supervisor what we found (it arms the watchdog of a cancelling job).
        self.supervisor.do_send(JobUpdate {
            job_id: self.job_id,
            status: state.status,
            watchdog_deadline: state.watchdog_deadline(),
        });
        match state.status {
            // Already rescued (by another node), or a cancelling job left to its watchdog:
            // a rescue has nothing to do.
            JobStatus::Pending | JobStatus::Cancelling
                if self.rescue.as_ref().is_some_and(|o| !o.cancel_now)
                    || (self.rescue.is_some() && state.status == JobStatus::Pending) =>
            {
                ctx.stop()
            }
            JobStatus::Pending => {
                let worker = self.env.settings.worker_name.clone();
                let meta = self.metadata(&format!("worker:{worker}"));
                ctx.wait(
                    self.command(JobCommand::Start { worker }, meta)
                        .map(|res, act, ctx| {
                            act.applied(&res, ctx);
                            if act.state.as_ref().map(|s| s.status) == Some(JobStatus::Running) {
                                act.start_run(ctx);
                            } else if let Some(delay) = act.retry_delay(&res, "start") {
                                ctx.run_later(delay, |act, ctx| act.resume(ctx));
                            }
                        }),
                );
            }
            // A job is loaded running only when its worker is gone (this node restarted under
            // it, or it was lost): resumed elsewhere while resumes remain, else failed. Its
            // last progress report may be behind what it wrote: the destination knows.
            JobStatus::Running => self.rescue(state, ctx),
            JobStatus::Cancelling if self.rescue.as_ref().is_some_and(|o| o.cancel_now) => {
                self.rescue(state, ctx)
            }
            // No worker is left to confirm; the supervisor's watchdog will end it.
            JobStatus::Cancelling => {}
            _ => ctx.stop(),
        }
    }

    /// Records [`JobCommand::Rescue`] for a job whose worker is gone; again after a wait
    /// while the store refuses it.
    fn rescue(&mut self, state: JobState, ctx: &mut Context<Self>) {
        let order = self.rescue.clone().unwrap_or_else(|| RescueOrder {
            lost_worker: state.worker.clone().unwrap_or_default(),
            last_seen: None,
            cancel_now: false,
        });
        let max_resumes = self.env.settings.max_resumes;
        let meta = self.metadata("recovery");
        let make = move |durable| JobCommand::Rescue {
            lost_worker: order.lost_worker,
            last_seen: order.last_seen,
            max_resumes,
            durable,
        };
        ctx.wait(self.command_reconciled(make, meta).map(|res, act, ctx| {
            act.applied(&res, ctx);
            match &res {
                Ok(_) => tracing::warn!(parent: &act.span, "job rescued from its lost worker"),
                // Another node rescued it first, or it ended: nothing left to do here.
                Err(CommandError::Rejected(e)) => {
                    tracing::debug!(parent: &act.span, error = %e, "nothing to rescue");
                    ctx.stop();
                }
                Err(_) => {}
            }
            if let Some(delay) = act.retry_delay(&res, "rescue") {
                ctx.run_later(delay, |act, ctx| act.resume(ctx));
            }
        }));
    }

    fn start_run(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = &self.state else { return };
        let spec = RunSpec {
            job_id: state.job_id,
            source_connection_id: state.source_connection_id,
            organization_id: state.organization_id,
            short_name: state.short_name.clone(),
            config: state.config.clone(),
        };
        let token = CancellationToken::new();
        let (sink, progress) = ProgressSink::new();
        let addr = ctx.address();
        let runner = self.env.runner.clone();
        let run_token = token.clone();
        let span = self.span.clone();
        let run = async move {
            let outcome = runner.run(spec, run_token, sink).await;
            if addr.connected() {
                addr.do_send(RunFinished(outcome));
            } else {
                tracing::warn!(
                    ?outcome,
                    "late report from a run whose job already ended: dropped"
                );
            }
        }
        .instrument(span.clone());
        let task = match &self.env.settings.run_handle {
            Some(handle) => handle.spawn(run),
            None => tokio::spawn(run),
        };
        self.run = Some(Run { token, task });
        let throttle = progress_throttle(
            progress,
            ctx.address(),
            self.env.settings.progress_every_entities,
            self.env.settings.progress_interval,
        )
        .instrument(span);
        ctx.spawn(throttle.into_actor(self));
    }
}

/// Turns the run's stream of cumulative counts into progress reports: one once
/// `every` more entities reached a verdict, or once `interval` passed with news.
async fn progress_throttle(
    mut progress: watch::Receiver<EntityCounts>,
    job: Addr<JobActor>,
    every: u64,
    interval: Duration,
) {
    let mut sent = EntityCounts::default();
    let mut last_sent_at = tokio::time::Instant::now();
    loop {
        let deadline = last_sent_at + interval;
        let changed = tokio::time::timeout_at(deadline, progress.changed()).await;
        if matches!(changed, Ok(Err(_))) {
            // The run ended; its final event carries the final counts.
            return;
        }
        let now = *progress.borrow_and_update();
        let due = changed.is_err() || now.total().saturating_sub(sent.total()) >= every;
        if due {
            if now != sent {
                job.do_send(RecordProgress(now));
                sent = now;
            }
            last_sent_at = tokio::time::Instant::now();
        }
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.claimed {
            self.run_claimed(ctx);
            return;
        }
        // Hold the mailbox until the stream is folded: no message is handled on a guess.
        let env = self.env.clone();
        let job_id = self.job_id;
        ctx.wait(
            async move { command::load::<Job>(&*env.store, &stream::job(job_id)).await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(|loaded, act, ctx| match loaded {
                    Ok(Job(state)) => {
                        act.state = state;
                        act.resume(ctx);
                    }
                    Err(e) => {
                        tracing::error!(parent: &act.span, error = %e, "cannot load job");
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(run) = self.run.take() {
            run.token.cancel();
            // Normally the run already ended. After a forced cancel it may be stuck (a hung
            // source ignoring the token): abandon it.
            run.task.abort();
        }
        self.gone.do_send(JobGone {
            job_id: self.job_id,
        });
    }
}

impl Handler<RequestCancel> for JobActor {
    type Result = AtomicResponse<Self, JobResult>;

    fn handle(&mut self, msg: RequestCancel, _ctx: &mut Context<Self>) -> Self::Result {
        let cmd = JobCommand::RequestCancel {
            requested_by: msg.requested_by,
            timeout_seconds: msg.timeout_seconds,
        };
        AtomicResponse::new(Box::pin(self.command(cmd, msg.metadata).map(
            |res, act, ctx| {
                act.applied(&res, ctx);
                res
            },
        )))
    }
}

impl Handler<ForceCancel> for JobActor {
    type Result = AtomicResponse<Self, JobResult>;

    fn handle(&mut self, _msg: ForceCancel, _ctx: &mut Context<Self>) -> Self::Result {
        let now = self.env.clock.now();
        let meta = self.metadata("watchdog");
        let force = move |durable| JobCommand::ForceCancel { now, durable };
        AtomicResponse::new(Box::pin(self.command_reconciled(force, meta).map(
            |res, act, ctx| {
                if res.is_ok() {
                    tracing::warn!(parent: &act.span, "force-cancelled by the watchdog");
                }
                act.applied(&res, ctx);
                res
            },
        )))
    }
}

impl Handler<Refresh> for JobActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Refresh, _ctx: &mut Context<Self>) -> Self::Result {
        let env = self.env.clone();
        let known = self.state.clone();
        let stream = stream::job(self.job_id);
        let next = msg.0.filter(|e| {
            e.stream_id == stream && known.as_ref().is_some_and(|k| e.version == k.version + 1)
        });
        let read = async move {
            let Some(known) = known else {
                return Ok(None);
            };
            let newer = match next {
                Some(e) => vec![e],
                None => env.store.read_stream(&stream, known.version).await?,
            };
            if newer.is_empty() {
                return Ok(None);
            }
            let mut job = Job::from(known);
            job.evolve_all(&newer)
                .map_err(|reason| CommandError::Corrupt { stream, reason })?;
            Ok(Some(Executed {
                state: job,
                events: newer,
            }))
        };
        AtomicResponse::new(Box::pin(
            read.instrument(self.span.clone()).into_actor(self).map(
                |res: Result<Option<Executed<Job>>, CommandError<JobError>>, act, ctx| match res {
                    Ok(Some(executed)) => act.applied(&Ok(executed), ctx),
                    Ok(None) => {}
                    // The next write of the actor reads the stream again anyway.
                    Err(e) => {
                        tracing::warn!(parent: &act.span, error = %e, "cannot read the job's stream")
                    }
                },
            ),
        ))
    }
}

impl Handler<HandBack> for JobActor {
    type Result = ();

    fn handle(&mut self, _msg: HandBack, ctx: &mut Context<Self>) {
        self.handing_back = true;
        match &self.run {
            // The run stops at the token; its end (RunFinished) records the hand-back.
            Some(run) => run.token.cancel(),
            None => ctx.stop(),
        }
    }
}

impl Handler<Shutdown> for JobActor {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<RecordProgress> for JobActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: RecordProgress, _ctx: &mut Context<Self>) -> Self::Result {
        let meta = self.metadata("worker");
        let cmd = self.as_worker(JobCommand::RecordProgress { counts: msg.0 });
        AtomicResponse::new(Box::pin(self.command(cmd, meta).map(|res, act, ctx| {
            if let Err(CommandError::Rejected(e)) = &res {
                tracing::debug!(parent: &act.span, error = %e, "progress not recorded");
            }
            // The job was rescued from this node (declared lost while it ran): its run here
            // stops; the job's next run is another's.
            if let Err(CommandError::Rejected(JobError::NotOnWorker { .. })) = &res {
                tracing::warn!(parent: &act.span, "the job is no longer this worker's: its run stops");
                ctx.stop();
            }
            act.applied(&res, ctx);
        })))
    }
}

impl Handler<RunFinished> for JobActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: RunFinished, _ctx: &mut Context<Self>) -> Self::Result {
        // Sent again later if the store cannot record the final event now.
        let again = RunFinished(msg.0.clone());
        let status = self.state.as_ref().map(|s| s.status);
        let cmd = match msg.0 {
            RunOutcome::Completed(counts) => JobCommand::Complete { counts },
            RunOutcome::Failed { error, counts } => JobCommand::Fail {
                error,
                error_category: Some("sync_error".into()),
                counts,
            },
            RunOutcome::Cancelled(counts) if status == Some(JobStatus::Cancelling) => {
                JobCommand::ConfirmCancelled { counts }
            }
            RunOutcome::Cancelled(counts) if self.handing_back => JobCommand::HandBack {
                worker: self.env.settings.worker_name.clone(),
                counts,
            },
            RunOutcome::Cancelled(counts) => JobCommand::Fail {
                error: "the run stopped without a cancel request".into(),
                error_category: Some("sync_error".into()),
                counts,
            },
        };
        let cmd = self.as_worker(cmd);
        let meta = self.metadata("worker");
        AtomicResponse::new(Box::pin(self.command(cmd, meta).map(|res, act, ctx| {
            if let Err(CommandError::Rejected(e)) = &res {
                tracing::warn!(parent: &act.span, error = %e, "late report from the worker: dropped");
                if matches!(e, JobError::NotOnWorker { .. }) {
                    ctx.stop();
                }
            }
            act.applied(&res, ctx);
            // Decided again on the state of then: a cancel recorded meanwhile is honoured.
            if let Some(delay) = act.retry_delay(&res, "final event") {
                ctx.notify_later(again, delay);
            }
        })))
    }
}
