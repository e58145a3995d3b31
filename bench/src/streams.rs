//! #8: live streams. 1,000 jobs run (slow timed sources) while a closed-loop write load
//! starts and cancels other jobs; the load's rate (events committed per second, read from the
//! store's head on `/health`) and the server's CPU per committed event are measured in
//! alternating windows with no stream open and with one `GET /sync/job/{id}/subscribe`
//! stream open on each running job (issue #18: every open stream used to re-read its job on
//! every commit).

use crate::client::{start_slow_jobs, Api, SLOW_COUNT, SLOW_SECONDS};
use crate::error::{BenchError, Result};
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::{ms, per_second, ratio, thousands, Latencies};
use crate::workload::timed_config;
use crate::Config;
use futures::future::join_all;
use reqwest::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use uuid::Uuid;

const STREAMS: usize = 1_000;
const QUICK_STREAMS: usize = 100;
/// Closed-loop writers; each cycles over its own ring of connections, so a job it cancelled
/// has had time to end before the writer runs that connection again.
const WRITERS: usize = 8;
const RING: usize = 8;
const SETUP_CONCURRENCY: usize = 32;
/// Before each window: the write load settles after streams opened or closed.
const SETTLE: Duration = Duration::from_secs(2);
/// A writer whose connection is still busy (its last job not ended yet) moves on after this.
const BUSY_PAUSE: Duration = Duration::from_millis(5);
/// How long opening or closing all streams may take.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(120);
/// With streams open, the write load should keep at least this share of its rate.
const TARGET_RATIO: f64 = 0.9;

/// One measured window.
struct Window {
    streams: usize,
    start: Instant,
    took: Duration,
    events: u64,
    commands: u64,
    cpu: Duration,
    /// Messages the open streams received during the window.
    messages: u64,
}

impl Window {
    fn events_per_second(&self) -> f64 {
        per_second(self.events as f64, self.took)
    }

    /// Server CPU per committed event, in microseconds.
    fn cpu_per_event_us(&self) -> f64 {
        if self.events == 0 {
            return 0.0;
        }
        self.cpu.as_secs_f64() * 1e6 / self.events as f64
    }
}

/// When a command ended, and how long it took.
type Sample = (Instant, Duration);

/// What the writers share with the measurement.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    commands: AtomicU64,
    busy: AtomicU64,
}

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let (streams, window, rounds) = if cfg.quick {
        (QUICK_STREAMS, Duration::from_secs(3), 1)
    } else {
        (STREAMS, Duration::from_secs(10), 2)
    };
    let dir = tempfile::tempdir_in(&cfg.work_dir)?;
    let key = format!("bench-{}", Uuid::new_v4().simple());
    let data_dir = dir.path().join("data");
    let mut server = ServerProcess::syncjobs(SyncjobsServer {
        bin: &cfg.server_bin,
        data_dir: &data_dir,
        api_key: &key,
        env: vec![],
    })?;
    let api = Api::new(&server.base_url, &key)?;
    server
        .wait_ready(&api, 0, crate::history::READY_TIMEOUT)
        .await?;
    let collection = api.create_collection("bench streams").await?;
    eprintln!("   starting {streams} jobs to stream");
    let jobs = start_slow_jobs(&api, &collection, 0, streams, SETUP_CONCURRENCY).await?;
    let mut ring = Vec::with_capacity(WRITERS * RING);
    for i in 0..WRITERS * RING {
        let config = timed_config(SLOW_COUNT, SLOW_SECONDS, i as i64);
        ring.push(
            api.create_timed_connection(&collection, &format!("writer {i:03}"), config)
                .await?,
        );
    }

    let http = Http::new(&server.base_url, &key)?;
    let load = Arc::new(Load::default());
    let writers: Vec<JoinHandle<Result<Vec<Sample>>>> = ring
        .chunks(RING)
        .map(|ring| {
            let (http, load, ring) = (http.clone(), load.clone(), ring.to_vec());
            tokio::spawn(async move { write(http, load, ring).await })
        })
        .collect();

    let messages = Arc::new(AtomicU64::new(0));
    let mut windows = Vec::new();
    let measured = async {
        for _ in 0..rounds {
            windows.push(measure(&server, &api, &load, &messages, 0, window).await?);
            eprintln!("   opening {streams} streams");
            let open = open_streams(&http, &jobs, &messages).await?;
            windows.push(measure(&server, &api, &load, &messages, streams, window).await?);
            close_streams(open, &api).await?;
        }
        Ok::<_, BenchError>(())
    }
    .await;
    load.stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for w in writers {
        samples.push(w.await??);
    }
    measured?;
    let health = api.health().await?;
    server.stop().await?;
    Ok(report(
        &windows,
        &samples.concat(),
        load.busy.load(Ordering::Relaxed),
        streams,
        &health,
    ))
}

/// One window: the head, the server's CPU and the commands done, before and after.
async fn measure(
    server: &ServerProcess,
    api: &Api,
    load: &Load,
    messages: &AtomicU64,
    streams: usize,
    window: Duration,
) -> Result<Window> {
    tokio::time::sleep(SETTLE).await;
    let head = |h: serde_json::Value| h["store"]["head"].as_u64().unwrap_or(0);
    let head_before = head(api.health().await?);
    let (cpu_before, commands_before) = (server.cpu_time()?, load.commands.load(Ordering::SeqCst));
    let messages_before = messages.load(Ordering::SeqCst);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let took = start.elapsed();
    let cpu = server.cpu_time()?.saturating_sub(cpu_before);
    let commands = load.commands.load(Ordering::SeqCst) - commands_before;
    let messages = messages.load(Ordering::SeqCst) - messages_before;
    let events = head(api.health().await?).saturating_sub(head_before);
    let w = Window {
        streams,
        start,
        took,
        events,
        commands,
        cpu,
        messages,
    };
    eprintln!(
        "   {streams} streams: {} events/s, {:.0} us CPU per event",
        thousands(w.events_per_second()),
        w.cpu_per_event_us()
    );
    Ok(w)
}

/// A writer: run a job on the next connection of its ring and cancel it, again and again.
/// Returns when each command ended and how long it took.
async fn write(http: Http, load: Arc<Load>, ring: Vec<Uuid>) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for scid in ring.iter().cycle() {
        if load.stop.load(Ordering::SeqCst) {
            break;
        }
        let t = Instant::now();
        let (status, body) = http
            .post(&format!("/source-connections/{scid}/run"))
            .await?;
        if status == StatusCode::BAD_REQUEST {
            // Its last job is still cancelling: try the next connection.
            load.busy.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(BUSY_PAUSE).await;
            continue;
        }
        let job = expect_job(status, &body, "run")?;
        samples.push((Instant::now(), t.elapsed()));
        load.commands.fetch_add(1, Ordering::SeqCst);
        let t = Instant::now();
        let (status, body) = http
            .post(&format!("/source-connections/{scid}/jobs/{job}/cancel"))
            .await?;
        expect_job(status, &body, "cancel")?;
        samples.push((Instant::now(), t.elapsed()));
        load.commands.fetch_add(1, Ordering::SeqCst);
    }
    Ok(samples)
}

fn expect_job(status: StatusCode, body: &[u8], what: &str) -> Result<Uuid> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (
        status,
        v["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
    ) {
        (StatusCode::OK, Some(id)) => Ok(id),
        _ => Err(BenchError::failed(format!(
            "{what}: {status} {}",
            String::from_utf8_lossy(body)
        ))),
    }
}

/// Opens one progress stream per job and waits until each has its `connected` message;
/// each then counts the messages it receives into `messages`.
async fn open_streams(
    http: &Http,
    jobs: &[crate::client::Job],
    messages: &Arc<AtomicU64>,
) -> Result<Vec<JoinHandle<()>>> {
    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (http, messages, connected_tx) = (http.clone(), messages.clone(), connected_tx.clone());
        let path = format!("/sync/job/{}/subscribe", job.id);
        tasks.push(tokio::spawn(async move {
            let result = http.follow(&path, &messages, connected_tx.clone()).await;
            if let Err(e) = result {
                let _ = connected_tx.send(Err(e));
            }
        }));
    }
    drop(connected_tx);
    let deadline = Instant::now() + STREAMS_TIMEOUT;
    for _ in 0..jobs.len() {
        match tokio::time::timeout_at(deadline.into(), connected.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err(BenchError::failed("a stream ended before it connected")),
            Err(_) => {
                return Err(BenchError::failed(format!(
                    "streams not connected within {STREAMS_TIMEOUT:?}"
                )))
            }
        }
    }
    Ok(tasks)
}

/// Drops every stream and waits until the server counts none open.
async fn close_streams(tasks: Vec<JoinHandle<()>>, api: &Api) -> Result<()> {
    for t in &tasks {
        t.abort();
    }
    join_all(tasks).await;
    let deadline = Instant::now() + STREAMS_TIMEOUT;
    loop {
        let health = api.health().await?;
        if health["streams"]["open"].as_u64() == Some(0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::failed(format!(
                "streams still open {STREAMS_TIMEOUT:?} after their clients left: {health}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The raw HTTP of this benchmark: POSTs whose 400 is an answer, not a failure, and
/// streams without a whole-request timeout.
#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Http {
    fn new(base: &str, key: &str) -> Result<Http> {
        Ok(Http {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(2 * STREAMS)
                .build()?,
            base: base.to_string(),
            key: key.to_string(),
        })
    }

    async fn post(&self, path: &str) -> Result<(StatusCode, Vec<u8>)> {
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            self.client
                .post(format!("{}{path}", self.base))
                .header("x-api-key", &self.key)
                .send(),
        )
        .await
        .map_err(|_| BenchError::failed(format!("POST {path}: no answer in 30 s")))??;
        let status = res.status();
        Ok((status, res.bytes().await?.to_vec()))
    }

    /// Reads the stream at `path` until it ends, counting its messages; says `connected`
    /// once the first one came.
    async fn follow(
        &self,
        path: &str,
        messages: &AtomicU64,
        connected: tokio::sync::mpsc::UnboundedSender<Result<()>>,
    ) -> Result<()> {
        let mut res = self
            .client
            .get(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .header("accept", "text/event-stream")
            .send()
            .await?;
        if res.status() != StatusCode::OK {
            return Err(BenchError::failed(format!("GET {path}: {}", res.status())));
        }
        let mut first = true;
        while let Some(chunk) = res.chunk().await? {
            let n = chunk.windows(2).filter(|w| w == b"\n\n").count() as u64;
            messages.fetch_add(n, Ordering::Relaxed);
            if first && n > 0 {
                first = false;
                let _ = connected.send(Ok(()));
            }
        }
        Ok(())
    }
}

fn report(
    windows: &[Window],
    samples: &[Sample],
    busy: u64,
    streams: usize,
    health: &serde_json::Value,
) -> Outcome {
    let mut table = Table::new(&[
        "window",
        "open streams",
        "events committed/s",
        "commands/s",
        "server CPU per event",
        "server CPU",
        "command p50 / p99",
        "stream messages",
    ]);
    for (i, w) in windows.iter().enumerate() {
        let end = w.start + w.took;
        let lat = Latencies::new(
            samples
                .iter()
                .filter(|(at, _)| *at >= w.start && *at <= end)
                .map(|(_, d)| *d)
                .collect(),
        );
        table.row(vec![
            format!("{}", i + 1),
            thousands(w.streams as f64),
            thousands(w.events_per_second()),
            thousands(per_second(w.commands as f64, w.took)),
            format!("{:.0} us", w.cpu_per_event_us()),
            format!(
                "{:.0} %",
                100.0 * w.cpu.as_secs_f64() / w.took.as_secs_f64()
            ),
            format!("{} / {} ms", ms(lat.p50()), ms(lat.p99())),
            thousands(w.messages as f64),
        ]);
    }
    let rate = |open: bool| {
        let v: Vec<f64> = windows
            .iter()
            .filter(|w| (w.streams > 0) == open)
            .map(Window::events_per_second)
            .collect();
        crate::stats::median(&v)
    };
    let cpu = |open: bool| {
        let v: Vec<f64> = windows
            .iter()
            .filter(|w| (w.streams > 0) == open)
            .map(Window::cpu_per_event_us)
            .collect();
        crate::stats::median(&v)
    };
    let (without, with) = (rate(false), rate(true));
    let kept = ratio(with, without);
    let body = format!(
        "{}\nThe write load: {WRITERS} closed-loop clients, each cycling over {RING} source \
         connections of its own: `POST .../run`, then `POST .../jobs/{{id}}/cancel` of the new \
         job (a connection whose last job is still cancelling is skipped: {busy} times). \
         Meanwhile {streams} jobs run (timed sources of {SLOW_COUNT} entities over \
         {SLOW_SECONDS:.0} s, their progress reports are part of the events), and in the \
         windows with streams each of them has one `GET /sync/job/{{id}}/subscribe` stream \
         open (all connected before the window). Events committed/s is the store's head on \
         `/health` before and after each window; server CPU is user + system time of the \
         server process over the window. Windows alternate without and with streams \
         ({:.0} s settling before each). Medians: {} events/s without streams, {} with; \
         {:.0} / {:.0} us CPU per event. `/health` at the end: `{health}`.\n",
        table.render(),
        SETTLE.as_secs_f64(),
        thousands(without),
        thousands(with),
        cpu(false),
        cpu(true),
    );
    Outcome {
        headline: format!(
            "{kept:.2} x the write rate with {streams} streams open ({} vs {} events/s; {:.0} vs {:.0} us CPU per event)",
            thousands(with),
            thousands(without),
            cpu(true),
            cpu(false)
        ),
        verdict: Verdict::of(kept >= TARGET_RATIO),
        body,
    }
}
