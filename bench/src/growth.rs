//! #7: start-up and memory against the size of the history (10k, 100k and 1M completed jobs;
//! 1k and 10k with `--quick`). For each size a copy of the kept store (`history`) is served
//! twice: a first start, which has only the log and builds the read model from it, then a
//! restart after a graceful stop, which has whatever the first start kept (today the
//! read-model checkpoint). Each: the time from spawning the process to `/health` ready at the
//! log's head, resident memory then (and its peak), and the files on disk.
//!
//! The target is issue #13's, judged at the largest size on the restart (a first start on a
//! log without any read model has to fold the whole history, whatever the design): RSS <= 200
//! MB and ready within 2 s.

use crate::client::Api;
use crate::error::{BenchError, Result};
use crate::history::{self, READY_TIMEOUT};
use crate::machine::Memory;
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::thousands;
use crate::Config;
use std::path::Path;
use std::time::Duration;
use syncjobs_store_sqlite::DB_FILE;
use uuid::Uuid;

const SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];
const QUICK_SIZES: [u64; 2] = [1_000, 10_000];
const RSS_TARGET_MB: f64 = 200.0;
const START_TARGET: Duration = Duration::from_secs(2);

/// One start of the server.
struct Start {
    ready: Duration,
    memory: Memory,
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let sizes: &[u64] = if cfg.quick { &QUICK_SIZES } else { &SIZES };
    let key = format!("bench-{}", Uuid::new_v4().simple());
    let mut table = Table::new(&[
        "jobs",
        "events",
        "events.db MB",
        "first start s",
        "RSS / peak MB",
        "kept beside the log MB",
        "restart s",
        "RSS / peak MB",
    ]);
    let mut last = None;
    for &jobs in sizes {
        let dir = tempfile::tempdir_in(&cfg.work_dir)?;
        let data_dir = dir.path().join("data");
        let h = history::prepare_jobs(cfg, jobs, &data_dir).await?;
        let db_mb = mb(dir_bytes(&data_dir, Some(DB_FILE)).await?);
        eprintln!("   {jobs} jobs: first start");
        let first = start(cfg, &data_dir, &key, h.head).await?;
        let kept_mb =
            mb(dir_bytes(&data_dir, None).await? - dir_bytes(&data_dir, Some(DB_FILE)).await?);
        eprintln!("   {jobs} jobs: restart");
        let again = start(cfg, &data_dir, &key, h.head).await?;
        table.row(vec![
            thousands(jobs as f64),
            thousands(h.events as f64),
            format!("{db_mb:.0}"),
            format!("{:.2}", first.ready.as_secs_f64()),
            format!(
                "{:.0} / {:.0}",
                first.memory.rss_mb(),
                first.memory.hwm_mb()
            ),
            format!("{kept_mb:.0}"),
            format!("{:.2}", again.ready.as_secs_f64()),
            format!(
                "{:.0} / {:.0}",
                again.memory.rss_mb(),
                again.memory.hwm_mb()
            ),
        ]);
        last = Some((jobs, again));
    }
    let (jobs, at_largest) = last.ok_or_else(|| BenchError::failed("no size measured"))?;
    let rss = at_largest.memory.rss_mb();
    let body = format!(
        "{}\nThe stores are #4's (10 events per completed job, 100 jobs per source \
         connection), generated once and kept under the work directory (`history-<N>`), each \
         copied into a fresh data directory. \"first start\": `syncjobs serve` on the copied \
         log alone, from spawning the process until `/health` is ready at the log's head; \
         then a graceful stop (SIGTERM) and the \"restart\" on what the first start kept. \
         \"kept beside the log\": the data directory's size minus `events.db` after the first \
         start's stop (the read-model checkpoint, the destination, the WAL). RSS as \
         `/proc/<pid>/status` gives it once ready (VmRSS / VmHWM). The verdict takes the \
         restart at the largest size.\n",
        table.render()
    );
    Ok(Outcome {
        headline: format!(
            "at {} jobs: restart ready in {:.2} s, RSS {rss:.0} MB (peak {:.0} MB)",
            thousands(jobs as f64),
            at_largest.ready.as_secs_f64(),
            at_largest.memory.hwm_mb()
        ),
        verdict: Verdict::of(rss <= RSS_TARGET_MB && at_largest.ready <= START_TARGET),
        body,
    })
}

/// Starts the server on `data_dir`, waits until it is ready at `head`, reads its memory and
/// stops it gracefully.
async fn start(cfg: &Config, data_dir: &Path, key: &str, head: u64) -> Result<Start> {
    let mut server = ServerProcess::syncjobs(SyncjobsServer {
        bin: &cfg.server_bin,
        data_dir,
        api_key: key,
        env: vec![],
    })?;
    let api = Api::new(&server.base_url, key)?;
    let ready = server.wait_ready(&api, head, READY_TIMEOUT).await?;
    let memory = server.memory()?;
    server.stop().await?;
    Ok(Start { ready, memory })
}

/// Bytes of the files directly in `dir` (only `only`, if given).
async fn dir_bytes(dir: &Path, only: Option<&str>) -> Result<u64> {
    let mut total = 0;
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if only.is_some_and(|name| entry.file_name() != name) {
            continue;
        }
        let meta = entry.metadata().await?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
