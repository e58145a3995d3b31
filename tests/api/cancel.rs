//! The cancel contract of API.md, clause by clause.

use crate::helpers::{id, lasting, spawn_app, spawn_app_with, Destination, Options};
use serde_json::json;
use std::time::Duration;
use syncjobs_domain::events::stream;
use syncjobs_domain::{ExpectedVersion, Metadata, NewEvent, SyncJobEvent};
use uuid::Uuid;

fn cancel_path(sc: Uuid, job: Uuid) -> String {
    format!("/source-connections/{sc}/jobs/{job}/cancel")
}

#[actix_web::test]
async fn cancelling_is_durable_before_the_answer_and_the_job_ends_cancelled() {
    let app = spawn_app().await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    app.wait_job(sc, job, "ran", |j| {
        j["entities_inserted"].as_u64() > Some(0)
    })
    .await;
    let (status, body) = app.post_empty(&cancel_path(sc, job)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        ["cancelling", "cancelled"].contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    // Clause 1: recorded before the answer.
    let events = app.job_events(job).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e.job_event(), Some(SyncJobEvent::CancelRequested { .. }))),
        "no CancelRequested in the log at answer time"
    );
    // Clauses 2-3: the worker stops and records cancelled; what it wrote stays.
    let done = app.wait_status(sc, job, "cancelled").await;
    assert!(
        done["started_at"].is_string() && done["completed_at"].is_string(),
        "{done}"
    );
    let written = done["entities_inserted"].as_u64().unwrap();
    assert!(written > 0 && written < 1000, "{done}");
    assert_eq!(
        app.entity_count(sc).await,
        written,
        "cancel removes nothing"
    );
    assert_eq!(
        done["error"],
        serde_json::Value::Null,
        "a graceful stop is not an error"
    );
}

#[actix_web::test]
async fn a_pending_job_goes_straight_to_cancelled() {
    // A node that runs one job at a time, busy with another connection's long run: a job
    // created now has no worker and waits pending.
    let app = spawn_app_with(Options {
        settings: |s| s.worker_capacity = Some(1),
        ..Options::default()
    })
    .await;
    let busy = app.idle_connection(lasting(30.0)).await;
    let busy_job = id(&app.run(busy).await);
    app.wait_status(busy, busy_job, "running").await;
    let sc = app.idle_connection(json!({})).await;
    let job = Uuid::now_v7();
    app.store
        .append(
            &stream::job(job),
            ExpectedVersion::Exact(0),
            vec![NewEvent::new(
                SyncJobEvent::JobCreated {
                    job_id: job,
                    source_connection_id: sc,
                    organization_id: Uuid::parse_str(
                        app.get(&format!("/source-connections/{sc}")).await.1["organization_id"]
                            .as_str()
                            .unwrap(),
                    )
                    .unwrap(),
                    short_name: "timed".into(),
                    config: json!({}),
                },
                chrono::Utc::now(),
                Metadata::default(),
            )],
        )
        .await
        .unwrap();
    // Appended behind the API's back: wait until the read model has it.
    let path = format!("/source-connections/{sc}/jobs/{job}");
    while app.get(&path).await.0 == 404 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.job(sc, job).await["status"],
        "pending",
        "claimed by a full node"
    );
    let (status, body) = app.post_empty(&cancel_path(sc, job)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["started_at"], serde_json::Value::Null);
    assert!(body["completed_at"].is_string());
}

#[actix_web::test]
async fn only_pending_or_running_jobs_can_be_cancelled() {
    let app = spawn_app_with(Options {
        destination: Destination::Slow(Duration::from_millis(800)),
        ..Options::default()
    })
    .await;
    let sc = app
        .idle_connection(json!({"entity_count": 1, "duration_seconds": 0.1}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "completed").await;
    let (status, body) = app.post_empty(&cancel_path(sc, job)).await;
    assert_eq!(
        (status.as_u16(), body),
        (
            400,
            json!({"detail": "Cannot cancel job in completed state"})
        )
    );

    let slow = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(slow).await);
    app.wait_status(slow, job, "running").await;
    assert_eq!(
        app.post_empty(&cancel_path(slow, job)).await.1["status"],
        "cancelling"
    );
    let (status, body) = app.post_empty(&cancel_path(slow, job)).await;
    assert_eq!(
        (status.as_u16(), body),
        (
            400,
            json!({"detail": "Cannot cancel job in cancelling state"})
        )
    );
    app.wait_status(slow, job, "cancelled").await;
    let (status, body) = app.post_empty(&cancel_path(slow, job)).await;
    assert_eq!(
        (status.as_u16(), body),
        (
            400,
            json!({"detail": "Cannot cancel job in cancelled state"})
        )
    );
}

#[actix_web::test]
async fn unknown_jobs_and_connections_are_404_and_a_foreign_job_is_400() {
    let app = spawn_app().await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let other = app.idle_connection(json!({})).await;
    let job = id(&app.run(sc).await);
    let (status, body) = app.post_empty(&cancel_path(sc, Uuid::new_v4())).await;
    assert_eq!(
        (status.as_u16(), body),
        (404, json!({"detail": "Sync job not found"}))
    );
    let (status, body) = app.post_empty(&cancel_path(Uuid::new_v4(), job)).await;
    assert_eq!(
        (status.as_u16(), body),
        (404, json!({"detail": "Source connection not found"}))
    );
    let (status, body) = app.post_empty(&cancel_path(other, job)).await;
    assert_eq!(
        (status.as_u16(), body),
        (
            400,
            json!({"detail": "Sync job does not belong to this source connection"})
        )
    );
    let (status, body) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/nope/cancel"))
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (422, json!({"detail": "job_id is not a valid UUID: nope"}))
    );
    let (status, body) = app
        .post_empty(&format!("/source-connections/xyz/jobs/{job}/cancel"))
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (
            422,
            json!({"detail": "source_connection_id is not a valid UUID: xyz"})
        )
    );
    assert!(
        app.job_events(job)
            .await
            .iter()
            .all(|e| !matches!(e.job_event(), Some(SyncJobEvent::CancelRequested { .. }))),
        "refused cancels record nothing"
    );
    assert!(["pending", "running"].contains(&app.job(sc, job).await["status"].as_str().unwrap()));
}

#[actix_web::test]
async fn of_many_concurrent_cancels_exactly_one_is_recorded() {
    let app = spawn_app_with(Options {
        destination: Destination::Slow(Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "running").await;
    let path = cancel_path(sc, job);
    let results = futures::future::join_all((0..12).map(|_| app.post_empty(&path))).await;
    let ok: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 400);
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail == "Cannot cancel job in cancelling state"
                || detail == "Cannot cancel job in cancelled state",
            "{detail}"
        );
    }
    let requests = app
        .job_events(job)
        .await
        .iter()
        .filter(|e| matches!(e.job_event(), Some(SyncJobEvent::CancelRequested { .. })))
        .count();
    assert_eq!(requests, 1);
    app.wait_status(sc, job, "cancelled").await;
    let finals = app
        .job_events(job)
        .await
        .iter()
        .filter(|e| e.job_event().is_some_and(|j| j.is_final()))
        .count();
    assert_eq!(finals, 1, "exactly one final state");
}
