//! Runs and job listings: shapes, times, counts, failures, limits, read-your-writes.

use crate::collections::assert_timestamp;
use crate::helpers::{id, lasting, spawn_app, spawn_app_with, Destination, Options};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const JOB_FIELDS: [&str; 13] = [
    "id",
    "source_connection_id",
    "status",
    "started_at",
    "completed_at",
    "duration_seconds",
    "entities_inserted",
    "entities_updated",
    "entities_deleted",
    "entities_failed",
    "error",
    "error_category",
    "error_details",
];

fn assert_job_shape(job: &Value) {
    for field in JOB_FIELDS {
        assert!(job.get(field).is_some(), "missing {field}: {job}");
    }
}

#[actix_web::test]
async fn run_answers_a_pending_job_and_refuses_a_second_while_one_is_active() {
    let app = spawn_app().await;
    let sc = app.idle_connection(lasting(30.0)).await;
    let job = app.run(sc).await;
    assert_job_shape(&job);
    assert_eq!(job["status"], "pending");
    assert_eq!(job["source_connection_id"], sc.to_string());
    assert_eq!(job["started_at"], Value::Null);
    assert_eq!(job["completed_at"], Value::Null);
    assert_eq!(job["duration_seconds"], Value::Null);
    assert_eq!(job["entities_inserted"], 0);
    assert_eq!(job["error"], Value::Null);
    let (status, body) = app
        .post_empty(&format!("/source-connections/{sc}/run"))
        .await;
    assert_eq!(status, 400);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail == "Cannot start new sync: a sync job is already pending"
            || detail == "Cannot start new sync: a sync job is already running",
        "{detail}"
    );
    let running = app.wait_status(sc, id(&job), "running").await;
    assert_timestamp(&running["started_at"]);
    let (_, body) = app
        .post_empty(&format!("/source-connections/{sc}/run/"))
        .await;
    assert_eq!(
        body["detail"],
        "Cannot start new sync: a sync job is already running"
    );
}

#[actix_web::test]
async fn a_completed_job_has_times_duration_and_counts() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 4, "duration_seconds": 0.2}))
        .await;
    let job = id(&app.run(sc).await);
    let done = app.wait_status(sc, job, "completed").await;
    assert_job_shape(&done);
    assert_eq!(
        done["entities_inserted"], 5,
        "one container entity, then the 4"
    );
    assert_timestamp(&done["completed_at"]);
    let started =
        chrono::DateTime::parse_from_rfc3339(done["started_at"].as_str().unwrap()).unwrap();
    let completed =
        chrono::DateTime::parse_from_rfc3339(done["completed_at"].as_str().unwrap()).unwrap();
    let expected = (completed - started).num_microseconds().unwrap() as f64 / 1e6;
    assert!(
        (done["duration_seconds"].as_f64().unwrap() - expected).abs() < 2.5e-6,
        "{done}"
    );
    assert!(expected >= 0.15, "the run took its duration: {done}");
}

#[actix_web::test]
async fn a_failed_job_says_why_and_when() {
    let app = spawn_app_with(Options {
        destination: Destination::FailingAfter(0),
        ..Options::default()
    })
    .await;
    let sc = app
        .idle_connection(json!({"entity_count": 5, "duration_seconds": 0.1}))
        .await;
    let job = id(&app.run(sc).await);
    let failed = app.wait_status(sc, job, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("injected"), "{failed}");
    assert_timestamp(&failed["completed_at"]);
    let (_, body) = app.get(&format!("/source-connections/{sc}")).await;
    assert_eq!(body["status"], "error");
    assert_eq!(body["sync"]["failed_runs"], 1);
    assert_eq!(body["error_message"], error);
}

#[actix_web::test]
async fn jobs_list_newest_first_with_a_bounded_limit() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 1, "duration_seconds": 0.1}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = id(&app.run(sc).await);
        app.wait_status(sc, job, "completed").await;
        ids.push(job);
    }
    ids.reverse();
    let (status, list) = app.get(&format!("/source-connections/{sc}/jobs")).await;
    assert_eq!(status, 200);
    let got: Vec<Uuid> = list.as_array().unwrap().iter().map(id).collect();
    assert_eq!(got, ids);
    list.as_array().unwrap().iter().for_each(assert_job_shape);
    let (_, one) = app
        .get(&format!("/source-connections/{sc}/jobs?limit=1"))
        .await;
    assert_eq!(
        one.as_array().unwrap().iter().map(id).collect::<Vec<_>>(),
        ids[..1]
    );
    for bad in ["0", "1001", "-1", "ten"] {
        let (status, body) = app
            .get(&format!("/source-connections/{sc}/jobs?limit={bad}"))
            .await;
        assert_eq!(status, 422, "limit={bad}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("limit must be an integer between 1 and 1000"),
            "{body}"
        );
    }
}

#[actix_web::test]
async fn a_job_is_found_only_under_its_own_connection() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 1, "duration_seconds": 0.1}))
        .await;
    let other = app.idle_connection(json!({})).await;
    let job = id(&app.run(sc).await);
    assert_eq!(app.job(sc, job).await["id"], job.to_string());
    let (status, body) = app
        .get(&format!("/source-connections/{other}/jobs/{job}"))
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (
            400,
            json!({"detail": "Sync job does not belong to this source connection"})
        )
    );
    let (status, body) = app
        .get(&format!("/source-connections/{sc}/jobs/{}", Uuid::new_v4()))
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (404, json!({"detail": "Sync job not found"}))
    );
}

#[actix_web::test]
async fn after_a_200_the_next_get_of_any_client_shows_the_effect() {
    let app = spawn_app().await;
    let other_client = reqwest::Client::new();
    let get = |path: String| {
        let req = other_client
            .get(app.url(&path))
            .header("x-api-key", &app.key);
        async move { crate::helpers::parts(req.send().await.unwrap()).await }
    };
    for i in 0..10 {
        let rid = format!("ryw-{i}");
        let (status, _) = app
            .post(
                "/collections",
                json!({"name": "Read your writes", "readable_id": rid}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            get(format!("/collections/{rid}")).await.0,
            200,
            "collection {i}"
        );
        let (status, sc) = app
            .post("/source-connections", json!({"short_name": "timed", "readable_collection_id": rid, "config": lasting(30.0)}))
            .await;
        assert_eq!(status, 200);
        let sc = id(&sc);
        let (_, jobs) = get(format!("/source-connections/{sc}/jobs")).await;
        assert_eq!(
            jobs.as_array().unwrap().len(),
            1,
            "the first sync is listed at once"
        );
        let job = id(&jobs[0]);
        let (status, cancelled) = app
            .post_empty(&format!("/source-connections/{sc}/jobs/{job}/cancel"))
            .await;
        assert_eq!(status, 200, "{cancelled}");
        let (_, seen) = get(format!("/source-connections/{sc}/jobs/{job}")).await;
        assert!(
            ["cancelling", "cancelled"].contains(&seen["status"].as_str().unwrap()),
            "{seen}"
        );
        let (status, _) = app.delete(&format!("/source-connections/{sc}")).await;
        assert_eq!(status, 200);
        assert_eq!(get(format!("/source-connections/{sc}")).await.0, 404);
        let (status, _) = app
            .request_as(
                Some(&app.key),
                Method::DELETE,
                &format!("/collections/{rid}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(get(format!("/collections/{rid}")).await.0, 404);
    }
}
