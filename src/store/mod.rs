//! EventStore backends.
//!
//! - [`embedded`]: SQLite in WAL mode, one group-committing writer thread; the default.
pub mod embedded;
mod time;
