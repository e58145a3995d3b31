//! EventStore backends.
//!
//! - [`embedded`]: SQLite in WAL mode, one group-committing writer thread; the default.
//!   Its WAL is checkpointed by a thread of its own (`checkpoint`), off the appends' path.
pub mod checkpoint;
pub mod embedded;
mod time;
