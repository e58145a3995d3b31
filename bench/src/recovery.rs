//! #4: recovery. A store of 100k completed jobs (1M events: JobCreated, JobStarted, seven
//! ProgressRecorded, JobCompleted each) plus their organization, collections and source
//! connections is written straight through `EmbeddedStore` appends; then `syncjobs serve`
//! starts on it, and the time from spawning the process to `/health` answering with the read
//! model caught up is measured; against a raw sequential scan of the same events table.
//!
//! The first start has no read-model checkpoint (the projection folds the whole log); the
//! server is then stopped gracefully, which writes one, and started again (reported, not
//! judged).

use crate::client::Api;
use crate::error::{BenchError, Result};
use crate::raw::{self, Scanned};
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::{per_second, ratio, thousands};
use crate::workload::{self, SourceConnectionSpec, EVENTS_PER_JOB};
use crate::Config;
use chrono::{Duration as TimeDelta, Utc};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_domain::events::{stream, NewEvent};
use syncjobs_domain::{EventStore, ExpectedVersion};
use syncjobs_store_sqlite::{EmbeddedStore, DB_FILE};
use uuid::Uuid;

pub const JOBS: u64 = 100_000;
pub const QUICK_JOBS: u64 = 10_000;
const JOBS_PER_CONNECTION: u64 = 100;
const CONNECTIONS_PER_COLLECTION: u64 = 100;
/// Concurrent appenders while generating: enough for the store's group commit to write
/// thousands of events per transaction.
const APPENDERS: usize = 64;
pub const READY_TIMEOUT: Duration = Duration::from_secs(900);
const TARGET: f64 = 2.0;

/// What a generated store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Completed jobs spread over source connections, [`JOBS_PER_CONNECTION`] each.
    pub jobs: u64,
    /// Completed jobs of one more source connection (0: none), interleaved in the log with
    /// the others as hourly syncs would be: #9 deletes it.
    pub heavy_jobs: u64,
}

impl Shape {
    pub fn jobs(jobs: u64) -> Shape {
        Shape {
            jobs,
            heavy_jobs: 0,
        }
    }
}

pub struct Generated {
    pub events: u64,
    pub head: u64,
    /// Source connections, the heavy one included.
    pub connections: u64,
    /// The connection holding [`Shape::heavy_jobs`], if any.
    pub heavy_connection: Option<Uuid>,
    pub took: Duration,
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let jobs = if cfg.quick { QUICK_JOBS } else { JOBS };
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    // `syncjobs serve` keeps events.db directly in its data directory.
    let data_dir = dir.path().join("data");
    let store_dir = data_dir.clone();
    eprintln!("   generating {jobs} jobs");
    let generated = generate(&store_dir, Shape::jobs(jobs)).await?;
    let db = store_dir.join(DB_FILE);
    let db_bytes = tokio::fs::metadata(&db).await?.len();

    let first_scan = scan(&db).await?;
    if first_scan.rows != generated.events {
        return Err(BenchError::failed(format!(
            "the scan read {} rows, {} events were generated",
            first_scan.rows, generated.events
        )));
    }
    let key = format!("bench-{}", Uuid::new_v4().simple());
    let start = |label: &str| -> Result<ServerProcess> {
        eprintln!("   starting the server ({label})");
        ServerProcess::syncjobs(SyncjobsServer {
            bin: &cfg.server_bin,
            data_dir: &data_dir,
            api_key: &key,
            env: vec![],
        })
    };
    let mut cold_server = start("no checkpoint")?;
    let api = Api::new(&cold_server.base_url, &key)?;
    let cold = cold_server
        .wait_ready(&api, generated.head, READY_TIMEOUT)
        .await?;
    let cold_memory = cold_server.memory()?;
    let health = api.health().await?;
    check_projected(&health, &generated)?;
    cold_server.stop().await?;

    let mut warm_server = start("with the checkpoint of the first start")?;
    let api = Api::new(&warm_server.base_url, &key)?;
    let warm = warm_server
        .wait_ready(&api, generated.head, READY_TIMEOUT)
        .await?;
    let warm_memory = warm_server.memory()?;
    warm_server.stop().await?;
    let second_scan = scan(&db).await?;

    let baseline = first_scan.elapsed.min(second_scan.elapsed);
    let r = ratio(cold.as_secs_f64(), baseline.as_secs_f64());
    let mut table = Table::new(&[
        "what",
        "seconds",
        "events/s",
        "x scan",
        "server RSS peak MB",
    ]);
    let row = |what: &str, took: Duration, rss: String| {
        vec![
            what.to_string(),
            format!("{:.2}", took.as_secs_f64()),
            thousands(per_second(generated.events as f64, took)),
            format!("{:.2}", ratio(took.as_secs_f64(), baseline.as_secs_f64())),
            rss,
        ]
    };
    table.row(row(
        "raw sequential scan (best of 2)",
        baseline,
        "-".to_string(),
    ));
    table.row(row(
        "start until ready, no checkpoint",
        cold,
        format!("{:.0}", cold_memory.hwm_mb()),
    ));
    table.row(row(
        "start until ready, with checkpoint",
        warm,
        format!("{:.0}", warm_memory.hwm_mb()),
    ));
    let body = format!(
        "{}\nThe store: {jobs} jobs on {} source connections, {} events, {:.0} MB \
         ({} MB read by the scan), generated in {:.1} s ({} events/s through \
         `EmbeddedStore::append`, {APPENDERS} appenders, one job stream per append). \
         \"Ready\": the process was spawned until `GET /health` answers 200 with \
         `projection.lag` 0 at the store's head. The scan reads every column of every row \
         in log order with rusqlite, decoding nothing.\n",
        table.render(),
        generated.connections,
        generated.events,
        db_bytes as f64 / 1e6,
        first_scan.bytes / 1_000_000,
        generated.took.as_secs_f64(),
        thousands(per_second(generated.events as f64, generated.took)),
    );
    Ok(Outcome {
        headline: format!(
            "{r:.2} x scan ({:.2} s vs {:.2} s for {} events)",
            cold.as_secs_f64(),
            baseline.as_secs_f64(),
            generated.events
        ),
        verdict: Verdict::of(r <= TARGET),
        body,
    })
}

async fn scan(db: &Path) -> Result<Scanned> {
    let db = db.to_path_buf();
    tokio::task::spawn_blocking(move || raw::scan_events(&db)).await?
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Data directory to write `events.db` into (created; must not hold a store yet).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Completed jobs to write, ten events each, 100 per source connection.
    #[arg(long, default_value_t = JOBS)]
    jobs: u64,
    /// Completed jobs of one more source connection, besides `--jobs` (#9's store: one
    /// connection with 100,000 jobs).
    #[arg(long, default_value_t = 0)]
    heavy_connection_jobs: u64,
}

/// `syncjobs-bench generate-store`: the store of this benchmark, kept.
pub async fn generate_command(args: GenerateArgs) -> Result<()> {
    if tokio::fs::try_exists(args.data_dir.join(DB_FILE)).await? {
        return Err(BenchError::failed(format!(
            "{} already holds a store",
            args.data_dir.display()
        )));
    }
    let shape = Shape {
        jobs: args.jobs,
        heavy_jobs: args.heavy_connection_jobs,
    };
    let generated = generate(&args.data_dir, shape).await?;
    println!(
        "{} events ({} jobs) in {} in {:.1} s",
        generated.events,
        args.jobs + args.heavy_connection_jobs,
        args.data_dir.display(),
        generated.took.as_secs_f64()
    );
    if let Some(heavy) = generated.heavy_connection {
        println!(
            "source connection {heavy} holds {} of them",
            args.heavy_connection_jobs
        );
    }
    Ok(())
}

/// The read model must show what was generated, or the start measured nothing.
pub fn check_projected(health: &serde_json::Value, generated: &Generated) -> Result<()> {
    // The bench key's organization is the generated one, so its counts are all of them.
    let seen = health["projection"]["source_connections"].as_u64();
    if seen.is_none_or(|n| n < generated.connections) {
        return Err(BenchError::failed(format!(
            "the read model shows {seen:?} source connections, {} were generated",
            generated.connections
        )));
    }
    Ok(())
}

/// Writes the store: the organization, its collections and source connections, then the
/// shape's completed job streams, each in one append, from [`APPENDERS`] concurrent appenders.
pub async fn generate(store_dir: &Path, shape: Shape) -> Result<Generated> {
    let started = Instant::now();
    let store = {
        let dir = store_dir.to_path_buf();
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir)).await??
    };
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let generated = generate_into(&dyn_store, shape, started).await;
    store.close();
    store.closed().await;
    generated
}

/// [`generate`]'s history, appended to any store (#12 writes it into PostgreSQL).
pub async fn generate_into(
    store: &Arc<dyn EventStore>,
    shape: Shape,
    started: Instant,
) -> Result<Generated> {
    let Shape { jobs, heavy_jobs } = shape;
    let organization_id = Uuid::new_v4();
    let epoch = Utc::now() - TimeDelta::days(200);
    let mut events = 0;
    store
        .append(
            stream::ACCESS,
            ExpectedVersion::Any,
            vec![workload::organization_created(organization_id, epoch)],
        )
        .await?;
    events += 1;

    let connections = jobs.div_ceil(JOBS_PER_CONNECTION).max(1);
    // The heavy connection, if any, comes last.
    let heavy_index = connections;
    let connections_made = connections + u64::from(heavy_jobs > 0);
    let collections = connections_made.div_ceil(CONNECTIONS_PER_COLLECTION);
    let mut setup: Vec<(String, Vec<NewEvent>)> = Vec::new();
    let mut collection_ids = Vec::new();
    for c in 0..collections {
        let id = Uuid::new_v4();
        let readable = format!("bench-{c}");
        setup.push((
            stream::collection(id),
            vec![workload::collection_created(
                id,
                organization_id,
                &readable,
                epoch,
            )],
        ));
        collection_ids.push((id, readable));
    }
    let mut connection_ids = Vec::new();
    for i in 0..connections_made {
        let (collection_id, readable) = &collection_ids[(i / CONNECTIONS_PER_COLLECTION) as usize];
        let id = Uuid::new_v4();
        let spec = SourceConnectionSpec {
            source_connection_id: id,
            organization_id,
            collection_id: *collection_id,
            readable_collection_id: readable,
            index: i as usize,
        };
        setup.push((
            stream::source_connection(id),
            vec![workload::source_connection_created(&spec, epoch)],
        ));
        connection_ids.push(id);
    }
    events += setup.len() as u64;
    let setup = Arc::new(std::sync::Mutex::new(setup));
    drain(store, APPENDERS, move || {
        setup.lock().unwrap_or_else(|p| p.into_inner()).pop()
    })
    .await?;

    let heavy_connection = connection_ids
        .get(heavy_index as usize)
        .copied()
        .filter(|_| heavy_jobs > 0);
    // Each connection's latest job: ids follow the connection's chain, as the service makes
    // them (`job_after`), taken under one lock with the job's number so that a
    // connection's jobs are chained in the order of their times.
    let chains = Arc::new(std::sync::Mutex::new((
        0u64,
        vec![None; connection_ids.len()],
    )));
    let connection_ids = Arc::new(connection_ids);
    let total = jobs + heavy_jobs;
    drain(store, APPENDERS, move || {
        let mut chains = chains.lock().unwrap_or_else(|p| p.into_inner());
        let j = chains.0;
        if j >= total {
            return None;
        }
        chains.0 += 1;
        // The heavy connection's jobs are spread evenly through the log: `h` of the first
        // `j` jobs are its.
        let heavy_before =
            |j: u64| (u128::from(j) * u128::from(heavy_jobs) / u128::from(total)) as u64;
        let h = heavy_before(j);
        let (c, at) = if heavy_before(j + 1) > h {
            // One after the other, 2.5 minutes apart (100,000 of them fit in the 200 days).
            (heavy_index, epoch + TimeDelta::seconds(150 * h as i64))
        } else {
            let n = j - h;
            let c = n % connections;
            let k = n / connections;
            // A connection's jobs run one after the other, ten minutes apart.
            let at = epoch + TimeDelta::minutes(10 * k as i64) + TimeDelta::milliseconds(c as i64);
            (c, at)
        };
        let sc = connection_ids[c as usize];
        let job_id = syncjobs_actors::job_after(sc, chains.1[c as usize]);
        chains.1[c as usize] = Some(job_id);
        Some((
            stream::job(job_id),
            workload::completed_job(job_id, sc, organization_id, at),
        ))
    })
    .await?;
    events += total * EVENTS_PER_JOB;

    let head = *store.watch_head().borrow();
    if head != events {
        return Err(BenchError::failed(format!(
            "generated {events} events but the store's head is {head}"
        )));
    }
    Ok(Generated {
        events,
        head,
        connections: connections_made,
        heavy_connection,
        took: started.elapsed(),
    })
}

/// Appends what `next` yields (each a new stream) from `appenders` concurrent tasks until
/// it yields nothing.
async fn drain<F>(store: &Arc<dyn EventStore>, appenders: usize, next: F) -> Result<()>
where
    F: Fn() -> Option<(String, Vec<NewEvent>)> + Send + Sync + 'static,
{
    let next = Arc::new(next);
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                while let Some((stream, events)) = next() {
                    store
                        .append(&stream, ExpectedVersion::Exact(0), events)
                        .await?;
                }
                Ok::<_, syncjobs_domain::StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}
