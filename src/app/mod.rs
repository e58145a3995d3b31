//! The use cases: what a client can ask of syncjobs, whatever the way it asks. The HTTP
//! handlers (`api`) and the CLI (`main.rs`, `startup`) both call these; none of them knows
//! about HTTP, and each failure is an [`Error`] with a domain reason (`api::error` alone
//! turns it into a status and a `detail`).
//!
//! - [`App`]: the context every use case runs in (store, clock, job supervisor, read model,
//!   destination, waits).
//! - [`collections`], [`source_connections`], [`jobs`]: the flows that span aggregates or
//!   wait on the log: create and delete a collection or a source connection (a delete stops
//!   the syncs first and purges what they wrote), run a sync, cancel a job.
//! - [`keys`]: create, revoke and list API keys; the start-up (bootstrap or first) key.
//! - [`lookup`]: the caller's own collections, connections and jobs on the read model.
//! - [`history`]: a job's own events and its state at a version.
//! - [`caller`]: who is asking, and what its events record about it.
//! - [`webhooks`]: create, patch, delete an organization's webhook subscriptions.
//! - `wait`: read-your-writes: a use case answers once the read model shows its appends,
//!   and a refusal that names a job's state once the read model shows that state.
//!
//! Every command on a collection or source connection goes through one call, `App::execute`
//! (the keys' through `keys`' own): the one command path of `syncjobs_actors::command`, as
//! the caller, over the aggregates of `syncjobs_domain`.

pub mod caller;
pub mod collections;
pub mod error;
pub mod history;
pub mod jobs;
pub mod keys;
pub mod lookup;
pub mod source_connections;
mod wait;
pub mod webhooks;

pub use caller::Caller;
pub use error::Error;

use std::sync::Arc;
use std::time::Duration;
use syncjobs_actors::command::{self, CommandError};
use syncjobs_actors::pipeline::EntitySink;
use syncjobs_actors::Jobs;
use syncjobs_domain::{Aggregate, EventStore, RecordedEvent, SharedClock};
use syncjobs_projections::Projection;

/// How long use cases wait on the read model.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a command waits for the read model to show its own append.
    pub read_your_writes_timeout: Duration,
    /// How long a delete waits for the syncs it cancelled to reach a final state.
    pub delete_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            read_your_writes_timeout: Duration::from_secs(5),
            delete_wait: Duration::from_secs(15),
        }
    }
}

/// What every use case needs; one per server, shared by all HTTP workers.
pub struct App {
    pub store: Arc<dyn EventStore>,
    pub clock: SharedClock,
    /// The write side of jobs (the supervisor actor).
    pub jobs: Jobs,
    /// The read model, fed from the log.
    pub projection: Projection,
    /// Where syncs write entities: counts for reads, purge for deletes.
    pub destination: Arc<dyn EntitySink>,
    pub settings: Settings,
}

impl App {
    /// Runs `cmd` on `stream` through the one command path, as the caller: what it
    /// appended (nothing when there was nothing to do).
    async fn execute<A: Aggregate>(
        &self,
        caller: &Caller,
        stream: &str,
        cmd: &A::Command,
    ) -> Result<Vec<RecordedEvent>, Error>
    where
        Error: From<CommandError<A::Error>>,
    {
        let meta = caller.metadata();
        let executed =
            command::execute::<A>(&*self.store, &*self.clock, stream, None, cmd, &meta).await?;
        Ok(executed.events)
    }
}

/// The global position of the last of `recorded` (0 for none: nothing to wait for).
fn last_position(recorded: &[RecordedEvent]) -> u64 {
    recorded.last().map_or(0, |r| r.global_position)
}

#[cfg(test)]
mod tests;
