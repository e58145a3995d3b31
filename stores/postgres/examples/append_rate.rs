//! Durable appends per second on PostgreSQL with 1 and 16 concurrent appenders (one event
//! per append, each appender on a stream of its own, expected versions checked), against
//! the server at `SYNCJOBS_TEST_POSTGRES_URL`, on a fresh database dropped afterwards; and,
//! for scale, raw single-row INSERTs (one per transaction, a `bigserial`, no lock, no check)
//! into a table of the same columns from as many connections.
//!
//!     SYNCJOBS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!         cargo run --release -p syncjobs-store-postgres --example append_rate
//!
//! Not a test and not part of `bench/run`: a figure for the method's cost (lib.rs).

use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs_domain::store::contract::sample;
use syncjobs_domain::{EventStore, ExpectedVersion};
use syncjobs_store_postgres::testkit::{admin_url, TestDb};
use syncjobs_store_postgres::PgStore;
use uuid::Uuid;

const RUN: Duration = Duration::from_secs(3);

async fn rate(store: &Arc<PgStore>, appenders: u64, round: u64) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|a| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = format!("bench-{round}-{a}");
                let mut v = 0;
                while started.elapsed() < RUN {
                    store
                        .append(&stream, ExpectedVersion::Exact(v), vec![sample(v)])
                        .await
                        .expect("append");
                    v += 1;
                }
                v
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("appender");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The same figure for raw INSERTs, each appender on a connection of its own.
async fn raw_rate(db: &TestDb, appenders: u64) -> f64 {
    let setup = db.client().await;
    setup
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS raw_events (LIKE syncjobs_events); \
             ALTER TABLE raw_events DROP COLUMN IF EXISTS position; \
             ALTER TABLE raw_events ADD COLUMN IF NOT EXISTS position bigserial PRIMARY KEY",
        )
        .await
        .expect("the raw table");
    let data = sample(0).event.to_json().expect("json");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let client = db.client().await;
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare(
                    "INSERT INTO raw_events (stream_id, version, event_id, event_type, \
                     schema_version, data, recorded_at_ns, caused_by) \
                     VALUES ($1, $2, $3, 'JobStarted', 2, $4::text::json, 0, 'bench')",
                )
                .await
                .expect("prepare");
            let (stream, mut n) = (Uuid::new_v4().to_string(), 0i64);
            while started.elapsed() < RUN {
                n += 1;
                client
                    .execute(&insert, &[&stream, &n, &Uuid::now_v7(), &data])
                    .await
                    .expect("insert");
            }
            n as u64
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("inserter");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(admin) = admin_url("append_rate") else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let store = db.store().await;
    for (round, appenders) in [1u64, 16].into_iter().enumerate() {
        let r = rate(&store, appenders, round as u64).await;
        let raw = raw_rate(&db, appenders).await;
        println!(
            "{appenders:>3} appender(s): {r:>8.0} durable appends/s; raw INSERTs {raw:>8.0}/s ({:.2}x)",
            r / raw
        );
    }
    let head = *store.watch_head().borrow();
    println!("{head} events in the log");
}
