//! Replay-based debugging: "what happened to job X, and when?", answered by folding the job's
//! events through the very fold the service uses ([`syncjobs_domain::JobState::evolve`]).
//!
//! - [`history`]: where events come from: the store, a running server, or an exported
//!   JSON Lines file (with its schema versions, so older histories upcast on import).
//! - [`timeline`]: the state after each event, and [`state_at`] (time travel) for the API.
//! - [`check`]: the invariants the fold cannot see (version gaps, ForceCancelled before its
//!   deadline, counts going down, ...), per stream and over a whole store ([`verify`]).
//! - [`render`]: aligned, human-readable tables (colour only on a terminal) and JSON.
//! - [`cli`]: the `events`, `replay`, `export` and `verify` subcommands.

pub mod check;
pub mod cli;
pub mod history;
pub mod render;
pub mod timeline;

#[cfg(test)]
mod tests;

pub use check::{check_stream, verify, Issue, Problem, StreamChecker, VerifyReport};
pub use cli::{color_for_stdout, run, DebugCommand, ServerArgs};
pub use history::{export_line, export_value, import_jsonl, import_value, load_job, ExportLine};
pub use timeline::{replay, state_at, Replay, Step, StepError, StepFailure};

use syncjobs_domain::StoreError;
use uuid::Uuid;

/// Why a debugging command could not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {0} has no events")]
    JobNotFound(Uuid),
    #[error(
        "version {requested} does not exist: versions start at 1 and the stream ends at v{last}"
    )]
    NoSuchVersion { requested: u64, last: u64 },
    #[error("{stream}: expected version {expected}, found {found}")]
    VersionGap {
        stream: String,
        expected: u64,
        found: u64,
    },
    #[error("{stream} v{version}: {source}")]
    Step {
        stream: String,
        version: u64,
        #[source]
        source: StepError,
    },
    #[error("line {line}: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("the history mixes streams {first} and {other}: replay one job at a time")]
    MixedStreams { first: String, other: String },
    #[error("{0}")]
    Usage(String),
    /// No local store to read, and why (the debugging commands never create one).
    #[error("{0}")]
    NoStore(String),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("server: {0}")]
    Remote(String),
}
