//! #10: no periodic stall over two minutes (issue #13: "p99 of a command within 2x of the
//! same command on a fresh store, over a 2-minute run"). Two servers run side by side, one
//! on a fresh store and one on the store of `--history N` (it needs one: without history
//! there is nothing to compare), each with [`RUNNING`] slow jobs running. For [`DURATION`]
//! a cycle starts every [`PACE`], on the two servers in turn, so a change in the machine's
//! load reaches both: cancel a running job (`POST .../cancel`, timed until answered), wait
//! until it shows `cancelled`, start the next job of its connection (`POST .../run`, timed
//! until answered) and wait until it runs. Both commands answer only once the read model
//! shows their append (read-your-writes), so a stall of the projection delays them.
//!
//! Besides each command's p50 / p99 / max over the whole run, the run is cut into windows of
//! [`WINDOW`] and each window's p99 is given: a periodic stall (the old read model's
//! checkpoint every 10 s) would show as windows far above the others, on one side only.

use crate::client::{start_slow_jobs, Api, Job, SLOW_COUNT, SLOW_SECONDS};
use crate::error::{BenchError, Result};
use crate::history::History;
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::{ms, ratio, Latencies};
use crate::Config;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

const DURATION: Duration = Duration::from_secs(120);
const QUICK_DURATION: Duration = Duration::from_secs(20);
const WINDOW: Duration = Duration::from_secs(10);
const QUICK_WINDOW: Duration = Duration::from_secs(5);
/// Jobs running on each server during the run (#3's middle level).
const RUNNING: usize = 100;
const QUICK_RUNNING: usize = 10;
/// A cycle starts every 25 ms (or as soon as the one before ends, if it took longer): about
/// 20 cycles a second on each server, 40 commands.
const PACE: Duration = Duration::from_millis(25);
const SETUP_CONCURRENCY: usize = 16;
const TARGET: f64 = 2.0;

/// One server of the comparison and what was measured on it.
struct Side {
    label: &'static str,
    server: ServerProcess,
    api: Api,
    running: Vec<Job>,
    next: usize,
    /// (sent since the start of the run, took)
    cancel: Vec<(Duration, Duration)>,
    /// From the cancel's request until a `GET` showed `cancelled` (reported, not judged).
    cancelled: Vec<(Duration, Duration)>,
    run: Vec<(Duration, Duration)>,
}

impl Side {
    async fn start(
        cfg: &Config,
        label: &'static str,
        data_dir: &Path,
        history: Option<History>,
    ) -> Result<Side> {
        let key = format!("bench-{}", Uuid::new_v4().simple());
        eprintln!("   starting the server {label}");
        let mut server = ServerProcess::syncjobs(SyncjobsServer {
            bin: &cfg.server_bin,
            data_dir,
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
        Ok(Side {
            label,
            server,
            api,
            running: Vec::new(),
            next: 0,
            cancel: Vec::new(),
            cancelled: Vec::new(),
            run: Vec::new(),
        })
    }

    async fn start_jobs(&mut self, count: usize) -> Result<()> {
        let collection = self.api.create_collection("bench stall").await?;
        self.running = start_slow_jobs(&self.api, &collection, 0, count, SETUP_CONCURRENCY).await?;
        Ok(())
    }

    /// One cycle: cancel a running job, wait for `cancelled`, start the next, wait for it to run.
    async fn cycle(&mut self, t0: Instant) -> Result<()> {
        let slot = self.next % self.running.len();
        self.next += 1;
        let job = &self.running[slot];
        let scid = job.source_connection_id;
        let cancel_sent = t0.elapsed();
        let answer = self.api.cancel(scid, job.id).await?;
        self.cancel.push((cancel_sent, t0.elapsed() - cancel_sent));
        if answer.status != "cancelling" && answer.status != "cancelled" {
            return Err(BenchError::failed(format!(
                "{}: cancel answered {} for job {}",
                self.label, answer.status, job.id
            )));
        }
        self.api
            .wait_for_status(
                scid,
                job.id,
                "cancelled",
                Duration::from_millis(1),
                Duration::from_secs(60),
            )
            .await?;
        self.cancelled
            .push((cancel_sent, t0.elapsed() - cancel_sent));
        let sent = t0.elapsed();
        let next = self.api.run(scid).await?;
        self.run.push((sent, t0.elapsed() - sent));
        self.running[slot] = self
            .api
            .wait_for_status(
                scid,
                next.id,
                "running",
                Duration::from_millis(2),
                Duration::from_secs(60),
            )
            .await?;
        Ok(())
    }
}

fn latencies(samples: &[(Duration, Duration)]) -> Latencies {
    Latencies::new(samples.iter().map(|(_, took)| *took).collect())
}

/// The samples sent in window `w` (of length `window`).
fn in_window(samples: &[(Duration, Duration)], w: u32, window: Duration) -> Latencies {
    let (from, to) = (window * w, window * (w + 1));
    Latencies::new(
        samples
            .iter()
            .filter(|(sent, _)| *sent >= from && *sent < to)
            .map(|(_, took)| *took)
            .collect(),
    )
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    if cfg.history == 0 {
        return Err(BenchError::failed(
            "#10 compares a fresh store with one with history: give --history N",
        ));
    }
    let (duration, window, running) = if cfg.quick {
        (QUICK_DURATION, QUICK_WINDOW, QUICK_RUNNING)
    } else {
        (DURATION, WINDOW, RUNNING)
    };
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    let history_dir = dir.path().join("history");
    let fresh_dir = dir.path().join("fresh");
    // Each server logs beside its data directory.
    let history_data = history_dir.join("data");
    let fresh_data = fresh_dir.join("data");
    tokio::fs::create_dir_all(&fresh_data).await?;
    let history = crate::history::prepare(cfg, &history_data).await?;
    // The history server first: its first start folds the whole log, alone on the machine.
    let mut old = Side::start(cfg, "with history", &history_data, history).await?;
    let mut fresh = Side::start(cfg, "on a fresh store", &fresh_data, None).await?;
    for side in [&mut fresh, &mut old] {
        eprintln!("   {}: starting {running} jobs", side.label);
        side.start_jobs(running).await?;
    }

    eprintln!(
        "   commands on both servers in turn for {} s",
        duration.as_secs()
    );
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let t0 = Instant::now();
    'run: loop {
        for side in [&mut fresh, &mut old] {
            if t0.elapsed() >= duration {
                break 'run;
            }
            tick.tick().await;
            if let Err(e) = side.cycle(t0).await {
                return Err(side.server.explain(e));
            }
        }
    }
    let rss = (fresh.server.memory()?, old.server.memory()?);

    let mut overall = Table::new(&[
        "server",
        "cycles",
        "cancel answered p50 / p99 / max ms",
        "run answered p50 / p99 / max ms",
        "`cancelled` seen p50 / p99 / max ms",
        "RSS MB",
    ]);
    let mut p99s = Vec::new();
    for (side, memory) in [(&fresh, rss.0), (&old, rss.1)] {
        let (c, r, seen) = (
            latencies(&side.cancel),
            latencies(&side.run),
            latencies(&side.cancelled),
        );
        overall.row(vec![
            side.label.to_string(),
            side.cancel.len().to_string(),
            format!("{} / {} / {}", ms(c.p50()), ms(c.p99()), ms(c.max())),
            format!("{} / {} / {}", ms(r.p50()), ms(r.p99()), ms(r.max())),
            format!(
                "{} / {} / {}",
                ms(seen.p50()),
                ms(seen.p99()),
                ms(seen.max())
            ),
            format!("{:.0}", memory.rss_mb()),
        ]);
        p99s.push((c.p99(), r.p99()));
    }
    let windows = duration.as_secs().div_ceil(window.as_secs()) as u32;
    let mut per_window = Table::new(&[
        "window s",
        "cancel p99 / max ms, fresh",
        "with history",
        "run p99 / max ms, fresh",
        "with history",
    ]);
    let mut worst_window = 0.0f64;
    for w in 0..windows {
        let cells = |samples: &[(Duration, Duration)]| {
            let l = in_window(samples, w, window);
            (l.p99(), format!("{} / {}", ms(l.p99()), ms(l.max())))
        };
        let (fc, fresh_cancel) = cells(&fresh.cancel);
        let (hc, old_cancel) = cells(&old.cancel);
        let (fr, fresh_run) = cells(&fresh.run);
        let (hr, old_run) = cells(&old.run);
        worst_window = worst_window
            .max(ratio(hc.as_secs_f64(), fc.as_secs_f64()))
            .max(ratio(hr.as_secs_f64(), fr.as_secs_f64()));
        per_window.row(vec![
            format!(
                "{}-{}",
                (window * w).as_secs(),
                (window * (w + 1)).min(duration).as_secs()
            ),
            fresh_cancel,
            old_cancel,
            fresh_run,
            old_run,
        ]);
    }
    fresh.server.stop().await?;
    old.server.stop().await?;

    let ((fresh_cancel, fresh_run), (old_cancel, old_run)) = (p99s[0], p99s[1]);
    let cancel_ratio = ratio(old_cancel.as_secs_f64(), fresh_cancel.as_secs_f64());
    let run_ratio = ratio(old_run.as_secs_f64(), fresh_run.as_secs_f64());
    let body = format!(
        "{}\nPer window of {} s (by when the command was sent):\n\n{}\nA cycle starts every \
         {} ms on the two servers in turn (or when the one before ends, if later), for {} s: \
         `POST .../cancel` of a running job (timed until answered), `GET` every ms until it \
         shows `cancelled`, `POST /source-connections/{{id}}/run` (timed until answered), \
         `GET` until the new job runs. Each server had {running} jobs running (timed sources \
         of {SLOW_COUNT} entities over {SLOW_SECONDS:.0} s, one per connection). The server \
         with history ran {}. The verdict: the p99 of each command with history within \
         {TARGET} x its p99 on the fresh store, over the whole run; the worst window's ratio \
         of p99s was {worst_window:.2} x. \"`cancelled` seen\" (from the cancel's request until \
         a `GET` shows `cancelled`, as #3 measures it but polled every ms) is reported, not \
         judged.\n",
        overall.render(),
        window.as_secs(),
        per_window.render(),
        PACE.as_millis(),
        duration.as_secs(),
        History::describe(history),
    );
    Ok(Outcome {
        headline: format!(
            "p99 with history / fresh over {} s: cancel {cancel_ratio:.2} x ({} vs {} ms), \
             run {run_ratio:.2} x ({} vs {} ms); worst {} s window {worst_window:.2} x",
            duration.as_secs(),
            ms(old_cancel),
            ms(fresh_cancel),
            ms(old_run),
            ms(fresh_run),
            window.as_secs()
        ),
        verdict: Verdict::of(cancel_ratio <= TARGET && run_ratio <= TARGET),
        body,
    })
}
