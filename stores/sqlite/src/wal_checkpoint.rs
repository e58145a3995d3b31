//! The WAL checkpointer: copies committed pages from `events.db-wal` back into `events.db`
//! on its own thread and connection, so that no append waits for it.
//!
//! SQLite's default checkpoints inside the commit that pushes the WAL past 1000 pages: that
//! append (and every append queued behind it) then also waits for the database file's writes
//! and fsync. Here the writer's commit hook only signals this thread, whose PASSIVE
//! checkpoint runs beside the writer's next commits (WAL mode lets them). Once a checkpoint
//! has copied every frame, the writer's next transaction starts the WAL over from its
//! beginning, so the file stays bounded as before.

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// WAL pages after a commit past which a checkpoint is asked for (SQLite's default
/// auto-checkpoint threshold).
pub const CHECKPOINT_PAGES: i32 = 1000;

/// WAL pages past which the writer checkpoints itself (see [`attach`]).
pub const WRITER_CHECKPOINT_PAGES: i32 = 4 * CHECKPOINT_PAGES;

/// Why the checkpointer could not start; the store reports it as a backend error.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: cannot open the checkpointer's connection: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot start the checkpointer: {0}")]
    Spawn(std::io::Error),
    #[error("{path}: cannot hook the WAL checkpointer: {source}")]
    Hook {
        path: String,
        source: rusqlite::Error,
    },
}

/// The running checkpointer; [`Checkpointer::stop`] ends it.
pub struct Checkpointer {
    thread: JoinHandle<()>,
    stopping: Arc<AtomicBool>,
    wake: SyncSender<()>,
}

/// Asks for a checkpoint without ever blocking: one pending request is enough.
pub struct Signal(SyncSender<()>);

impl Signal {
    pub fn request(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            // Gone only while the store shuts down; the last close checkpoints anyway.
            Err(TrySendError::Disconnected(())) => {}
        }
    }
}

impl Checkpointer {
    /// Opens its own connection to `path` and starts the thread.
    pub fn start(path: &Path) -> Result<(Checkpointer, Signal), CheckpointError> {
        let conn = open(path).map_err(|source| CheckpointError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let (tx, rx) = mpsc::sync_channel(1);
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("syncjobs-store-checkpointer".into())
            .spawn(move || run(conn, rx, &stop, path))
            .map_err(CheckpointError::Spawn)?;
        let checkpointer = Checkpointer {
            thread,
            stopping,
            wake: tx.clone(),
        };
        Ok((checkpointer, Signal(tx)))
    }

    /// Lets a checkpoint under way finish, then closes the connection and ends the thread.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        // Blocks only while a wake-up is already pending, which the thread takes at once.
        let _ = self.wake.send(());
        if self.thread.join().is_err() {
            tracing::error!("the WAL checkpointer panicked");
        }
    }
}

/// Starts a checkpointer for the database at `path` and hooks the writer's connection
/// `conn` to it, replacing SQLite's own auto-checkpoint (which would run inside a commit).
/// The benchmarks' raw baseline uses this too, so it checkpoints as the store does.
pub fn attach(conn: &mut Connection, path: &Path) -> Result<Checkpointer, CheckpointError> {
    let (checkpointer, checkpoint) = Checkpointer::start(path)?;
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
        if pages >= WRITER_CHECKPOINT_PAGES {
            // Appends never paused long enough for a background checkpoint to finish with
            // nothing new behind it, and the WAL only starts over after one has: copy the
            // rest here (mostly copied already), between two commits.
            if let Err(e) = wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE) {
                tracing::warn!(error = %e, pages, "WAL checkpoint by the writer failed");
            }
        } else if pages >= CHECKPOINT_PAGES {
            checkpoint.request();
        }
        // Never an error: the commit has happened, and an error would report it failed.
        Ok(())
    }))
    .map_err(|source| CheckpointError::Hook {
        path: path.display().to_string(),
        source,
    })?;
    Ok(checkpointer)
}

fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // A checkpoint fsyncs the database file before the WAL may be started over; with
    // synchronous=OFF it would not, and a power cut could lose acknowledged appends.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn run(conn: Connection, rx: Receiver<()>, stopping: &AtomicBool, path: PathBuf) {
    while rx.recv().is_ok() && !stopping.load(Ordering::Acquire) {
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match result {
            Ok((busy, frames, copied)) => {
                tracing::debug!(busy, frames, copied, "WAL checkpoint");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "WAL checkpoint failed")
            }
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(path = %path.display(), error = %e, "closing the checkpointer's connection failed");
    }
}
