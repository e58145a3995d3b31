//! syncjobs-actors: the write side at run time.
//!
//! - [`runner`]: the seam between a job and the work it drives (`SyncRunner`).
//! - `pipeline`: the real runner: sources, bounded worker pool, embedded destination.
//! - `job`: `JobActor`, one per live job, rebuilt from its stream.
//! - `supervisor`: the registry of live jobs, the watchdog, recovery after a restart.

pub mod pipeline;
pub mod runner;

pub use pipeline::Pipeline;
pub use runner::{ProgressSink, RunOutcome, RunSpec, SyncRunner};
