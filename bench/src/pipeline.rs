//! #6: entities/s through the pipeline: ten timed sources of 10,000 entities over 0.1 s each
//! (the source's maximum count and minimum duration), run at once through one `Pipeline`
//! (its bounded worker pool) into one embedded `SqliteDestination`; against raw batched
//! inserts of the same rows into the same table with the same sync setting.
//!
//! The disk and the cores are shared with whatever else runs, so the two are measured in
//! alternating rounds and the verdict takes the median of the rounds' ratios.

use crate::error::{BenchError, Result};
use crate::machine::process_cpu_time;
use crate::raw::{self, EntityRow};
use crate::report::{Outcome, Table, Verdict};
use crate::stats::{median, per_second, ratio, thousands};
use crate::workload::timed_config;
use crate::Config;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_actors::pipeline::destination::ENTITIES_FILE;
use syncjobs_actors::pipeline::timed::TimedConfig;
use syncjobs_actors::pipeline::{Pipeline, SqliteDestination};
use syncjobs_actors::{ProgressSink, RunOutcome, RunSpec, SyncRunner};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CONNECTIONS: usize = 10;
const DURATION_SECONDS: f64 = 0.1;
/// Transaction sizes tried for the raw baseline; the best one counts.
const RAW_BATCHES: [usize; 2] = [1024, 10_000];
const TARGET: f64 = 0.5;

/// One pipeline measurement.
struct PipelineRun {
    entities: u64,
    elapsed: Duration,
    /// CPU the whole process used meanwhile.
    cpu: Duration,
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let (per_connection, rounds): (u64, usize) = if cfg.quick { (2_000, 1) } else { (10_000, 5) };
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    let connections: Vec<(Uuid, TimedConfig)> = (0..CONNECTIONS)
        .map(|c| {
            let config = timed_config(per_connection, DURATION_SECONDS, c as i64);
            TimedConfig::from_json(&config)
                .map(|t| (Uuid::new_v4(), t))
                .map_err(|e| BenchError::failed(format!("timed config: {e}")))
        })
        .collect::<Result<_>>()?;
    let rows = Arc::new(rows_of(&connections)?);
    let workers = Pipeline::default_workers();

    let mut table = Table::new(&[
        "round",
        "pipeline entities/s",
        "cores busy",
        "CPU µs/entity",
        "raw, 1024 rows/txn",
        "raw, 10000 rows/txn",
        "pipeline / best raw",
    ]);
    // One untimed run first: thread start-up, first page faults, the allocator's first growth.
    pipeline_round(&dir.path().join("warm-up"), &connections, workers).await?;
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let round_dir = dir.path().join(format!("round-{round}"));
        let mut raw_rates = Vec::new();
        let mut piped = None;
        // Alternate which goes first, so a drift in the machine's load hits both.
        for step in 0..2 {
            if (step + round) % 2 == 0 {
                piped = Some(pipeline_round(&round_dir, &connections, workers).await?);
            } else {
                for batch in RAW_BATCHES {
                    let took = raw_inserts(&round_dir, batch, rows.clone()).await?;
                    raw_rates.push(per_second(rows.len() as f64, took));
                }
            }
        }
        let piped = piped.ok_or_else(|| BenchError::failed("no pipeline run"))?;
        let rate = per_second(piped.entities as f64, piped.elapsed);
        let best = raw_rates.iter().copied().fold(0.0, f64::max);
        let r = ratio(rate, best);
        ratios.push(r);
        let mut row = vec![
            (round + 1).to_string(),
            thousands(rate),
            format!(
                "{:.1}",
                piped.cpu.as_secs_f64() / piped.elapsed.as_secs_f64().max(1e-9)
            ),
            format!(
                "{:.1}",
                piped.cpu.as_secs_f64() * 1e6 / piped.entities.max(1) as f64
            ),
        ];
        row.extend(raw_rates.iter().map(|r| thousands(*r)));
        row.push(format!("{r:.2}"));
        table.row(row);
    }
    let r = median(&ratios);
    let floor = Duration::from_secs_f64(DURATION_SECONDS);
    let body = format!(
        "{}\n{} entities per round ({CONNECTIONS} runs of {per_connection} plus their \
         containers). The sources alone take {:.1} s (they run at once), so the pipeline cannot \
         beat {} entities/s here. The pipeline (up to {workers} workers per run, more added \
         while a batch waits; each run spawned on a tokio multi-thread runtime with one worker \
         per core) hashes each entity (SHA-256 over \
         canonical JSON), looks its id up and inserts it, committing whatever its workers have \
         queued together (`synchronous=FULL`); the raw baseline inserts the same precomputed \
         rows (same content and hash) into the same table. \"cores busy\": CPU time of the \
         process over wall time during the pipeline run; \"CPU µs/entity\": that CPU time per \
         entity (source, hashing, channels, destination). An untimed pipeline run comes first. \
         Verdict on the median of the rounds' ratios.\n",
        table.render(),
        rows.len(),
        floor.as_secs_f64(),
        thousands(per_second(rows.len() as f64, floor)),
    );
    Ok(Outcome {
        headline: format!("{r:.2} x raw batched inserts (median of {rounds} rounds)"),
        verdict: Verdict::of(r >= TARGET),
        body,
    })
}

/// Runs every connection's source at once through one pipeline into a fresh destination.
async fn pipeline_round(
    dir: &Path,
    connections: &[(Uuid, TimedConfig)],
    workers: usize,
) -> Result<PipelineRun> {
    let dest_dir = dir.join("pipeline");
    let destination =
        tokio::task::spawn_blocking(move || SqliteDestination::open(&dest_dir)).await??;
    let pipeline = Arc::new(Pipeline::new(destination, workers));
    let organization_id = Uuid::new_v4();
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    // Spawned, as the service spawns its runs: the producers run on the runtime's workers.
    let runs: Vec<_> = connections
        .iter()
        .map(|(scid, config)| {
            let pipeline = pipeline.clone();
            let spec = RunSpec {
                job_id: Uuid::new_v4(),
                source_connection_id: *scid,
                organization_id,
                short_name: "timed".into(),
                config: config.to_json(),
            };
            tokio::spawn(async move {
                let (progress, _watch) = ProgressSink::new();
                pipeline.run(spec, CancellationToken::new(), progress).await
            })
        })
        .collect();
    let mut entities = 0;
    for run in runs {
        match run.await? {
            RunOutcome::Completed(counts) if counts.inserted == counts.encountered() => {
                entities += counts.inserted
            }
            other => {
                return Err(BenchError::failed(format!(
                    "a pipeline run did not insert everything: {other:?}"
                )))
            }
        }
    }
    Ok(PipelineRun {
        entities,
        elapsed: started.elapsed(),
        cpu: process_cpu_time().saturating_sub(cpu_before),
    })
}

/// The rows the pipeline writes for these connections: the container and every entity of
/// each timed source, as records (canonical content and hash).
fn rows_of(connections: &[(Uuid, TimedConfig)]) -> Result<Vec<EntityRow>> {
    let mut rows = Vec::new();
    for (scid, config) in connections {
        let scid = scid.to_string();
        let entities = std::iter::once(config.container())
            .chain((0..config.entity_count).map(|i| config.entity(i)));
        for entity in entities {
            let record = entity
                .into_record()
                .map_err(|e| BenchError::failed(format!("timed entity: {e}")))?;
            rows.push(EntityRow {
                source_connection_id: scid.clone(),
                record,
            });
        }
    }
    Ok(rows)
}

/// Raw inserts of `rows` into a fresh entities table (made by the destination).
async fn raw_inserts(dir: &Path, batch: usize, rows: Arc<Vec<EntityRow>>) -> Result<Duration> {
    let dir = dir.join(format!("raw-{batch}"));
    tokio::task::spawn_blocking(move || {
        drop(SqliteDestination::open(&dir)?);
        raw::insert_entities(&dir.join(ENTITIES_FILE), &rows, batch)
    })
    .await?
}
