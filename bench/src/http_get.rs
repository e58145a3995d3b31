//! #2: GET one job over HTTP, requests/s at 64 connections with wrk; against a bare
//! actix-web handler returning the same JSON bytes from memory, same tool, same settings,
//! same number of server workers. The two are measured alternately (A B, then B A) so that
//! a change in the machine's load hits both.

use crate::client::Api;
use crate::error::{BenchError, Result};
use crate::report::{Outcome, Table, Verdict};
use crate::server::{http_workers, ServerProcess, SyncjobsServer};
use crate::stats::{ms, ratio, thousands};
use crate::workload::timed_config;
use crate::wrk::{self, Load, WrkRun};
use crate::Config;
use std::time::Duration;

const CONNECTIONS: usize = 64;
const TARGET: f64 = 0.7;

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let (duration, rounds) = if cfg.quick {
        (Duration::from_secs(3), 1)
    } else {
        (Duration::from_secs(10), 2)
    };
    // wrk shares the machine's cores with the server; one thread per core, like the server.
    let threads = http_workers();
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    let key = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let data_dir = dir.path().join("data");
    let mut server = ServerProcess::syncjobs(SyncjobsServer {
        bin: &cfg.server_bin,
        data_dir: &data_dir,
        api_key: &key,
        env: vec![],
    })?;
    let api = Api::new(&server.base_url, &key)?;
    server
        .wait_ready(&api, 0, Duration::from_secs(60))
        .await?;

    // One finished job: its body no longer changes while it is served.
    let collection = api.create_collection("bench http get").await?;
    let scid = api
        .create_timed_connection(&collection, "bench get", timed_config(10, 0.1, 1))
        .await?;
    let job = api.run(scid).await?;
    api.wait_for_status(
        scid,
        job.id,
        "completed",
        Duration::from_millis(20),
        Duration::from_secs(60),
    )
    .await?;
    let path = Api::job_path(scid, job.id);
    let body = api.get_bytes(&path).await?;
    let body_file = dir.path().join("job.json");
    std::fs::write(&body_file, &body)?;

    let mut baseline =
        ServerProcess::baseline(&cfg.bench_bin, &body_file, dir.path().join("baseline.log"))?;
    baseline
        .wait_answering(&path, Duration::from_secs(30))
        .await?;
    let baseline_api = Api::new(&baseline.base_url, &key)?;
    if baseline_api.get_bytes(&path).await? != body {
        return Err(BenchError::failed("the baseline serves other bytes"));
    }

    let server_url = api.url(&path);
    let baseline_url = baseline_api.url(&path);
    let headers = [("x-api-key", key.as_str())];
    let load = |url, duration| Load {
        url,
        headers: &headers,
        threads,
        connections: CONNECTIONS,
        duration,
    };
    // Warm both up (connections, caches, the allocator) before anything counts.
    wrk::run(&cfg.wrk, &load(&server_url, Duration::from_secs(1))).await?;
    wrk::run(&cfg.wrk, &load(&baseline_url, Duration::from_secs(1))).await?;

    let mut table = Table::new(&[
        "round",
        "syncjobs req/s",
        "p50 ms",
        "p99 ms",
        "bare actix-web req/s",
        "p50 ms",
        "p99 ms",
        "ratio",
    ]);
    let (mut ours_total, mut base_total) = (0.0, 0.0);
    for round in 0..rounds {
        let (ours, base) = if round % 2 == 0 {
            let base = checked(wrk::run(&cfg.wrk, &load(&baseline_url, duration)).await?)?;
            let ours = checked(wrk::run(&cfg.wrk, &load(&server_url, duration)).await?)?;
            (ours, base)
        } else {
            let ours = checked(wrk::run(&cfg.wrk, &load(&server_url, duration)).await?)?;
            let base = checked(wrk::run(&cfg.wrk, &load(&baseline_url, duration)).await?)?;
            (ours, base)
        };
        ours_total += ours.requests_per_sec;
        base_total += base.requests_per_sec;
        table.row(vec![
            (round + 1).to_string(),
            thousands(ours.requests_per_sec),
            ms(ours.p50),
            ms(ours.p99),
            thousands(base.requests_per_sec),
            ms(base.p50),
            ms(base.p99),
            format!("{:.2}", ratio(ours.requests_per_sec, base.requests_per_sec)),
        ]);
    }
    let r = ratio(ours_total, base_total);
    let rss = server.memory()?;
    baseline.stop().await?;
    server.stop().await?;
    let text = format!(
        "{}\n`wrk --latency -t{threads} -c{CONNECTIONS} -d{}s -H 'x-api-key: ...'` against \
         `GET {}` (a completed job, {} bytes of JSON), each server with {} HTTP workers, \
         the server at its default settings (log level `info`, to a file). Ratio of the \
         mean requests/s over {rounds} round(s): {r:.2}. Server RSS afterwards: {:.0} MB.\n",
        table.render(),
        duration.as_secs(),
        "/source-connections/{id}/jobs/{job_id}",
        body.len(),
        http_workers(),
        rss.rss_mb(),
    );
    Ok(Outcome {
        headline: format!(
            "{r:.2} x bare actix-web ({} vs {} req/s)",
            thousands(ours_total / f64::from(rounds)),
            thousands(base_total / f64::from(rounds))
        ),
        verdict: Verdict::of(r >= TARGET),
        body: text,
    })
}

/// A run with failed responses or socket errors measured something else.
fn checked(run: WrkRun) -> Result<WrkRun> {
    if run.non_2xx > 0 || run.socket_errors > 0 {
        return Err(BenchError::failed(format!(
            "wrk saw {} non-2xx responses and {} socket errors",
            run.non_2xx, run.socket_errors
        )));
    }
    Ok(run)
}
