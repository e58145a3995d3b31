//! #14: API and worker nodes in separate processes (issue #15): a cancel across nodes, the
//! rescue of a killed worker's jobs, and 1,000 jobs claimed by three workers.
//!
//! One fresh PostgreSQL database per run (dropped after) holds the cluster: one
//! `syncjobs serve --role api` and three `--role worker` processes of the release binary,
//! each on its own free port and directory, heartbeat [`HEARTBEAT_SECONDS`], declared lost
//! after [`TIMEOUT_SECONDS`] of silence. The harness reads the shared log with a store
//! instance of its own to see who ran what; it never talks to a worker except to kill it.
//!
//! 1. **Cancel across nodes.** [`RUNNING`] slow jobs run on the workers. A sample opens the
//!    job's server-sent event stream on the API node (`GET /sync/job/{id}/subscribe`), waits
//!    for its `connected` message, sends `POST .../cancel` to the API node and times until
//!    the stream says `cancelled` (the API node holds a final event back until its read
//!    model shows it, so a `GET` then shows `cancelled` too, which is checked). Then it
//!    starts the connection's next job and waits until it runs. The floor, one sample before
//!    each cancel: two appends one after the other through a `PgStore` of this process (two
//!    PostgreSQL commits), then until a second `PgStore` instance, woken by LISTEN/NOTIFY,
//!    sees the second one; on a database of its own on the same server, so the nodes never
//!    read those events.
//! 2. **Rescue.** SIGKILL to the worker that runs the most of the running jobs; from the
//!    kill, until each of its jobs has `JobResumed` in the log, and until another worker's
//!    `JobStarted` follows it (running again). Then a new worker takes the dead one's place.
//! 3. **Claims.** The workers stop gracefully; the API node creates [`CLAIM_JOBS`] short
//!    jobs (pending: no worker runs); three new workers start at once and claim them all.
//!    Claims/s from the first claim to the last, the time until every job is final, jobs per
//!    worker, and from the log: each job started once, never resumed, completed once.

use crate::client::{Api, Job, SLOW_COUNT, SLOW_SECONDS};
use crate::error::{BenchError, Result};
use crate::postgres::BenchDb;
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::{median, ms, ratio, Latencies};
use crate::workload::{self, timed_config};
use crate::Config;
use chrono::{DateTime, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_domain::events::stream as streams;
use syncjobs_domain::{EventStore, ExpectedVersion, RecordedEvent, SyncJobEvent};
use syncjobs_store_postgres::PgStore;
use uuid::Uuid;

const WORKERS: usize = 3;
/// Liveness of every node: short, so that a rescue takes seconds.
const HEARTBEAT_SECONDS: u64 = 1;
const TIMEOUT_SECONDS: u64 = 5;
/// The rescue target: the configured timeout plus this.
const RESCUE_SLACK: Duration = Duration::from_secs(2);
/// The cancel target: p99 against the floor's p99.
const CANCEL_TARGET: f64 = 3.0;
/// Slow jobs kept running while cancels are measured (and the jobs of a rescue sample).
const RUNNING: usize = 6;
const CANCEL_SAMPLES: usize = 300;
const QUICK_CANCEL_SAMPLES: usize = 30;
const RESCUE_SAMPLES: usize = 5;
const QUICK_RESCUE_SAMPLES: usize = 2;
const CLAIM_JOBS: usize = 1000;
const QUICK_CLAIM_JOBS: usize = 200;
/// The short jobs of the claim run: a timed source of this many entities over this long.
const CLAIM_ENTITIES: u64 = 10;
const CLAIM_SECONDS: f64 = 0.1;
/// Set-up requests in flight at once.
const SETUP_CONCURRENCY: usize = 16;
/// Bounds: a node's start, one wait for a job's state, the whole claim run.
const START_BOUND: Duration = Duration::from_secs(60);
const WAIT_BOUND: Duration = Duration::from_secs(60);
const CLAIM_BOUND: Duration = Duration::from_secs(600);
/// How often the log is read again while waiting for a rescue or the claims.
const LOG_POLL: Duration = Duration::from_millis(50);

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let db = BenchDb::create(&cfg.postgres).await?;
    let floor_db = match BenchDb::create(&cfg.postgres).await {
        Ok(f) => f,
        Err(e) => {
            db.drop_it().await;
            return Err(e);
        }
    };
    let result = measure(cfg, &db, &floor_db).await;
    db.drop_it().await;
    floor_db.drop_it().await;
    result
}

/// The cluster's processes and what they share; dropping it kills every node.
struct Cluster<'a> {
    cfg: &'a Config,
    dir: tempfile::TempDir,
    url: String,
    key: String,
    api: ServerProcess,
    client: Api,
    /// (node id, process), in start order.
    workers: Vec<(String, ServerProcess)>,
    started_workers: usize,
    /// The harness's own reader of the shared log.
    log: Arc<dyn EventStore>,
}

impl<'a> Cluster<'a> {
    async fn start(cfg: &'a Config, url: &str) -> Result<Cluster<'a>> {
        let dir = tempfile::tempdir_in(&cfg.work_dir)?;
        let key = format!("bench-{}", Uuid::new_v4().simple());
        // The API node alone first: it registers the key and makes the schema.
        let mut api = spawn_node(cfg, &dir, url, &key, "api", "api-1")?;
        let client = Api::new(&api.base_url, &key)?;
        api.wait_ready(&client, 0, START_BOUND).await?;
        let log: Arc<dyn EventStore> = PgStore::connect(url).await?;
        let mut cluster = Cluster {
            cfg,
            dir,
            url: url.to_owned(),
            key,
            api,
            client,
            workers: Vec::new(),
            started_workers: 0,
            log,
        };
        cluster.start_workers(WORKERS).await?;
        Ok(cluster)
    }

    /// Spawns `n` new workers at once (each with a new id) and waits until each answers.
    async fn start_workers(&mut self, n: usize) -> Result<()> {
        let mut new = Vec::new();
        for _ in 0..n {
            self.started_workers += 1;
            let id = format!("worker-{}", self.started_workers);
            let node = spawn_node(self.cfg, &self.dir, &self.url, &self.key, "worker", &id)?;
            new.push((id, node));
        }
        for (_, node) in &mut new {
            node.wait_answering("/health", START_BOUND).await?;
        }
        self.workers.extend(new);
        Ok(())
    }

    async fn job_events(&self, job: Uuid) -> Result<Vec<RecordedEvent>> {
        Ok(self.log.read_stream(&streams::job(job), 0).await?)
    }

    /// Cancels `job` on the API node and waits until it shows `cancelled` there.
    async fn cancel_and_wait(&self, job: &Job) -> Result<()> {
        let scid = job.source_connection_id;
        self.client.cancel(scid, job.id).await?;
        self.client
            .wait_for_status(scid, job.id, "cancelled", LOG_POLL, WAIT_BOUND)
            .await?;
        Ok(())
    }

    /// Starts the connection's next job and waits until a worker runs it.
    async fn run_next(&self, scid: Uuid) -> Result<Job> {
        let next = self.client.run(scid).await?;
        self.client
            .wait_for_status(
                scid,
                next.id,
                "running",
                Duration::from_millis(5),
                WAIT_BOUND,
            )
            .await
    }
}

fn spawn_node(
    cfg: &Config,
    dir: &tempfile::TempDir,
    url: &str,
    key: &str,
    role: &str,
    id: &str,
) -> Result<ServerProcess> {
    let node_dir: PathBuf = dir.path().join(id);
    std::fs::create_dir_all(&node_dir)?;
    ServerProcess::syncjobs(SyncjobsServer {
        bin: &cfg.server_bin,
        data_dir: &node_dir.join("data"),
        api_key: key,
        env: vec![
            ("SYNCJOBS_ROLE", role.to_owned()),
            ("SYNCJOBS_NODE_ID", id.to_owned()),
            ("SYNCJOBS_STORE", url.to_owned()),
            ("SYNCJOBS_LOG_FORMAT", "json".to_owned()),
            (
                "SYNCJOBS_WORKER_HEARTBEAT_SECONDS",
                HEARTBEAT_SECONDS.to_string(),
            ),
            (
                "SYNCJOBS_WORKER_TIMEOUT_SECONDS",
                TIMEOUT_SECONDS.to_string(),
            ),
        ],
    })
}

async fn measure(cfg: &Config, db: &BenchDb, floor_db: &BenchDb) -> Result<Outcome> {
    let (cancel_samples, rescue_samples, claim_jobs) = if cfg.quick {
        (QUICK_CANCEL_SAMPLES, QUICK_RESCUE_SAMPLES, QUICK_CLAIM_JOBS)
    } else {
        (CANCEL_SAMPLES, RESCUE_SAMPLES, CLAIM_JOBS)
    };
    let mut cluster = Cluster::start(cfg, &db.url).await?;
    let collection = cluster.client.create_collection("bench cluster").await?;
    let mut running: Vec<Job> = stream::iter(0..RUNNING)
        .map(|i| {
            let (api, collection) = (&cluster.client, &collection);
            async move {
                let config = timed_config(SLOW_COUNT, SLOW_SECONDS, i as i64);
                let scid = api
                    .create_timed_connection(collection, &format!("slow {i}"), config)
                    .await?;
                let job = api.run(scid).await?;
                api.wait_for_status(scid, job.id, "running", LOG_POLL, WAIT_BOUND)
                    .await
            }
        })
        .buffer_unordered(RUNNING)
        .try_collect()
        .await?;

    eprintln!("   cancel across nodes: {cancel_samples} samples, each after a floor sample");
    let cancel = cancels(&cluster, &floor_db.url, &mut running, cancel_samples).await?;
    let connections = connections_of(&cfg.postgres, db).await.unwrap_or_default();

    eprintln!("   rescue: {rescue_samples} workers killed, one at a time");
    let mut rescues = Vec::new();
    for _ in 0..rescue_samples {
        rescues.push(rescue(&mut cluster, &mut running).await?);
    }

    eprintln!("   claims: {claim_jobs} jobs through {WORKERS} new workers");
    // Nothing left running, so the graceful stops drain at once.
    for job in &running {
        cluster.cancel_and_wait(job).await?;
    }
    let stopping: Vec<_> = cluster.workers.drain(..).map(|(_, w)| w.stop()).collect();
    for r in futures::future::join_all(stopping).await {
        r?;
    }
    let claims = claim_run(&mut cluster, claim_jobs).await?;

    let api_rss = cluster.api.memory().map(|m| m.rss_mb()).unwrap_or(0.0);
    let (api, workers) = (cluster.api, std::mem::take(&mut cluster.workers));
    api.stop().await?;
    for (_, w) in workers {
        w.stop().await?;
    }
    report(cancel, rescues, claims, connections, api_rss)
}

/// What part 1 measured.
struct Cancels {
    floor: Latencies,
    answered: Latencies,
    seen: Latencies,
    /// The cancel's way, by the events' `recorded_at` (taken by the appending node before
    /// its append, same machine clock): POST -> CancelRequested; CancelRequested ->
    /// Cancelled (its commit, the worker woken, the pipeline stopped); Cancelled -> the
    /// stream's `cancelled` (its commit, the API node woken, its read model's fold).
    phases: [Latencies; 3],
    /// Samples per worker that ran the cancelled job.
    by_worker: BTreeMap<String, usize>,
}

async fn cancels(
    cluster: &Cluster<'_>,
    floor_url: &str,
    running: &mut [Job],
    samples: usize,
) -> Result<Cancels> {
    let appender = PgStore::connect(floor_url).await?;
    let follower = PgStore::connect(floor_url).await?;
    let floor_stream = streams::job(Uuid::new_v4());
    let mut version = 0;
    let (mut floor, mut answered, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    let (mut to_request, mut on_worker, mut to_api) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_worker = BTreeMap::new();
    for i in 0..samples {
        floor.push(floor_sample(&appender, &follower, &floor_stream, &mut version).await?);
        let slot = i % running.len();
        let job = &running[slot];
        let sample = tokio::time::timeout(WAIT_BOUND, cancel_sample(&cluster.client, job))
            .await
            .map_err(|_| BenchError::failed(format!("cancel of job {} hung", job.id)))??;
        answered.push(sample.answered);
        seen.push(sample.seen);
        let events = cluster.job_events(job.id).await?;
        let recorded = |kind: &str| {
            events
                .iter()
                .find(|e| e.event_type() == kind)
                .map(|e| e.recorded_at)
        };
        if let (Some(requested), Some(cancelled)) =
            (recorded("CancelRequested"), recorded("Cancelled"))
        {
            to_request.push(since(sample.posted_at, requested));
            on_worker.push(since(requested, cancelled));
            to_api.push(since(cancelled, sample.seen_at));
        }
        let last = events.last().map(|e| e.event_type()).unwrap_or_default();
        if last != "Cancelled" {
            return Err(BenchError::failed(format!(
                "job {} ended with {last}, not a worker's Cancelled",
                job.id
            )));
        }
        *by_worker
            .entry(starts(&events).pop().unwrap_or_default())
            .or_default() += 1;
        running[slot] = cluster.run_next(job.source_connection_id).await?;
    }
    Ok(Cancels {
        floor: Latencies::new(floor),
        answered: Latencies::new(answered),
        seen: Latencies::new(seen),
        phases: [
            Latencies::new(to_request),
            Latencies::new(on_worker),
            Latencies::new(to_api),
        ],
        by_worker,
    })
}

/// Two commits one after the other, then until the other store instance is woken with the
/// second one's position.
async fn floor_sample(
    appender: &Arc<PgStore>,
    follower: &Arc<PgStore>,
    stream: &str,
    version: &mut u64,
) -> Result<Duration> {
    let mut head = follower.watch_head();
    let started = Instant::now();
    let mut last = 0;
    for _ in 0..2 {
        let recorded = appender
            .append(
                stream,
                ExpectedVersion::Exact(*version),
                vec![workload::progress(*version, Uuid::nil())],
            )
            .await?;
        *version += 1;
        last = recorded.last().map_or(last, |e| e.global_position);
    }
    tokio::time::timeout(WAIT_BOUND, head.wait_for(|&h| h >= last))
        .await
        .map_err(|_| BenchError::failed("the follower store never saw the floor's commit"))?
        .map_err(|_| BenchError::failed("the follower store closed"))?;
    Ok(started.elapsed())
}

/// One cancel through the API node.
struct CancelSample {
    /// From the POST to its answer, and to `cancelled` on the job's event stream.
    answered: Duration,
    seen: Duration,
    /// The same two moments by the wall clock, to compare with the events' `recorded_at`.
    posted_at: DateTime<Utc>,
    seen_at: DateTime<Utc>,
}

async fn cancel_sample(api: &Api, job: &Job) -> Result<CancelSample> {
    let mut events = Sse::open(api, job.id).await?;
    loop {
        let message = events.next().await?;
        if message["type"] == "connected" {
            break;
        }
    }
    let posted_at = Utc::now();
    let t = Instant::now();
    let answer = api.cancel(job.source_connection_id, job.id).await?;
    let answered = t.elapsed();
    if answer.status != "cancelling" {
        return Err(BenchError::failed(format!(
            "cancel of running job {} answered {}",
            job.id, answer.status
        )));
    }
    loop {
        let message = events.next().await?;
        match message["status"].as_str() {
            Some("cancelled") => break,
            Some(other) => {
                return Err(BenchError::failed(format!(
                    "job {} ended {other} after its cancel",
                    job.id
                )))
            }
            None => {}
        }
    }
    let seen = t.elapsed();
    let seen_at = Utc::now();
    let shown = api.job(job.source_connection_id, job.id).await?;
    if shown.status != "cancelled" {
        return Err(BenchError::failed(format!(
            "the stream said cancelled, GET then showed {} (job {})",
            shown.status, job.id
        )));
    }
    Ok(CancelSample {
        answered,
        seen,
        posted_at,
        seen_at,
    })
}

/// A server-sent event stream, read message by message.
struct Sse {
    response: reqwest::Response,
    messages: SseBuffer,
}

impl Sse {
    async fn open(api: &Api, job: Uuid) -> Result<Sse> {
        Ok(Sse {
            response: api.subscribe(job).await?,
            messages: SseBuffer::default(),
        })
    }

    /// The JSON of the next message with data; an error when the stream ends.
    async fn next(&mut self) -> Result<Value> {
        loop {
            if let Some(message) = self.messages.next_message()? {
                return Ok(message);
            }
            match self.response.chunk().await? {
                Some(chunk) => self.messages.push(&chunk),
                None => return Err(BenchError::failed("the event stream ended")),
            }
        }
    }
}

/// Bytes of a server-sent event stream as they arrive (a message may span chunks, a chunk
/// may end inside a character), cut into messages at blank lines.
#[derive(Default)]
struct SseBuffer {
    bytes: Vec<u8>,
}

impl SseBuffer {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
    }

    /// The JSON of the next complete message that has `data:` lines (comments and other
    /// fields alone are skipped); None until one is complete.
    fn next_message(&mut self) -> Result<Option<Value>> {
        while let Some(end) = self.bytes.windows(2).position(|w| w == b"\n\n") {
            let message: Vec<u8> = self.bytes.drain(..end + 2).collect();
            let message = String::from_utf8_lossy(&message);
            let data: Vec<&str> = message
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                return Ok(Some(serde_json::from_str(&data.join("\n"))?));
            }
        }
        Ok(None)
    }
}

/// The worker of each JobStarted of a job's stream, in order.
fn starts(events: &[RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e.job_event() {
            Some(SyncJobEvent::JobStarted { worker }) => Some(worker.clone()),
            _ => None,
        })
        .collect()
}

/// PostgreSQL connections open to the cluster's database right now.
async fn connections_of(admin: &str, db: &BenchDb) -> Result<i64> {
    let c = crate::postgres::client(admin).await?;
    let name = db.url.rsplit('/').next().unwrap_or_default();
    let name = name.split('?').next().unwrap_or_default().to_owned();
    let row = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(|e| BenchError::failed(format!("pg_stat_activity: {e}")))?;
    Ok(row.get(0))
}

/// One rescue sample.
struct Rescue {
    worker: String,
    /// Per job of the killed worker: from the kill to JobResumed, and to another worker's
    /// JobStarted.
    resumed: Vec<Duration>,
    running_again: Vec<Duration>,
    /// From the kill to WorkerLost, and its last heartbeat before the kill.
    lost: Duration,
    last_seen_before: Duration,
}

fn since(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

async fn rescue(cluster: &mut Cluster<'_>, running: &mut [Job]) -> Result<Rescue> {
    // Who runs what, as the log says.
    let mut owned: HashMap<String, Vec<usize>> = HashMap::new();
    for (slot, job) in running.iter().enumerate() {
        let events = cluster.job_events(job.id).await?;
        if let Some(worker) = starts(&events).pop() {
            owned.entry(worker).or_default().push(slot);
        }
    }
    let victim = cluster
        .workers
        .iter()
        .map(|(id, _)| id.clone())
        .max_by_key(|id| owned.get(id).map_or(0, Vec::len))
        .ok_or_else(|| BenchError::failed("no worker left"))?;
    let slots = owned.remove(&victim).unwrap_or_default();
    if slots.is_empty() {
        return Err(BenchError::failed("no worker runs any of the jobs"));
    }
    let at = cluster
        .workers
        .iter()
        .position(|(id, _)| *id == victim)
        .ok_or_else(|| BenchError::failed("the victim is gone"))?;
    let (_, process) = cluster.workers.remove(at);
    let killed_at = Utc::now();
    process.kill().await?;

    let bound = Instant::now() + Duration::from_secs(TIMEOUT_SECONDS) + WAIT_BOUND;
    let mut resumed = Vec::new();
    let mut running_again = Vec::new();
    for &slot in &slots {
        let job = running[slot].id;
        loop {
            let events = cluster.job_events(job).await?;
            let resumed_at = events
                .iter()
                .find(|e| e.event_type() == "JobResumed")
                .map(|e| (e.version, e.recorded_at));
            let restarted = resumed_at.and_then(|(v, at)| {
                events
                    .iter()
                    .filter(|e| e.version > v)
                    .find_map(|e| match e.job_event() {
                        Some(SyncJobEvent::JobStarted { worker }) => {
                            Some((worker.clone(), e.recorded_at, at))
                        }
                        _ => None,
                    })
            });
            if let Some((worker, started_at, resumed_at)) = restarted {
                if worker == victim {
                    return Err(BenchError::failed(format!(
                        "job {job} was resumed on the worker that was killed"
                    )));
                }
                resumed.push(since(killed_at, resumed_at));
                running_again.push(since(killed_at, started_at));
                break;
            }
            if let Some(e) = events
                .iter()
                .find(|e| e.job_event().is_some_and(|j| j.is_final()))
            {
                return Err(BenchError::failed(format!(
                    "job {job} ended {} instead of being resumed",
                    e.event_type()
                )));
            }
            if Instant::now() > bound {
                return Err(BenchError::failed(format!(
                    "job {job} of killed {victim} not running again after {:?}",
                    Duration::from_secs(TIMEOUT_SECONDS) + WAIT_BOUND
                )));
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }
    let (lost, last_seen_before) = cluster
        .log
        .read_stream(&streams::worker(&victim), 0)
        .await?
        .iter()
        .find_map(|e| match &e.event {
            syncjobs_domain::events::Event::Worker(
                syncjobs_domain::events::WorkerEvent::WorkerLost { last_seen, .. },
            ) => Some((
                since(killed_at, e.recorded_at),
                since(*last_seen, killed_at),
            )),
            _ => None,
        })
        .ok_or_else(|| BenchError::failed(format!("no WorkerLost for {victim}")))?;
    eprintln!(
        "   killed {victim} ({} jobs): resumed after {:?}, running again after {:?}",
        slots.len(),
        resumed,
        running_again
    );
    // A new worker takes its place; the rescued jobs (resumed once, the default limit) make
    // way for new ones, so that the next sample kills jobs that may be resumed.
    cluster.start_workers(1).await?;
    for &slot in &slots {
        let job = running[slot].clone();
        cluster.cancel_and_wait(&job).await?;
        running[slot] = cluster.run_next(job.source_connection_id).await?;
    }
    Ok(Rescue {
        worker: victim,
        resumed,
        running_again,
        lost,
        last_seen_before,
    })
}

/// What part 3 measured.
struct Claims {
    jobs: usize,
    created_in: Duration,
    /// From the workers' spawn: the first claim, the last claim, the last final event.
    first_claim: Duration,
    last_claim: Duration,
    all_final: Duration,
    /// Jobs each worker claimed, by the log and by its own log lines.
    per_worker: Vec<(String, usize, usize)>,
    /// Mean JobStarted -> JobCompleted.
    mean_run: Duration,
    /// What the log shows against "each job claimed once, completed once" (empty: none).
    violations: Vec<String>,
}

async fn claim_run(cluster: &mut Cluster<'_>, n: usize) -> Result<Claims> {
    let collection = cluster.client.create_collection("bench claims").await?;
    let created = Instant::now();
    let jobs: Vec<(Uuid, Uuid)> = stream::iter(0..n)
        .map(|i| {
            let (api, collection) = (&cluster.client, &collection);
            async move {
                api.create_timed_connection_with_sync(
                    collection,
                    &format!("claim {i:04}"),
                    timed_config(CLAIM_ENTITIES, CLAIM_SECONDS, i as i64),
                )
                .await
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    let created_in = created.elapsed();
    let ids: HashMap<Uuid, ()> = jobs.iter().map(|(_, j)| (*j, ())).collect();

    let spawned_at = Utc::now();
    cluster.start_workers(WORKERS).await?;
    // Follow the log until every job is final.
    let mut log: HashMap<Uuid, Vec<RecordedEvent>> = HashMap::new();
    let mut after = 0;
    let mut finals = 0;
    let bound = Instant::now() + CLAIM_BOUND;
    while finals < n {
        let batch = cluster.log.read_all(after, 4096).await?;
        match batch.last() {
            Some(last) => after = last.global_position,
            None => {
                if Instant::now() > bound {
                    return Err(BenchError::failed(format!(
                        "{finals} of {n} jobs final after {CLAIM_BOUND:?}"
                    )));
                }
                tokio::time::sleep(LOG_POLL).await;
                continue;
            }
        }
        for e in batch {
            let Some(job) = streams::job_id(&e.stream_id) else {
                continue;
            };
            if !ids.contains_key(&job) {
                continue;
            }
            if e.job_event().is_some_and(|j| j.is_final()) {
                finals += 1;
            }
            log.entry(job).or_default().push(e);
        }
    }
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    let mut violations = Vec::new();
    let (mut claims, mut ends, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    for (job, events) in &log {
        let started = starts(events);
        let kinds: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
        let finals: Vec<&&str> = kinds
            .iter()
            .filter(|k| ["JobCompleted", "JobFailed", "Cancelled", "ForceCancelled"].contains(k))
            .collect();
        if started.len() != 1 || kinds.contains(&"JobResumed") || finals != [&"JobCompleted"] {
            violations.push(format!("job {job}: {kinds:?}"));
        }
        *per_worker.entry(started[0].clone()).or_default() += 1;
        let at = |kind: &str| events.iter().find(|e| e.event_type() == kind);
        if let (Some(s), Some(c)) = (at("JobStarted"), at("JobCompleted")) {
            if s.recorded_at < spawned_at {
                violations.push(format!("job {job} was claimed before the workers started"));
            }
            claims.push(s.recorded_at);
            ends.push(c.recorded_at);
            runs.push(since(s.recorded_at, c.recorded_at));
        }
    }
    let first = claims.iter().min().copied().unwrap_or(spawned_at);
    let last = claims.iter().max().copied().unwrap_or(spawned_at);
    let end = ends.iter().max().copied().unwrap_or(spawned_at);
    let mean_run = runs.iter().sum::<Duration>() / runs.len().max(1) as u32;
    let mut each = Vec::new();
    for (id, w) in &cluster.workers {
        let lines = std::fs::read_to_string(w.log_path())?
            .lines()
            .filter(|l| l.contains("\"job claimed\""))
            .count();
        each.push((id.clone(), per_worker.get(id).copied().unwrap_or(0), lines));
    }
    let counted: usize = each.iter().map(|e| e.1).sum();
    if counted != n {
        violations.push(format!(
            "the new workers claimed {counted} of {n} jobs: {per_worker:?}"
        ));
    }
    Ok(Claims {
        jobs: n,
        created_in,
        first_claim: since(spawned_at, first),
        last_claim: since(spawned_at, last),
        all_final: since(spawned_at, end),
        per_worker: each,
        mean_run,
        violations,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn report(
    cancel: Cancels,
    rescues: Vec<Rescue>,
    claims: Claims,
    connections: i64,
    api_rss: f64,
) -> Result<Outcome> {
    // 1. Cancel.
    let cancel_ratio = ratio(
        cancel.seen.p99().as_secs_f64(),
        cancel.floor.p99().as_secs_f64(),
    );
    let mut t1 = Table::new(&["what", "samples", "p50 ms", "p99 ms", "max ms"]);
    for (what, l) in [
        (
            "cancel answered by the API node (`cancelling`)",
            &cancel.answered,
        ),
        ("`cancelled` on the API node's event stream", &cancel.seen),
        ("- of which POST -> CancelRequested", &cancel.phases[0]),
        (
            "- of which CancelRequested -> Cancelled (the worker)",
            &cancel.phases[1],
        ),
        (
            "- of which Cancelled -> the stream's `cancelled` (the API node)",
            &cancel.phases[2],
        ),
        (
            "floor: 2 commits + the other store instance woken",
            &cancel.floor,
        ),
    ] {
        t1.row(vec![
            what.to_string(),
            l.len().to_string(),
            ms(l.p50()),
            ms(l.p99()),
            ms(l.max()),
        ]);
    }
    let by_worker = cancel
        .by_worker
        .iter()
        .map(|(w, n)| format!("{w} {n}"))
        .collect::<Vec<_>>()
        .join(", ");

    // 2. Rescue.
    let bound = Duration::from_secs(TIMEOUT_SECONDS) + RESCUE_SLACK;
    let mut t2 = Table::new(&[
        "killed",
        "its jobs",
        "last heartbeat before the kill s",
        "WorkerLost after s",
        "JobResumed after s (each)",
        "running on another worker after s (each)",
    ]);
    let (mut all_resumed, mut all_running) = (Vec::new(), Vec::new());
    for r in &rescues {
        let list = |d: &[Duration]| d.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", ");
        t2.row(vec![
            r.worker.clone(),
            r.resumed.len().to_string(),
            secs(r.last_seen_before),
            secs(r.lost),
            list(&r.resumed),
            list(&r.running_again),
        ]);
        all_resumed.extend(r.resumed.iter().map(Duration::as_secs_f64));
        all_running.extend(r.running_again.iter().map(Duration::as_secs_f64));
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (resumed_max, running_max) = (max(&all_resumed), max(&all_running));
    let rescue_ok = !all_running.is_empty() && running_max <= bound.as_secs_f64();

    // 3. Claims.
    let claiming = claims.last_claim.saturating_sub(claims.first_claim);
    let claims_per_s = ratio((claims.jobs - 1) as f64, claiming.as_secs_f64());
    let counts: Vec<usize> = claims.per_worker.iter().map(|w| w.1).collect();
    let (least, most) = (
        counts.iter().min().copied().unwrap_or(0),
        counts.iter().max().copied().unwrap_or(0),
    );
    let mut t3 = Table::new(&[
        "worker",
        "jobs claimed (event log)",
        "\"job claimed\" lines (its log)",
    ]);
    for (id, n, lines) in &claims.per_worker {
        t3.row(vec![id.clone(), n.to_string(), lines.to_string()]);
    }
    let slots = WORKERS * DEFAULT_CAPACITY;

    let cancel_ok = cancel_ratio <= CANCEL_TARGET;
    let claims_ok = claims.violations.is_empty();
    let claims_check = if claims_ok {
        "The log: every job has exactly one JobStarted, no JobResumed and one final event, \
         JobCompleted; none was claimed before the workers started."
            .to_string()
    } else {
        format!(
            "**The log breaks \"each job claimed once, completed once\"** ({} findings; the \
             first ones): {}",
            claims.violations.len(),
            claims
                .violations
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    let body = format!(
        "One `--role api` and {WORKERS} `--role worker` processes of the `syncjobs` binary on one \
         fresh PostgreSQL database (heartbeat {HEARTBEAT_SECONDS} s, lost after \
         {TIMEOUT_SECONDS} s, default capacity and resume limit); {connections} PostgreSQL \
         connections were open to it after part 1. API node RSS at the end: {api_rss:.0} MB.\n\n\
         **1. Cancel across nodes** (target p99 <= {CANCEL_TARGET} x the floor's p99): \
         {RUNNING} slow jobs (timed, {SLOW_COUNT} entities over {SLOW_SECONDS:.0} s) run on the \
         workers; a sample opens the job's event stream on the API node (`GET \
         /sync/job/{{id}}/subscribe`), sends `POST .../cancel` to the API node after the \
         `connected` message, and times until the stream says `cancelled` (the API node holds \
         that message back until its read model shows it; a `GET` right after showed \
         `cancelled` every time). Every job ended with its worker's `Cancelled` (none forced). \
         The floor, one sample before each cancel, on a database of its own on the same \
         server: two appends one after the other through a `PgStore` of the harness, then \
         until a second `PgStore` instance is woken (LISTEN/NOTIFY) with the second's \
         position. The real path has a second wake-up the floor leaves out (the worker is \
         woken by the request, the API node by the confirmation).\n\n{}\n\
         p99 / floor p99: **{cancel_ratio:.2}** ({}). Cancelled jobs per worker: {by_worker}.\n\n\
         **2. Rescue** (target: running again on another worker <= timeout + {} s = {} s \
         after the SIGKILL): the worker running the most of the {RUNNING} running jobs is \
         killed; times are from the kill (harness clock) to the events' `recorded_at` \
         (the nodes' clocks, same machine).\n\n{}\n\
         JobResumed: median {:.2} s, max {resumed_max:.2} s; running on another worker: \
         median {:.2} s, max **{running_max:.2} s** ({} jobs, {} kills).\n\n\
         **3. Claims**: {} jobs (timed, {CLAIM_ENTITIES} entities over {CLAIM_SECONDS} s) \
         created through the API node in {:.1} s while no worker ran, then {WORKERS} new \
         workers spawned at once (capacity {} each, {slots} jobs at a time in all). From the \
         spawn: first claim after {} s, last claim after {} s, every job final after {} s. \
         Claims: **{claims_per_s:.0} jobs/s** from the first to the last; a job ran {:.0} ms \
         on average (JobStarted -> JobCompleted), so {slots} slots bound the rate at about \
         {:.0} jobs/s. Spread: min {least}, max {most}.\n\n{}\n{}\n",
        t1.render(),
        if cancel_ok { "met" } else { "missed" },
        RESCUE_SLACK.as_secs(),
        bound.as_secs(),
        t2.render(),
        median(&all_resumed),
        median(&all_running),
        all_running.len(),
        rescues.len(),
        claims.jobs,
        claims.created_in.as_secs_f64(),
        DEFAULT_CAPACITY,
        secs(claims.first_claim),
        secs(claims.last_claim),
        secs(claims.all_final),
        claims.mean_run.as_secs_f64() * 1000.0,
        ratio(slots as f64, claims.mean_run.as_secs_f64()),
        t3.render(),
        claims_check,
    );
    Ok(Outcome {
        headline: format!(
            "cancel p99 {} ms = {cancel_ratio:.2} x floor ({} ms); rescue max {running_max:.2} s \
             (timeout {TIMEOUT_SECONDS} s); {} jobs {} at {claims_per_s:.0}/s, \
             {least}-{most} per worker",
            ms(cancel.seen.p99()),
            ms(cancel.floor.p99()),
            claims.jobs,
            if claims_ok {
                "claimed once each"
            } else {
                "NOT each claimed once"
            },
        ),
        verdict: Verdict::of(cancel_ok && rescue_ok && claims_ok),
        body,
    })
}

/// A worker's capacity when `SYNCJOBS_WORKER_CAPACITY` is unset (the service's
/// `DEFAULT_WORKER_CAPACITY`).
const DEFAULT_CAPACITY: usize = syncjobs::config::DEFAULT_WORKER_CAPACITY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_are_cut_at_blank_lines_across_chunks() {
        let mut b = SseBuffer::default();
        b.push(b": a comment\n\ndata: {\"type\":\"conn");
        assert!(b.next_message().unwrap().is_none(), "incomplete");
        b.push(b"ected\",\"n\":\"\xc3");
        b.push(b"\xa9\"}\n\ndata: {\"status\":null}\n\n");
        let first = b.next_message().unwrap().unwrap();
        assert_eq!(first["type"], "connected");
        assert_eq!(first["n"], "\u{e9}", "a character split over two chunks");
        assert_eq!(b.next_message().unwrap().unwrap()["status"], Value::Null);
        assert!(b.next_message().unwrap().is_none());
    }

    #[test]
    fn sse_data_over_several_lines_is_one_message() {
        let mut b = SseBuffer::default();
        b.push(b"id: 3\ndata: {\"status\":\ndata: \"cancelled\"}\n\n");
        assert_eq!(b.next_message().unwrap().unwrap()["status"], "cancelled");
    }
}
