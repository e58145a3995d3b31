//! Entities per second through the pipeline into the PostgreSQL destination against the
//! embedded SQLite one, in one run: ten timed sources of 10,000 entities over 0.1 s each, run
//! at once through one `Pipeline` (its default worker pool), first into an empty destination
//! (every entity inserted), then again (every entity kept). PostgreSQL at
//! `SYNCJOBS_TEST_POSTGRES_URL`, a fresh database per round, dropped afterwards; SQLite in a
//! fresh directory under the current one (a real disk: fsync on tmpfs costs nothing). The
//! two alternate in each round, so a drift in the machine's load hits both.
//!
//!     SYNCJOBS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!         cargo run --release -p syncjobs-store-postgres --example destination_rate [ROUNDS]
//!
//! Not a test and not part of `bench/run`: the figure of BENCHMARKS.md's "destination on
//! PostgreSQL".

use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_actors::pipeline::{EntitySink, Pipeline, SqliteDestination};
use syncjobs_actors::{ProgressSink, RunOutcome, RunSpec, SyncRunner};
use syncjobs_store_postgres::testkit::{admin_url, TestDb};
use syncjobs_store_postgres::PgDestination;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CONNECTIONS: usize = 10;
const ENTITIES: u64 = 10_000;

/// Every connection's source at once through one pipeline; (entities, time).
async fn sync_all(dest: Arc<dyn EntitySink>, connections: &[Uuid]) -> (u64, Duration) {
    let pipeline = Arc::new(Pipeline::new(dest, Pipeline::default_workers()));
    let started = Instant::now();
    let runs: Vec<_> = connections
        .iter()
        .enumerate()
        .map(|(seed, scid)| {
            let pipeline = pipeline.clone();
            let spec = RunSpec {
                job_id: Uuid::new_v4(),
                source_connection_id: *scid,
                organization_id: Uuid::nil(),
                short_name: "timed".into(),
                config: serde_json::json!({
                    "entity_count": ENTITIES, "duration_seconds": 0.1, "seed": seed
                }),
            };
            tokio::spawn(async move {
                let (progress, _watch) = ProgressSink::new();
                pipeline.run(spec, CancellationToken::new(), progress).await
            })
        })
        .collect();
    let mut entities = 0;
    for run in runs {
        match run.await.expect("the run task ends") {
            RunOutcome::Completed(c) => entities += c.inserted + c.kept,
            other => panic!("a run did not complete: {other:?}"),
        }
    }
    (entities, started.elapsed())
}

/// First sync and re-sync rates (entities/s) on one fresh destination.
async fn rates(dest: Arc<dyn EntitySink>) -> (f64, f64) {
    let connections: Vec<Uuid> = (0..CONNECTIONS).map(|_| Uuid::new_v4()).collect();
    let rate = |(n, t): (u64, Duration)| n as f64 / t.as_secs_f64();
    let first = rate(sync_all(dest.clone(), &connections).await);
    let again = rate(sync_all(dest, &connections).await);
    (first, again)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(admin) = admin_url("destination_rate") else {
        return;
    };
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    println!(
        "{CONNECTIONS} timed runs of {ENTITIES} entities at once, {} workers per run",
        Pipeline::default_workers()
    );
    println!(
        "round | sqlite first | pg first | pg/sqlite | sqlite re-sync | pg re-sync | pg/sqlite"
    );
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut sqlite = (0.0, 0.0);
        let mut pg = (0.0, 0.0);
        for step in 0..2 {
            if (step + round) % 2 == 0 {
                let dir = tempfile::tempdir_in(".").expect("a scratch directory");
                let dest = SqliteDestination::open(dir.path()).expect("sqlite destination");
                sqlite = rates(dest).await;
            } else {
                let db = TestDb::create(&admin).await;
                let dest = PgDestination::connect(&db.url)
                    .await
                    .expect("postgres destination");
                pg = rates(dest).await;
            }
        }
        first.push(pg.0 / sqlite.0);
        again.push(pg.1 / sqlite.1);
        println!(
            "{} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2}",
            round + 1,
            sqlite.0,
            pg.0,
            pg.0 / sqlite.0,
            sqlite.1,
            pg.1,
            pg.1 / sqlite.1
        );
    }
    println!(
        "median PostgreSQL / SQLite: first sync {:.2} x, re-sync {:.2} x",
        median(first),
        median(again)
    );
}
