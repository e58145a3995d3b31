//! #1: durable appends/s of the embedded store with 1, 16 and 256 concurrent appenders, one
//! event per append, each appender on its own stream; against raw rusqlite inserting the same
//! rows into the same table with the same sync setting.
//!
//! Two baselines: the best batching open to N appenders (N rows per commit, since each has
//! one event in flight and an append is acknowledged only once durable), which the target is
//! judged against, and for reference the best batching raw SQLite reaches at all (large
//! transactions, which would need appenders to wait for each other's later events).

use crate::error::Result;
use crate::raw::{self, Inserted};
use crate::report::{Outcome, Table, Verdict};
use crate::stats::{median, ms, per_second, ratio, thousands, Latencies};
use crate::workload;
use crate::Config;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_domain::{EventStore, ExpectedVersion};
use syncjobs_store_sqlite::EmbeddedStore;
use uuid::Uuid;

const APPENDERS: [usize; 3] = [1, 16, 256];
/// Rows per transaction of the "best batching" baseline: past a few thousand, larger
/// transactions gain nothing measurable.
const BEST_BATCH: usize = 4096;
/// The target: at least this fraction of the baseline at 256 appenders.
const TARGET: f64 = 0.8;
/// Stops an appender that somehow never reaches the deadline.
const MAX_APPENDS_PER_TASK: u64 = 10_000_000;

struct StoreRun {
    appends: u64,
    commits: u64,
    elapsed: Duration,
    latencies: Latencies,
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let (run_for, rounds) = if cfg.quick {
        (Duration::from_secs(2), 1)
    } else {
        (Duration::from_secs(4), 3)
    };
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    // Per appender count: store rates, raw rates with the same batching, and the ratios of
    // each round; then the best-batching rates, one per round.
    let mut store_rates = vec![Vec::new(); APPENDERS.len()];
    let mut same_rates = vec![Vec::new(); APPENDERS.len()];
    let mut same_ratios = vec![Vec::new(); APPENDERS.len()];
    let mut best_ratios = vec![Vec::new(); APPENDERS.len()];
    let mut latencies: Vec<Option<Latencies>> = vec![None; APPENDERS.len()];
    let mut per_commit = vec![Vec::new(); APPENDERS.len()];
    let mut best_rates = Vec::new();
    for round in 0..rounds {
        let round_dir = dir.path().join(format!("round-{round}"));
        let best = raw_inserts(&round_dir.join("raw-best"), 256, BEST_BATCH, run_for).await?;
        let best_rate = per_second(best.rows as f64, best.elapsed);
        best_rates.push(best_rate);
        for (i, appenders) in APPENDERS.into_iter().enumerate() {
            let store = store_appends(
                &round_dir.join(format!("store-{appenders}")),
                appenders,
                run_for,
            )
            .await?;
            let same = raw_inserts(
                &round_dir.join(format!("raw-{appenders}")),
                appenders,
                appenders,
                run_for,
            )
            .await?;
            let store_rate = per_second(store.appends as f64, store.elapsed);
            let same_rate = per_second(same.rows as f64, same.elapsed);
            store_rates[i].push(store_rate);
            same_rates[i].push(same_rate);
            same_ratios[i].push(ratio(store_rate, same_rate));
            best_ratios[i].push(ratio(store_rate, best_rate));
            per_commit[i].push(store.appends as f64 / store.commits.max(1) as f64);
            // Latencies of the middle round: one run's distribution, not a blend.
            if round == rounds / 2 {
                latencies[i] = Some(store.latencies);
            }
        }
    }
    let mut table = Table::new(&[
        "appenders",
        "store appends/s",
        "appends/commit",
        "p50 ms",
        "p99 ms",
        "raw, same batching rows/s",
        "store / raw same",
        "store / raw best",
    ]);
    for (i, appenders) in APPENDERS.into_iter().enumerate() {
        let l = latencies[i].clone().unwrap_or_default();
        table.row(vec![
            appenders.to_string(),
            thousands(median(&store_rates[i])),
            format!("{:.1}", median(&per_commit[i])),
            ms(l.p50()),
            ms(l.p99()),
            thousands(median(&same_rates[i])),
            format!("{:.3}", median(&same_ratios[i])),
            format!("{:.2}", median(&best_ratios[i])),
        ]);
    }
    let last = APPENDERS.len() - 1;
    let vs_same = median(&same_ratios[last]);
    let vs_best = median(&best_ratios[last]);
    let body = format!(
        "{}\nRaw SQLite, best batching ({BEST_BATCH} rows per transaction, 256 streams): {} \
         rows/s.\n\n\
         Rates and ratios are medians of {rounds} round(s) of {:.0} s runs, each on a fresh \
         database; a ratio compares runs of the same round. Appenders are tokio tasks on a \
         multi-thread runtime, each appending one `ProgressRecorded` event at a time to its own \
         stream with an exact expected version; `synchronous=FULL`, WAL, on the work \
         directory's disk. \"raw, same batching\" inserts the same rows, N per transaction: N \
         appenders with one event in flight each cannot give a commit more. The raw loop is \
         as strong as the store's writer: it builds a batch's rows before its transaction \
         begins and checkpoints the WAL off the commit path with the store's checkpointer. \"raw best\": \
         {BEST_BATCH} per transaction, which no set of 256 one-event appenders can reach \
         without acknowledging appends before they are durable. The verdict uses the same \
         batching; see BENCHMARKS.md.\n",
        table.render(),
        thousands(median(&best_rates)),
        run_for.as_secs_f64(),
    );
    Ok(Outcome {
        headline: format!(
            "{vs_same:.3} x raw at 256 appenders, 256 rows/commit ({vs_best:.2} x raw with {BEST_BATCH} rows/commit)"
        ),
        verdict: Verdict::of(vs_same >= TARGET),
        body,
    })
}

/// Appends for `run_for` from `appenders` concurrent tasks into a fresh store at `dir`.
async fn store_appends(dir: &Path, appenders: usize, run_for: Duration) -> Result<StoreRun> {
    let dir = dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir)).await??;
    let started = Instant::now();
    let deadline = started + run_for;
    let tasks: Vec<_> = (0..appenders)
        .map(|a| {
            let store: Arc<EmbeddedStore> = store.clone();
            tokio::spawn(async move {
                let stream = format!("bench-{a}");
                let correlation = Uuid::new_v4();
                let mut latencies = Vec::new();
                let mut version = 0u64;
                while Instant::now() < deadline && version < MAX_APPENDS_PER_TASK {
                    let event = workload::progress(version + 1, correlation);
                    let t = Instant::now();
                    store
                        .append(&stream, ExpectedVersion::Exact(version), vec![event])
                        .await?;
                    latencies.push(t.elapsed());
                    version += 1;
                }
                Ok::<_, syncjobs_domain::StoreError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let commits = store.commits();
    store.close();
    store.closed().await;
    Ok(StoreRun {
        appends: latencies.len() as u64,
        commits,
        elapsed,
        latencies: Latencies::new(latencies),
    })
}

/// Raw inserts into a fresh events table at `dir` (made by the store, then closed).
async fn raw_inserts(
    dir: &Path,
    streams: usize,
    batch: usize,
    run_for: Duration,
) -> Result<Inserted> {
    let dir = dir.to_path_buf();
    let store = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir)).await??
    };
    store.close();
    store.closed().await;
    drop(store);
    let path = dir.join(syncjobs_store_sqlite::DB_FILE);
    let correlation = Uuid::new_v4();
    tokio::task::spawn_blocking(move || {
        raw::insert_events(&path, streams, batch, run_for, |n| {
            workload::progress(n, correlation)
        })
    })
    .await?
}
