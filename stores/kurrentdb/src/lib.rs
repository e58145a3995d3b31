//! syncjobs-store-kurrentdb: the EventStore on KurrentDB (formerly EventStoreDB), the design
//! card's `eventstore`, for several nodes on one server or cluster.
//!
//! Everything is behind the `kurrentdb` feature (the top-level crate's `kurrentdb` feature
//! turns it on): without it this crate is empty, so the README's `cargo test --workspace`
//! does not build the client (tonic, prost, aws-lc).
//!
//! - [`store`]: [`KurrentStore`], the store: the client on a small runtime of its own (so it
//!   works from actix's single-threaded arbiters and from blocking start-up code), rebuilt
//!   when it dies.
//! - `watch`: the node's subscription to `$all`, which moves the head and wakes followers.
//! - [`config`]: the connection string, its `syncjobsNamespace` parameter, stream names and the
//!   `$all` filter.
//! - `codec`: events, versions and positions between syncjobs and KurrentDB.
//! - `error`: the client's errors as [`StoreError`]s (conflict, unavailable, backend).
//!
//! # The mapping
//!
//! - **Streams** are KurrentDB streams of the same name (`job-<id>`, `access`, ...), or
//!   `<namespace>.<name>` when the connection string has `syncjobsNamespace=<namespace>`
//!   (tests, or two deployments on one server).
//! - **Versions.** Ours count events from 1 (0 = no stream); KurrentDB's revisions count from
//!   0. `ExpectedVersion::Exact(0)` is `StreamState::NoStream`, `Exact(n)` is
//!   `StreamRevision(n - 1)`, `Any` is `Any`; an event at revision r has version r + 1, and
//!   `WrongExpectedVersion` comes back as [`StoreError::Conflict`] with the stream's actual
//!   version. An append is one request: atomic, and acknowledged once durable (on a cluster,
//!   once a majority has it).
//! - **The global log** is `$all` filtered on the server to syncjobs' streams (a regular
//!   expression built from the stream prefixes of `syncjobs_domain::events::stream`, or the
//!   namespace's prefix). A position is the event's **commit position** in `$all`: a byte
//!   offset in KurrentDB's log, so positions are sparse and nothing here assumes p + 1 is
//!   the next one. Events appended through the gRPC API are committed implicitly, each at its
//!   own log position (commit = prepare), so the commit position names one event. KurrentDB
//!   has one writer (the leader) and `$all` is its log in order, so what a read sees is a
//!   prefix of the log: a reader never skips an event that commits later.
//! - **Bodies**: the event's JSON (`{"type":..,"data":..}`) as a JSON event of its type,
//!   with our envelope (`recorded_at`, schema version, causation) as its JSON metadata, and
//!   our event id as KurrentDB's event id.
//! - **Followers** are woken by a subscription to the filtered `$all`
//!   (`watch`): each event it delivers moves [`EventStore::watch_head`], and followers
//!   read on from their own position with `read_all`. A dropped subscription resubscribes
//!   from the last position it saw (an event or a checkpoint) and reads the head again, so
//!   nothing committed meanwhile is left unannounced.
//!
//! # Costs
//!
//! - An append is **two round trips**: the append, then a read of the events it wrote, since
//!   KurrentDB's append answers one position for the whole write and the trait returns each
//!   event's own.
//! - Each event travels to every node twice: once in the subscription (which only wakes) and
//!   once in the follower's read.
//! - Opening reads `$all` backwards twice (the log's end, then the last syncjobs event): on a
//!   large log full of other applications' events the filtered read scans back to the last
//!   syncjobs event.
//! - Reading `$all` needs a user allowed to (`admin` or the `$ops` role by default on a
//!   secure server): put it in the connection string.
//!
//! # Errors and a dead client
//!
//! The server down, unreachable, not the leader, timing out or refusing the credentials:
//! [`StoreError::Unavailable`] with a short, fixed cause (503 to clients). After a failed
//! connect the `kurrentdb` client stays dead (every call answers `ConnectionClosed`), so the
//! store rebuilds it and tries a call that found it dead once more on the new one. An append
//! whose answer is lost leaves its outcome unknown, as with any database: the caller gets
//! `Unavailable`, and a retry of the same events (same ids) at the same expected version
//! either lands or is recognised by KurrentDB as already written.
//!
//! # Tested where
//!
//! The unit tests (mapping of versions, positions, errors, event bodies and connection
//! strings) need no server. The contract suite (`tests/contract.rs`) runs only where
//! `KURRENTDB_URL` names a server (e.g. `esdb://127.0.0.1:2113?tls=false`); no KurrentDB
//! server could be installed where this crate was written, so it has not run there.

#[cfg(feature = "kurrentdb")]
mod codec;
#[cfg(feature = "kurrentdb")]
pub mod config;
#[cfg(feature = "kurrentdb")]
mod error;
#[cfg(feature = "kurrentdb")]
pub mod store;
#[cfg(feature = "kurrentdb")]
mod watch;

#[cfg(feature = "kurrentdb")]
pub use config::{with_namespace, SCHEMES, URL_VAR};
#[cfg(feature = "kurrentdb")]
pub use store::{install_crypto_provider, KurrentStore};
pub use syncjobs_domain::{EventStore, StoreError};
