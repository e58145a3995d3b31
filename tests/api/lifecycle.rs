//! The whole life of a job over HTTP: run -> running -> cancel -> cancelled.

use crate::helpers::{id, lasting, spawn_app};

#[actix_web::test]
async fn run_then_cancel_ends_cancelled_with_what_was_written() {
    let app = spawn_app().await;
    let sc = app.idle_connection(lasting(20.0)).await;
    let job = app.run(sc).await;
    assert_eq!(job["status"], "pending");
    let job = id(&job);
    let running = app
        .wait_job(sc, job, "made progress", |j| {
            j["status"] == "running" && j["entities_inserted"].as_u64() >= Some(5)
        })
        .await;
    assert!(running["started_at"].is_string());
    assert_eq!(
        app.get(&format!("/source-connections/{sc}")).await.1["status"],
        "syncing"
    );
    let (status, body) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "cancelling");
    let done = app.wait_status(sc, job, "cancelled").await;
    let written = done["entities_inserted"].as_u64().unwrap();
    assert!(written >= 5, "{done}");
    assert!(done["duration_seconds"].as_f64().unwrap() > 0.0);
    let (_, sc_body) = app.get(&format!("/source-connections/{sc}")).await;
    assert_eq!(sc_body["status"], "active");
    assert_eq!(sc_body["sync"]["last_job"]["status"], "cancelled");
    assert_eq!(
        sc_body["entities"]["total_entities"], written,
        "what was written stays"
    );
    // and a new run may start at once
    assert_eq!(app.run(sc).await["status"], "pending");
}
