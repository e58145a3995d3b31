//! Measures entities/s through the pipeline into the SQLite destination: the timed source with
//! 10,000 entities over 0.1 s (the source alone would take 0.1 s), a first run (all inserted)
//! and a re-run (all kept), on a current-thread runtime (as under an actix arbiter) and on a
//! multi-thread one.
//!
//! Run: `cargo run --release -p syncjobs-actors --example pipeline_throughput [entity_count] [workers] [batch]`

use serde_json::json;
use std::time::Instant;
use syncjobs_actors::pipeline::{Pipeline, SqliteDestination};
use syncjobs_actors::{ProgressSink, RunOutcome, RunSpec, SyncRunner};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn measure(label: &str, pipeline: &Pipeline, count: u64) {
    let scid = Uuid::new_v4();
    for run in ["first run (inserts)", "re-run (kept)"] {
        let spec = RunSpec {
            job_id: Uuid::new_v4(),
            source_connection_id: scid,
            organization_id: Uuid::new_v4(),
            short_name: "timed".into(),
            config: json!({"entity_count": count, "duration_seconds": 0.1, "seed": 1}),
        };
        let (progress, _rx) = ProgressSink::new();
        let started = Instant::now();
        let outcome = pipeline.run(spec, CancellationToken::new(), progress).await;
        let took = started.elapsed().as_secs_f64();
        let RunOutcome::Completed(c) = outcome else {
            eprintln!("{label} {run}: run did not complete: {outcome:?}");
            std::process::exit(1);
        };
        let n = c.encountered();
        println!(
            "{label:>14} {run:<20} {n:>6} entities in {:>7.1} ms = {:>8.0} entities/s  ({c:?})",
            took * 1000.0,
            n as f64 / took
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let workers: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(Pipeline::default_workers);
    let batch: Option<usize> = args.get(3).and_then(|a| a.parse().ok());
    println!("workers: {workers}, batch: {batch:?}");
    for label in ["current-thread", "multi-thread"] {
        // A fresh destination per runtime, so neither measures the other's warm file.
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("cannot make a temp dir: {e}");
                std::process::exit(1);
            }
        };
        let dest = match SqliteDestination::open(dir.path()) {
            Ok(dest) => dest,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        let mut pipeline = Pipeline::new(dest, workers);
        if let Some(batch) = batch {
            pipeline = pipeline.with_batch_size(batch);
        }
        let rt = if label == "current-thread" {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        };
        match rt {
            Ok(rt) => rt.block_on(measure(label, &pipeline, count)),
            Err(e) => eprintln!("cannot build a {label} runtime: {e}"),
        }
    }
}
