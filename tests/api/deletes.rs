//! Deletes wait for running syncs, then remove the connection and what its syncs wrote.

use crate::helpers::{id, lasting, spawn_app_with, Destination, Options};
use serde_json::json;
use std::time::{Duration, Instant};
use uuid::Uuid;

async fn final_in_log(app: &crate::helpers::TestApp, job: Uuid) -> bool {
    app.job_events(job)
        .await
        .last()
        .and_then(|e| e.job_event().map(|j| j.is_final()))
        .unwrap_or(false)
}

fn slow_writes() -> Options {
    // Each destination write takes a while, so a cancelled run has a write to finish.
    Options {
        destination: Destination::Slow(Duration::from_millis(300)),
        ..Options::default()
    }
}

#[actix_web::test]
async fn deleting_a_source_connection_stops_its_sync_first_then_removes_it_and_its_entities() {
    let app = spawn_app_with(slow_writes()).await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    app.wait_job(sc, job, "wrote", |j| {
        j["entities_inserted"].as_u64() > Some(0)
    })
    .await;
    assert!(app.entity_count(sc).await > 0);
    let before = app.get(&format!("/source-connections/{sc}")).await.1;
    let (status, body) = app.delete(&format!("/source-connections/{sc}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        final_in_log(&app, job).await,
        "the job was final before the answer"
    );
    assert_eq!(body["id"], before["id"]);
    assert_eq!(
        body["status"], "syncing",
        "the answer is the connection as it was"
    );
    assert_eq!(app.get(&format!("/source-connections/{sc}")).await.0, 404);
    assert_eq!(
        app.get(&format!("/source-connections/{sc}/jobs")).await.0,
        404
    );
    assert_eq!(
        app.get(&format!("/source-connections/{sc}/jobs/{job}"))
            .await
            .0,
        404
    );
    assert_eq!(app.entity_count(sc).await, 0, "its entities went with it");
}

#[actix_web::test]
async fn deleting_a_collection_deletes_its_connections_the_same_way() {
    let app = spawn_app_with(slow_writes()).await;
    let c = app.collection_with_id("whole").await;
    let a = id(&app.source_connection("whole", lasting(30.0)).await);
    let b = id(&app.source_connection("whole", lasting(30.0)).await);
    let ja = id(&app.run(a).await);
    let jb = id(&app.run(b).await);
    app.wait_job(a, ja, "wrote", |j| {
        j["entities_inserted"].as_u64() > Some(0)
    })
    .await;
    app.wait_job(b, jb, "wrote", |j| {
        j["entities_inserted"].as_u64() > Some(0)
    })
    .await;
    let (status, body) = app.delete("/collections/whole").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], c["id"]);
    assert_eq!(body["status"], "ACTIVE", "as it was, syncing");
    assert!(final_in_log(&app, ja).await && final_in_log(&app, jb).await);
    for sc in [a, b] {
        assert_eq!(app.get(&format!("/source-connections/{sc}")).await.0, 404);
        assert_eq!(app.entity_count(sc).await, 0);
    }
    assert_eq!(app.get("/collections/whole").await.0, 404);
    assert_eq!(app.get("/source-connections").await.1, json!([]));
}

#[actix_web::test]
async fn the_wait_for_a_sync_that_will_not_stop_is_bounded() {
    let app = spawn_app_with(Options {
        cancel_timeout_seconds: 4,
        delete_wait: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    // A source that ignores the cancel signal (a hung upstream): only the watchdog ends it.
    let sc = app
        .idle_connection(
            json!({"entity_count": 1000, "duration_seconds": 30, "ignore_cancel": true}),
        )
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "running").await;
    let started = Instant::now();
    let (status, _) = app.delete(&format!("/source-connections/{sc}")).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    // It waited its bounded second, not for the watchdog's 4 s (the job is not final yet,
    // checked below; the upper bound leaves room for a loaded machine).
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(app.get(&format!("/source-connections/{sc}")).await.0, 404);
    assert!(
        !final_in_log(&app, job).await,
        "the job was still running on"
    );
    // The watchdog ends it later; the connection stays gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !final_in_log(&app, job).await {
        assert!(
            Instant::now() < deadline,
            "the watchdog never forced the job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get(&format!("/source-connections/{sc}")).await.0, 404);
}

#[actix_web::test]
async fn a_collection_with_several_syncs_that_will_not_stop_waits_once_not_once_per_sync() {
    let app = spawn_app_with(Options {
        cancel_timeout_seconds: 30,
        delete_wait: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let c = app.collection("Stuck Syncs").await;
    let readable = c["readable_id"].as_str().unwrap().to_owned();
    let mut connections = Vec::new();
    for _ in 0..3 {
        let sc = id(&app
            .source_connection(
                &readable,
                json!({"entity_count": 1000, "duration_seconds": 30, "ignore_cancel": true}),
            )
            .await);
        let job = id(&app.run(sc).await);
        app.wait_status(sc, job, "running").await;
        connections.push(sc);
    }
    let started = Instant::now();
    let (status, _) = app.delete(&format!("/collections/{readable}")).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    // One bounded wait of 1 s for all three, where waiting for each in turn took 3 s (the
    // upper bound leaves room for a loaded machine).
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    for sc in connections {
        assert_eq!(app.get(&format!("/source-connections/{sc}")).await.0, 404);
    }
    assert_eq!(app.get(&format!("/collections/{readable}")).await.0, 404);
}
