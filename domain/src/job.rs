//! A sync job's state (the fold of its events) and its decisions (command -> events).
//!
//! `decide` is the only place that knows the lifecycle; `apply` trusts what was recorded.
//! Both are pure so that the service, `syncjobs replay` and `syncjobs verify` agree exactly.
//! [`Job`] is the job as an [`Aggregate`]: no state before JobCreated, then a [`JobState`].

use crate::aggregate::{Aggregate, FoldError};
use crate::events::{EntityCounts, RecordedEvent, SyncJobEvent};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The error category of a job failed because its worker was lost after its last resume.
pub const WORKER_LOST: &str = "worker_lost";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Pending, running or cancelling: the job still occupies its source connection.
    pub fn is_active(&self) -> bool {
        !self.is_final()
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one job after folding its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub job_id: Uuid,
    pub source_connection_id: Uuid,
    pub organization_id: Uuid,
    pub short_name: String,
    pub config: serde_json::Value,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub counts: EntityCounts,
    pub error: Option<String>,
    pub error_category: Option<String>,
    pub error_details: Option<serde_json::Value>,
    /// When CancelRequested was recorded, and the timeout it was recorded under.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub cancel_timeout_seconds: Option<u64>,
    /// The worker whose JobStarted is the job's current claim (None while pending).
    #[serde(default)]
    pub worker: Option<String>,
    /// How many times the job was resumed after its worker was lost.
    #[serde(default)]
    pub resumes: u32,
    /// The stream version this state reflects (0 = no events).
    pub version: u64,
}

impl JobState {
    /// The moment the watchdog may force-cancel, if the job is waiting for a cancel confirmation.
    pub fn watchdog_deadline(&self) -> Option<DateTime<Utc>> {
        if self.status != JobStatus::Cancelling {
            return None;
        }
        let at = self.cancel_requested_at?;
        let secs = self.cancel_timeout_seconds?;
        // A timeout past the calendar's end (a damaged or hand-made history) is a deadline
        // never reached, not a panic in recovery or `replay`.
        let deadline = i64::try_from(secs)
            .ok()
            .and_then(Duration::try_seconds)
            .and_then(|d| at.checked_add_signed(d));
        Some(deadline.unwrap_or(DateTime::<Utc>::MAX_UTC))
    }

    /// completed_at - started_at in seconds, once both exist.
    pub fn duration_seconds(&self) -> Option<f64> {
        let (start, end) = (self.started_at?, self.completed_at?);
        Some((end - start).num_microseconds()? as f64 / 1e6)
    }

    /// Folds a whole stream. The first event must be JobCreated.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = (&'a SyncJobEvent, DateTime<Utc>)>,
    ) -> Result<Option<JobState>, FoldError> {
        let mut state: Option<JobState> = None;
        for (event, at) in events {
            state = Some(JobState::evolve(state, event, at)?);
        }
        Ok(state)
    }

    /// Applies one event recorded at `at` to the state before it (None before JobCreated).
    pub fn evolve(
        state: Option<JobState>,
        event: &SyncJobEvent,
        at: DateTime<Utc>,
    ) -> Result<JobState, FoldError> {
        match (state, event) {
            (None, created @ SyncJobEvent::JobCreated { .. }) => {
                JobState::created(created.clone(), at)
            }
            (None, other) => Err(FoldError::NotCreated(other.event_type())),
            (Some(mut s), event) => {
                s.evolve_in_place(event, at)?;
                Ok(s)
            }
        }
    }

    /// The state a JobCreated event recorded at `at` starts (what [`JobState::evolve`] gives
    /// without a state), taking the event's config and names instead of copying them.
    pub fn created(event: SyncJobEvent, at: DateTime<Utc>) -> Result<JobState, FoldError> {
        let SyncJobEvent::JobCreated {
            job_id,
            source_connection_id,
            organization_id,
            short_name,
            config,
        } = event
        else {
            return Err(FoldError::NotCreated(event.event_type()));
        };
        Ok(JobState {
            job_id,
            source_connection_id,
            organization_id,
            short_name,
            config,
            status: JobStatus::Pending,
            created_at: at,
            started_at: None,
            completed_at: None,
            counts: EntityCounts::default(),
            error: None,
            error_category: None,
            error_details: None,
            cancel_requested_at: None,
            cancel_timeout_seconds: None,
            worker: None,
            resumes: 0,
            version: 1,
        })
    }

    /// [`JobState::evolve`] of an existing job, in place: on error the state is unchanged.
    /// The read model folds every event of the log this way at start-up, where moving the
    /// state out of its map and back for each event was a visible share of the time.
    pub fn evolve_in_place(
        &mut self,
        event: &SyncJobEvent,
        at: DateTime<Utc>,
    ) -> Result<(), FoldError> {
        if let SyncJobEvent::JobCreated { .. } = event {
            return Err(FoldError::CreatedTwice);
        }
        if self.status.is_final() {
            return Err(FoldError::AfterFinal {
                status: self.status,
                event: event.event_type(),
            });
        }
        self.apply(event, at);
        self.version += 1;
        Ok(())
    }

    fn apply(&mut self, event: &SyncJobEvent, at: DateTime<Utc>) {
        match event {
            SyncJobEvent::JobCreated { .. } => {}
            SyncJobEvent::JobStarted { worker } => {
                self.status = JobStatus::Running;
                // The first start: a resumed job keeps when it started.
                self.started_at.get_or_insert(at);
                self.worker = Some(worker.clone());
            }
            SyncJobEvent::JobResumed { attempt, .. } => {
                self.status = JobStatus::Pending;
                self.worker = None;
                self.resumes = *attempt;
                // The next run counts from nothing (its own report is cumulative for it).
                self.counts = EntityCounts::default();
            }
            SyncJobEvent::ProgressRecorded { counts } => self.counts = *counts,
            SyncJobEvent::JobCompleted { counts } => {
                self.counts = *counts;
                self.status = JobStatus::Completed;
                self.completed_at = Some(at);
            }
            SyncJobEvent::JobFailed {
                error,
                error_category,
                counts,
                counts_reconciled,
            } => {
                self.counts = *counts;
                self.status = JobStatus::Failed;
                self.completed_at = Some(at);
                self.error = Some(error.clone());
                self.error_category = error_category.clone();
                if *counts_reconciled {
                    self.error_details = Some(serde_json::json!({ "counts_reconciled": true }));
                }
            }
            SyncJobEvent::CancelRequested {
                timeout_seconds, ..
            } => {
                self.status = JobStatus::Cancelling;
                self.cancel_requested_at = Some(at);
                self.cancel_timeout_seconds = Some(*timeout_seconds);
            }
            SyncJobEvent::Cancelled {
                counts,
                note,
                counts_reconciled,
            } => {
                self.counts = *counts;
                self.status = JobStatus::Cancelled;
                self.completed_at = Some(at);
                let mut details = serde_json::Map::new();
                if let Some(note) = note {
                    details.insert("note".into(), note.clone().into());
                }
                if *counts_reconciled {
                    details.insert("counts_reconciled".into(), true.into());
                }
                if !details.is_empty() {
                    self.error_details = Some(details.into());
                }
            }
            SyncJobEvent::ForceCancelled {
                error,
                timeout_seconds,
                counts,
                counts_reconciled,
                ..
            } => {
                self.counts = *counts;
                self.status = JobStatus::Cancelled;
                self.completed_at = Some(at);
                self.error = Some(error.clone());
                self.error_category = Some("cancel_timeout".into());
                let mut details = serde_json::json!({
                    "forced_by": "watchdog",
                    "timeout_seconds": timeout_seconds,
                });
                if *counts_reconciled {
                    details["counts_reconciled"] = true.into();
                }
                self.error_details = Some(details);
            }
        }
    }

    /// The counts of a final event that ends the job without its run's report: the last
    /// progress report's counts reconciled with what the destination durably holds for the job, when the
    /// caller could ask it (`durable`), and whether they were.
    fn final_counts(&self, durable: Option<&EntityCounts>) -> (EntityCounts, bool) {
        match durable {
            Some(durable) => (self.counts.reconciled_with(durable), true),
            None => (self.counts, false),
        }
    }

    /// Decides what a command means for this job. Never mutates; the caller appends the
    /// events with `expected version = self.version` and folds them back in.
    pub fn decide(&self, command: &JobCommand) -> Result<Vec<SyncJobEvent>, JobError> {
        use JobStatus::*;
        let s = self.status;
        let reject = || {
            Err(JobError::InvalidTransition {
                status: s,
                command: command.name(),
            })
        };
        match command {
            JobCommand::AsWorker { worker, command } => {
                if self.worker.as_deref() != Some(worker.as_str()) {
                    return Err(JobError::NotOnWorker {
                        worker: worker.clone(),
                    });
                }
                self.decide(command)
            }
            JobCommand::Create { .. } => Err(JobError::AlreadyExists),
            JobCommand::Start { worker } => match s {
                Pending => Ok(vec![SyncJobEvent::JobStarted {
                    worker: worker.clone(),
                }]),
                _ => reject(),
            },
            JobCommand::RecordProgress { counts } => match s {
                Running | Cancelling => {
                    if !counts.dominates(&self.counts) {
                        return Err(JobError::CountsWentDown);
                    }
                    if *counts == self.counts {
                        return Ok(vec![]);
                    }
                    Ok(vec![SyncJobEvent::ProgressRecorded { counts: *counts }])
                }
                _ => reject(),
            },
            // A run that ends after a cancel was requested ends the job as cancelled, with
            // the counts it really reached: cancelling has exactly one way out.
            JobCommand::Complete { counts } => match s {
                Running => Ok(vec![SyncJobEvent::JobCompleted { counts: *counts }]),
                Cancelling => Ok(vec![SyncJobEvent::Cancelled {
                    counts: *counts,
                    note: Some("the run finished before it saw the cancel signal".into()),
                    counts_reconciled: false,
                }]),
                _ => reject(),
            },
            JobCommand::Fail {
                error,
                error_category,
                counts,
            } => match s {
                Pending | Running => Ok(vec![SyncJobEvent::JobFailed {
                    error: error.clone(),
                    error_category: error_category.clone(),
                    counts: *counts,
                    counts_reconciled: false,
                }]),
                Cancelling => Ok(vec![SyncJobEvent::Cancelled {
                    counts: *counts,
                    note: Some(format!(
                        "the run stopped with an error while cancelling: {error}"
                    )),
                    counts_reconciled: false,
                }]),
                _ => reject(),
            },
            JobCommand::RequestCancel {
                requested_by,
                timeout_seconds,
            } => match s {
                Pending => Ok(vec![
                    SyncJobEvent::CancelRequested {
                        requested_by: requested_by.clone(),
                        timeout_seconds: *timeout_seconds,
                    },
                    SyncJobEvent::Cancelled {
                        counts: self.counts,
                        note: None,
                        counts_reconciled: false,
                    },
                ]),
                Running => Ok(vec![SyncJobEvent::CancelRequested {
                    requested_by: requested_by.clone(),
                    timeout_seconds: *timeout_seconds,
                }]),
                other => Err(JobError::CannotCancel(other)),
            },
            JobCommand::ConfirmCancelled { counts } => match s {
                Cancelling => Ok(vec![SyncJobEvent::Cancelled {
                    counts: *counts,
                    note: None,
                    counts_reconciled: false,
                }]),
                _ => reject(),
            },
            JobCommand::Rescue {
                lost_worker,
                last_seen,
                max_resumes,
                durable,
            } => {
                if self.worker.as_deref() != Some(lost_worker.as_str()) {
                    return Err(JobError::NotOnWorker {
                        worker: lost_worker.clone(),
                    });
                }
                let (counts, counts_reconciled) = self.final_counts(durable.as_ref());
                let seen = last_seen.map_or_else(
                    || "never seen after it claimed the job".to_owned(),
                    |at| format!("last seen {}", at.to_rfc3339()),
                );
                match s {
                    Running if self.resumes < *max_resumes => Ok(vec![SyncJobEvent::JobResumed {
                        attempt: self.resumes.saturating_add(1),
                        lost_worker: lost_worker.clone(),
                        last_seen: *last_seen,
                        counts,
                        counts_reconciled,
                        handed_back: false,
                    }]),
                    Running => Ok(vec![SyncJobEvent::JobFailed {
                        error: format!(
                            "worker {lost_worker} was lost ({seen}); the job was resumed {} \
                             time(s), the most allowed",
                            self.resumes
                        ),
                        error_category: Some(WORKER_LOST.into()),
                        counts,
                        counts_reconciled,
                    }]),
                    // Nothing runs it any more: no reason to wait for the watchdog.
                    Cancelling => Ok(vec![SyncJobEvent::Cancelled {
                        counts,
                        note: Some(format!(
                            "cancelled at once: worker {lost_worker}, which ran the job, was \
                             lost ({seen})"
                        )),
                        counts_reconciled,
                    }]),
                    _ => reject(),
                }
            }
            JobCommand::HandBack { worker, counts } => {
                if self.worker.as_deref() != Some(worker.as_str()) {
                    return Err(JobError::NotOnWorker {
                        worker: worker.clone(),
                    });
                }
                match s {
                    Running => Ok(vec![SyncJobEvent::JobResumed {
                        attempt: self.resumes,
                        lost_worker: worker.clone(),
                        last_seen: None,
                        counts: *counts,
                        counts_reconciled: false,
                        handed_back: true,
                    }]),
                    _ => reject(),
                }
            }
            JobCommand::ForceCancel { now, durable } => {
                let Some(deadline) = self.watchdog_deadline() else {
                    return reject();
                };
                if *now < deadline {
                    return Err(JobError::NotYetDue { deadline });
                }
                let timeout_seconds = self.cancel_timeout_seconds.unwrap_or_default();
                let (counts, counts_reconciled) = self.final_counts(durable.as_ref());
                Ok(vec![SyncJobEvent::ForceCancelled {
                    error: format!(
                        "Cancellation forced by the watchdog after {timeout_seconds} seconds \
                         without confirmation from the worker"
                    ),
                    timeout_seconds,
                    requested_at: self.cancel_requested_at.unwrap_or(*now),
                    counts,
                    counts_reconciled,
                }])
            }
        }
    }
}

/// What can be asked of a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand {
    Create {
        job_id: Uuid,
        source_connection_id: Uuid,
        organization_id: Uuid,
        short_name: String,
        config: serde_json::Value,
    },
    Start {
        worker: String,
    },
    RecordProgress {
        counts: EntityCounts,
    },
    Complete {
        counts: EntityCounts,
    },
    Fail {
        error: String,
        error_category: Option<String>,
        counts: EntityCounts,
    },
    RequestCancel {
        requested_by: String,
        timeout_seconds: u64,
    },
    ConfirmCancelled {
        counts: EntityCounts,
    },
    /// The job's worker (`lost_worker`, which must be the one that claimed it) is gone: lost,
    /// or the process it was died and this node restarted. A running job is resumed
    /// (pending again) while it has been resumed fewer than `max_resumes` times, else
    /// failed naming the worker and `last_seen`; a cancelling one is cancelled at once.
    /// `durable` is what the destination holds for the job (None when it could not be
    /// asked): the lost run's last progress report may be behind the rows it wrote.
    Rescue {
        lost_worker: String,
        last_seen: Option<DateTime<Utc>>,
        max_resumes: u32,
        durable: Option<EntityCounts>,
    },
    /// `command` as reported by the run of `worker`: refused ([`JobError::NotOnWorker`]) once
    /// the job is no longer that worker's (rescued from it, maybe claimed by another since),
    /// so a worker declared lost that still runs (a pause, a partition) cannot write into the
    /// job's next run. Every report of a run goes through it.
    AsWorker {
        worker: String,
        command: Box<JobCommand>,
    },
    /// A draining worker gives a running job back, its run stopped with `counts`: pending
    /// again for another worker, without using up a resume.
    HandBack {
        worker: String,
        counts: EntityCounts,
    },
    /// The watchdog's verdict. `durable` as for [`JobCommand::Rescue`]: the stuck worker
    /// will not report what it wrote after its last progress report.
    ForceCancel {
        now: DateTime<Utc>,
        durable: Option<EntityCounts>,
    },
}

impl JobCommand {
    pub fn name(&self) -> &'static str {
        match self {
            JobCommand::Create { .. } => "create",
            JobCommand::Start { .. } => "start",
            JobCommand::RecordProgress { .. } => "record progress",
            JobCommand::Complete { .. } => "complete",
            JobCommand::Fail { .. } => "fail",
            JobCommand::RequestCancel { .. } => "cancel",
            JobCommand::ConfirmCancelled { .. } => "confirm cancelled",
            JobCommand::Rescue { .. } => "rescue",
            JobCommand::HandBack { .. } => "hand back",
            JobCommand::AsWorker { command, .. } => command.name(),
            JobCommand::ForceCancel { .. } => "force cancel",
        }
    }
}

/// Why a command was refused. The API words these its own way (`api::error` in the
/// server); the texts here are for logs and tests.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("no such job")]
    NotFound,
    #[error("the job exists already")]
    AlreadyExists,
    #[error("a job in {0} state cannot be cancelled")]
    CannotCancel(JobStatus),
    #[error("Cannot {command} a job in {status} state")]
    InvalidTransition {
        status: JobStatus,
        command: &'static str,
    },
    #[error("Counts may not go down")]
    CountsWentDown,
    #[error("The watchdog deadline {deadline} has not passed yet")]
    NotYetDue { deadline: DateTime<Utc> },
    /// A rescue named a worker that does not hold the job (another node rescued it first,
    /// or it was claimed again since).
    #[error("the job is not held by worker {worker}")]
    NotOnWorker { worker: String },
}

/// A job as an [`Aggregate`]: nothing before its JobCreated, then its [`JobState`].
///
/// Folding is in place ([`JobState::evolve_in_place`]): recovery folds every live job's
/// stream, and moving the state out and back for each event was a visible share of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job(pub Option<JobState>);

impl From<JobState> for Job {
    fn from(state: JobState) -> Self {
        Job(Some(state))
    }
}

impl Aggregate for Job {
    const NAME: &'static str = "job";
    type Event = SyncJobEvent;
    type Command = JobCommand;
    type Error = JobError;

    fn initial() -> Self {
        Job(None)
    }

    fn version(&self) -> u64 {
        self.0.as_ref().map_or(0, |s| s.version)
    }

    fn evolve(&mut self, event: &RecordedEvent) -> Result<(), FoldError> {
        let Some(job_event) = event.job_event() else {
            return Err(FoldError::Foreign(event.event_type()));
        };
        match &mut self.0 {
            Some(state) => state.evolve_in_place(job_event, event.recorded_at),
            None => {
                self.0 = Some(JobState::created(job_event.clone(), event.recorded_at)?);
                Ok(())
            }
        }
    }

    /// Creates a job that does not exist yet; anything else needs it to exist.
    fn decide(&self, command: &JobCommand) -> Result<Vec<SyncJobEvent>, JobError> {
        match (&self.0, command) {
            (
                None,
                JobCommand::Create {
                    job_id,
                    source_connection_id,
                    organization_id,
                    short_name,
                    config,
                },
            ) => Ok(vec![SyncJobEvent::JobCreated {
                job_id: *job_id,
                source_connection_id: *source_connection_id,
                organization_id: *organization_id,
                short_name: short_name.clone(),
                config: config.clone(),
            }]),
            (None, _) => Err(JobError::NotFound),
            (Some(s), cmd) => s.decide(cmd),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Given (past events) / when (command) / then (new events or error), with the shared
    //! `testkit` harness: each given event is recorded one second after the previous.
    use super::*;
    use crate::events::Event;
    use crate::testkit::{at as t, AggregateTest};

    fn counts(n: u64) -> EntityCounts {
        EntityCounts {
            inserted: n,
            ..Default::default()
        }
    }

    fn created() -> SyncJobEvent {
        SyncJobEvent::JobCreated {
            job_id: Uuid::from_u128(1),
            source_connection_id: Uuid::from_u128(2),
            organization_id: Uuid::from_u128(3),
            short_name: "timed".into(),
            config: serde_json::json!({}),
        }
    }
    fn started() -> SyncJobEvent {
        SyncJobEvent::JobStarted { worker: "w".into() }
    }
    fn cancel_requested() -> SyncJobEvent {
        SyncJobEvent::CancelRequested {
            requested_by: "test".into(),
            timeout_seconds: 180,
        }
    }
    fn completed() -> SyncJobEvent {
        SyncJobEvent::JobCompleted { counts: counts(3) }
    }
    fn failed() -> SyncJobEvent {
        SyncJobEvent::JobFailed {
            error: "x".into(),
            error_category: None,
            counts: counts(1),
            counts_reconciled: false,
        }
    }
    fn cancelled() -> SyncJobEvent {
        SyncJobEvent::Cancelled {
            counts: counts(1),
            note: None,
            counts_reconciled: false,
        }
    }
    fn force_cancelled() -> SyncJobEvent {
        SyncJobEvent::ForceCancelled {
            error: "forced".into(),
            timeout_seconds: 180,
            requested_at: t(2),
            counts: counts(1),
            counts_reconciled: false,
        }
    }

    fn given(events: &[SyncJobEvent]) -> AggregateTest<Job> {
        AggregateTest::given(events.to_vec())
    }

    /// The job `events` fold into.
    fn job(events: &[SyncJobEvent]) -> JobState {
        given(events).state().0.clone().expect("the job exists")
    }

    fn create_cmd() -> JobCommand {
        JobCommand::Create {
            job_id: Uuid::from_u128(1),
            source_connection_id: Uuid::from_u128(2),
            organization_id: Uuid::from_u128(3),
            short_name: "timed".into(),
            config: serde_json::json!({}),
        }
    }
    fn cancel_cmd() -> JobCommand {
        JobCommand::RequestCancel {
            requested_by: "test".into(),
            timeout_seconds: 180,
        }
    }
    fn rescue_cmd(worker: &str, max_resumes: u32) -> JobCommand {
        JobCommand::Rescue {
            lost_worker: worker.into(),
            last_seen: None,
            max_resumes,
            durable: None,
        }
    }
    fn fail_cmd() -> JobCommand {
        JobCommand::Fail {
            error: "boom".into(),
            error_category: None,
            counts: counts(2),
        }
    }

    #[test]
    fn create_makes_a_pending_job_once() {
        let after = given(&[]).when(create_cmd()).then([created()]);
        assert_eq!(after.0.map(|s| s.status), Some(JobStatus::Pending));
        assert_eq!(job(&[created()]).status, JobStatus::Pending);
        given(&[created()])
            .when(create_cmd())
            .then_err(JobError::AlreadyExists);
    }

    #[test]
    fn commands_on_a_missing_job_are_not_found() {
        for cmd in [
            cancel_cmd(),
            JobCommand::Start { worker: "w".into() },
            JobCommand::RecordProgress { counts: counts(1) },
            JobCommand::Complete { counts: counts(1) },
            fail_cmd(),
            JobCommand::ConfirmCancelled { counts: counts(1) },
            rescue_cmd("w", 1),
            JobCommand::ForceCancel {
                now: t(10_000),
                durable: None,
            },
        ] {
            given(&[]).when(cmd).then_err(JobError::NotFound);
        }
    }

    /// Every command in every status: which are accepted, and how the others are refused.
    #[test]
    fn every_command_in_every_status() {
        use JobStatus::*;
        let histories: [(JobStatus, Vec<SyncJobEvent>); 7] = [
            (Pending, vec![created()]),
            (Running, vec![created(), started()]),
            (Cancelling, vec![created(), started(), cancel_requested()]),
            (Completed, vec![created(), started(), completed()]),
            (Failed, vec![created(), started(), failed()]),
            (
                Cancelled,
                vec![created(), started(), cancel_requested(), cancelled()],
            ),
            (
                Cancelled,
                vec![created(), started(), cancel_requested(), force_cancelled()],
            ),
        ];
        for (status, history) in &histories {
            let g = given(history);
            assert_eq!(g.state().0.as_ref().map(|s| s.status), Some(*status));
            let accepts = |cmd: &JobCommand| {
                matches!(
                    (status, cmd),
                    (Pending, JobCommand::Start { .. } | JobCommand::Fail { .. })
                        | (Pending | Running, JobCommand::RequestCancel { .. })
                        | (
                            Running,
                            JobCommand::RecordProgress { .. }
                                | JobCommand::Complete { .. }
                                | JobCommand::Fail { .. }
                                | JobCommand::Rescue { .. },
                        )
                        | (
                            Cancelling,
                            JobCommand::RecordProgress { .. }
                                | JobCommand::Complete { .. }
                                | JobCommand::Fail { .. }
                                | JobCommand::ConfirmCancelled { .. }
                                | JobCommand::ForceCancel { .. }
                                | JobCommand::Rescue { .. },
                        )
                )
            };
            for cmd in [
                create_cmd(),
                JobCommand::Start { worker: "w".into() },
                JobCommand::RecordProgress { counts: counts(9) },
                JobCommand::Complete { counts: counts(9) },
                fail_cmd(),
                cancel_cmd(),
                JobCommand::ConfirmCancelled { counts: counts(9) },
                rescue_cmd("w", 1),
                JobCommand::ForceCancel {
                    now: t(100_000),
                    durable: None,
                },
            ] {
                if accepts(&cmd) {
                    let (events, after) = g.when(cmd.clone()).accepted();
                    assert!(!events.is_empty(), "{status:?} {cmd:?}");
                    assert!(after.version() > g.state().version());
                    continue;
                }
                let expected = match &cmd {
                    JobCommand::Create { .. } => JobError::AlreadyExists,
                    JobCommand::RequestCancel { .. } => JobError::CannotCancel(*status),
                    JobCommand::Rescue { .. } if *status == Pending => {
                        JobError::NotOnWorker { worker: "w".into() }
                    }
                    other => JobError::InvalidTransition {
                        status: *status,
                        command: other.name(),
                    },
                };
                g.when(cmd).then_err(expected);
            }
        }
    }

    #[test]
    fn pending_starts_fails_or_cancels_at_once() {
        let g = given(&[created()]);
        g.when(JobCommand::Start { worker: "w".into() })
            .then([started()]);
        assert!(matches!(
            g.when(fail_cmd()).accepted().0[..],
            [SyncJobEvent::JobFailed { .. }]
        ));
        let s = g
            .when(cancel_cmd())
            .then([
                cancel_requested(),
                SyncJobEvent::Cancelled {
                    counts: EntityCounts::default(),
                    note: None,
                    counts_reconciled: false,
                },
            ])
            .0
            .unwrap();
        assert_eq!(s.status, JobStatus::Cancelled);
        assert_eq!(
            s.started_at, None,
            "a pending job that is cancelled never started"
        );
        assert!(s.completed_at.is_some());
    }

    #[test]
    fn pending_cannot_complete_progress_or_be_confirmed_or_forced() {
        let g = given(&[created()]);
        for cmd in [
            JobCommand::Complete { counts: counts(1) },
            JobCommand::RecordProgress { counts: counts(1) },
            JobCommand::ConfirmCancelled { counts: counts(1) },
            JobCommand::ForceCancel {
                now: t(10_000),
                durable: None,
            },
        ] {
            assert!(
                matches!(
                    g.when(cmd.clone()).rejected(),
                    JobError::InvalidTransition {
                        status: JobStatus::Pending,
                        ..
                    }
                ),
                "{cmd:?}"
            );
        }
    }

    #[test]
    fn running_records_progress_completes_fails_or_enters_cancelling() {
        let g = given(&[created(), started()]);
        let running = g.state().0.clone().unwrap();
        assert_eq!(running.status, JobStatus::Running);
        assert_eq!(running.started_at, Some(t(1)));
        g.when(JobCommand::RecordProgress { counts: counts(5) })
            .then([SyncJobEvent::ProgressRecorded { counts: counts(5) }]);
        g.when(JobCommand::Complete { counts: counts(3) })
            .then([completed()]);
        assert!(matches!(
            g.when(fail_cmd()).accepted().0[..],
            [SyncJobEvent::JobFailed { .. }]
        ));
        let s = g.when(cancel_cmd()).then([cancel_requested()]).0.unwrap();
        assert_eq!(s.status, JobStatus::Cancelling);
        assert_eq!(s.watchdog_deadline(), Some(t(2) + Duration::seconds(180)));
    }

    #[test]
    fn running_cannot_start_again_or_be_confirmed_or_forced() {
        let g = given(&[created(), started()]);
        for cmd in [
            JobCommand::Start { worker: "w".into() },
            JobCommand::ConfirmCancelled { counts: counts(1) },
            JobCommand::ForceCancel {
                now: t(10_000),
                durable: None,
            },
        ] {
            assert!(matches!(
                g.when(cmd).rejected(),
                JobError::InvalidTransition { .. }
            ));
        }
    }

    #[test]
    fn progress_never_goes_down_and_repeats_record_nothing() {
        let g = given(&[
            created(),
            started(),
            SyncJobEvent::ProgressRecorded { counts: counts(5) },
        ]);
        g.when(JobCommand::RecordProgress { counts: counts(4) })
            .then_err(JobError::CountsWentDown);
        g.when(JobCommand::RecordProgress { counts: counts(5) })
            .then([]);
    }

    #[test]
    fn cancelling_ends_only_as_cancelled() {
        let g = given(&[created(), started(), cancel_requested()]);
        g.when(JobCommand::ConfirmCancelled { counts: counts(1) })
            .then([cancelled()]);
        // in-flight writes still report progress while the pipeline drains
        g.when(JobCommand::RecordProgress { counts: counts(1) })
            .accepted();
        // a run that completes or fails after the request still ends as cancelled
        assert!(matches!(
            g.when(JobCommand::Complete { counts: counts(3) }).accepted().0[..],
            [SyncJobEvent::Cancelled { counts: c, .. }] if c == counts(3)
        ));
        assert!(matches!(
            g.when(fail_cmd()).accepted().0[..],
            [SyncJobEvent::Cancelled { .. }]
        ));
        g.when(cancel_cmd())
            .then_err(JobError::CannotCancel(JobStatus::Cancelling));
        assert!(matches!(
            g.when(JobCommand::Start { worker: "w".into() }).rejected(),
            JobError::InvalidTransition { .. }
        ));
    }

    #[test]
    fn the_watchdog_may_force_only_from_its_deadline_on() {
        let g = given(&[created(), started(), cancel_requested()]);
        let deadline = t(2) + Duration::seconds(180);
        g.when(JobCommand::ForceCancel {
            now: deadline - Duration::milliseconds(1),
            durable: None,
        })
        .then_err(JobError::NotYetDue { deadline });
        let (events, after) = g
            .when(JobCommand::ForceCancel {
                now: deadline,
                durable: None,
            })
            .accepted();
        let [SyncJobEvent::ForceCancelled {
            error,
            timeout_seconds,
            requested_at,
            ..
        }] = &events[..]
        else {
            panic!("{events:?}");
        };
        assert!(
            error.contains("forced") && error.contains("180 seconds"),
            "{error}"
        );
        assert_eq!((*timeout_seconds, *requested_at), (180, t(2)));
        let s = after.0.unwrap();
        assert_eq!(s.status, JobStatus::Cancelled);
        assert_eq!(
            s.error_details,
            Some(serde_json::json!({"forced_by": "watchdog", "timeout_seconds": 180}))
        );
    }

    #[test]
    fn final_states_reject_every_command() {
        let finals: [Vec<SyncJobEvent>; 5] = [
            vec![created(), started(), completed()],
            vec![created(), started(), failed()],
            vec![created(), started(), cancel_requested(), cancelled()],
            vec![created(), started(), cancel_requested(), force_cancelled()],
            vec![created(), failed()],
        ];
        let commands = [
            JobCommand::Start { worker: "w".into() },
            JobCommand::RecordProgress { counts: counts(9) },
            JobCommand::Complete { counts: counts(9) },
            fail_cmd(),
            JobCommand::ConfirmCancelled { counts: counts(9) },
            JobCommand::ForceCancel {
                now: t(100_000),
                durable: None,
            },
        ];
        for history in &finals {
            let g = given(history);
            let status = job(history).status;
            assert!(status.is_final());
            for cmd in &commands {
                assert!(
                    matches!(
                        g.when(cmd.clone()).rejected(),
                        JobError::InvalidTransition { .. }
                    ),
                    "{status:?} accepted {cmd:?}"
                );
            }
            g.when(cancel_cmd())
                .then_err(JobError::CannotCancel(status));
            assert_eq!(
                g.when(cancel_cmd()).rejected().to_string(),
                format!("a job in {status} state cannot be cancelled")
            );
        }
    }

    fn resumed(attempt: u32, counts: EntityCounts, counts_reconciled: bool) -> SyncJobEvent {
        SyncJobEvent::JobResumed {
            attempt,
            lost_worker: "w".into(),
            last_seen: Some(t(5)),
            counts,
            counts_reconciled,
            handed_back: false,
        }
    }

    #[test]
    fn a_draining_worker_hands_a_running_job_back_without_using_a_resume() {
        let g = given(&[
            created(),
            started(),
            resumed(1, counts(2), false),
            SyncJobEvent::JobStarted { worker: "w".into() },
        ]);
        let hand_back = |worker: &str| JobCommand::HandBack {
            worker: worker.into(),
            counts: counts(3),
        };
        let s = g
            .when(hand_back("w"))
            .then([SyncJobEvent::JobResumed {
                attempt: 1,
                lost_worker: "w".into(),
                last_seen: None,
                counts: counts(3),
                counts_reconciled: false,
                handed_back: true,
            }])
            .0
            .unwrap();
        assert_eq!((s.status, s.resumes), (JobStatus::Pending, 1));
        g.when(hand_back("v"))
            .then_err(JobError::NotOnWorker { worker: "v".into() });
        // A cancelling job is not handed back: its run confirms the cancel.
        assert!(matches!(
            given(&[created(), started(), cancel_requested()])
                .when(hand_back("w"))
                .rejected(),
            JobError::InvalidTransition { .. }
        ));
    }

    #[test]
    fn a_lost_workers_running_job_is_resumed_while_resumes_remain_then_fails_naming_it() {
        let g = given(&[
            created(),
            started(),
            SyncJobEvent::ProgressRecorded { counts: counts(4) },
        ]);
        let rescue = |max_resumes, durable| JobCommand::Rescue {
            lost_worker: "w".into(),
            last_seen: Some(t(5)),
            max_resumes,
            durable,
        };
        // Resumed: pending again, its counts restart (the next run counts afresh), the
        // lost run's counts (the destination's) are kept in the event.
        let s = g
            .when(rescue(1, Some(counts(9))))
            .then([resumed(1, counts(9), true)])
            .0
            .unwrap();
        assert_eq!(s.status, JobStatus::Pending);
        assert_eq!((s.worker.as_deref(), s.resumes), (None, 1));
        assert_eq!(s.counts, EntityCounts::default());
        assert_eq!(s.started_at, Some(t(1)));

        // Claimed again by another worker, which reports from zero and completes.
        let again = given(&[
            created(),
            started(),
            resumed(1, counts(4), false),
            SyncJobEvent::JobStarted { worker: "v".into() },
        ]);
        let s = again.state().0.clone().unwrap();
        assert_eq!(
            (s.status, s.worker.as_deref(), s.started_at),
            (JobStatus::Running, Some("v"), Some(t(1)))
        );
        again
            .when(JobCommand::RecordProgress { counts: counts(1) })
            .then([SyncJobEvent::ProgressRecorded { counts: counts(1) }]);
        // "w" no longer holds it: a late rescue naming it is refused.
        again
            .when(rescue(5, None))
            .then_err(JobError::NotOnWorker { worker: "w".into() });

        // No resume left: failed, naming the worker and when it was last seen.
        let (events, after) = given(&[
            created(),
            started(),
            resumed(1, counts(4), false),
            SyncJobEvent::JobStarted { worker: "w".into() },
        ])
        .when(rescue(1, Some(counts(7))))
        .accepted();
        let [SyncJobEvent::JobFailed {
            error,
            error_category,
            counts: c,
            counts_reconciled: true,
        }] = &events[..]
        else {
            panic!("{events:?}");
        };
        assert!(error.contains("worker w was lost"), "{error}");
        assert!(error.contains(&t(5).to_rfc3339()), "{error}");
        assert_eq!(error_category.as_deref(), Some(WORKER_LOST));
        assert_eq!(*c, counts(7));
        assert_eq!(after.0.unwrap().status, JobStatus::Failed);
        // A limit of 0: never resumed.
        assert!(matches!(
            g.when(rescue(0, None)).accepted().0[..],
            [SyncJobEvent::JobFailed { counts: c, counts_reconciled: false, .. }] if c == counts(4)
        ));
    }

    #[test]
    fn a_runs_reports_count_only_while_the_job_is_its_workers() {
        let as_w = |worker: &str, command| JobCommand::AsWorker {
            worker: worker.into(),
            command: Box::new(command),
        };
        let g = given(&[created(), started()]);
        g.when(as_w("w", JobCommand::RecordProgress { counts: counts(2) }))
            .then([SyncJobEvent::ProgressRecorded { counts: counts(2) }]);
        // Rescued from "w" and claimed by "v": "w"'s late reports are refused, "v"'s count.
        let g = given(&[
            created(),
            started(),
            resumed(1, counts(2), false),
            SyncJobEvent::JobStarted { worker: "v".into() },
        ]);
        for command in [
            JobCommand::RecordProgress { counts: counts(5) },
            JobCommand::Complete { counts: counts(5) },
            fail_cmd(),
        ] {
            g.when(as_w("w", command.clone()))
                .then_err(JobError::NotOnWorker { worker: "w".into() });
            g.when(as_w("v", command)).accepted();
        }
        // Pending again (no worker): nobody's report counts.
        given(&[created(), started(), resumed(1, counts(2), false)])
            .when(as_w("w", JobCommand::Complete { counts: counts(5) }))
            .then_err(JobError::NotOnWorker { worker: "w".into() });
    }

    #[test]
    fn a_lost_workers_cancelling_job_is_cancelled_at_once_with_a_note() {
        let g = given(&[created(), started(), cancel_requested()]);
        let (events, after) = g.when(rescue_cmd("w", 1)).accepted();
        let [SyncJobEvent::Cancelled {
            note: Some(note), ..
        }] = &events[..]
        else {
            panic!("{events:?}");
        };
        assert!(note.contains("worker w") && note.contains("lost"), "{note}");
        assert_eq!(after.0.unwrap().status, JobStatus::Cancelled);
        // Another worker's loss does not touch it.
        g.when(rescue_cmd("other", 1))
            .then_err(JobError::NotOnWorker {
                worker: "other".into(),
            });
    }

    #[test]
    fn a_forced_cancel_records_the_destinations_counts_and_says_so() {
        let g = given(&[
            created(),
            started(),
            SyncJobEvent::ProgressRecorded { counts: counts(4) },
            cancel_requested(),
        ]);
        let deadline = t(3) + Duration::seconds(180);
        let (events, after) = g
            .when(JobCommand::ForceCancel {
                now: deadline,
                durable: Some(counts(30)),
            })
            .accepted();
        assert!(matches!(
            events[..],
            [SyncJobEvent::ForceCancelled { counts: c, counts_reconciled: true, .. }] if c == counts(30)
        ));
        let s = after.0.unwrap();
        assert_eq!(s.counts, counts(30));
        assert_eq!(
            s.error_details,
            Some(serde_json::json!({
                "forced_by": "watchdog",
                "timeout_seconds": 180,
                "counts_reconciled": true
            }))
        );
    }

    #[test]
    fn a_late_worker_report_after_force_cancel_is_rejected() {
        let history = [created(), started(), cancel_requested(), force_cancelled()];
        let g = given(&history);
        g.when(JobCommand::ConfirmCancelled { counts: counts(50) })
            .rejected();
        g.when(JobCommand::Complete { counts: counts(50) })
            .rejected();
        assert_eq!(job(&history).counts, counts(1));
    }

    #[test]
    fn the_fold_refuses_broken_streams() {
        let err = AggregateTest::<Job>::fold_error;
        assert_eq!(err(vec![started()]), FoldError::NotCreated("JobStarted"));
        assert_eq!(err(vec![created(), created()]), FoldError::CreatedTwice);
        assert!(matches!(
            err(vec![created(), started(), completed(), started()]),
            FoldError::AfterFinal {
                status: JobStatus::Completed,
                ..
            }
        ));
        assert_eq!(
            AggregateTest::<Job>::fold_error(vec![
                Event::from(created()),
                Event::from(crate::events::CollectionEvent::CollectionDeleted {
                    collection_id: Uuid::nil()
                }),
            ]),
            FoldError::Foreign("CollectionDeleted")
        );
        // The timed fold the replay tools use refuses the same streams.
        let timed =
            |events: &[SyncJobEvent]| JobState::fold(events.iter().map(|e| (e, t(0)))).unwrap_err();
        assert_eq!(timed(&[started()]), FoldError::NotCreated("JobStarted"));
        assert_eq!(timed(&[created(), created()]), FoldError::CreatedTwice);
    }

    #[test]
    fn durations_and_timestamps_come_from_recorded_times() {
        let s = job(&[created(), started(), completed()]);
        assert_eq!(s.created_at, t(0));
        assert_eq!(s.started_at, Some(t(1)));
        assert_eq!(s.completed_at, Some(t(2)));
        assert_eq!(s.duration_seconds(), Some(1.0));
        assert_eq!(s.version, 3);
    }
}
