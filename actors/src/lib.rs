//! syncjobs-actors: the write side at run time.
//!
//! - [`runner`]: the seam between a job and the work it drives (`SyncRunner`).
//! - [`pipeline`]: the real runner: sources, bounded worker pool, embedded destination
//!   (the `EntitySink` trait, with its contract suite under feature `testkit`).
//! - [`command`]: the one command path of every aggregate (jobs, collections, source
//!   connections, access): load, decide, append (expected version), on conflict read the
//!   newer events and decide again, within one bound.
//! - [`job`]: `JobActor`, one per live job, rebuilt from its stream; drives the run and
//!   throttles its counts into progress reports.
//! - [`supervisor`]: the registry of live jobs, the watchdog, recovery after a restart, and
//!   [`Jobs`], the handle the API holds.

pub mod command;
pub mod job;
pub mod pipeline;
pub mod runner;
pub mod supervisor;

pub use command::{CommandError, Executed};
pub use job::{Backoff, JobResult, JobSettings, RescueOrder, WORKER_LOST};
pub use pipeline::Pipeline;
pub use runner::{ProgressSink, RunOutcome, RunSpec, SyncRunner};
pub use supervisor::{
    job_after, start_supervisor, CommandOutcome, Jobs, JobsError, Liveness, NewJob, Recovery,
    SupervisorRole, SupervisorSettings, SupervisorStats,
};
