//! #13: webhook delivery (issue #17): events to delivered webhooks per second with 100
//! subscriptions and a local receiver, and the delay from an event's commit to its delivery.
//!
//! One organization has 100 subscriptions to `collection.created`, each to its own path of a
//! receiver in this process (a minimal HTTP/1.1 server on 127.0.0.1 answering 200 at once).
//! Clients create collections, 8 at a time; each creation is one event, so 100 deliveries.
//! The rate is deliveries over the time from the first creation to the last delivery; the
//! delay of a delivery is its arrival minus the event's `timestamp` in the payload (the
//! commit's recorded time, same machine clock).

use crate::client::Api;
use crate::error::{BenchError, Result};
use crate::report::{Outcome, Table, Verdict};
use crate::server::{ServerProcess, SyncjobsServer};
use crate::stats::{ms, per_second, thousands, Latencies};
use crate::Config;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

const SUBSCRIPTIONS: usize = 100;
const EVENTS: usize = 200;
const QUICK_EVENTS: usize = 20;
const CLIENTS: usize = 8;
/// The p99 of commit -> delivery the benchmark is judged by.
const TARGET_P99: Duration = Duration::from_secs(1);

/// Arrival time and the payload's commit time of every delivery.
type Arrivals = Arc<Mutex<Vec<(chrono::DateTime<chrono::Utc>, Instant, String)>>>;

pub async fn run(cfg: &Config) -> Result<Outcome> {
    let events = if cfg.quick { QUICK_EVENTS } else { EVENTS };
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

    let arrivals: Arrivals = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let receiver = tokio::spawn(receive(listener, arrivals.clone()));
    let http = reqwest::Client::new();
    for i in 0..SUBSCRIPTIONS {
        let res = http
            .post(api.url("/webhooks/subscriptions"))
            .header("x-api-key", &key)
            .json(&json!({
                "url": format!("http://127.0.0.1:{port}/s{i}"),
                "event_types": ["collection.created"],
            }))
            .send()
            .await?;
        if !res.status().is_success() {
            return Err(BenchError::failed(format!(
                "creating a subscription: {}",
                res.status()
            )));
        }
    }
    eprintln!(
        "   {SUBSCRIPTIONS} subscriptions; creating {events} collections, {CLIENTS} at a time"
    );

    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (api, next) = (Api::new(&server.base_url, &key)?, next.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= events {
                    return Ok::<_, BenchError>(());
                }
                api.create_collection(&format!("webhook bench {i}")).await?;
            }
        }));
    }
    for c in clients {
        c.await.map_err(|e| BenchError::failed(e.to_string()))??;
    }
    let committed = started.elapsed();
    let expected = events * SUBSCRIPTIONS;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = arrivals.lock().map(|a| a.len()).unwrap_or(0);
        if got >= expected {
            break;
        }
        if Instant::now() > deadline {
            receiver.abort();
            return Err(BenchError::failed(format!(
                "{got} of {expected} deliveries after 120 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    receiver.abort();
    let cpu = server.cpu_time().ok();
    let arrivals = arrivals
        .lock()
        .map(|a| a.clone())
        .map_err(|_| BenchError::failed("the receiver's record is poisoned"))?;
    let last = arrivals
        .iter()
        .map(|a| a.1)
        .max()
        .unwrap_or_else(Instant::now);
    let took = last.duration_since(started);
    let mut delays = Vec::with_capacity(arrivals.len());
    for (at, _, payload) in &arrivals {
        let v: serde_json::Value = serde_json::from_str(payload)?;
        let committed_at = v["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .ok_or_else(|| BenchError::failed(format!("no timestamp in {payload}")))?;
        delays.push(
            (*at - committed_at.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default(),
        );
    }
    let delays = Latencies::new(delays);
    let rate = per_second(arrivals.len() as f64, took);
    let mut table = Table::new(&["", "value"]);
    table.row(vec![
        "events (collections created)".into(),
        events.to_string(),
    ]);
    table.row(vec![
        "deliveries (events x subscriptions)".into(),
        arrivals.len().to_string(),
    ]);
    table.row(vec!["events committed in (ms)".into(), ms(committed)]);
    table.row(vec!["first event to last delivery (ms)".into(), ms(took)]);
    table.row(vec!["deliveries/s".into(), thousands(rate)]);
    table.row(vec!["commit -> delivery p50 (ms)".into(), ms(delays.p50())]);
    table.row(vec!["commit -> delivery p99 (ms)".into(), ms(delays.p99())]);
    table.row(vec!["commit -> delivery max (ms)".into(), ms(delays.max())]);
    if let Some(cpu) = cpu {
        table.row(vec!["server CPU time, whole run (ms)".into(), ms(cpu)]);
    }
    Ok(Outcome {
        headline: format!(
            "{} deliveries/s; commit -> delivery p50 {} ms, p99 {} ms",
            thousands(rate),
            ms(delays.p50()),
            ms(delays.p99())
        ),
        verdict: Verdict::of(delays.p99() <= TARGET_P99),
        body: format!(
            "{}\nEach delivery is one signed POST and one recorded attempt (an event of the \
             delivery's stream, folded by the read model) before the subscription's next.\n",
            table.render()
        ),
    })
}

/// Accepts connections and answers every request 200, recording each body.
async fn receive(listener: TcpListener, arrivals: Arrivals) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve(stream, arrivals.clone()));
    }
}

/// One kept-alive connection: requests with a `content-length` body, one after another.
async fn serve(mut stream: TcpStream, arrivals: Arrivals) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        let now = (chrono::Utc::now(), Instant::now());
        if let Ok(mut a) = arrivals.lock() {
            a.push((now.0, now.1, body));
        }
        buf.drain(..head_end + length);
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}
