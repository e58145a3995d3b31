//! Stores with history: `--history N` runs #2, #3, #5 and #10 on a store that already holds N
//! completed jobs (the #4 generator's store: 10 events per job, 100 jobs per source
//! connection, all in the bench key's organization), and #7 measures start-up and memory
//! against the size of the history. A deployment that syncs every hour accumulates jobs
//! without end, so figures taken only on a fresh store say little about it (issue #13).
//!
//! Generating 1M jobs takes minutes, so each size is generated once into
//! `<work dir>/history-<N>` (#9's shape, with one connection of M more jobs:
//! `history-<N>-heavy-<M>`) and kept (a `complete` marker says it finished); a benchmark
//! copies its `events.db` into its own data directory and changes only the copy. Runs that
//! share a work directory take a lock file beside the store while they look for it or
//! generate it, so two never generate the same store at once.

use crate::error::{BenchError, Result};
use crate::recovery::{self, Shape};
use crate::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;
use syncjobs_store_sqlite::DB_FILE;
use uuid::Uuid;

/// How a benchmark's history was made.
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub jobs: u64,
    pub events: u64,
    /// The log's head: a server is ready once its read model has folded it.
    pub head: u64,
    /// The connection holding the shape's heavy jobs, if it has any.
    pub heavy_connection: Option<Uuid>,
}

impl History {
    /// A sentence for a report: what the server started on.
    pub fn describe(history: Option<History>) -> String {
        match history {
            None => "on a fresh store".into(),
            Some(h) => format!(
                "on a store with {} completed jobs of history ({} events; the server's first \
                 start folds them)",
                crate::stats::thousands(h.jobs as f64),
                crate::stats::thousands(h.events as f64)
            ),
        }
    }
}

/// How long a server may take to be ready on a store with history (1M jobs took 25 s).
pub const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// Fills `data_dir` (not yet created) with `cfg.history` jobs of history, if asked for.
pub async fn prepare(cfg: &Config, data_dir: &Path) -> Result<Option<History>> {
    if cfg.history == 0 {
        return Ok(None);
    }
    prepare_jobs(cfg, cfg.history, data_dir).await.map(Some)
}

/// Fills `data_dir` with a copy of the store of `jobs` jobs, generating it first if needed.
pub async fn prepare_jobs(cfg: &Config, jobs: u64, data_dir: &Path) -> Result<History> {
    prepare_shape(cfg, Shape::jobs(jobs), data_dir).await
}

/// Fills `data_dir` with a copy of the store of `shape`, generating it first if needed.
pub async fn prepare_shape(cfg: &Config, shape: Shape, data_dir: &Path) -> Result<History> {
    let (template, kept) = template(cfg, shape).await?;
    tokio::fs::create_dir_all(data_dir).await?;
    tokio::fs::copy(template.join(DB_FILE), data_dir.join(DB_FILE)).await?;
    // Durable before the server opens it, as a store that has been in use is: otherwise the
    // store's first checkpoint (an fsync of this file) writes the whole copy back at once,
    // and every append waits for it (a 250-300 ms stall of commands ~4 s into #9's probes).
    tokio::fs::File::open(data_dir.join(DB_FILE))
        .await?
        .sync_all()
        .await?;
    Ok(History {
        jobs: shape.jobs + shape.heavy_jobs,
        events: kept.events,
        head: kept.head,
        heavy_connection: kept.heavy_connection,
    })
}

/// What the `complete` marker of a kept store records: `<events> <head> [<heavy connection>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kept {
    events: u64,
    head: u64,
    heavy_connection: Option<Uuid>,
}

impl Kept {
    fn parse(text: &str, shape: Shape) -> Option<Kept> {
        let mut words = text.split_whitespace();
        let events = words.next()?.parse().ok()?;
        let head = words.next()?.parse().ok()?;
        let heavy_connection = match words.next() {
            Some(id) => Some(Uuid::parse_str(id).ok()?),
            None => None,
        };
        // A store of another shape (or an older marker without the heavy connection) does
        // not count as kept.
        (heavy_connection.is_some() == (shape.heavy_jobs > 0)).then_some(Kept {
            events,
            head,
            heavy_connection,
        })
    }

    fn render(&self) -> String {
        match self.heavy_connection {
            None => format!("{} {}\n", self.events, self.head),
            Some(id) => format!("{} {} {id}\n", self.events, self.head),
        }
    }
}

/// The directory of a kept store under the work directory.
fn dir_name(shape: Shape) -> String {
    if shape.heavy_jobs == 0 {
        format!("history-{}", shape.jobs)
    } else {
        format!("history-{}-heavy-{}", shape.jobs, shape.heavy_jobs)
    }
}

/// The kept store of `shape`: its directory and what its marker records.
async fn template(cfg: &Config, shape: Shape) -> Result<(PathBuf, Kept)> {
    let name = dir_name(shape);
    let dir = cfg.work_dir.join(&name);
    let _lock = lock(cfg.work_dir.join(format!("{name}.lock"))).await?;
    let marker = dir.join("complete");
    if let Ok(text) = tokio::fs::read_to_string(&marker).await {
        if let Some(kept) = Kept::parse(&text, shape) {
            return Ok((dir, kept));
        }
    }
    if tokio::fs::try_exists(&dir).await? {
        tokio::fs::remove_dir_all(&dir).await?;
    }
    eprintln!(
        "   generating a history of {} jobs{} in {} (kept for later runs)",
        shape.jobs,
        if shape.heavy_jobs > 0 {
            format!(" plus one connection of {}", shape.heavy_jobs)
        } else {
            String::new()
        },
        dir.display()
    );
    let generated = recovery::generate(&dir, shape).await?;
    eprintln!(
        "   generated {} events in {:.0} s",
        generated.events,
        generated.took.as_secs_f64()
    );
    // The store's WAL is checkpointed and removed at its close: events.db alone is the store.
    if tokio::fs::try_exists(dir.join(format!("{DB_FILE}-wal"))).await? {
        let len = tokio::fs::metadata(dir.join(format!("{DB_FILE}-wal")))
            .await?
            .len();
        if len > 0 {
            return Err(BenchError::failed(format!(
                "{}: the generated store left a WAL of {len} bytes behind",
                dir.display()
            )));
        }
    }
    let kept = Kept {
        events: generated.events,
        head: generated.head,
        heavy_connection: generated.heavy_connection,
    };
    tokio::fs::write(&marker, kept.render()).await?;
    Ok((dir, kept))
}

/// An exclusive lock on a file, held until dropped (closing the file releases it).
struct Lock {
    _file: std::fs::File,
}

/// Takes the lock of `path` (created if missing), waiting for a run that holds it.
async fn lock(path: PathBuf) -> Result<Lock> {
    use std::os::fd::AsRawFd;
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock(2) on a descriptor this function owns and keeps open in the Lock.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Lock { _file: file })
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_counts_only_for_its_shape() {
        let plain = Shape::jobs(10);
        let heavy = Shape {
            jobs: 10,
            heavy_jobs: 5,
        };
        let id = Uuid::new_v4();
        let with_heavy = Kept {
            events: 151,
            head: 151,
            heavy_connection: Some(id),
        };
        assert_eq!(Kept::parse(&with_heavy.render(), heavy), Some(with_heavy));
        assert_eq!(Kept::parse(&with_heavy.render(), plain), None);
        assert_eq!(
            Kept::parse("101 101\n", plain).map(|k| (k.events, k.head)),
            Some((101, 101))
        );
        assert_eq!(Kept::parse("101 101\n", heavy), None);
        assert_eq!(Kept::parse("101\n", plain), None);
    }

    #[test]
    fn a_plain_store_keeps_its_old_directory() {
        // `history-1000000` generated by an earlier harness stays usable.
        assert_eq!(dir_name(Shape::jobs(1_000_000)), "history-1000000");
        let heavy = Shape {
            jobs: 10_000,
            heavy_jobs: 100_000,
        };
        assert_eq!(dir_name(heavy), "history-10000-heavy-100000");
    }
}
