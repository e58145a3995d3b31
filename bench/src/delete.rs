//! #9: deleting a source connection that holds 100,000 completed jobs, while other requests
//! keep coming (issue #13: the delete finishes within 1 s and never stalls other requests
//! past 10 ms).
//!
//! The store: one connection with [`HEAVY_JOBS`] completed jobs, interleaved in the log with
//! [`OTHER_JOBS`] jobs of 100 others (100 each), generated once and kept under the work
//! directory (`history-<others>-heavy-<heavy>`). Probes run at a steady rate (open loop: one
//! is sent every [`PROBE_EVERY`] whether or not the earlier ones were answered, so a stall
//! delays every probe sent during it, not only one) from before the delete until well after
//! it, three kinds in turn, all on another connection: `GET` one of its jobs, `GET` its list
//! of jobs (100 rows), and a command, `POST /collections` (an append the API answers only
//! once the read model shows it, so it waits for the same writer the purge uses).
//!
//! The delete's end: `DELETE` answers once the deletion is recorded and folded (the jobs
//! vanish from reads then); the jobs' rows go afterwards, in transactions of 1,000. The end
//! observed here is the first moment a reader of `read_model.db` (a read-only connection of
//! this process, polled every [`POLL_EVERY`]) finds no row of the connection any more: what
//! the server itself would see, at most one poll late.

use crate::client::Api;
use crate::error::{BenchError, Result};
use crate::recovery::Shape;
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::{ms, Latencies};
use crate::Config;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs::config::READ_MODEL_FILE;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const HEAVY_JOBS: u64 = 100_000;
const QUICK_HEAVY_JOBS: u64 = 10_000;
const OTHER_JOBS: u64 = 10_000;
const QUICK_OTHER_JOBS: u64 = 1_000;
/// One probe every 5 ms, the three kinds in turn: each kind every 15 ms.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Probes before this are the warm-up (connections opened, caches filled): not counted.
const WARM_UP: Duration = Duration::from_secs(1);
/// Probing before the delete, after the warm-up, and after the delete's end.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(3);
const POLL_EVERY: Duration = Duration::from_millis(5);
/// The report's timeline of the probes' maxima, in steps of this.
const TIMELINE_STEP: Duration = Duration::from_millis(500);
/// Bounds the wait for the rows to go (the benchmark fails beyond it).
const PURGE_TIMEOUT: Duration = Duration::from_secs(300);
const FINISH_TARGET: Duration = Duration::from_secs(1);
const PROBE_TARGET: Duration = Duration::from_millis(10);
/// The purge step's debug line (`projections/src/db/fold.rs`), counted in the server's log.
const PURGE_LINE: &str = "purged jobs of a deleted source connection";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GetJob,
    ListJobs,
    Command,
}

const KINDS: [Kind; 3] = [Kind::GetJob, Kind::ListJobs, Kind::Command];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::GetJob => "`GET` one job",
            Kind::ListJobs => "`GET` list of 100 jobs",
            Kind::Command => "`POST /collections`",
        }
    }
}

/// One probe: when it was sent (since the start of probing) and how long it took.
#[derive(Debug, Clone)]
struct Sample {
    kind: Kind,
    sent: Duration,
    took: Duration,
    /// Why it failed, if it did.
    error: Option<String>,
}

/// What the poller of `read_model.db` saw.
#[derive(Debug, Clone, Copy)]
struct Purge {
    /// When the connection's rows were first found gone (since the start of probing).
    gone_at: Duration,
    /// Rows left at the first poll after `DELETE` answered (none if they were gone already).
    left_when_answered: Option<u64>,
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let shape = if cfg.quick {
        Shape {
            jobs: QUICK_OTHER_JOBS,
            heavy_jobs: QUICK_HEAVY_JOBS,
        }
    } else {
        Shape {
            jobs: OTHER_JOBS,
            heavy_jobs: HEAVY_JOBS,
        }
    };
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    let data_dir = dir.path().join("data");
    let history = crate::history::prepare_shape(cfg, shape, &data_dir).await?;
    let heavy = history
        .heavy_connection
        .ok_or_else(|| BenchError::failed("the generated store has no heavy connection"))?;
    let key = format!("bench-{}", Uuid::new_v4().simple());
    let mut server = ServerProcess::syncjobs(SyncjobsServer {
        bin: &cfg.server_bin,
        data_dir: &data_dir,
        api_key: &key,
        // The purge's steps are logged at debug; nothing else of the fold is turned up.
        env: vec![(
            "SYNCJOBS_LOG",
            "info,syncjobs_projections::db::fold=debug".into(),
        )],
    })?;
    let api = Api::new(&server.base_url, &key)?;
    eprintln!("   starting the server on {} jobs", history.jobs);
    server
        .wait_ready(&api, history.head, crate::history::READY_TIMEOUT)
        .await?;

    let other = api
        .source_connection_ids(0, 10)
        .await?
        .into_iter()
        .find(|id| *id != heavy)
        .ok_or_else(|| BenchError::failed("no other source connection to probe"))?;
    let other_jobs: Vec<Uuid> = api
        .jobs_of(other, 100)
        .await?
        .iter()
        .map(|j| j.id)
        .collect();
    if other_jobs.is_empty() {
        return Err(BenchError::failed("the probed connection has no jobs"));
    }
    let read_model = data_dir.join(READ_MODEL_FILE);
    let rows_before = {
        let path = read_model.clone();
        tokio::task::spawn_blocking(move || count_rows(&open_read_only(&path)?, heavy)).await??
    };
    if rows_before != shape.heavy_jobs {
        return Err(BenchError::failed(format!(
            "the read model holds {rows_before} rows of the connection to delete, {} were generated",
            shape.heavy_jobs
        )));
    }

    eprintln!(
        "   probing; deleting the connection of {rows_before} jobs after {:?}",
        WARM_UP + BEFORE
    );
    let t0 = Instant::now();
    let stop = CancellationToken::new();
    let prober = tokio::spawn(probe(
        api.clone(),
        other,
        Arc::new(other_jobs),
        t0,
        stop.clone(),
    ));
    tokio::time::sleep(WARM_UP + BEFORE).await;

    let answered = Arc::new(AtomicBool::new(false));
    let abandon = Arc::new(AtomicBool::new(false));
    let poller = {
        let (path, answered, abandon) = (read_model.clone(), answered.clone(), abandon.clone());
        tokio::task::spawn_blocking(move || poll_until_gone(&path, heavy, t0, &answered, &abandon))
    };
    let delete_sent = t0.elapsed();
    let delete_wall = chrono::Utc::now();
    let deleted = api.delete_source_connection(heavy).await;
    let delete_answered = t0.elapsed();
    answered.store(true, Ordering::Release);
    if deleted.is_err() {
        abandon.store(true, Ordering::Release);
    }
    let purge = poller.await?;
    let (deleted, purge) = match (deleted, purge) {
        (Ok(d), Ok(p)) => (d, p),
        (Err(e), _) | (_, Err(e)) => {
            stop.cancel();
            return Err(e);
        }
    };
    let end = delete_answered.max(purge.gone_at);
    tokio::time::sleep(AFTER).await;
    stop.cancel();
    let samples = prober.await??;
    let rss = server.memory()?;
    server.stop().await?;
    let log = tokio::fs::read_to_string(dir.path().join("server.log")).await?;
    let steps = purge_steps(&log);
    let total_runs = deleted["sync"]["total_runs"].as_u64();

    let before = |s: &Sample| s.sent >= WARM_UP && s.sent + s.took <= delete_sent;
    let during = |s: &Sample| s.sent < end && s.sent + s.took > delete_sent;
    let after = |s: &Sample| s.sent >= end;
    let failures: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            let error = s.error.as_ref()?;
            let at = s.sent.as_secs_f64() - delete_sent.as_secs_f64();
            Some(format!("{} sent at {at:+.3} s: {error}", s.kind.label()))
        })
        .collect();
    let failed = failures.len();
    let mut table = Table::new(&[
        "probe",
        "before: n, p50 / p99 / max ms",
        "during the delete: n, p50 / p99 / max ms",
        "after: n, p50 / p99 / max ms",
    ]);
    let mut worst_during = Duration::ZERO;
    for kind in KINDS {
        let window = |keep: &dyn Fn(&Sample) -> bool| {
            Latencies::new(
                samples
                    .iter()
                    .filter(|s| s.kind == kind && keep(s))
                    .map(|s| s.took)
                    .collect(),
            )
        };
        let (b, d, a) = (window(&before), window(&during), window(&after));
        worst_during = worst_during.max(d.max());
        table.row(vec![
            kind.label().to_string(),
            summary(&b),
            summary(&d),
            summary(&a),
        ]);
    }
    let mut over_time = Table::new(&[
        "probes sent, s from the DELETE",
        "`GET` one job max ms",
        "list max ms",
        "`POST /collections` max ms",
    ]);
    let last = samples.iter().map(|s| s.sent).max().unwrap_or_default();
    let mut from = WARM_UP;
    while from <= last {
        let to = from + TIMELINE_STEP;
        let mut row = vec![format!(
            "{:+.1} .. {:+.1}",
            from.as_secs_f64() - delete_sent.as_secs_f64(),
            to.as_secs_f64() - delete_sent.as_secs_f64()
        )];
        for kind in KINDS {
            let max = samples
                .iter()
                .filter(|s| s.kind == kind && s.sent >= from && s.sent < to)
                .map(|s| s.took)
                .max()
                .unwrap_or_default();
            row.push(ms(max));
        }
        over_time.row(row);
        from = to;
    }
    let answer = delete_answered - delete_sent;
    let finished = end - delete_sent;
    let rows_gone = purge.gone_at.saturating_sub(delete_sent);
    let mut timeline = Table::new(&["what", "value"]);
    timeline.row(vec![
        "`DELETE /source-connections/{id}` answered after".into(),
        format!("{} ms", ms(answer)),
    ]);
    timeline.row(vec![
        "its job rows gone from `read_model.db` after".into(),
        format!("{} ms", ms(rows_gone)),
    ]);
    timeline.row(vec![
        "rows left when the DELETE answered".into(),
        purge
            .left_when_answered
            .map_or("none".into(), |n| format!("{n} of {rows_before}")),
    ]);
    timeline.row(vec![
        "purge transactions (the fold's debug lines)".into(),
        describe_steps(&steps, delete_wall),
    ]);
    timeline.row(vec![
        "`sync.total_runs` in the DELETE's answer".into(),
        total_runs.map_or("-".into(), |n| n.to_string()),
    ]);
    timeline.row(vec!["probes failed (not 200)".into(), failed.to_string()]);
    timeline.row(vec![
        "server RSS at the end".into(),
        format!("{:.0} MB", rss.rss_mb()),
    ]);
    let failures = if failures.is_empty() {
        String::new()
    } else {
        format!("Probes that failed:\n\n- {}\n\n", failures.join("\n- "))
    };
    let body = format!(
        "{}\n{}\n{failures}The probes' max over time (the `DELETE` was sent at 0, answered at \
         {:+.3} s; the rows were gone at {:+.3} s):\n\n{}\nThe store: one source connection with {} completed jobs, interleaved in the \
         log with {} jobs of {} other connections ({} events; the server folded them at its \
         start). Probes: one every {} ms (open loop), the three kinds in turn, on another \
         connection; {} s of warm-up are not counted. \"before\": probes answered before the \
         `DELETE` was sent ({} s of them); \"during\": probes in flight at any moment between \
         the `DELETE` being sent and the later of its answer and the rows' end; \"after\": \
         probes sent after that, for {} s. The rows' end: the first poll (every {} ms, a \
         read-only connection to `read_model.db`) that finds no row of the connection. The \
         generated jobs wrote nothing to the destination, so the delete's purge of entities \
         (`entities.db`) has nothing to remove here. The verdict: the later of the answer \
         and the rows' end within {} s of sending the `DELETE`, the max of every probe in \
         flight meanwhile within {} ms, no probe failed.\n",
        timeline.render(),
        table.render(),
        answer.as_secs_f64(),
        rows_gone.as_secs_f64(),
        over_time.render(),
        shape.heavy_jobs,
        shape.jobs,
        shape.jobs.div_ceil(100),
        history.events,
        PROBE_EVERY.as_millis(),
        WARM_UP.as_secs(),
        BEFORE.as_secs(),
        AFTER.as_secs(),
        POLL_EVERY.as_millis(),
        FINISH_TARGET.as_secs(),
        PROBE_TARGET.as_millis(),
    );
    Ok(Outcome {
        headline: format!(
            "{} jobs: answered in {} ms, rows gone after {} ms; probes' max during it {} ms",
            shape.heavy_jobs,
            ms(answer),
            ms(rows_gone),
            ms(worst_during)
        ),
        verdict: Verdict::of(
            finished <= FINISH_TARGET && worst_during <= PROBE_TARGET && failed == 0,
        ),
        body,
    })
}

/// When the purge's steps ended, from the server's log: each line starts with its UTC time.
fn purge_steps(log: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    log.lines()
        .filter(|l| l.contains(PURGE_LINE))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `101, ended +12 .. +1090 ms after the DELETE was sent, 10.8 ms apart (longest gap 31.0)`.
fn describe_steps(
    steps: &[chrono::DateTime<chrono::Utc>],
    delete_sent: chrono::DateTime<chrono::Utc>,
) -> String {
    let since = |t: &chrono::DateTime<chrono::Utc>| {
        (*t - delete_sent).num_microseconds().unwrap_or(0) as f64 / 1000.0
    };
    let (Some(first), Some(last)) = (steps.first(), steps.last()) else {
        return "0".into();
    };
    let gaps: Vec<f64> = steps
        .windows(2)
        .map(|w| since(&w[1]) - since(&w[0]))
        .collect();
    let longest = gaps.iter().copied().fold(0.0, f64::max);
    let mean = if gaps.is_empty() {
        0.0
    } else {
        gaps.iter().sum::<f64>() / gaps.len() as f64
    };
    format!(
        "{}, ended {:+.0} .. {:+.0} ms after the DELETE was sent, {mean:.1} ms apart \
         (longest gap {longest:.1} ms)",
        steps.len(),
        since(first),
        since(last)
    )
}

fn summary(l: &Latencies) -> String {
    format!(
        "{}, {} / {} / {}",
        l.len(),
        ms(l.p50()),
        ms(l.p99()),
        ms(l.max())
    )
}

/// Sends a probe every [`PROBE_EVERY`] until `stop`, each in its own task; returns them all.
async fn probe(
    api: Api,
    connection: Uuid,
    jobs: Arc<Vec<Uuid>>,
    t0: Instant,
    stop: CancellationToken,
) -> Result<Vec<Sample>> {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let list = format!("/source-connections/{connection}/jobs");
    let sent_count = Arc::new(AtomicU64::new(0));
    let mut in_flight = Vec::new();
    for n in 0usize.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let kind = KINDS[n % KINDS.len()];
        let (api, jobs, list, sent_count) =
            (api.clone(), jobs.clone(), list.clone(), sent_count.clone());
        in_flight.push(tokio::spawn(async move {
            let sent = t0.elapsed();
            let i = sent_count.fetch_add(1, Ordering::Relaxed) as usize;
            let result = match kind {
                Kind::GetJob => api
                    .get_bytes(&Api::job_path(connection, jobs[i % jobs.len()]))
                    .await
                    .map(drop),
                Kind::ListJobs => api.get_bytes(&list).await.map(drop),
                Kind::Command => api
                    .create_collection(&format!("probe {i:07}"))
                    .await
                    .map(drop),
            };
            Sample {
                kind,
                sent,
                took: t0.elapsed() - sent,
                error: result.err().map(|e| e.to_string()),
            }
        }));
    }
    let mut samples = Vec::with_capacity(in_flight.len());
    for task in in_flight {
        samples.push(task.await?);
    }
    Ok(samples)
}

fn open_read_only(path: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Rows of the connection's jobs (ids are 16-byte blobs, as the read model stores them).
fn count_rows(conn: &rusqlite::Connection, connection: Uuid) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT count(*) FROM jobs WHERE source_connection_id = ?1",
        [&connection.as_bytes()[..]],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Polls `read_model.db` until no row of the connection is left (an index probe each time,
/// so the poll costs the server nothing but a shared read of the WAL index).
fn poll_until_gone(
    path: &Path,
    connection: Uuid,
    t0: Instant,
    answered: &AtomicBool,
    abandon: &AtomicBool,
) -> Result<Purge> {
    let conn = open_read_only(path)?;
    let mut exists =
        conn.prepare("SELECT EXISTS (SELECT 1 FROM jobs WHERE source_connection_id = ?1)")?;
    let deadline = Instant::now() + PURGE_TIMEOUT;
    let mut left_when_answered = None;
    let mut counted = false;
    loop {
        let any: bool = exists.query_row([&connection.as_bytes()[..]], |r| r.get(0))?;
        if !any {
            return Ok(Purge {
                gone_at: t0.elapsed(),
                left_when_answered,
            });
        }
        if !counted && answered.load(Ordering::Acquire) {
            counted = true;
            left_when_answered = Some(count_rows(&conn, connection)?);
        }
        if abandon.load(Ordering::Acquire) {
            return Err(BenchError::failed(
                "the delete failed; rows no longer awaited",
            ));
        }
        if Instant::now() >= deadline {
            return Err(BenchError::failed(format!(
                "rows of the deleted connection still in the read model after {PURGE_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(POLL_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_steps_are_read_from_the_log() {
        let log = "2026-12-02T12:00:00.000000Z  INFO syncjobs::access: GET /health 200 12\n\
                   2026-12-02T12:00:00.010000Z DEBUG syncjobs_projections::db::fold: purged jobs \
                   of a deleted source connection source_connection_id=x removed=1000\n\
                   2026-12-02T12:00:00.030000Z DEBUG syncjobs_projections::db::fold: purged jobs \
                   of a deleted source connection source_connection_id=x removed=0\n";
        let steps = purge_steps(log);
        assert_eq!(steps.len(), 2);
        let sent = "2026-12-02T12:00:00.000000Z".parse().unwrap();
        assert_eq!(
            describe_steps(&steps, sent),
            "2, ended +10 .. +30 ms after the DELETE was sent, 20.0 ms apart (longest gap 20.0 ms)"
        );
        assert_eq!(describe_steps(&[], sent), "0");
    }
}
