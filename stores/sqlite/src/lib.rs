//! syncjobs-store-sqlite: the embedded EventStore, the service's default backend.
//!
//! - [`embedded`]: [`EmbeddedStore`], one SQLite file ([`DB_FILE`]) in WAL mode; one writer
//!   thread group-commits the appends, a small pool of connections serves the reads.
//! - [`wal_checkpoint`]: the WAL checkpointer, a thread of its own so that no append waits for
//!   the database file's writes; the benchmarks' raw SQLite baseline attaches it too.
//! - `time`: reads back the timestamps the store writes (`recorded_at`).
//!
//! The backend-agnostic contract it passes lives in `syncjobs-domain` (feature `testkit`);
//! `tests/embedded_store.rs` runs it, beside what only this store promises.

pub mod embedded;
mod time;
pub mod wal_checkpoint;

pub use embedded::{EmbeddedStore, DB_FILE, MAX_BATCH};
