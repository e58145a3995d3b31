//! #3: cancel latency, from `POST .../cancel` to `cancelled` observed on `GET` of the job,
//! with 1, 100 and 1000 jobs running (slow timed sources, so they keep running); against
//! the physical floor of a cancel, two durable commits one after the other (the request
//! recorded, then the confirmation), measured on the same disk while the same jobs run.
//!
//! Each sample cancels one running job, waits for `cancelled`, then starts a new job on the
//! same connection and waits for it to run, so the number of running jobs stays put. Floor
//! samples alternate with cancel samples (one floor pair before each cancel), so a change in
//! the machine's load reaches both; every level is judged, since the floor's p99 swings with
//! the disk from run to run.

use crate::client::{start_slow_jobs, Api, Job, SLOW_COUNT, SLOW_SECONDS};
use crate::error::{BenchError, Result};
use crate::raw;
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::{ms, Latencies};
use crate::Config;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// (jobs running, samples) per level.
const LEVELS: [(usize, usize); 3] = [(1, 1000), (100, 1000), (1000, 1000)];
const QUICK_LEVELS: [(usize, usize); 3] = [(1, 30), (100, 30), (300, 30)];
/// Set-up requests in flight at once.
const SETUP_CONCURRENCY: usize = 16;
const TARGET: f64 = 3.0;

/// What one level measured.
struct Level {
    running: usize,
    floor: Latencies,
    answered: Latencies,
    cancelled: Latencies,
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let levels = if cfg.quick { QUICK_LEVELS } else { LEVELS };
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    let key = format!("bench-{}", Uuid::new_v4().simple());
    let data_dir = dir.path().join("data");
    let history = crate::history::prepare(cfg, &data_dir).await?;
    let mut server = ServerProcess::syncjobs(SyncjobsServer {
        bin: &cfg.server_bin,
        data_dir: &data_dir,
        api_key: &key,
        env: vec![],
    })?;
    let api = Api::new(&server.base_url, &key)?;
    server
        .wait_ready(
            &api,
            history.map_or(0, |h| h.head),
            crate::history::READY_TIMEOUT,
        )
        .await?;
    let collection = api.create_collection("bench cancel").await?;

    let mut running: Vec<Job> = Vec::new();
    let mut measured = Vec::new();
    for (n, samples) in levels {
        let more = start_slow_jobs(
            &api,
            &collection,
            running.len(),
            n - running.len(),
            SETUP_CONCURRENCY,
        )
        .await?;
        running.extend(more);
        eprintln!("   {n} jobs running; measuring {samples} floor pairs and {samples} cancels, alternately");
        let floor_path = dir.path().join(format!("floor-{n}.db"));
        let mut floor_db =
            Some(tokio::task::spawn_blocking(move || raw::FloorDb::open(&floor_path)).await??);
        let (mut answered, mut cancelled, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..samples {
            let db = floor_db
                .take()
                .ok_or_else(|| BenchError::failed("the floor database was lost"))?;
            let (db, pair) = tokio::task::spawn_blocking(move || {
                let pair = db.pair();
                (db, pair)
            })
            .await?;
            floor_db = Some(db);
            floor.push(pair?);
            let slot = i % running.len();
            let (a, c, next) = cancel_one(&api, &running[slot]).await?;
            answered.push(a);
            cancelled.push(c);
            running[slot] = next;
        }
        measured.push(Level {
            running: n,
            floor: Latencies::new(floor),
            answered: Latencies::new(answered),
            cancelled: Latencies::new(cancelled),
        });
    }
    let rss = server.memory()?;
    server.stop().await?;

    let mut table = Table::new(&[
        "jobs running",
        "samples",
        "cancel answered p50 / p99 ms",
        "`cancelled` seen p50 / p99 / max ms",
        "floor p50 / p99 ms",
        "p99 / floor p99",
    ]);
    for l in &measured {
        table.row(vec![
            l.running.to_string(),
            l.cancelled.len().to_string(),
            format!("{} / {}", ms(l.answered.p50()), ms(l.answered.p99())),
            format!(
                "{} / {} / {}",
                ms(l.cancelled.p50()),
                ms(l.cancelled.p99()),
                ms(l.cancelled.max())
            ),
            format!("{} / {}", ms(l.floor.p50()), ms(l.floor.p99())),
            format!("{:.2}", p99_ratio(l)),
        ]);
    }
    let last = measured
        .last()
        .ok_or_else(|| BenchError::failed("no level measured"))?;
    let worst = measured.iter().map(p99_ratio).fold(0.0, f64::max);
    let all_levels = measured
        .iter()
        .map(|l| format!("{:.2} x at {}", p99_ratio(l), l.running))
        .collect::<Vec<_>>()
        .join(", ");
    let body = format!(
        "{}\nA sample: `POST /source-connections/{{id}}/jobs/{{job_id}}/cancel` (answered: the \
         request is durable and the job shows `cancelling`), then `GET` of the job back to \
         back until it shows `cancelled` (the worker stopped the pipeline and recorded it, and \
         the read model folded it). The floor: pairs of one-row `synchronous=FULL` commits in \
         a fresh WAL database on the same disk, one pair before each cancel sample, while the \
         same jobs run. The verdict compares each level's p99 with its floor's p99, and every \
         level must meet it; the max shows a stall that too few samples meet for the p99 to \
         (a periodic one, for instance). Jobs: timed \
         sources of {SLOW_COUNT} entities over {SLOW_SECONDS:.0} s. Server RSS at the end: \
         {:.0} MB. The server ran {}.\n",
        table.render(),
        rss.rss_mb(),
        crate::history::History::describe(history)
    );
    Ok(Outcome {
        headline: format!(
            "p99 / floor p99: {all_levels}; at {} jobs p99 {} ms (floor {} ms), p50 {} ms",
            last.running,
            ms(last.cancelled.p99()),
            ms(last.floor.p99()),
            ms(last.cancelled.p50())
        ),
        verdict: Verdict::of(worst <= TARGET),
        body,
    })
}

fn p99_ratio(l: &Level) -> f64 {
    crate::stats::ratio(l.cancelled.p99().as_secs_f64(), l.floor.p99().as_secs_f64())
}

/// Cancels a running job and times it; then starts the next job of its connection and
/// waits for it to run. Returns (answered, cancelled seen, the new running job).
async fn cancel_one(api: &Api, job: &Job) -> Result<(Duration, Duration, Job)> {
    let scid = job.source_connection_id;
    let t = Instant::now();
    let answer = api.cancel(scid, job.id).await?;
    let answered = t.elapsed();
    if answer.status != "cancelling" && answer.status != "cancelled" {
        return Err(BenchError::failed(format!(
            "cancel answered {} for job {}",
            answer.status, job.id
        )));
    }
    api.wait_for_status(
        scid,
        job.id,
        "cancelled",
        Duration::ZERO,
        Duration::from_secs(60),
    )
    .await?;
    let cancelled = t.elapsed();
    let next = api.run(scid).await?;
    let next = api
        .wait_for_status(
            scid,
            next.id,
            "running",
            Duration::from_millis(2),
            Duration::from_secs(60),
        )
        .await?;
    Ok((answered, cancelled, next))
}
