//! syncjobs-domain: the event contract and the pure core, with no I/O.
//!
//! - [`events`]: every event syncjobs records (jobs, collections, source connections,
//!   access) and the envelope the store wraps them in.
//! - [`aggregate`]: the one shape of every aggregate: state, `decide(command) -> events |
//!   error`, `evolve(event)`; and [`FoldError`], a stream that does not fold.
//! - The aggregates, one module each: [`job`] (a sync job's lifecycle, the one place that
//!   knows it), [`collection`] (a readable id and the collection holding it),
//!   [`source_connection`], [`access`] (organizations and API keys, and how keys are hashed),
//!   [`webhook`] (an organization's webhook subscriptions).
//! - [`store`]: the EventStore trait (optimistic-concurrency appends, stream reads, the global
//!   log and a follower of it), an in-memory backend for tests, and (feature `testkit`) the
//!   contract suite every backend must pass and a store that refuses writes on demand.
//! - `testkit` (feature `testkit`): the given/when/then harness every aggregate is tested with.
//! - [`upcast`]: reads older schema versions as the current one.
//! - [`clock`]: wall time behind a trait so timers can be tested on tokio's paused clock.
//! - [`time`]: the one timestamp codec (RFC 3339 text at each reader's precision).
//! - [`redact`]: masks the passwords and tokens of connection URLs in anything printed.

pub mod access;
pub mod aggregate;
pub mod clock;
pub mod collection;
pub mod events;
pub mod job;
pub mod redact;
pub mod source_connection;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod time;
pub mod upcast;
pub mod webhook;
pub mod worker;

pub use access::{Access, AccessCommand, AccessError, KeyInfo, NewKeyRecord};
pub use aggregate::{Aggregate, FoldError};
pub use clock::{Clock, SharedClock, SystemClock, TokioClock};
pub use collection::{CollectionCommand, CollectionError, CollectionName};
pub use events::{
    AccessEvent, CollectionEvent, EntityCounts, Event, Metadata, NewEvent, RecordedEvent,
    SourceConnectionEvent, SyncJobEvent, WebhookEvent, WorkerEvent, CURRENT_SCHEMA_VERSION,
};
pub use job::{Job, JobCommand, JobError, JobState, JobStatus};
pub use source_connection::{SourceConnection, SourceConnectionCommand, SourceConnectionError};
pub use store::{follow, follow_batches, EventStore, ExpectedVersion, InMemoryStore, StoreError};
pub use webhook::{WebhookCommand, WebhookDelivery, WebhookError, WebhookSubscription};
pub use worker::{WorkerState, WorkerStatus};
