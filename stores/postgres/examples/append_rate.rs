//! Durable appends per second on PostgreSQL with 1 and 16 concurrent appenders (one event
//! per append, each appender on a stream of its own, expected versions checked), against
//! the server at `SYNCJOBS_TEST_POSTGRES_URL`, on a fresh database dropped afterwards.
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(admin) = admin_url("append_rate") else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let store = db.store().await;
    for (round, appenders) in [1u64, 16].into_iter().enumerate() {
        let r = rate(&store, appenders, round as u64).await;
        println!("{appenders:>3} appender(s): {r:>8.0} durable appends/s");
    }
    let head = *store.watch_head().borrow();
    println!("{head} events in the log");
}
