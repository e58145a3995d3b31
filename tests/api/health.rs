//! /health, unknown routes and methods, and the NATS relay line.

use crate::helpers::{parts, spawn_app, spawn_app_with, Options};
use reqwest::Method;
use std::time::Duration;

#[actix_web::test]
async fn health_answers_without_a_key_and_shows_the_store_and_projection() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    let (status, body) = parts(r).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["store"]["backend"], "embedded");
    assert_eq!(body["projection"]["lag"], 0);
    assert_eq!(body["supervisor"]["status"], "running");
}

#[actix_web::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let (status, body) = app.get("/nope").await;
    assert_eq!(
        (status.as_u16(), body["detail"].as_str()),
        (404, Some("Not Found"))
    );
    let (status, body) = app.delete("/health").await;
    assert_eq!(
        (status.as_u16(), body["detail"].as_str()),
        (405, Some("Method Not Allowed"))
    );
    let (status, body) = app.get("/").await;
    assert_eq!(
        (status.as_u16(), body["detail"].as_str()),
        (404, Some("Not Found"))
    );
}

/// Routes are served from nested scopes: unknown paths and methods deep inside them, and
/// paths that only share a prefix with a route, answer as at the top.
#[actix_web::test]
async fn unknown_nested_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let (sc, job) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for path in [
        format!("/source-connections/{sc}/nope"),
        format!("/source-connections/{sc}/jobs/{job}/nope"),
        format!("/source-connections/{sc}/jobs/{job}/cancel/more"),
        "/source-connectionsx".to_string(),
        "/collections/a/b".to_string(),
        format!("/sync/job/{job}"),
        format!("/sync/job/{job}/subscribe/more"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(
            (status.as_u16(), body["detail"].as_str()),
            (404, Some("Not Found")),
            "GET {path}"
        );
    }
    for (method, path) in [
        (
            Method::DELETE,
            format!("/source-connections/{sc}/jobs/{job}"),
        ),
        (
            Method::GET,
            format!("/source-connections/{sc}/jobs/{job}/cancel"),
        ),
        (Method::PUT, format!("/source-connections/{sc}/jobs")),
        (Method::POST, "/collections/abc".to_string()),
        (Method::DELETE, "/source-connections".to_string()),
    ] {
        let (status, body) = app
            .request_as(Some(&app.key), method.clone(), &path, None)
            .await;
        assert_eq!(
            (status.as_u16(), body["detail"].as_str()),
            (405, Some("Method Not Allowed")),
            "{method} {path}"
        );
    }
}

/// NATS_URL, or None with the reason printed; with SYNCJOBS_REQUIRE_SERVICES=1 a missing
/// service fails the test instead.
fn nats_url() -> Option<String> {
    match std::env::var("NATS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("SYNCJOBS_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "NATS_URL is not set but SYNCJOBS_REQUIRE_SERVICES=1"
            );
            eprintln!("skipped: NATS_URL is not set");
            None
        }
    }
}

#[actix_web::test]
async fn health_shows_the_relay_publishing_the_log() {
    let Some(url) = nats_url() else { return };
    // A stream of its own, so the test never mixes with a real deployment's events.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("SYNCJOBS_API_TEST_{tag}");
    let app = spawn_app_with(Options {
        nats: Some((
            url.clone(),
            stream.clone(),
            format!("syncjobs-api-test.{tag}"),
        )),
        ..Options::default()
    })
    .await;
    app.collection_with_id("relayed").await;
    let head = app.head();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = app.get("/health").await;
        let relay = &body["relay"];
        if relay["connected"] == true && relay["published_position"].as_u64() >= Some(head) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never caught up: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = async_nats::connect(url).await.expect("NATS");
    async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await
        .expect("the test stream is removed");
}
