//! The crash test: the real `syncjobs` binary killed with SIGKILL at random moments while
//! jobs run, complete and cancel, restarted on the same data directory, and checked after
//! every restart:
//!
//! - every acknowledged write is there (each 200 of a create, a run or a cancel);
//! - every job has at most one final event, nothing after it, and exactly one once it ended;
//! - the watchdog keeps its deadline: a ForceCancelled is recorded within 1 s after
//!   CancelRequested + timeout, or, when the process was down at that moment, within 1 s of
//!   the next start; never before the deadline; no job stays `cancelling` past it;
//! - a job's counts are never ahead of what its destination holds;
//! - `syncjobs verify` finds nothing wrong (exit 0), run while the process is down.
//!
//! Randomness is seeded; the seed is printed and `SYNCJOBS_CRASH_SEED` replays its choices
//! (not the exact timing). `SYNCJOBS_CRASH_CYCLES` sets the number of kill/restart cycles
//! (default 10, about a minute in a debug build).

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_syncjobs");
const KEY: &str = "crash-test-key-0123456789";
/// The watchdog timeout the server runs with (short, so that forced cancels happen).
const CANCEL_TIMEOUT: i64 = 3;
/// How far a forced cancel may come after its due moment.
const TOLERANCE: ChronoDuration = ChronoDuration::seconds(1);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running `syncjobs serve`, killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    address: String,
    /// When it said it was listening (recovery, and so any overdue watchdog, ran before).
    up_at: DateTime<Utc>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn syncjobs(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("SYNCJOBS_DATA_DIR", data_dir)
        .env("SYNCJOBS_BIND", "127.0.0.1:0")
        .env("SYNCJOBS_LOG_FORMAT", "json")
        .env("SYNCJOBS_HTTP_WORKERS", "2")
        .env("SYNCJOBS_BOOTSTRAP_API_KEY", KEY)
        .env(
            "SYNCJOBS_CANCEL_TIMEOUT_SECONDS",
            CANCEL_TIMEOUT.to_string(),
        )
        .env("SYNCJOBS_CHECKPOINT_EVERY_SECONDS", "1");
    cmd
}

fn start(data_dir: &Path) -> Server {
    let mut child = syncjobs(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("panicked") {
                eprintln!("server: {line}");
            }
            let parsed: Option<Value> = serde_json::from_str(&line).ok();
            if let Some(address) = parsed
                .as_ref()
                .and_then(|v| v["fields"]["address"].as_str())
                .filter(|_| line.contains("syncjobs listening"))
            {
                let _ = tx.send((address.to_owned(), Utc::now()));
            }
        }
    });
    let (address, up_at) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server says it is listening");
    Server {
        child,
        address: format!("http://{address}"),
        up_at,
    }
}

/// What the server acknowledged with a 200 before it was killed.
#[derive(Debug, Default)]
struct Acked {
    /// source connection -> whether its create also started a job
    source_connections: BTreeMap<String, bool>,
    /// job -> its source connection
    jobs: BTreeMap<String, String>,
    /// jobs whose cancel was answered 200
    cancels: BTreeSet<String>,
}

/// Forced cancels seen: job -> whether the process was down at its deadline.
static FORCED: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());

/// When the process was down: (killed at, next one up at).
type Downtime = Vec<(DateTime<Utc>, DateTime<Utc>)>;

struct Client {
    http: reqwest::Client,
    address: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.address))
            .header("x-api-key", KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.ok()?;
        let status = r.status().as_u16();
        let body = r.json().await.ok()?;
        Some((status, body))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None)
            .await
            .unwrap_or_else(|| panic!("GET {path}: no answer from a running server"))
    }
}

/// One client's random work until it is stopped: create source connections, run them,
/// cancel their jobs. Only complete 200 answers are recorded.
async fn work(client: Arc<Client>, acked: Arc<Mutex<Acked>>, mut rng: StdRng) {
    loop {
        let (scs, jobs): (Vec<String>, Vec<String>) = {
            let a = acked.lock().unwrap();
            (
                a.source_connections.keys().cloned().collect(),
                a.jobs.keys().cloned().collect(),
            )
        };
        match rng.random_range(0..10) {
            0..=1 if scs.len() < 8 => {
                let sync_immediately = rng.random_bool(0.5);
                let body = json!({
                    "short_name": "timed",
                    "readable_collection_id": "crash",
                    "config": {
                        "entity_count": rng.random_range(20..300),
                        "duration_seconds": rng.random_range(5..40) as f64 / 10.0,
                        "seed": rng.random_range(0..1000),
                        "ignore_cancel": rng.random_bool(0.4),
                    },
                    "sync_immediately": sync_immediately,
                });
                if let Some((200, sc)) = client
                    .call(reqwest::Method::POST, "/source-connections", Some(body))
                    .await
                {
                    let id = sc["id"].as_str().expect("an id").to_owned();
                    acked
                        .lock()
                        .unwrap()
                        .source_connections
                        .insert(id, sync_immediately);
                }
            }
            0..=4 if !scs.is_empty() => {
                let sc = &scs[rng.random_range(0..scs.len())];
                if let Some((200, job)) = client
                    .call(
                        reqwest::Method::POST,
                        &format!("/source-connections/{sc}/run"),
                        None,
                    )
                    .await
                {
                    let id = job["id"].as_str().expect("an id").to_owned();
                    acked.lock().unwrap().jobs.insert(id, sc.clone());
                }
            }
            5..=6 if !jobs.is_empty() => {
                let job = &jobs[rng.random_range(0..jobs.len())];
                let sc = acked.lock().unwrap().jobs[job].clone();
                let path = format!("/source-connections/{sc}/jobs/{job}/cancel");
                if let Some((200, _)) = client.call(reqwest::Method::POST, &path, None).await {
                    acked.lock().unwrap().cancels.insert(job.clone());
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.random_range(20..250))).await,
        }
    }
}

fn is_final(event_type: &str) -> bool {
    matches!(
        event_type,
        "JobCompleted" | "JobFailed" | "Cancelled" | "ForceCancelled"
    )
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// By when a forced cancel due at `due` must be recorded: 1 s after it, or 1 s after the
/// next start if the process was down at the deadline (or died before it could act).
fn latest_force(due: DateTime<Utc>, downtime: &Downtime) -> DateTime<Utc> {
    downtime
        .iter()
        .find(|(killed, up)| *killed <= due + TOLERANCE && *up >= due)
        .map_or(due, |(_, up)| (*up).max(due))
        + TOLERANCE
}

/// Everything that must hold after a restart. Returns the jobs found: their source
/// connection and status.
async fn check(
    client: &Client,
    acked: &Acked,
    downtime: &Downtime,
    up_at: DateTime<Utc>,
    seed: u64,
) -> BTreeMap<String, (String, String)> {
    let ctx = |what: String| format!("seed {seed}: {what}");
    let (status, body) = client.get("/collections/crash").await;
    assert_eq!(
        status,
        200,
        "{}",
        ctx(format!("the collection is gone: {body}"))
    );

    let mut statuses = BTreeMap::new();
    for (sc, immediate) in &acked.source_connections {
        let (status, body) = client.get(&format!("/source-connections/{sc}")).await;
        assert_eq!(
            status,
            200,
            "{}",
            ctx(format!(
                "acknowledged source connection {sc} is gone: {body}"
            ))
        );
        let total_entities = body["entities"]["total_entities"].as_u64().unwrap_or(0);
        let (status, jobs) = client
            .get(&format!("/source-connections/{sc}/jobs?limit=1000"))
            .await;
        assert_eq!(status, 200);
        let jobs = jobs.as_array().cloned().unwrap_or_default();
        if *immediate {
            assert!(
                !jobs.is_empty(),
                "{}",
                ctx(format!(
                    "{sc} was created with sync_immediately but has no job"
                ))
            );
        }
        for job in &jobs {
            let id = job["id"].as_str().unwrap().to_owned();
            // Counts never ahead of the destination (entities of one connection).
            let processed = ["entities_inserted", "entities_updated"]
                .iter()
                .map(|k| job[*k].as_u64().unwrap_or(0))
                .sum::<u64>();
            assert!(
                processed <= total_entities,
                "{}",
                ctx(format!(
                    "job {id} counts {processed} entities, its destination holds {total_entities}"
                ))
            );
            statuses.insert(id, (sc.clone(), job["status"].as_str().unwrap().to_owned()));
        }
    }
    for (job, sc) in &acked.jobs {
        let (status, body) = client
            .get(&format!("/source-connections/{sc}/jobs/{job}"))
            .await;
        assert_eq!(
            status,
            200,
            "{}",
            ctx(format!("acknowledged run {job} is gone: {body}"))
        );
    }
    for job in &acked.cancels {
        let status = statuses.get(job).map(|(_, s)| s.as_str());
        assert!(
            matches!(status, Some("cancelling" | "cancelled")),
            "{}",
            ctx(format!(
                "job {job}: cancel was acknowledged, now {status:?}"
            ))
        );
    }

    // Each job's own log: one final event at most, last; forced cancels on time.
    for (job, (sc, _)) in &statuses {
        // The status and the events of one moment: read the job again after its events,
        // and again if it moved meanwhile. The events come from the log, the status from the
        // read model, which folds a final event a moment after it is appended: a status that
        // still lags the log is read again, for a bounded while.
        let settle = Instant::now() + Duration::from_secs(5);
        let (status, events) = loop {
            let (_, before) = client
                .get(&format!("/source-connections/{sc}/jobs/{job}"))
                .await;
            let events = job_events(client, sc, job).await;
            let (_, after) = client
                .get(&format!("/source-connections/{sc}/jobs/{job}"))
                .await;
            let status = after["status"].as_str().unwrap_or_default().to_owned();
            let ended = matches!(status.as_str(), "completed" | "failed" | "cancelled");
            let lagging = !ended && events.iter().any(|e| is_final(e.0.as_str()));
            if before["status"] == after["status"] && (!lagging || Instant::now() >= settle) {
                break (status, events);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let status = &status;
        let finals: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| is_final(e.0.as_str()))
            .map(|(i, _)| i)
            .collect();
        assert!(
            finals.len() <= 1,
            "{}",
            ctx(format!(
                "job {job} has {} final events: {events:?}",
                finals.len()
            ))
        );
        if let Some(&i) = finals.first() {
            assert_eq!(
                i,
                events.len() - 1,
                "{}",
                ctx(format!("job {job}: events after its final one: {events:?}"))
            );
        }
        let ended = matches!(status.as_str(), "completed" | "failed" | "cancelled");
        assert_eq!(
            ended,
            finals.len() == 1,
            "{}",
            ctx(format!("job {job} is {status} with events {events:?}"))
        );
        let requested = events.iter().find(|e| e.0 == "CancelRequested");
        let forced = events.iter().find(|e| e.0 == "ForceCancelled");
        if let (Some(requested), Some(forced)) = (requested, forced) {
            let due = requested.1 + ChronoDuration::seconds(requested.2);
            let overdue = downtime
                .iter()
                .any(|(killed, up)| *killed <= due + TOLERANCE && *up >= due);
            FORCED.lock().unwrap().insert(job.clone(), overdue);
            assert!(
                forced.1 >= due,
                "{}",
                ctx(format!(
                    "job {job} forced at {} before its deadline {due}",
                    forced.1
                ))
            );
            let latest = latest_force(due, downtime);
            assert!(
                forced.1 <= latest,
                "{}",
                ctx(format!("job {job}: deadline {due}, forced only at {} (latest allowed {latest}; downtime {downtime:?})", forced.1))
            );
        }
        if let (Some(requested), "cancelling") = (requested, status.as_str()) {
            // Still cancelling: fine only while its deadline (or the start) is recent.
            let due = requested.1 + ChronoDuration::seconds(requested.2);
            let latest = latest_force(due, downtime).max(up_at + TOLERANCE);
            let now = Utc::now();
            if now > latest + ChronoDuration::milliseconds(300) {
                panic!("{}", ctx(format!("job {job} still cancelling at {now}, deadline {due}, up at {up_at}: the watchdog never fired")));
            }
        }
    }
    statuses
}

/// A job's events: (type, recorded_at, timeout of a CancelRequested).
async fn job_events(client: &Client, sc: &str, job: &str) -> Vec<(String, DateTime<Utc>, i64)> {
    let (status, body) = client
        .get(&format!("/source-connections/{sc}/jobs/{job}/events"))
        .await;
    assert_eq!(status, 200, "events of {job}: {body}");
    body.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["event"]["type"].as_str().unwrap_or_default().to_owned(),
                time(&e["recorded_at"]),
                e["event"]["data"]["timeout_seconds"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn verify(data_dir: &Path, seed: u64) {
    let out = syncjobs(data_dir)
        .arg("verify")
        .output()
        .expect("verify runs");
    assert!(
        out.status.success(),
        "seed {seed}: syncjobs verify after a crash: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_write_and_keeps_every_deadline() {
    let seed = env_number("SYNCJOBS_CRASH_SEED", rand::rng().random());
    let cycles = env_number("SYNCJOBS_CRASH_CYCLES", 10);
    eprintln!("crash test: seed {seed}, {cycles} cycles (SYNCJOBS_CRASH_SEED={seed} to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut downtime: Downtime = Vec::new();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let mut server = start(dir.path());
    let client = Client {
        http: http.clone(),
        address: server.address.clone(),
    };
    let (status, body) = client
        .call(
            reqwest::Method::POST,
            "/collections",
            Some(json!({"name": "Crash test", "readable_id": "crash"})),
        )
        .await
        .expect("answered");
    assert_eq!(status, 200, "{body}");

    for cycle in 0..cycles {
        // Work for a random while, with three concurrent clients, then kill mid-flight.
        let client = Arc::new(Client {
            http: http.clone(),
            address: server.address.clone(),
        });
        let workers: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(work(
                    client.clone(),
                    acked.clone(),
                    StdRng::seed_from_u64(rng.random()),
                ))
            })
            .collect();
        let run_for = Duration::from_millis(rng.random_range(500..5000));
        tokio::time::sleep(run_for).await;
        let killed_at = Utc::now();
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reaped");
        for w in &workers {
            w.abort();
        }
        for w in workers {
            let _ = w.await;
        }
        let snapshot = {
            let a = acked.lock().unwrap();
            (a.source_connections.len(), a.jobs.len(), a.cancels.len())
        };
        eprintln!(
            "cycle {cycle}: killed after {run_for:?}; acknowledged so far: {} source connections, {} runs, {} cancels",
            snapshot.0, snapshot.1, snapshot.2
        );
        verify(dir.path(), seed);
        // Sometimes stay down past a watchdog deadline.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..2500))).await;

        server = start(dir.path());
        downtime.push((killed_at, server.up_at));
        // Past the moment by which every overdue watchdog must have fired, so that the
        // checks can tell a late one from one still on its way.
        let settled = server.up_at + TOLERANCE + ChronoDuration::milliseconds(400);
        if let Ok(wait) = (settled - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
        }
        let client = Client {
            http: http.clone(),
            address: server.address.clone(),
        };
        let a = std::mem::take(&mut *acked.lock().unwrap());
        check(&client, &a, &downtime, server.up_at, seed).await;
        *acked.lock().unwrap() = a;
    }

    // The end: every job reaches a final state (forced ones at their deadlines), and the
    // last checks see them all.
    let client = Client {
        http: http.clone(),
        address: server.address.clone(),
    };
    let a = std::mem::take(&mut *acked.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let statuses = check(&client, &a, &downtime, server.up_at, seed).await;
        let open: Vec<_> = statuses
            .iter()
            .filter(|(_, (_, s))| !matches!(s.as_str(), "completed" | "failed" | "cancelled"))
            .collect();
        if open.is_empty() {
            assert!(
                !statuses.is_empty(),
                "seed {seed}: the workload ran no job at all"
            );
            let forced = FORCED.lock().unwrap();
            eprintln!(
                "crash test: {} jobs, all ended; {} forced by the watchdog, {} of them with the process down at the deadline",
                statuses.len(),
                forced.len(),
                forced.values().filter(|o| **o).count()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: jobs never ended: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(server);
    verify(dir.path(), seed);
}
