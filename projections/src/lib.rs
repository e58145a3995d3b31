//! syncjobs-projections: the read side, derived only from the event log.
//!
//! - [`model`]: [`ReadModel`], organizations, API keys (hashes), collections, source
//!   connections and job rows, folded in idempotently by global position.
//! - [`projector`]: the task that follows the global log into a shared [`Projection`], and
//!   `wait_for(position)` for read-your-writes.
//! - [`snapshot`]: the persisted checkpoint (model + position), written atomically; a
//!   snapshot plus the log after it gives the same model as the whole log.

pub mod model;
pub mod projector;
pub mod snapshot;

pub use model::{
    ApiKey, Collection, CollectionStatus, ModelStats, Organization, ReadModel, SourceConnection,
    SourceConnectionStatus,
};
pub use projector::{
    load_model, spawn_projector, Lagging, Projection, ProjectorConfig, ProjectorHandle,
};
pub use snapshot::SnapshotError;
