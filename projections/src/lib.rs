//! syncjobs-projections: the read side, derived only from the event log.
//!
//! - [`model`]: the rows the API serves (organizations, API keys by hash, collections,
//!   source connections; jobs are the domain's `JobState`) and their derived statuses.
//! - [`db`]: the read model in SQLite (`read_model.db`): the writer that folds a batch and
//!   commits its rows with the position in one transaction, the indexed queries on pooled
//!   read connections, bounded caches; only live jobs stay in memory.
//! - [`projector`]: the task that follows the global log into the database, the shared
//!   [`Projection`] readers use, and `wait_for(position)` for read-your-writes.

pub mod db;
pub mod model;
pub mod projector;

pub use db::view::OrganizationCounts;
pub use db::{ReadError, ReadView};
pub use model::{
    ApiKey, Collection, CollectionStatus, ModelDump, Organization, SourceConnection,
    SourceConnectionStatus,
};
pub use projector::{
    spawn_projector, Lagging, Projection, ProjectionWriter, ProjectorConfig, ProjectorHandle,
};
