//! syncjobs-projections: the read side, derived only from the event log.
//!
//! - [`model`]: the rows the API serves (organizations, API keys by hash, collections,
//!   source connections; jobs are the domain's `JobState`) and their derived statuses.
//! - [`db`]: the read model's database, SQLite (`read_model.db`, with the embedded store) or
//!   PostgreSQL tables (`db::pg`, in the PostgreSQL store's database, shared by every
//!   node): the one fold (`db::fold`) against each engine's transaction, committing a
//!   batch's rows with the position; the indexed queries; bounded caches in front of both.
//!   Only live jobs stay in memory.
//! - [`projector`]: the task that follows the global log into the database, the shared
//!   [`Projection`] readers use (`read(async |m| ..)`), and `wait_for(position)` for
//!   read-your-writes.

pub mod db;
pub mod model;
pub mod projector;

pub use db::fold::Retention;
pub use db::view::OrganizationCounts;
pub use db::{ReadError, ReadView};
pub use model::{
    ApiKey, Collection, CollectionStatus, DueDelivery, ModelDump, Organization, SourceConnection,
    SourceConnectionStatus, WebhookAttempt, WebhookMessage, WebhookSubscription,
};
pub use projector::{
    spawn_projector, Lagging, Projection, ProjectionWriter, ProjectorConfig, ProjectorHandle,
};
