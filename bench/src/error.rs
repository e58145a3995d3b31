//! The one error type of the benchmarks: a benchmark that cannot run says why, and the
//! harness records that in the report instead of a figure.

use syncjobs_actors::pipeline::DestinationError;
use syncjobs_domain::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("destination: {0}")]
    Destination(#[from] DestinationError),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    pub fn failed(message: impl Into<String>) -> BenchError {
        BenchError::Failed(message.into())
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
