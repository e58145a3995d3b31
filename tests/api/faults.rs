//! The PostgreSQL store's database going away under a running server and coming back
//! (issue #14, faults), through a proxy in front of the shared test server: every request
//! that needs the database answers a clear 503 within a bound, `/health` says what is wrong,
//! and everything resumes by itself with nothing lost or doubled.

use crate::helpers::{parts, spawn_app_with, Destination, Options, TestApp};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncjobs::backend::ReadModelAt;
use syncjobs_domain::EventStore;
use syncjobs_store_postgres::testkit::{admin_url, Fault, FaultProxy, TestDb};
use syncjobs_store_postgres::{PgStore, Timeouts};

/// The store's waits, short so the test shows the bounds without sitting through defaults.
const SHORT: Timeouts = Timeouts {
    connect: Duration::from_secs(1),
    pool_wait: Duration::from_secs(1),
    operation: Duration::from_secs(1),
    listener_check: Duration::from_millis(300),
};
/// The most any answer may take while the database is away (the store's waits plus slack
/// for a loaded machine); a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(8);

async fn health(app: &TestApp) -> Value {
    let req = app
        .client
        .get(app.url("/health"))
        .header("x-api-key", &app.key);
    parts(req.send().await.unwrap()).await.1
}

async fn until_health(app: &TestApp, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + 2 * BOUND;
    loop {
        let h = health(app).await;
        if ok(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "{what}: /health says {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {BOUND:?}"))
}

#[actix_web::test]
async fn a_lost_database_is_a_clear_503_within_a_bound_and_everything_resumes() {
    let Some(admin) = admin_url("a_lost_database_is_a_clear_503") else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let proxy = FaultProxy::start(&db.url).await;
    let store: Arc<dyn EventStore> = PgStore::connect_with(&proxy.url, SHORT)
        .await
        .expect("the store opens");
    let app = spawn_app_with(Options {
        store: Some(store),
        destination: Destination::Slow(Duration::ZERO),
        // The read model on the same database, through the same proxy.
        read_model: Some(ReadModelAt::Postgres(proxy.url.clone().into(), SHORT)),
        ..Options::default()
    })
    .await;
    let (status, _) = app.post("/collections", json!({"name": "Before"})).await;
    assert_eq!(status, 200);

    for fault in [Fault::Blackhole, Fault::Refuse] {
        proxy.set(fault);
        // A command needs the database: a clear 503, soon.
        let (status, body) = within(
            "a command",
            app.post("/collections", json!({"name": format!("During {fault:?}")})),
        )
        .await;
        assert_eq!(status, 503, "{fault:?}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default().to_owned();
        assert!(
            detail.starts_with("Event store is unavailable: ")
                || detail == "Read model database is unavailable",
            "{fault:?}: {detail}"
        );
        // /health says what is wrong, even to a probe that changes nothing.
        let h = until_health(&app, "degraded while the database is away", |h| {
            h["status"] == "degraded" && h["store"]["connected"] == false
        })
        .await;
        assert!(
            h["reasons"].as_array().is_some_and(|r| r.iter().any(|r| r
                .as_str()
                .is_some_and(|r| r.starts_with("the event store is unreachable")))),
            "{fault:?}: {h}"
        );
        // A read: answered from what the node holds (a cached row), or a clear 503; never a
        // hang or a 500.
        let (status, body) = within("a read", app.get("/collections")).await;
        assert!(
            status == 200 || (status == 503 && body["detail"].is_string()),
            "{fault:?}: {status} {body}"
        );

        proxy.set(Fault::Pass);
        until_health(&app, "healthy once the database is back", |h| {
            h["status"] == "healthy" && h["store"]["connected"] == true
        })
        .await;
        let (status, body) = within(
            "a command after",
            app.post("/collections", json!({"name": format!("After {fault:?}")})),
        )
        .await;
        assert_eq!(status, 200, "{fault:?}: {body}");
    }

    // Nothing lost, nothing doubled: what was acknowledged exists once; what was refused
    // does not exist at all.
    let (status, listed) = app.get("/collections").await;
    assert_eq!(status, 200);
    let mut names: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["After Blackhole", "After Refuse", "Before"]);
}
