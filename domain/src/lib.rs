//! syncjobs-domain: the event contract and the pure core, with no I/O.
//!
//! - [`events`]: every event syncjobs records (jobs, collections, source connections,
//!   access) and the envelope the store wraps them in.
//! - [`job`]: a sync job's state as the fold of its events, and `decide(command)`, the one
//!   place that knows the lifecycle.
//! - [`store`]: the EventStore trait (optimistic-concurrency appends, stream reads, the global
//!   log and a follower of it), an in-memory backend for tests, and (feature `testkit`) the
//!   contract suite every backend must pass.
//! - [`upcast`]: reads older schema versions as the current one.
//! - [`clock`]: wall time behind a trait so timers can be tested on tokio's paused clock.
//! - [`time`]: the one timestamp codec (RFC 3339 text at each reader's precision).
//! - [`redact`]: masks the passwords and tokens of connection URLs in anything printed.

pub mod clock;
pub mod events;
pub mod job;
pub mod redact;
pub mod store;
pub mod time;
pub mod upcast;

pub use clock::{Clock, SharedClock, SystemClock, TokioClock};
pub use events::{
    AccessEvent, CollectionEvent, EntityCounts, Event, Metadata, NewEvent, RecordedEvent,
    SourceConnectionEvent, SyncJobEvent, CURRENT_SCHEMA_VERSION,
};
pub use job::{FoldError, JobCommand, JobError, JobState, JobStatus};
pub use store::{follow, follow_batches, EventStore, ExpectedVersion, InMemoryStore, StoreError};
