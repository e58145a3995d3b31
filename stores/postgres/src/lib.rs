//! syncjobs-store-postgres: the EventStore on PostgreSQL, for several nodes on one database,
//! and the destination (synced entities) in the same database.
//!
//! - [`store`]: [`PgStore`], the store: a pool of connections on a small runtime of its own
//!   (so it works from actix's single-threaded arbiters and from blocking start-up code).
//! - [`writer`]: the node's one writer, which group-commits its appends under the append lock.
//! - [`lease`]: leases on duties one node performs at a time (session advisory locks).
//! - [`listen`]: the node's listener (`LISTEN`/`NOTIFY`), which wakes followers.
//! - [`destination`]: [`PgDestination`], the destination (synced entities) in the same
//!   database, for the nodes' workers to share; its method is in its module docs.
//! - [`migrate`]: the schema, as versioned migrations (`migrations/*.sql`) applied once.
//! - `testkit` (feature `testkit`): fresh databases for tests.
//! - `error`: PostgreSQL's errors as [`StoreError`]s (unavailable vs. backend; no credentials).
//!
//! # No reader ever skips an event: appends are serialised
//!
//! A `bigserial` position is taken at insert, not at commit: with one, a transaction can take
//! position 1, stay open while another takes 2 and commits, and a reader that has seen 2
//! never goes back for 1. This store does not use one. Every append transaction first takes
//! one transaction-scoped advisory lock ([`writer::APPEND_LOCK`], `pg_advisory_xact_lock`),
//! then reads the head and assigns positions head + 1, head + 2, ... and commits. PostgreSQL
//! makes a transaction visible before it releases its locks, so the next holder's snapshot
//! already contains the previous commit: positions are dense and committed in position
//! order, every committed set of events is a prefix 1..=H of the log, and a reader that has
//! seen position p has seen everything below it. The position the trait exposes is this
//! dense position, and followers resume from it (no `position + 1` arithmetic is needed, but
//! it would be safe). The same lock makes the expected-version check atomic; the unique
//! (stream, version) index is only the last line of defence against a writer that does not
//! take it (then the append fails as [`StoreError::Conflict`], never as a backend error).
//! A held transaction (the test `a_held_append_...`) makes every other append wait for it:
//! nothing can commit past it, so there is nothing to skip.
//!
//! **Cost.** One append transaction at a time per database, each holding the lock across one
//! round trip and its commit's WAL flush (`synchronous_commit` stays on, the default, so an
//! append is durable before it returns). Raw INSERTs from several connections share
//! flushes (PostgreSQL's own group commit); serialised transactions cannot. A node therefore
//! batches: its one writer ([`writer`]) takes every append waiting (up to
//! [`writer::MAX_BATCH`], lingering up to 1 ms for the appenders its last commit answered)
//! into one transaction of two pipelined round trips (`BEGIN` + lock + versions, then one
//! multi-row INSERT + NOTIFY + `COMMIT`), so throughput grows with the number of concurrent
//! appenders instead of stopping at one flush per append. Several nodes take turns on the
//! lock, a batch each. Under the lock, each stream's version is one backward probe of the
//! (stream, version) index, so a batch's check costs the same however long its streams are.
//! Measured by `bench/run 10` (PostgreSQL 15 on loopback, 2 cores shared with other builds
//! at load 12; BENCHMARKS.md): 256 appenders ~21,000 appends/s, 4.2 x raw single-row
//! INSERTs from as many tasks over a pool of the same size (PostgreSQL's own group commit
//! shares their flushes) and 0.43 x raw INSERTs batched 256 rows per transaction with no
//! lock and no check; 16 appenders ~0.6 x raw, 1 appender ~0.8 x (both wait for a flush
//! per append, the store's lock and check add a round trip). The price of "no reader ever
//! skips an event" with dense positions is that round trip and one committer at a time.
//!
//! # Followers are woken, not polling
//!
//! Each commit runs `pg_notify(`[`writer::NOTIFY_CHANNEL`]`, last position)` in its
//! transaction, so PostgreSQL delivers it when (and only if) it commits, to every node.
//! The listener moves [`syncjobs_domain::EventStore::watch_head`]; followers then read on from their own
//! position. A dropped listener connection reconnects with backoff, and once it listens
//! again it reads the head, so nothing that committed meanwhile is missed.
//!
//! # Errors
//!
//! The server down, unreachable, full, read-only or restarting: [`StoreError::Unavailable`]
//! with a short fixed cause (503 to clients); connecting and waiting for a pooled connection
//! are bounded, so no request hangs. A connection that drops during `COMMIT` leaves the
//! outcome unknown, as with any database: the caller gets `Unavailable`, and a retry with
//! the same expected version either lands or conflicts.

pub mod destination;
mod error;
pub mod lease;
pub mod listen;
pub mod migrate;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod writer;

pub use destination::PgDestination;
pub use error::describe;
pub use listen::LISTENER_NAME;
pub use store::{tune, OwnRuntime, PgStore, Schema, Timeouts, POOL_SIZE};
pub use syncjobs_domain::StoreError;
