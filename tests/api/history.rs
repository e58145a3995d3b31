//! A job's own history over HTTP: its events as JSON and as a resumable live stream, and
//! its state at every version (time travel), against the store and the replay fold.

use crate::helpers::{id, lasting, parts, spawn_app, TestApp};
use crate::sse_client::{Message, SseStream};
use reqwest::Method;
use serde_json::{json, Value};
use syncjobs::api::wire::JobOut;
use syncjobs::replay::{export_value, import_value, state_at};
use syncjobs_domain::RecordedEvent;
use uuid::Uuid;

fn events_path(sc: Uuid, job: Uuid) -> String {
    format!("/source-connections/{sc}/jobs/{job}/events")
}

fn state_path(sc: Uuid, job: Uuid, version: &str) -> String {
    format!("/source-connections/{sc}/jobs/{job}/state?version={version}")
}

fn exported(events: &[RecordedEvent]) -> Vec<Value> {
    events.iter().map(|e| export_value(e).unwrap()).collect()
}

/// A job of about 25 events (20 progress reports) over 1.5 s.
async fn short_run(app: &TestApp) -> (Uuid, Uuid) {
    let sc = app
        .idle_connection(json!({"entity_count": 100, "duration_seconds": 1.5}))
        .await;
    let job = id(&app.run(sc).await);
    (sc, job)
}

fn ids(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.id.expect("an id")).collect()
}

#[actix_web::test]
async fn the_events_route_answers_the_stores_stream_as_json() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 12, "duration_seconds": 0.2}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "completed").await;
    let (status, body) = app.get(&events_path(sc, job)).await;
    assert_eq!(status, 200);
    let stored = app.job_events(job).await;
    assert!(stored.len() >= 4, "{stored:?}");
    assert_eq!(body, Value::Array(exported(&stored)));
    // What `syncjobs replay --server` reads back is exactly the store's events.
    let imported: Vec<RecordedEvent> = body
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| import_value(v.clone(), i + 1).unwrap())
        .collect();
    assert_eq!(imported, stored);
    // Last-Event-ID means nothing without a stream: the JSON list is always whole.
    let r = app
        .client
        .get(app.url(&events_path(sc, job)))
        .header("x-api-key", &app.key)
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(parts(r).await.1, body);
}

#[actix_web::test]
async fn the_event_stream_mid_run_has_ids_1_to_n_and_closes_on_the_final_event() {
    let app = spawn_app().await;
    let (sc, job) = short_run(&app).await;
    app.wait_status(sc, job, "running").await;
    let mut s = SseStream::get(&app, &events_path(sc, job), &[]).await;
    assert_eq!(s.status, 200);
    assert!(s.content_type.starts_with("text/event-stream"));
    let got = s.rest().await;
    let stored = app.job_events(job).await;
    assert!(
        stored.last().unwrap().job_event().unwrap().is_final(),
        "the stream closed before the job was final"
    );
    assert_eq!(ids(&got), (1..=stored.len() as u64).collect::<Vec<_>>());
    let data: Vec<Value> = got.iter().map(Message::json).collect();
    assert_eq!(data, exported(&stored));
    assert_eq!(s.next().await, None);
}

#[actix_web::test]
async fn last_event_id_resumes_with_exactly_the_rest() {
    let app = spawn_app().await;
    let (sc, job) = short_run(&app).await;
    let mut first = SseStream::get(&app, &events_path(sc, job), &[]).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(first.next_data().await.unwrap());
    }
    drop(first);
    let seen = got.last().unwrap().id.unwrap().to_string();
    let mut resumed =
        SseStream::get(&app, &events_path(sc, job), &[("last-event-id", &seen)]).await;
    assert_eq!(resumed.status, 200);
    got.extend(resumed.rest().await);
    let stored = app.job_events(job).await;
    assert_eq!(ids(&got), (1..=stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        got.iter().map(Message::json).collect::<Vec<_>>(),
        exported(&stored)
    );

    // After the end: the last event alone, then nothing at all (204: EventSource stops).
    let n = stored.len() as u64;
    let mut tail = SseStream::get(
        &app,
        &events_path(sc, job),
        &[("last-event-id", &(n - 1).to_string())],
    )
    .await;
    assert_eq!(ids(&tail.rest().await), vec![n]);
    for past in [n, n + 5] {
        let done = SseStream::get(
            &app,
            &events_path(sc, job),
            &[("last-event-id", &past.to_string())],
        )
        .await;
        assert_eq!(done.status, 204, "Last-Event-ID {past} of a finished job");
    }
}

#[actix_web::test]
async fn a_resume_point_beyond_the_end_waits_for_the_versions_after_it() {
    let app = spawn_app().await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "running").await;
    let now = app.job_events(job).await.len() as u64;
    let after = now + 2;
    let mut s = SseStream::get(
        &app,
        &events_path(sc, job),
        &[("last-event-id", &after.to_string())],
    )
    .await;
    assert_eq!(s.status, 200);
    let next = s.next_data().await.unwrap();
    assert_eq!(
        next.id,
        Some(after + 1),
        "versions up to {after} are skipped"
    );
    let (status, _) = app
        .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200);
    let rest = s.rest().await;
    let stored = app.job_events(job).await;
    assert_eq!(
        ids(&rest),
        (after + 2..=stored.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(rest.last().unwrap().json()["event"]["type"], "Cancelled");
}

#[actix_web::test]
async fn a_last_event_id_that_is_not_a_version_is_refused() {
    let app = spawn_app().await;
    let (sc, job) = short_run(&app).await;
    for bad in ["abc", "-1", "1.5", "2x"] {
        let s = SseStream::get(&app, &events_path(sc, job), &[("last-event-id", bad)]).await;
        assert_eq!(s.status, 422, "Last-Event-ID {bad}");
    }
    let r = app
        .client
        .get(app.url(&events_path(sc, job)))
        .header("x-api-key", &app.key)
        .header("accept", "text/event-stream")
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    let (status, body) = parts(r).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["detail"],
        "Last-Event-ID must be a stream version (an integer >= 0), got \"abc\""
    );
    app.wait_status(sc, job, "completed").await;
}

#[actix_web::test]
async fn history_routes_check_keys_tenants_and_connections_like_the_job_route() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 1, "duration_seconds": 0.1}))
        .await;
    let other_sc = app.idle_connection(json!({})).await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "completed").await;
    for accept in ["application/json", "text/event-stream"] {
        for path in [events_path(sc, job), state_path(sc, job, "1")] {
            let ask = |key: Option<&str>, path: String| {
                let mut req = app.client.get(app.url(&path)).header("accept", accept);
                if let Some(key) = key {
                    req = req.header("x-api-key", key);
                }
                async move { parts(req.send().await.unwrap()).await }
            };
            let (status, _) = ask(None, path.clone()).await;
            assert_eq!(status, 401, "{path}");
            let (status, _) = ask(None, path.replace(&job.to_string(), "nope")).await;
            assert_eq!(status, 401, "authentication before the path: {path}");
            let (status, _) = ask(Some("wrong"), path.clone()).await;
            assert_eq!(status, 403, "{path}");
            let (status, body) = ask(Some(&app.key), path.replace(&job.to_string(), "nope")).await;
            assert_eq!(
                (status.as_u16(), body),
                (422, json!({"detail": "job_id is not a valid UUID: nope"}))
            );
            let (status, body) = ask(Some(&app.other_key), path.clone()).await;
            assert_eq!(
                (status.as_u16(), body),
                (404, json!({"detail": "Source connection not found"})),
                "{path}"
            );
            let (status, body) = ask(
                Some(&app.key),
                path.replace(&sc.to_string(), &other_sc.to_string()),
            )
            .await;
            assert_eq!(
                (status.as_u16(), body),
                (
                    400,
                    json!({"detail": "Sync job does not belong to this source connection"})
                ),
                "{path}"
            );
            let (status, body) = ask(
                Some(&app.key),
                path.replace(&job.to_string(), &Uuid::new_v4().to_string()),
            )
            .await;
            assert_eq!(
                (status.as_u16(), body),
                (404, json!({"detail": "Sync job not found"}))
            );
        }
    }
}

#[actix_web::test]
async fn the_state_at_each_version_is_the_replay_fold_and_the_last_is_the_job() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 20, "duration_seconds": 0.3}))
        .await;
    let job = id(&app.run(sc).await);
    let now = app.wait_status(sc, job, "completed").await;
    let stored = app.job_events(job).await;
    let n = stored.len() as u64;
    for version in 1..=n {
        let (status, body) = app.get(&state_path(sc, job, &version.to_string())).await;
        assert_eq!(status, 200, "v{version}: {body}");
        let folded = state_at(&stored, version).unwrap().unwrap();
        assert_eq!(
            body,
            serde_json::to_value(JobOut::new(&folded)).unwrap(),
            "v{version}"
        );
    }
    let (_, first) = app.get(&state_path(sc, job, "1")).await;
    assert_eq!(
        (
            &first["status"],
            &first["started_at"],
            &first["entities_inserted"]
        ),
        (&json!("pending"), &Value::Null, &json!(0))
    );
    let (_, second) = app.get(&state_path(sc, job, "2")).await;
    assert_eq!(second["status"], "running");
    let (_, last) = app.get(&state_path(sc, job, &n.to_string())).await;
    assert_eq!(last, now, "the last version is the job as GET shows it");

    for missing in ["0".to_owned(), (n + 1).to_string()] {
        let (status, body) = app.get(&state_path(sc, job, &missing)).await;
        assert_eq!(
            (status.as_u16(), body),
            (
                404,
                json!({"detail": format!("Sync job version {missing} not found: its versions are 1 to {n}")})
            )
        );
    }
    for bad in ["-1", "x", "1.5", "99999999999999999999999"] {
        let (status, body) = app.get(&state_path(sc, job, bad)).await;
        assert_eq!(status, 422, "version={bad}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("version must be an integer"),
            "{body}"
        );
    }
    let (status, body) = app
        .request_as(
            Some(&app.key),
            Method::GET,
            &format!("/source-connections/{sc}/jobs/{job}/state"),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("version is required"));
}

/// `syncjobs replay --server` over this route answers what it answers from the store.
#[actix_web::test]
async fn replay_with_server_reads_the_events_route() {
    use syncjobs::replay::{run, DebugCommand, ServerArgs};
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 12, "duration_seconds": 0.2}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "completed").await;
    let replay = |server: ServerArgs| DebugCommand::Replay {
        job_id: Some(job),
        file: None,
        to_version: None,
        json: true,
        server,
    };
    let mut remote = Vec::new();
    let server = ServerArgs {
        server: Some(app.address.clone()),
        api_key: Some(app.key.clone()),
        source_connection: Some(sc),
    };
    let code = run(
        replay(server),
        Err("no local store".into()),
        &mut remote,
        false,
    )
    .await
    .unwrap();
    let mut local = Vec::new();
    run(
        replay(ServerArgs::default()),
        Ok(app.store.clone()),
        &mut local,
        false,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(!local.is_empty());
    assert_eq!(String::from_utf8(remote), String::from_utf8(local));
}

/// Many streams at once, each on its own job, all fed by the server's one follower of the
/// log while every job commits: each gets exactly its own job's events, in order, and
/// nothing of them is left subscribed afterwards.
#[actix_web::test]
async fn forty_concurrent_streams_each_get_exactly_their_own_jobs_events() {
    const JOBS: usize = 40;
    let app = spawn_app().await;
    let mut jobs = Vec::new();
    for _ in 0..JOBS {
        let sc = app
            .idle_connection(json!({"entity_count": 30, "duration_seconds": 3.0}))
            .await;
        jobs.push((sc, id(&app.run(sc).await)));
    }
    let streams = futures::future::join_all(jobs.iter().map(|(sc, job)| {
        let path = events_path(*sc, *job);
        let app = &app;
        async move { SseStream::get(app, &path, &[]).await.rest().await }
    }))
    .await;
    for ((_, job), got) in jobs.iter().zip(streams) {
        let stored = app.job_events(*job).await;
        assert!(stored.last().unwrap().job_event().unwrap().is_final());
        assert_eq!(
            ids(&got),
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "job {job}"
        );
        assert_eq!(
            got.iter().map(Message::json).collect::<Vec<_>>(),
            exported(&stored),
            "job {job}"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.get("/health").await.1["streams"]["subscriptions"] != 0 {
        assert!(std::time::Instant::now() < deadline, "subscriptions left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
