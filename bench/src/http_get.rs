//! #2: GET one job over HTTP, requests/s at 64 connections with wrk; against a bare
//! actix-web handler returning the same JSON bytes from memory, same tool, same settings,
//! same number of server workers. The two are measured alternately (A B, then B A) so that
//! a change in the machine's load hits both. A last round runs the server with
//! `SYNCJOBS_LOG=warn`, which shows what its one log line per request costs.

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
        (Duration::from_secs(8), 2)
    };
    // wrk shares the machine's cores with the server; one thread per core, like the server.
    let threads = http_workers();
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    let key = format!("bench-{}", uuid::Uuid::new_v4().simple());
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
    tokio::fs::write(&body_file, &body).await?;

    let mut baseline =
        ServerProcess::baseline(&cfg.bench_bin, &body_file, dir.path().join("baseline.log"))?;
    baseline
        .wait_answering(&path, Duration::from_secs(30))
        .await?;
    let baseline_api = Api::new(&baseline.base_url, &key)?;
    if baseline_api.get_bytes(&path).await? != body {
        return Err(BenchError::failed("the baseline serves other bytes"));
    }

    let headers = [("x-api-key", key.as_str())];
    let bench = Wrk {
        wrk: &cfg.wrk,
        headers: &headers,
        threads,
        duration,
    };
    let baseline_url = baseline_api.url(&path);
    // Warm both up (connections, caches, the allocator) before anything counts.
    bench.warm_up(&api.url(&path)).await?;
    bench.warm_up(&baseline_url).await?;

    let mut table = Table::new(&[
        "round",
        "syncjobs req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "bare actix-web req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "ratio",
        "CPU ratio",
    ]);
    let default_ratio = bench
        .rounds(
            (&api.url(&path), &server),
            (&baseline_url, &baseline),
            rounds,
            "",
            &mut table,
        )
        .await?;
    let rss = server.memory()?;
    server.stop().await?;

    // The same server with the per-request log line filtered out, to show what it costs.
    let mut quiet = ServerProcess::syncjobs(SyncjobsServer {
        bin: &cfg.server_bin,
        data_dir: &data_dir,
        api_key: &key,
        env: vec![("SYNCJOBS_LOG", "warn".to_string())],
    })?;
    let quiet_api = Api::new(&quiet.base_url, &key)?;
    quiet
        .wait_ready(&quiet_api, 0, crate::history::READY_TIMEOUT)
        .await?;
    bench.warm_up(&quiet_api.url(&path)).await?;
    let quiet_ratio = bench
        .rounds(
            (&quiet_api.url(&path), &quiet),
            (&baseline_url, &baseline),
            1,
            " (log warn)",
            &mut table,
        )
        .await?;
    quiet.stop().await?;
    baseline.stop().await?;

    let text = format!(
        "{}\n`wrk --latency -t{threads} -c{CONNECTIONS} -d{}s -H 'x-api-key: ...'` against \
         `GET /source-connections/{{id}}/jobs/{{job_id}}` (a completed job, {} bytes of JSON), \
         each server with {} HTTP workers, syncjobs at its default settings (log level \
         `info`: one line per request, to a file), then once more with `SYNCJOBS_LOG=warn` \
         (no request lines). \"CPU us/req\": the server process's own CPU time (user + \
         system, from /proc) over the requests it answered in that run: wrk shares the two \
         cores, so this tells the server's cost apart from the load tool's; \"CPU ratio\" is \
         the bare server's CPU per request over syncjobs' (higher is better, like the \
         throughput ratio). Ratio of the mean requests/s of the default rounds: \
         {default_ratio:.2}; with `SYNCJOBS_LOG=warn`: {quiet_ratio:.2}. Server RSS after its \
         rounds: {:.0} MB. The server ran {}.\n",
        table.render(),
        duration.as_secs(),
        body.len(),
        http_workers(),
        rss.rss_mb(),
        crate::history::History::describe(history),
    );
    Ok(Outcome {
        headline: format!(
            "{default_ratio:.2} x bare actix-web ({quiet_ratio:.2} x with SYNCJOBS_LOG=warn)"
        ),
        verdict: Verdict::of(default_ratio >= TARGET),
        body: text,
    })
}

/// wrk with the settings both servers get.
struct Wrk<'a> {
    wrk: &'a std::path::Path,
    headers: &'a [(&'a str, &'a str)],
    threads: usize,
    duration: Duration,
}

impl Wrk<'_> {
    async fn once(&self, url: &str, duration: Duration) -> Result<WrkRun> {
        let load = Load {
            url,
            headers: self.headers,
            threads: self.threads,
            connections: CONNECTIONS,
            duration,
        };
        checked(wrk::run(self.wrk, &load).await?)
    }

    async fn warm_up(&self, url: &str) -> Result<()> {
        self.once(url, Duration::from_secs(1)).await.map(drop)
    }

    /// One run against `server`, with the server's CPU time per answered request.
    async fn measured(&self, url: &str, server: &ServerProcess) -> Result<(WrkRun, Duration)> {
        let before = server.cpu_time()?;
        let run = self.once(url, self.duration).await?;
        let cpu = server.cpu_time()?.saturating_sub(before);
        let requests = (run.requests_per_sec * self.duration.as_secs_f64()).max(1.0);
        Ok((run, cpu.div_f64(requests)))
    }

    /// `rounds` alternating runs against the server and the baseline (A B, then B A, ...),
    /// one table row each; returns the ratio of the mean requests/s.
    async fn rounds(
        &self,
        (server, ours_process): (&str, &ServerProcess),
        (baseline, base_process): (&str, &ServerProcess),
        rounds: usize,
        label: &str,
        table: &mut Table,
    ) -> Result<f64> {
        let (mut ours_total, mut base_total) = (0.0, 0.0);
        for round in 0..rounds {
            let ((ours, ours_cpu), (base, base_cpu)) = if round % 2 == 0 {
                let base = self.measured(baseline, base_process).await?;
                (self.measured(server, ours_process).await?, base)
            } else {
                let ours = self.measured(server, ours_process).await?;
                (ours, self.measured(baseline, base_process).await?)
            };
            ours_total += ours.requests_per_sec;
            base_total += base.requests_per_sec;
            let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
            table.row(vec![
                format!("{}{label}", round + 1),
                thousands(ours.requests_per_sec),
                ms(ours.p50),
                ms(ours.p99),
                us(ours_cpu),
                thousands(base.requests_per_sec),
                ms(base.p50),
                ms(base.p99),
                us(base_cpu),
                format!("{:.2}", ratio(ours.requests_per_sec, base.requests_per_sec)),
                format!(
                    "{:.2}",
                    ratio(base_cpu.as_secs_f64(), ours_cpu.as_secs_f64())
                ),
            ]);
        }
        Ok(ratio(ours_total, base_total))
    }
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
