//! #5: scale. 10,000 jobs running at once (slow timed sources); the server's resident
//! memory (VmRSS and VmHWM from /proc) and, from a few closed-loop clients while all of them
//! run, the latency of `GET` one job (random among the running ones) and of the list of a
//! connection's jobs (`GET /source-connections/{id}/jobs`, Airweave's default limit of 100),
//! in turn. The lists are of connections of the history when there is one (`--history N`:
//! 100 completed jobs each, a full page), else of the running jobs' connections (one job
//! each).

use crate::client::{start_slow_jobs, Api, SLOW_COUNT, SLOW_SECONDS};
use crate::error::{BenchError, Result};
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::{ms, per_second, thousands, Latencies};
use crate::Config;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const JOBS: usize = 10_000;
const QUICK_JOBS: usize = 1_000;
const SETUP_CONCURRENCY: usize = 32;
/// Clients issuing GETs back to back during the measurement.
const CLIENTS: usize = 4;
/// Lets the start-up burst (10,000 JobStarted, first progress reports) settle before measuring.
const SETTLE: Duration = Duration::from_secs(3);
/// Stops a client that somehow never reaches its deadline.
const MAX_GETS_PER_CLIENT: usize = 1_000_000;
const RSS_TARGET_MB: f64 = 300.0;
const P99_TARGET: Duration = Duration::from_millis(10);
/// History connections whose lists are read (the newest of the history).
const LISTED_CONNECTIONS: usize = 1_000;

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let (count, measure_for) = if cfg.quick {
        (QUICK_JOBS, Duration::from_secs(3))
    } else {
        (JOBS, Duration::from_secs(10))
    };
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
    let idle = server.memory()?;
    // Taken before the new connections exist, which would come first in the listing.
    let history_connections = if history.is_some() {
        api.source_connection_ids(0, LISTED_CONNECTIONS).await?
    } else {
        Vec::new()
    };
    let collection = api.create_collection("bench scale").await?;
    eprintln!("   starting {count} jobs");
    let started = Instant::now();
    let jobs = start_slow_jobs(&api, &collection, 0, count, SETUP_CONCURRENCY).await?;
    let setup = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let before = server.memory()?;

    let paths: Arc<Vec<String>> = Arc::new(
        jobs.iter()
            .map(|j| Api::job_path(j.source_connection_id, j.id))
            .collect(),
    );
    let listed: Vec<Uuid> = if history_connections.is_empty() {
        jobs.iter().map(|j| j.source_connection_id).collect()
    } else {
        history_connections
    };
    let first = *listed
        .first()
        .ok_or_else(|| BenchError::failed("no connection to list"))?;
    let list_length = api.jobs_of(first, 100).await?.len();
    let list_paths: Arc<Vec<String>> = Arc::new(
        listed
            .iter()
            .map(|id| format!("/source-connections/{id}/jobs"))
            .collect(),
    );
    let deadline = Instant::now() + measure_for;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (api, paths, list_paths) = (api.clone(), paths.clone(), list_paths.clone());
            tokio::spawn(async move {
                let (mut gets, mut lists) = (Vec::new(), Vec::new());
                // Clients start on different kinds, so both are always in flight.
                for i in c.. {
                    if Instant::now() >= deadline || gets.len() + lists.len() >= MAX_GETS_PER_CLIENT
                    {
                        break;
                    }
                    let (targets, samples) = if i % 2 == 0 {
                        (&paths, &mut gets)
                    } else {
                        (&list_paths, &mut lists)
                    };
                    let path = &targets[rand::rng().random_range(0..targets.len())];
                    let t = Instant::now();
                    api.get_bytes(path).await?;
                    samples.push(t.elapsed());
                }
                Ok::<_, BenchError>((gets, lists))
            })
        })
        .collect();
    let (mut samples, mut list_samples) = (Vec::new(), Vec::new());
    for client in clients {
        let (gets, lists) = client.await??;
        samples.extend(gets);
        list_samples.extend(lists);
    }
    let latencies = Latencies::new(samples);
    let list_latencies = Latencies::new(list_samples);
    let after = server.memory()?;
    let health = api.health().await?;
    let still_running = count_running(&api, &jobs).await?;
    server.stop().await?;

    let rss = before.rss_mb().max(after.rss_mb());
    let p99 = latencies.p99();
    let list_p99 = list_latencies.p99();
    let mut table = Table::new(&["what", "value"]);
    table.row(vec![
        "jobs running during the measurement".into(),
        format!("{still_running} of {count}"),
    ]);
    table.row(vec![
        "time to start them all".into(),
        format!(
            "{:.1} s ({} jobs/s, {SETUP_CONCURRENCY} at a time)",
            setup.as_secs_f64(),
            thousands(per_second(count as f64, setup))
        ),
    ]);
    table.row(vec![
        "RSS idle / with the jobs / after the GETs".into(),
        format!(
            "{:.0} / {:.0} / {:.0} MB",
            idle.rss_mb(),
            before.rss_mb(),
            after.rss_mb()
        ),
    ]);
    table.row(vec![
        "peak RSS (VmHWM)".into(),
        format!("{:.0} MB", after.hwm_mb()),
    ]);
    table.row(vec![
        format!(
            "GET one job and list, {CLIENTS} clients, {} s",
            measure_for.as_secs()
        ),
        format!(
            "{} + {} requests, {} req/s",
            latencies.len(),
            list_latencies.len(),
            thousands(per_second(
                (latencies.len() + list_latencies.len()) as f64,
                measure_for
            ))
        ),
    ]);
    table.row(vec![
        "GET one job p50 / p90 / p99 / max".into(),
        format!(
            "{} / {} / {} / {} ms",
            ms(latencies.p50()),
            ms(latencies.percentile(90.0)),
            ms(p99),
            ms(latencies.max())
        ),
    ]);
    table.row(vec![
        format!(
            "list ({list_length} jobs, of {} connections) p50 / p90 / p99 / max",
            list_paths.len()
        ),
        format!(
            "{} / {} / {} / {} ms",
            ms(list_latencies.p50()),
            ms(list_latencies.percentile(90.0)),
            ms(list_p99),
            ms(list_latencies.max())
        ),
    ]);
    let body = format!(
        "{}\nJobs: timed sources of {SLOW_COUNT} entities over {SLOW_SECONDS:.0} s (the \
         longest duration), each on its own source connection. The requests run back to \
         back from {CLIENTS} clients (closed loop), {:.0} s after the last job started, each \
         client alternating a `GET` of a random running job and a list of the jobs of a \
         random connection ({}). The verdict takes the larger RSS of the two samples taken \
         with the jobs running, and both p99s. `/health` at the end: `{}`. The server ran {}.\n",
        table.render(),
        SETTLE.as_secs_f64(),
        if history.is_some() {
            "the newest connections of the history, 100 completed jobs each"
        } else {
            "the running jobs' connections, one job each"
        },
        health,
        crate::history::History::describe(history)
    );
    Ok(Outcome {
        headline: format!(
            "RSS {rss:.0} MB, GET one job p99 {} ms, list of {list_length} p99 {} ms with \
             {still_running} jobs running",
            ms(p99),
            ms(list_p99)
        ),
        verdict: Verdict::of(
            rss <= RSS_TARGET_MB
                && p99 <= P99_TARGET
                && list_p99 <= P99_TARGET
                && still_running == count,
        ),
        body,
    })
}

/// How many of `jobs` still show `running` (a benchmark of running jobs must have them).
async fn count_running(api: &Api, jobs: &[crate::client::Job]) -> Result<usize> {
    use futures::{stream, StreamExt, TryStreamExt};
    let statuses: Vec<bool> = stream::iter(jobs)
        .map(|j| async move {
            api.job(j.source_connection_id, j.id)
                .await
                .map(|now| now.status == "running")
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(statuses.into_iter().filter(|r| *r).count())
}
