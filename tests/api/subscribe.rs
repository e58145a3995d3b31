//! Airweave's `GET /sync/job/{job_id}/subscribe`, read by a real HTTP client while real
//! timed jobs run: connected, a message per progress report, the final message, the end.

use crate::helpers::{id, lasting, parts, spawn_app, spawn_app_with, Destination, Options};
use crate::sse_client::SseStream;
use serde_json::{json, Value};
use std::time::Duration;
use syncjobs_domain::SyncJobEvent;
use uuid::Uuid;

const PROGRESS_FIELDS: [&str; 8] = [
    "inserted",
    "updated",
    "deleted",
    "kept",
    "skipped",
    "entities_encountered",
    "status",
    "last_update_timestamp",
];

fn subscribe_path(job: Uuid) -> String {
    format!("/sync/job/{job}/subscribe")
}

fn assert_progress_shape(m: &Value) {
    for field in PROGRESS_FIELDS {
        assert!(m.get(field).is_some(), "missing {field}: {m}");
    }
    assert!(
        m.get("type").is_none(),
        "Airweave's progress has no type: {m}"
    );
}

#[actix_web::test]
async fn connecting_mid_run_gives_connected_then_each_progress_report_then_the_final_message_and_the_end(
) {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 100, "duration_seconds": 1.5}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_job(sc, job, "past a progress report", |j| {
        j["entities_inserted"].as_u64() > Some(0)
    })
    .await;
    let mut s = SseStream::get(&app, &subscribe_path(job), &[]).await;
    assert_eq!(s.status, 200);
    assert!(
        s.content_type.starts_with("text/event-stream"),
        "{}",
        s.content_type
    );
    let first = s.next_data().await.unwrap();
    assert_eq!(first.id, None, "Airweave's messages carry no id");
    assert_eq!(first.json(), json!({"type": "connected", "job_id": job}));
    let messages: Vec<Value> = s.rest().await.iter().map(|m| m.json()).collect();
    let (last, progress) = messages.split_last().expect("messages after connected");
    messages.iter().for_each(assert_progress_shape);
    assert!(
        progress.iter().all(|m| m["status"].is_null()),
        "{progress:?}"
    );
    assert!(
        progress.len() >= 2,
        "the current counts and live progress reports: {progress:?}"
    );

    // Each message is a progress report from the log: the current one at connect, then every
    // later one.
    let log = app.job_events(job).await;
    let reports: Vec<u64> = log
        .iter()
        .filter_map(|e| match e.job_event() {
            Some(SyncJobEvent::ProgressRecorded { counts }) => Some(counts.inserted),
            _ => None,
        })
        .collect();
    let seen: Vec<u64> = progress
        .iter()
        .map(|m| m["inserted"].as_u64().unwrap())
        .collect();
    assert!(
        reports.ends_with(&seen),
        "sent {seen:?}, log has {reports:?}"
    );

    let done = app.job(sc, job).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["inserted"], done["entities_inserted"]);
    assert_eq!(last["updated"], done["entities_updated"]);
    assert_eq!(last["deleted"], done["entities_deleted"]);
    assert_eq!(
        last["entities_encountered"],
        json!({"total": done["entities_inserted"]})
    );
    assert_eq!(s.next().await, None, "the stream has ended");
}

#[actix_web::test]
async fn a_cancel_ends_the_subscription_with_status_cancelled() {
    let app = spawn_app().await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    let mut s = SseStream::get(&app, &subscribe_path(job), &[]).await;
    assert_eq!(s.next_data().await.unwrap().json()["type"], "connected");
    // Live progress reports arrive while the job runs.
    let live = s.next_data().await.unwrap().json();
    assert_progress_shape(&live);
    let (status, body) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200, "{body}");
    let rest: Vec<Value> = s.rest().await.iter().map(|m| m.json()).collect();
    let last = rest.last().expect("a final message");
    assert_eq!(last["status"], "cancelled", "{rest:?}");
    let done = app.wait_status(sc, job, "cancelled").await;
    assert_eq!(last["inserted"], done["entities_inserted"]);
}

#[actix_web::test]
async fn a_finished_job_answers_connected_and_its_final_message_then_ends() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 3, "duration_seconds": 0.1}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "completed").await;
    let mut s = SseStream::get(&app, &subscribe_path(job), &[]).await;
    let all: Vec<Value> = s.rest().await.iter().map(|m| m.json()).collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["type"], "connected");
    assert_eq!(all[1]["status"], "completed");
    assert_eq!(all[1]["inserted"], 4);
}

#[actix_web::test]
async fn subscribing_needs_a_key_and_never_shows_another_organizations_job() {
    let app = spawn_app().await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    let get = |key: Option<&str>, path: String| {
        let mut req = app.client.get(app.url(&path));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        async move { parts(req.send().await.unwrap()).await }
    };
    let (status, body) = get(None, subscribe_path(job)).await;
    assert_eq!(
        (status.as_u16(), body),
        (401, json!({"detail": "No valid authentication provided"}))
    );
    let (status, _) = get(None, "/sync/job/not-a-uuid/subscribe".into()).await;
    assert_eq!(status, 401, "authentication comes before the path");
    let (status, _) = get(Some("wrong"), subscribe_path(job)).await;
    assert_eq!(status, 403);
    let (status, body) = get(Some(&app.key), "/sync/job/not-a-uuid/subscribe".into()).await;
    assert_eq!(
        (status.as_u16(), body),
        (
            422,
            json!({"detail": "job_id is not a valid UUID: not-a-uuid"})
        )
    );
    for (key, job) in [(&app.other_key, job), (&app.key, Uuid::new_v4())] {
        let (status, body) = get(Some(key), subscribe_path(job)).await;
        assert_eq!(
            (status.as_u16(), body),
            (404, json!({"detail": "Sync job not found"}))
        );
    }
    let (status, _) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200);
}

/// Open streams on /health, as an operator (with a key) sees them.
async fn open_streams(app: &crate::helpers::TestApp) -> u64 {
    app.get("/health").await.1["streams"]["open"]
        .as_u64()
        .unwrap()
}

#[actix_web::test]
async fn a_client_that_goes_away_leaves_no_stream_behind() {
    let app = spawn_app_with(Options {
        sse_heartbeat: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    assert_eq!(open_streams(&app).await, 0);
    let mut a = SseStream::get(&app, &subscribe_path(job), &[]).await;
    let mut b = SseStream::get(
        &app,
        &format!("/source-connections/{sc}/jobs/{job}/events"),
        &[],
    )
    .await;
    assert_eq!(a.next_data().await.unwrap().json()["type"], "connected");
    assert_eq!(b.next_data().await.unwrap().id, Some(1));
    assert_eq!(open_streams(&app).await, 2);
    assert_eq!(
        app.get("/health").await.1["streams"]["subscriptions"],
        2,
        "each open stream holds one subscription to the log's follower"
    );
    drop(a);
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_streams(&app).await > 0
        || app.get("/health").await.1["streams"]["subscriptions"] != 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams (or subscriptions) of gone clients still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn quiet_streams_carry_heartbeats_and_still_end_when_the_job_does() {
    let app = spawn_app_with(Options {
        sse_heartbeat: Duration::from_millis(100),
        // Each write takes 800 ms: the counts, hence the progress reports, stand still meanwhile.
        destination: Destination::Slow(Duration::from_millis(800)),
        ..Options::default()
    })
    .await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    let mut progress = SseStream::get(&app, &subscribe_path(job), &[]).await;
    assert_eq!(
        progress.next_data().await.unwrap().json()["type"],
        "connected"
    );
    let mut beats = 0;
    for _ in 0..50 {
        if progress.next_data().await.unwrap().json() == json!({"type": "heartbeat"}) {
            beats += 1;
            if beats == 2 {
                break;
            }
        }
    }
    assert_eq!(
        beats, 2,
        "Airweave's heartbeat message between progress reports"
    );
    // Our stream, resumed far past its end: nothing to send but heartbeat comments.
    let mut events = SseStream::get(
        &app,
        &format!("/source-connections/{sc}/jobs/{job}/events"),
        &[("last-event-id", "1000000")],
    )
    .await;
    for _ in 0..3 {
        let m = events.next().await.unwrap();
        assert_eq!((m.data, m.comments), (None, vec!["heartbeat".to_owned()]));
    }
    let (status, _) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200);
    let last = progress.rest().await.pop().unwrap().json();
    assert_eq!(last["status"], "cancelled");
    assert_eq!(
        events.rest().await,
        vec![],
        "the final event is at or before the resume point: nothing is sent, the stream ends"
    );
}
