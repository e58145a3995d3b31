//! Stores with history: `--history N` runs #2, #3 and #5 on a store that already holds N
//! completed jobs (the #4 generator's store: 10 events per job, 100 jobs per source
//! connection, all in the bench key's organization), and #7 measures start-up and memory
//! against the size of the history. A deployment that syncs every hour accumulates jobs
//! without end, so figures taken only on a fresh store say little about it (issue #13).
//!
//! Generating 1M jobs takes minutes, so each size is generated once into
//! `<work dir>/history-<N>` and kept (a `complete` marker says it finished); a benchmark
//! copies its `events.db` into its own data directory and changes only the copy.

use crate::error::{BenchError, Result};
use crate::recovery;
use crate::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;
use syncjobs_store_sqlite::DB_FILE;

/// How a benchmark's history was made.
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub jobs: u64,
    pub events: u64,
    /// The log's head: a server is ready once its read model has folded it.
    pub head: u64,
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
    let (template, events, head) = template(cfg, jobs).await?;
    tokio::fs::create_dir_all(data_dir).await?;
    tokio::fs::copy(template.join(DB_FILE), data_dir.join(DB_FILE)).await?;
    Ok(History { jobs, events, head })
}

/// The kept store of `jobs` jobs: its directory, events and head.
async fn template(cfg: &Config, jobs: u64) -> Result<(PathBuf, u64, u64)> {
    let dir = cfg.work_dir.join(format!("history-{jobs}"));
    let marker = dir.join("complete");
    if let Ok(text) = tokio::fs::read_to_string(&marker).await {
        let mut numbers = text.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(events)), Some(Ok(head))) = (numbers.next(), numbers.next()) {
            return Ok((dir, events, head));
        }
    }
    if tokio::fs::try_exists(&dir).await? {
        tokio::fs::remove_dir_all(&dir).await?;
    }
    eprintln!(
        "   generating a history of {jobs} jobs in {} (kept for later runs)",
        dir.display()
    );
    let generated = recovery::generate(&dir, jobs).await?;
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
    tokio::fs::write(
        &marker,
        format!("{} {}\n", generated.events, generated.head),
    )
    .await?;
    Ok((dir, generated.events, generated.head))
}
