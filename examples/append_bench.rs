//! Durable append throughput of the embedded store with 1, 16 and 256 concurrent appenders,
//! one event per append, each appender on its own stream.
//!
//! `cargo run --release --example append_bench -- [SECONDS_PER_RUN] [DIR]`
//! (defaults: 3 s, a temporary directory under the system temp dir). Use a DIR on the disk
//! you care about: on tmpfs an fsync costs nothing and the figures mean little.

use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs::store::embedded::EmbeddedStore;
use syncjobs_domain::store::contract::sample;
use syncjobs_domain::{EventStore, ExpectedVersion};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let base = match args.next() {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let run_for = Duration::from_secs_f64(seconds);
    println!(
        "durable appends (synchronous=FULL), 1 event each, {seconds} s per run, in {}",
        base.path().display()
    );
    println!(
        "{:>10} {:>12} {:>10} {:>15} {:>8} {:>8}",
        "appenders", "appends/s", "commits", "appends/commit", "p50 ms", "p99 ms"
    );
    for appenders in [1usize, 16, 256] {
        let dir = base.path().join(format!("run-{appenders}"));
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir)).await??;
        let started = Instant::now();
        let deadline = started + run_for;
        let tasks: Vec<_> = (0..appenders)
            .map(|a| {
                let store: Arc<EmbeddedStore> = store.clone();
                tokio::spawn(async move {
                    let stream = format!("bench-{a}");
                    let mut latencies = Vec::new();
                    let mut version = 0;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        store
                            .append(
                                &stream,
                                ExpectedVersion::Exact(version),
                                vec![sample(version)],
                            )
                            .await?;
                        latencies.push(t.elapsed());
                        version += 1;
                    }
                    Ok::<_, syncjobs_domain::StoreError>(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort();
        let pct = |p: usize| {
            latencies
                .get(latencies.len() * p / 100)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let (p50, p99) = (pct(50), pct(99));
        let appends = latencies.len() as f64;
        let commits = store.commits();
        println!(
            "{appenders:>10} {:>12.0} {commits:>10} {:>15.1} {p50:>8.2} {p99:>8.2}",
            appends / elapsed,
            appends / commits.max(1) as f64,
        );
        store.close();
        store.closed().await;
    }
    Ok(())
}
