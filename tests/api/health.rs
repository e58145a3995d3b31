//! /health (the one field without a key, the details and one organization's counts with
//! one, `degraded` while the store cannot write), unknown routes and methods, and the NATS
//! relay line.

use crate::helpers::{
    id, kurrentdb_server, lasting, parts, postgres_server, spawn_app, spawn_app_with, Options,
    TestApp,
};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use syncjobs::api::HealthProbe;
use syncjobs_domain::store::faults::FaultyStore;
use syncjobs_store_sqlite::EmbeddedStore;

const FULL: &str = "database or disk is full";

/// `/health` as a load balancer asks it: no key (or `key`, when given).
async fn probe(app: &TestApp, key: Option<&str>) -> (u16, Value) {
    let mut req = app.client.get(app.url("/health"));
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let (status, body) = parts(req.send().await.unwrap()).await;
    (status.as_u16(), body)
}

#[actix_web::test]
async fn health_without_a_valid_key_answers_only_the_status() {
    let app = spawn_app().await;
    app.collection("Tenant Data").await;
    for key in [None, Some("sjk_not-a-key-of-anyone"), Some("")] {
        assert_eq!(
            probe(&app, key).await,
            (200, json!({"status": "healthy"})),
            "key {key:?}: nothing but the status"
        );
    }
}

#[actix_web::test]
async fn health_with_a_key_shows_the_details_and_only_its_organizations_counts() {
    let app = spawn_app().await;
    // The default organization: two collections, one idle connection.
    app.idle_connection(lasting(30.0)).await;
    app.collection("Second Collection").await;
    // Another organization: one collection, two connections, one of them syncing.
    let (status, c) = app
        .request_as(
            Some(&app.other_key),
            Method::POST,
            "/collections",
            Some(json!({"name": "Theirs"})),
        )
        .await;
    assert_eq!(status, 200, "{c}");
    let mut theirs = Vec::new();
    for _ in 0..2 {
        let (status, sc) = app
            .request_as(
                Some(&app.other_key),
                Method::POST,
                "/source-connections",
                Some(json!({
                    "short_name": "timed",
                    "readable_collection_id": c["readable_id"],
                    "config": lasting(30.0),
                    "authentication": {"credentials": {"timed_key": "x"}},
                    "sync_immediately": false,
                })),
            )
            .await;
        assert_eq!(status, 200, "{sc}");
        theirs.push(id(&sc));
    }
    let (status, job) = app
        .request_as(
            Some(&app.other_key),
            Method::POST,
            &format!("/source-connections/{}/run", theirs[0]),
            None,
        )
        .await;
    assert_eq!(status, 200, "{job}");

    let (status, body) = probe(&app, Some(&app.key)).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["reasons"], json!([]));
    let backend = match (postgres_server(), kurrentdb_server()) {
        (Some(_), _) => "postgres",
        (None, Some(_)) => "kurrentdb",
        (None, None) => "embedded",
    };
    assert_eq!(body["store"]["backend"], backend);
    assert_eq!(body["store"]["writable"], true);
    assert!(body["projection"]["lag"].is_u64(), "{body}");
    assert_eq!(body["supervisor"]["status"], "running");
    assert_eq!(body["supervisor"]["capacity"], Value::Null, "{body}");
    // This node: an `all` node with the id made at its start.
    assert_eq!(body["node"]["role"], "all", "{body}");
    assert!(
        body["node"]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("node-")),
        "{body}"
    );
    assert_eq!(body["streams"]["open"], 0);
    let counts = |b: &Value| {
        (
            b["projection"]["collections"].as_u64(),
            b["projection"]["source_connections"].as_u64(),
            b["projection"]["active_jobs"].as_u64(),
        )
    };
    assert_eq!(counts(&body), (Some(2), Some(1), Some(0)), "{body}");
    let (_, body) = probe(&app, Some(&app.other_key)).await;
    assert_eq!(counts(&body), (Some(1), Some(2), Some(1)), "{body}");
}

/// A probe whose health the test sets.
struct Switch(AtomicBool);

impl HealthProbe for Switch {
    fn name(&self) -> &'static str {
        "switch"
    }
    fn status(&self) -> Value {
        json!({ "on": self.0.load(Ordering::Relaxed) })
    }
    fn healthy(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[actix_web::test]
async fn an_unhealthy_probe_makes_the_service_degraded_until_it_recovers() {
    let switch = Arc::new(Switch(AtomicBool::new(true)));
    let app = spawn_app_with(Options {
        probes: vec![switch.clone()],
        ..Options::default()
    })
    .await;
    assert_eq!(probe(&app, None).await, (200, json!({"status": "healthy"})));
    switch.0.store(false, Ordering::Relaxed);
    assert_eq!(
        probe(&app, None).await,
        (200, json!({"status": "degraded"}))
    );
    let (_, body) = probe(&app, Some(&app.key)).await;
    assert_eq!(body["reasons"], json!(["switch is unhealthy"]));
    assert_eq!(body["switch"], json!({"on": false, "healthy": false}));
    switch.0.store(true, Ordering::Relaxed);
    assert_eq!(probe(&app, None).await, (200, json!({"status": "healthy"})));
}

/// Polls until `pred` holds (bounded).
async fn until(what: &str, mut pred: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pred().await {
        assert!(tokio::time::Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A store that refuses every write (as on a full disk): commands answer 503 naming the
/// cause, `/health` says `degraded`, the job whose run ended meanwhile stays `running` only
/// until the store writes again, then ends, and its connection takes a new run.
#[actix_web::test]
async fn while_the_store_cannot_write_commands_answer_503_and_health_is_degraded() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let faulty = FaultyStore::new(EmbeddedStore::open(data_dir.path()).unwrap());
    let app = spawn_app_with(Options {
        store: Some(faulty.clone()),
        data_dir: Some(data_dir),
        ..Options::default()
    })
    .await;
    let sc = app
        .idle_connection(json!({"entity_count": 20, "duration_seconds": 1}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "running").await;

    faulty.fail_writes(FULL);
    let (status, body) = app.post("/collections", json!({"name": "Refused"})).await;
    assert_eq!(
        (status.as_u16(), body),
        (
            503,
            json!({"detail": "Event store is unavailable: database or disk is full"})
        )
    );
    assert_eq!(
        probe(&app, None).await,
        (200, json!({"status": "degraded"}))
    );
    let (_, details) = probe(&app, Some(&app.key)).await;
    assert_eq!(
        details["reasons"],
        json!(["the event store cannot write: database or disk is full"])
    );
    assert_eq!(details["store"]["writable"], false);
    assert_eq!(details["store"]["write_failure"], FULL);

    // The run ends; its final event is refused, and tried again.
    until("retried the final event", async || {
        faulty
            .refused()
            .iter()
            .filter(|t| **t == "JobCompleted")
            .count()
            >= 2
    })
    .await;
    assert_eq!(
        app.job(sc, job).await["status"],
        "running",
        "reads still work"
    );
    let (status, body) = app
        .post_empty(&format!("/source-connections/{sc}/run"))
        .await;
    assert_eq!(status, 400, "{body}");

    faulty.heal();
    let done = app.wait_status(sc, job, "completed").await;
    assert_eq!(
        done["entities_inserted"].as_u64(),
        Some(app.entity_count(sc).await),
        "the final event carries the run's counts"
    );
    until("healthy again", async || {
        probe(&app, None).await == (200, json!({"status": "healthy"}))
    })
    .await;
    let next = app.run(sc).await;
    assert_ne!(id(&next), job, "a new run is accepted without a restart");
}

/// A real SQLITE_FULL (the embedded store capped at its size), through the API.
#[actix_web::test]
async fn a_full_disk_answers_503_naming_the_cause_until_there_is_room() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let store = EmbeddedStore::open(data_dir.path()).unwrap();
    let app = spawn_app_with(Options {
        store: Some(store.clone()),
        data_dir: Some(data_dir),
        ..Options::default()
    })
    .await;
    store.limit_pages(Some(1));
    let mut created = 0;
    let (status, body) = loop {
        assert!(created < 500, "the capped database never filled up");
        let (status, body) = app
            .post("/collections", json!({"name": format!("Filler {created}")}))
            .await;
        if status != 200 {
            break (status, body);
        }
        created += 1;
    };
    assert_eq!(
        (status.as_u16(), body),
        (
            503,
            json!({"detail": "Event store is unavailable: database or disk is full"})
        )
    );
    assert_eq!(
        probe(&app, None).await,
        (200, json!({"status": "degraded"}))
    );

    store.limit_pages(None);
    app.collection("Room Again").await;
    assert_eq!(probe(&app, None).await, (200, json!({"status": "healthy"})));
}

#[actix_web::test]
async fn health_is_down_with_503_once_the_store_is_closed() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let store = EmbeddedStore::open(data_dir.path()).unwrap();
    let app = spawn_app_with(Options {
        store: Some(store.clone()),
        data_dir: Some(data_dir),
        ..Options::default()
    })
    .await;
    store.close();
    store.closed().await;
    assert_eq!(probe(&app, None).await, (503, json!({"status": "down"})));
    let (status, body) = probe(&app, Some(&app.key)).await;
    assert_eq!(status, 503);
    assert_eq!(body["reasons"], json!(["the event store is closed"]));
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
            assert_eq!(relay["healthy"], true, "{body}");
            assert_eq!(body["status"], "healthy", "{body}");
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

/// The read model lives with the store: its own SQLite file beside the embedded log; on
/// PostgreSQL, tables in the store's database, and no file in the data directory.
#[actix_web::test]
async fn the_read_model_lives_where_the_store_is() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 1, "duration_seconds": 0.1}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "completed").await;
    let file = app.data_dir.path().join("read_model.db");
    match postgres_server() {
        Some(_) => assert!(!file.exists(), "no read_model.db beside a PostgreSQL store"),
        None => assert!(file.exists(), "read_model.db beside the embedded store"),
    }
}
