//! #11: the PostgreSQL store (issue #14): durable appends/s with 1, 16 and 256 concurrent
//! appenders against raw INSERTs over the same connection pool and durability, and a
//! follower's delay from commit to delivery in another process.
//!
//! Each run makes a fresh database `syncjobs_bench_<random>` on the server at `--postgres`
//! (default `SYNCJOBS_BENCH_POSTGRES_URL`, else the local server) and drops it afterwards.
//!
//! The raw baseline is what an application without the store's guarantees would do: every
//! appender INSERTs its one row in a transaction of its own (autocommit, `synchronous_commit`
//! on), on a pooled connection of a pool the size of the store's ([`POOL_SIZE`]), into a
//! table of the same columns and indexes whose position is a `bigserial`; PostgreSQL's own
//! group commit shares WAL flushes between the pool's connections. The store serialises
//! appends (one advisory lock, dense positions: no reader skips a late commit) and makes up
//! for it by group-committing a node's waiting appends in one transaction.

use crate::error::{BenchError, Result};
use crate::report::{Outcome, Table, Verdict};
use crate::stats::{median, ms, per_second, ratio, thousands, Latencies};
use crate::workload;
use crate::Config;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use syncjobs_domain::{EventStore, ExpectedVersion};
use syncjobs_store_postgres::{PgStore, POOL_SIZE};
use tokio::io::AsyncBufReadExt;
use tokio_postgres::NoTls;
use uuid::Uuid;

const APPENDERS: [usize; 3] = [1, 16, 256];
/// The target: at 256 appenders, at least this fraction of raw INSERTs.
const TARGET: f64 = 0.8;
/// The follower-delay run: appenders, and the appends each makes per second.
const DELAY_APPENDERS: usize = 8;
const DELAY_RATE_EACH: u64 = 50;

/// A database of the run's own, dropped at the end.
pub(crate) struct BenchDb {
    admin: String,
    name: String,
    pub(crate) url: String,
}

impl BenchDb {
    pub(crate) async fn create(admin: &str) -> Result<BenchDb> {
        let name = format!("syncjobs_bench_{}", Uuid::new_v4().simple());
        client(admin)
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| BenchError::failed(format!("CREATE DATABASE: {e}")))?;
        let url = syncjobs_store_postgres::testkit::with_database(admin, &name);
        Ok(BenchDb {
            admin: admin.to_owned(),
            name,
            url,
        })
    }

    pub(crate) async fn drop_it(self) {
        if let Ok(c) = client(&self.admin).await {
            let _ = c
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

pub(crate) async fn client(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| BenchError::failed(format!("PostgreSQL at {url}: {e}")))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The store's pool settings, for the raw baseline.
fn pool(url: &str) -> Result<Pool> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| BenchError::failed(format!("PostgreSQL URL: {e}")))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| BenchError::failed(format!("pool: {e}")))
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let (run_for, rounds, delay_for) = if cfg.quick {
        (Duration::from_secs(2), 1, Duration::from_secs(3))
    } else {
        (Duration::from_secs(5), 3, Duration::from_secs(10))
    };
    let db = BenchDb::create(&cfg.postgres).await?;
    let result = measure(cfg, &db, run_for, rounds, delay_for).await;
    db.drop_it().await;
    result
}

async fn measure(
    cfg: &Config,
    db: &BenchDb,
    run_for: Duration,
    rounds: usize,
    delay_for: Duration,
) -> Result<Outcome> {
    let store = PgStore::connect(&db.url)
        .await
        .map_err(|e| BenchError::failed(format!("the store: {e}")))?;
    let setup = client(&db.url).await?;
    setup
        .batch_execute(
            "CREATE TABLE raw_events (LIKE syncjobs_events INCLUDING ALL); \
             ALTER TABLE raw_events DROP COLUMN position; \
             ALTER TABLE raw_events ADD COLUMN position bigserial PRIMARY KEY",
        )
        .await
        .map_err(|e| BenchError::failed(format!("the raw table: {e}")))?;
    let raw_pool = pool(&db.url)?;
    let mut store_rates = vec![Vec::new(); APPENDERS.len()];
    let mut raw_rates = vec![Vec::new(); APPENDERS.len()];
    let mut ratios = vec![Vec::new(); APPENDERS.len()];
    let mut latencies: Vec<Option<Latencies>> = vec![None; APPENDERS.len()];
    for round in 0..rounds {
        for (i, appenders) in APPENDERS.into_iter().enumerate() {
            // Alternate which side goes first, against drift.
            let (s, r) = if round % 2 == 0 {
                let s = store_appends(&store, appenders, run_for).await?;
                (s, raw_inserts(&raw_pool, appenders, run_for).await?)
            } else {
                let r = raw_inserts(&raw_pool, appenders, run_for).await?;
                (store_appends(&store, appenders, run_for).await?, r)
            };
            let (store_rate, raw_rate) = (s.0, r);
            store_rates[i].push(store_rate);
            raw_rates[i].push(raw_rate);
            ratios[i].push(ratio(store_rate, raw_rate));
            if round == rounds / 2 {
                latencies[i] = Some(s.1);
            }
        }
    }
    let mut table = Table::new(&[
        "appenders",
        "store appends/s",
        "p50 ms",
        "p99 ms",
        "raw INSERTs/s",
        "store / raw",
    ]);
    for (i, appenders) in APPENDERS.into_iter().enumerate() {
        let l = latencies[i].clone().unwrap_or_default();
        table.row(vec![
            appenders.to_string(),
            thousands(median(&store_rates[i])),
            ms(l.p50()),
            ms(l.p99()),
            thousands(median(&raw_rates[i])),
            format!("{:.2}", median(&ratios[i])),
        ]);
    }
    let mut batched = Vec::new();
    for _ in 0..rounds {
        batched.push(raw_batched(&raw_pool, 256, run_for).await?);
    }
    let batched = median(&batched);
    let store_256 = median(&store_rates[APPENDERS.len() - 1]);
    let delay = follower_delay(cfg, db, &store, delay_for).await?;
    let at_256 = median(&ratios[APPENDERS.len() - 1]);
    let body = format!(
        "{}\nRates and ratios are medians of {rounds} round(s) of {:.0} s runs (store and raw \
         alternating which goes first), one database for all. Each appender appends one \
         `ProgressRecorded` event at a time to its own stream with an exact expected version; \
         raw INSERTs: one row per transaction, from as many tasks, on a pool of {POOL_SIZE} \
         connections (the store's size), into a table of the same columns and indexes with a \
         `bigserial` position. `synchronous_commit` on for both.\n\n\
         For scale, raw INSERTs batched as the store batches (256 rows per transaction, one \
         multi-row INSERT from one connection; no lock, no version check): {} rows/s; the \
         store at 256 appenders is {:.2} x that.\n\n\
         Follower delay, across processes: a second process (`syncjobs-bench pg-follow`) \
         follows the log with its own store instance (woken by LISTEN/NOTIFY) while \
         {DELAY_APPENDERS} appenders append {} events/s in all for {:.0} s. The commit itself \
         is not observable; it lies between the event's `recorded_at` (taken before the \
         append joins a commit) and the appender's acknowledgement (after it), so both are \
         given:\n\n{}",
        table.render(),
        run_for.as_secs_f64(),
        thousands(batched),
        ratio(store_256, batched),
        DELAY_APPENDERS as u64 * DELAY_RATE_EACH,
        delay_for.as_secs_f64(),
        delay,
    );
    Ok(Outcome {
        headline: format!("{at_256:.2} x raw INSERTs at 256 appenders"),
        verdict: Verdict::of(at_256 >= TARGET),
        body,
    })
}

/// Appends/s from `appenders` tasks for `run_for`, and their latencies.
async fn store_appends(
    store: &Arc<PgStore>,
    appenders: usize,
    run_for: Duration,
) -> Result<(f64, Latencies)> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = format!("job-{}", Uuid::new_v4());
                let mut lat = Vec::new();
                let mut v = 0;
                while started.elapsed() < run_for {
                    let t = Instant::now();
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Exact(v),
                            vec![workload::progress(v, Uuid::nil())],
                        )
                        .await
                        .map_err(|e| BenchError::failed(format!("append: {e}")))?;
                    lat.push(t.elapsed());
                    v += 1;
                }
                Ok::<_, BenchError>(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            t.await
                .map_err(|e| BenchError::failed(format!("appender: {e}")))??,
        );
    }
    let rate = per_second(all.len() as f64, started.elapsed());
    Ok((rate, Latencies::new(all)))
}

/// Raw single-row INSERTs/s from `appenders` tasks sharing the pool.
async fn raw_inserts(pool: &Pool, appenders: usize, run_for: Duration) -> Result<f64> {
    let data = workload::progress(0, Uuid::nil())
        .event
        .to_json()
        .map_err(|e| BenchError::failed(format!("json: {e}")))?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let pool = pool.clone();
            let data = data.clone();
            tokio::spawn(async move {
                let stream = format!("job-{}", Uuid::new_v4());
                let mut n = 0i64;
                while started.elapsed() < run_for {
                    let conn = pool
                        .get()
                        .await
                        .map_err(|e| BenchError::failed(format!("pool: {e}")))?;
                    let insert = conn
                        .prepare_cached(
                            "INSERT INTO raw_events (stream_id, version, event_id, event_type, \
                             schema_version, data, recorded_at_ns, causation_id, \
                             correlation_id, caused_by) \
                             VALUES ($1, $2, $3, 'ProgressRecorded', 2, $4::text::json, $5, \
                             NULL, $6, 'bench')",
                        )
                        .await
                        .map_err(|e| BenchError::failed(format!("prepare: {e}")))?;
                    n += 1;
                    conn.execute(
                        &insert,
                        &[
                            &stream,
                            &n,
                            &Uuid::now_v7(),
                            &data,
                            &unix_ns(),
                            &Uuid::nil(),
                        ],
                    )
                    .await
                    .map_err(|e| BenchError::failed(format!("insert: {e}")))?;
                }
                Ok::<_, BenchError>(n as u64)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t
            .await
            .map_err(|e| BenchError::failed(format!("inserter: {e}")))??;
    }
    Ok(per_second(total as f64, started.elapsed()))
}

/// The best batching open to 256 one-event appenders, without the store's lock and version
/// checks: 256 rows per transaction (one multi-row INSERT), from one connection.
async fn raw_batched(pool: &Pool, rows: usize, run_for: Duration) -> Result<f64> {
    let data = workload::progress(0, Uuid::nil())
        .event
        .to_json()
        .map_err(|e| BenchError::failed(format!("json: {e}")))?;
    let conn = pool
        .get()
        .await
        .map_err(|e| BenchError::failed(format!("pool: {e}")))?;
    let insert = conn
        .prepare_cached(
            "INSERT INTO raw_events (stream_id, version, event_id, event_type, schema_version, \
             data, recorded_at_ns, causation_id, correlation_id, caused_by) \
             SELECT s, v, e, 'ProgressRecorded', 2, d::json, r, NULL, $5, 'bench' \
             FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[]) AS u(s, v, e, d), \
             (SELECT $6::bigint AS r) AS t",
        )
        .await
        .map_err(|e| BenchError::failed(format!("prepare: {e}")))?;
    let streams: Vec<String> = (0..rows)
        .map(|_| format!("job-{}", Uuid::new_v4()))
        .collect();
    let bodies = vec![data; rows];
    let started = Instant::now();
    let mut total = 0u64;
    let mut version = 0i64;
    while started.elapsed() < run_for {
        version += 1;
        let versions = vec![version; rows];
        let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
        conn.execute(
            &insert,
            &[&streams, &versions, &ids, &bodies, &Uuid::nil(), &unix_ns()],
        )
        .await
        .map_err(|e| BenchError::failed(format!("insert: {e}")))?;
        total += rows as u64;
    }
    Ok(per_second(total as f64, started.elapsed()))
}

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Paced appends while another process follows; the delays as a markdown table.
async fn follower_delay(
    cfg: &Config,
    db: &BenchDb,
    store: &Arc<PgStore>,
    run_for: Duration,
) -> Result<String> {
    let head = *store.watch_head().borrow();
    let expected = DELAY_APPENDERS as u64 * DELAY_RATE_EACH * run_for.as_secs();
    let mut child = tokio::process::Command::new(&cfg.bench_bin)
        .arg("pg-follow")
        .arg("--after")
        .arg(head.to_string())
        .arg("--count")
        .arg(expected.to_string())
        .env("SYNCJOBS_BENCH_FOLLOW_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::failed("the follower has no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    // The follower says `ready` once it listens.
    match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        Ok(Ok(Some(l))) if l == "ready" => {}
        other => {
            return Err(BenchError::failed(format!(
                "the follower did not start: {other:?}"
            )))
        }
    }
    // Read as the lines come: a full pipe would stall the follower and show as delay.
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        let deadline = Instant::now() + run_for + Duration::from_secs(30);
        while (received.len() as u64) < expected && Instant::now() < deadline {
            let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
            else {
                break;
            };
            let mut parts = line.split(' ');
            if let (Some(Ok(p)), Some(Ok(at))) = (
                parts.next().map(str::parse::<u64>),
                parts.next().map(str::parse::<i64>),
            ) {
                received.push((p, at));
            }
        }
        received
    });
    let every = Duration::from_micros(1_000_000 / DELAY_RATE_EACH);
    let tasks: Vec<_> = (0..DELAY_APPENDERS)
        .map(|a| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = format!("job-{}", Uuid::new_v4());
                let mut acks = Vec::new();
                let mut tick = tokio::time::interval(every);
                // Spread the appenders over the period.
                tokio::time::sleep(every * a as u32 / DELAY_APPENDERS as u32).await;
                for v in 0..DELAY_RATE_EACH * run_for.as_secs() {
                    tick.tick().await;
                    let recorded = store
                        .append(
                            &stream,
                            ExpectedVersion::Exact(v),
                            vec![workload::progress(v, Uuid::nil())],
                        )
                        .await
                        .map_err(|e| BenchError::failed(format!("append: {e}")))?;
                    let ack = unix_ns();
                    for e in recorded {
                        let at = e.recorded_at.timestamp_nanos_opt().unwrap_or(0);
                        acks.push((e.global_position, at, ack));
                    }
                }
                Ok::<_, BenchError>(acks)
            })
        })
        .collect();
    let mut sent = std::collections::HashMap::new();
    for t in tasks {
        for (p, at, ack) in t
            .await
            .map_err(|e| BenchError::failed(format!("appender: {e}")))??
        {
            sent.insert(p, (at, ack));
        }
    }
    let received = reader
        .await
        .map_err(|e| BenchError::failed(format!("the follower's reader: {e}")))?;
    let mut from_recorded = Vec::new();
    let mut from_ack = Vec::new();
    for (p, at) in received {
        if let Some(&(recorded, ack)) = sent.get(&p) {
            let d = |from: i64| Duration::from_nanos((at - from).max(0) as u64);
            from_recorded.push(d(recorded));
            from_ack.push(d(ack));
        }
    }
    let _ = child.kill().await;
    if from_recorded.len() < sent.len() {
        return Err(BenchError::failed(format!(
            "the follower delivered {} of {} events",
            from_recorded.len(),
            sent.len()
        )));
    }
    let (r, a) = (Latencies::new(from_recorded), Latencies::new(from_ack));
    let mut table = Table::new(&["delay to the other process", "p50 ms", "p99 ms", "max ms"]);
    table.row(vec![
        "from `recorded_at` (upper bound)".into(),
        ms(r.p50()),
        ms(r.p99()),
        ms(r.max()),
    ]);
    table.row(vec![
        "from the appender's ack (lower bound)".into(),
        ms(a.p50()),
        ms(a.p99()),
        ms(a.max()),
    ]);
    Ok(format!(
        "{}\n{} events delivered, none missing.\n",
        table.render(),
        r.len()
    ))
}

/// `syncjobs-bench pg-follow`: the other process of the follower-delay run.
#[derive(clap::Args)]
pub struct FollowArgs {
    /// Follow from after this position.
    #[arg(long)]
    after: u64,
    /// Stop after this many events.
    #[arg(long)]
    count: u64,
}

/// Follows the store at `SYNCJOBS_BENCH_FOLLOW_URL` and prints `position received_unix_ns`
/// per event (stdout is the benchmark's pipe, not a log).
pub async fn follow_command(args: FollowArgs) -> Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let url = std::env::var("SYNCJOBS_BENCH_FOLLOW_URL")
        .map_err(|_| BenchError::failed("SYNCJOBS_BENCH_FOLLOW_URL is unset"))?;
    let store: Arc<dyn EventStore> = PgStore::connect(&url)
        .await
        .map_err(|e| BenchError::failed(format!("the store: {e}")))?;
    let mut events = syncjobs_domain::store::follow(store, args.after);
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut seen = 0;
    while seen < args.count {
        match events.next().await {
            Some(Ok(e)) => {
                writeln!(out, "{} {}", e.global_position, unix_ns())?;
                out.flush()?;
                seen += 1;
            }
            Some(Err(e)) => eprintln!("pg-follow: {e}"),
            None => break,
        }
    }
    Ok(())
}

/// #12: a first start on a PostgreSQL store holding #4's history (100k jobs, 1M events):
/// `syncjobs serve` folds the whole log into the read model's tables until `/health` is
/// ready, against a raw `COPY` of the events table in log order (every column, as text).
pub async fn recovery(cfg: &Config) -> Result<Outcome> {
    let jobs = if cfg.quick {
        crate::recovery::QUICK_JOBS
    } else {
        crate::recovery::JOBS
    };
    let db = BenchDb::create(&cfg.postgres).await?;
    let result = measure_recovery(cfg, &db, jobs).await;
    db.drop_it().await;
    result
}

async fn measure_recovery(cfg: &Config, db: &BenchDb, jobs: u64) -> Result<Outcome> {
    use crate::client::Api;
    use crate::server::{ServerProcess, SyncjobsServer};
    eprintln!("   generating {jobs} jobs into PostgreSQL");
    let generated = {
        let store: Arc<dyn EventStore> = PgStore::connect(&db.url)
            .await
            .map_err(|e| BenchError::failed(format!("the store: {e}")))?;
        crate::recovery::generate_into(&store, crate::recovery::Shape::jobs(jobs), Instant::now())
            .await?
    };
    // Settled before either side is measured: the autovacuum of a million fresh rows, the
    // hint bits their first reader sets and the checkpoint of their pages otherwise land
    // on whichever runs first (a long-lived log has had all three long ago).
    let c = client(&db.url).await?;
    for settle in ["VACUUM (ANALYZE) syncjobs_events", "CHECKPOINT"] {
        c.batch_execute(settle).await.map_err(|e| {
            BenchError::failed(format!(
                "{settle}: {}",
                syncjobs_store_postgres::describe(&e)
            ))
        })?;
    }
    drop(c);
    let pg_before = crate::machine::postgres_cpu_time();
    let first = copy_scan(&db.url).await?;
    let copy_pg_cpu = cpu_since(pg_before);
    if first.0 != generated.events {
        return Err(BenchError::failed(format!(
            "the COPY read {} rows, {} events were generated",
            first.0, generated.events
        )));
    }
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    let data_dir = dir.path().join("data");
    let key = format!("bench-{}", Uuid::new_v4().simple());
    // Started twice: on empty read-model tables, then again on the same database, where the
    // read model resumes from its stored position.
    let start = || {
        ServerProcess::syncjobs(SyncjobsServer {
            bin: &cfg.server_bin,
            data_dir: &data_dir,
            api_key: &key,
            env: vec![("SYNCJOBS_STORE", db.url.clone())],
        })
    };
    let pg_before = crate::machine::postgres_cpu_time();
    let mut server = start()?;
    let api = Api::new(&server.base_url, &key)?;
    let cold = server
        .wait_ready(&api, generated.head, crate::recovery::READY_TIMEOUT)
        .await?;
    let cold_cpu = (Some(server.cpu_time()?), cpu_since(pg_before));
    let memory = server.memory()?;
    let health = api.health().await?;
    crate::recovery::check_projected(&health, &generated)?;
    server.stop().await?;
    let second = copy_scan(&db.url).await?;
    let pg_before = crate::machine::postgres_cpu_time();
    let mut server = start()?;
    let api = Api::new(&server.base_url, &key)?;
    let warm = server
        .wait_ready(&api, generated.head, crate::recovery::READY_TIMEOUT)
        .await?;
    let warm_cpu = (Some(server.cpu_time()?), cpu_since(pg_before));
    server.stop().await?;
    let baseline = first.1.min(second.1);
    let r = ratio(cold.as_secs_f64(), baseline.as_secs_f64());
    let mut table = Table::new(&[
        "what",
        "seconds",
        "events/s",
        "x COPY",
        "syncjobs CPU s",
        "PostgreSQL CPU s",
    ]);
    let seconds =
        |cpu: Option<Duration>| cpu.map_or("-".into(), |c| format!("{:.2}", c.as_secs_f64()));
    for (what, took, (own, pg)) in [
        (
            "raw COPY of the events table (best of 2)",
            baseline,
            (None, copy_pg_cpu),
        ),
        (
            "first start until ready (folds into PostgreSQL)",
            cold,
            cold_cpu,
        ),
        (
            "restart until ready (the read model in place)",
            warm,
            warm_cpu,
        ),
    ] {
        table.row(vec![
            what.to_string(),
            format!("{:.2}", took.as_secs_f64()),
            thousands(per_second(generated.events as f64, took)),
            format!("{:.2}", ratio(took.as_secs_f64(), baseline.as_secs_f64())),
            seconds(own),
            seconds(pg),
        ]);
    }
    let body = format!(
        "{}\nThe store: #4's history ({jobs} jobs on {} source connections, {} events), appended \
         through `PgStore` in {:.1} s into a fresh database. \"Ready\": `syncjobs serve` with \
         `SYNCJOBS_STORE` on that database (vacuumed and checkpointed first, as a \
         long-lived log is) was spawned until `GET /health` answered 200 with \
         `projection.lag` 0 at the log's head; its read model's tables were empty, so it \
         folded the whole log (server RSS peak {:.0} MB); then it was stopped and started again \
         on the same database, where the read model resumes from its stored position (the \
         events/s of that row are the log's events over the restart's time, for scale). The \
         verdict is the first start's. The COPY reads every column of \
         every row in log order as text (`COPY (SELECT * FROM syncjobs_events ORDER BY \
         position) TO STDOUT`), {} MB, decoding nothing (its PostgreSQL CPU is the first \
         COPY's). The CPU columns: what the syncjobs process and every `postgres` process on \
         this machine used meanwhile (\"-\": not measured, or a remote server); the two \
         share the machine's cores.\n",
        table.render(),
        generated.connections,
        generated.events,
        generated.took.as_secs_f64(),
        memory.hwm_mb(),
        first.2 / 1_000_000,
    );
    Ok(Outcome {
        headline: format!(
            "{r:.2} x COPY ({:.2} s vs {:.2} s for {} events)",
            cold.as_secs_f64(),
            baseline.as_secs_f64(),
            generated.events
        ),
        verdict: Verdict::of(r <= 2.0),
        body,
    })
}

/// The CPU time PostgreSQL's local processes used since `before` (None: not visible).
fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    Some(crate::machine::postgres_cpu_time()?.saturating_sub(before?))
}

/// Rows, time and bytes of a `COPY` of the events table in log order.
async fn copy_scan(url: &str) -> Result<(u64, Duration, u64)> {
    use futures::StreamExt;
    let c = client(url).await?;
    let started = Instant::now();
    let stream = c
        .copy_out("COPY (SELECT * FROM syncjobs_events ORDER BY position) TO STDOUT")
        .await
        .map_err(|e| BenchError::failed(format!("COPY: {e}")))?;
    futures::pin_mut!(stream);
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BenchError::failed(format!("COPY: {e}")))?;
        bytes += chunk.len() as u64;
        rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok((rows, started.elapsed(), bytes))
}
