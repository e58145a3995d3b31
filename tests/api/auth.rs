//! x-api-key: 401 without, 403 for a bad, revoked or expired key, and tenant isolation.

use crate::helpers::{id, lasting, spawn_app};
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use syncjobs::api::keys;
use syncjobs_domain::{SharedClock, SystemClock};
use uuid::Uuid;

#[actix_web::test]
async fn no_key_is_401_and_a_bad_key_is_403_before_anything_else_is_looked_at() {
    let app = spawn_app().await;
    let cases = [
        (Method::GET, "/collections".to_string()),
        (Method::POST, "/collections".to_string()),
        (Method::GET, "/collections/whatever".to_string()),
        (Method::GET, "/source-connections/not-a-uuid".to_string()),
        (
            Method::POST,
            "/source-connections/not-a-uuid/jobs/also-not/cancel".to_string(),
        ),
        (
            Method::GET,
            format!("/source-connections/{}/jobs?limit=0", Uuid::new_v4()),
        ),
    ];
    for (method, path) in cases {
        let (status, body) = app
            .request_as(None, method.clone(), &path, Some(json!({"name": 1})))
            .await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body, json!({"detail": "No valid authentication provided"}));
        let (status, body) = app
            .request_as(Some("sjk_wrong"), method.clone(), &path, None)
            .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body, json!({"detail": "Invalid or expired API key"}));
    }
    let (status, _) = app
        .request_as(Some(""), Method::GET, "/collections", None)
        .await;
    assert_eq!(status, 401, "an empty key is no key");
}

#[actix_web::test]
async fn the_header_name_is_case_insensitive() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/collections"))
        .header("X-API-KEY", &app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[actix_web::test]
async fn a_revoked_key_is_refused() {
    let app = spawn_app().await;
    assert_eq!(
        app.request_as(Some(&app.other_key), Method::GET, "/collections", None)
            .await
            .0,
        200
    );
    let store = app.store.clone();
    let clock: SharedClock = Arc::new(SystemClock);
    let listed = keys::list_keys(&store).await.unwrap();
    let other = listed.iter().find(|k| k.organization == "other").unwrap();
    keys::revoke_key(&store, &clock, &other.key_id.to_string(), "test")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = app
            .request_as(Some(&app.other_key), Method::GET, "/collections", None)
            .await;
        if status == 403 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "revoked key still accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        app.get("/collections").await.0,
        200,
        "other keys still work"
    );
}

#[actix_web::test]
async fn an_expired_key_is_refused() {
    let app = spawn_app().await;
    let store = app.store.clone();
    let clock: SharedClock = Arc::new(SystemClock);
    let past = clock.now() - chrono::Duration::seconds(1);
    let expired = keys::create_key(&store, &clock, "default", Some(past), "test")
        .await
        .unwrap();
    let soon = keys::create_key(
        &store,
        &clock,
        "default",
        Some(clock.now() + chrono::Duration::hours(1)),
        "test",
    )
    .await
    .unwrap();
    // Both were appended after the expired one: once the later key works, the read model
    // knows the expired one too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app
        .request_as(Some(&soon.key), Method::GET, "/collections", None)
        .await
        .0
        != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key never worked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = app
        .request_as(Some(&expired.key), Method::GET, "/collections", None)
        .await;
    assert_eq!(
        (status.as_u16(), body["detail"].as_str()),
        (403, Some("Invalid or expired API key"))
    );
}

#[actix_web::test]
async fn nothing_of_another_organization_is_visible_or_changeable() {
    let app = spawn_app().await;
    let b = Some(app.other_key.as_str());
    let c = app.collection("Tenant A data").await;
    let rid = c["readable_id"].as_str().unwrap();
    let sc = id(&app.source_connection(rid, lasting(30.0)).await);
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "running").await;

    let not_found = |what: &'static str| {
        move |(status, body): (reqwest::StatusCode, serde_json::Value)| {
            assert_eq!(status, 404, "{what}: {body}");
        }
    };
    not_found("get collection")(
        app.request_as(b, Method::GET, &format!("/collections/{rid}"), None)
            .await,
    );
    not_found("delete collection")(
        app.request_as(b, Method::DELETE, &format!("/collections/{rid}"), None)
            .await,
    );
    not_found("get sc")(
        app.request_as(b, Method::GET, &format!("/source-connections/{sc}"), None)
            .await,
    );
    not_found("delete sc")(
        app.request_as(
            b,
            Method::DELETE,
            &format!("/source-connections/{sc}"),
            None,
        )
        .await,
    );
    not_found("run")(
        app.request_as(
            b,
            Method::POST,
            &format!("/source-connections/{sc}/run"),
            None,
        )
        .await,
    );
    not_found("jobs")(
        app.request_as(
            b,
            Method::GET,
            &format!("/source-connections/{sc}/jobs"),
            None,
        )
        .await,
    );
    not_found("job")(
        app.request_as(
            b,
            Method::GET,
            &format!("/source-connections/{sc}/jobs/{job}"),
            None,
        )
        .await,
    );
    not_found("cancel")(
        app.request_as(
            b,
            Method::POST,
            &format!("/source-connections/{sc}/jobs/{job}/cancel"),
            None,
        )
        .await,
    );
    let (status, body) = app
        .request_as(
            b,
            Method::POST,
            "/source-connections",
            Some(json!({"short_name": "timed", "readable_collection_id": rid})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["detail"].as_str()),
        (404, Some("Collection not found"))
    );
    assert_eq!(
        app.request_as(b, Method::GET, "/collections", None).await.1,
        json!([])
    );
    assert_eq!(
        app.request_as(b, Method::GET, "/source-connections", None)
            .await
            .1,
        json!([])
    );

    // The same readable id is free in the other organization.
    let (status, body) = app
        .request_as(
            b,
            Method::POST,
            "/collections",
            Some(json!({"name": "Tenant B data", "readable_id": rid})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["organization_id"], c["organization_id"]);

    // Tenant A saw none of it.
    assert_eq!(app.job(sc, job).await["status"], "running");
    assert_eq!(
        app.get(&format!("/collections/{rid}")).await.1["id"],
        c["id"]
    );
}
