//! What Airweave's webhook clients read besides delivery: each event type's payload keys,
//! exactly; what a collection's deletion announces; ids that are not ids.

use crate::helpers::{id, lasting, spawn_app, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use syncjobs_domain::webhook::EVENT_TYPES;
use uuid::Uuid;

/// Nothing listens there: deliveries fail and are retried later; the messages are what
/// these tests read.
const NOWHERE: &str = "http://127.0.0.1:9/nowhere";

async fn subscribe(app: &TestApp, types: &[&str]) -> Uuid {
    let (status, s) = app
        .post(
            "/webhooks/subscriptions",
            json!({"url": NOWHERE, "event_types": types}),
        )
        .await;
    assert_eq!(status, 200, "{s}");
    id(&s)
}

/// The organization's messages, oldest first.
async fn messages(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, list) = app
        .get(&format!("/webhooks/messages?limit=1000{query}"))
        .await;
    assert_eq!(status, 200, "{list}");
    let mut list = list.as_array().unwrap().clone();
    list.reverse();
    list
}

async fn patch(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let (status, v) = app
        .request_as(Some(&app.key), Method::PATCH, path, Some(body))
        .await;
    (status.as_u16(), v)
}

/// A source connection of `short_name` with `config` in `collection`, no first sync.
async fn connection(app: &TestApp, short_name: &str, collection: &str, config: Value) -> Uuid {
    let (status, sc) = app
        .post(
            "/source-connections",
            json!({"short_name": short_name, "readable_collection_id": collection,
                   "config": config, "sync_immediately": false}),
        )
        .await;
    assert_eq!(status, 200, "{sc}");
    id(&sc)
}

/// Airweave's `core/events` models, as `model_dump` writes them: every field, always.
fn airweave_keys(event_type: &str) -> BTreeSet<&'static str> {
    let base = ["event_type", "timestamp", "organization_id"];
    let own: &[&str] = match event_type.split('.').next() {
        Some("sync") => &[
            "sync_id",
            "sync_job_id",
            "collection_id",
            "source_connection_id",
            "source_type",
            "collection_name",
            "collection_readable_id",
            "entities_inserted",
            "entities_updated",
            "entities_deleted",
            "entities_skipped",
            "chunks_written",
            "error",
        ],
        Some("collection") => &["collection_id", "collection_name", "collection_readable_id"],
        Some("source_connection") => &[
            "source_connection_id",
            "collection_readable_id",
            "source_type",
            "is_authenticated",
        ],
        _ => panic!("no Airweave model for {event_type}"),
    };
    base.into_iter().chain(own.iter().copied()).collect()
}

#[actix_web::test]
async fn every_event_types_payload_has_exactly_airweaves_keys() {
    let app = spawn_app().await;
    subscribe(&app, &EVENT_TYPES).await;
    let c = app.collection_with_id("payload-keys").await;
    assert_eq!(
        patch(
            &app,
            "/collections/payload-keys",
            json!({"name": "Payload Keys Renamed"})
        )
        .await
        .0,
        200
    );
    // Completed, failed on purpose (the stub source), cancelled.
    let done = connection(&app, "stub", "payload-keys", json!({"entity_count": 3})).await;
    let job = id(&app.run(done).await);
    app.wait_status(done, job, "completed").await;
    let failing = connection(&app, "stub", "payload-keys", json!({"fail_after": 1})).await;
    let failed_job = id(&app.run(failing).await);
    let failed = app.wait_status(failing, failed_job, "failed").await;
    let stopped = connection(&app, "timed", "payload-keys", lasting(30.0)).await;
    let job = id(&app.run(stopped).await);
    app.wait_status(stopped, job, "running").await;
    let (status, _) = app
        .post_empty(&format!("/source-connections/{stopped}/jobs/{job}/cancel"))
        .await;
    assert_eq!(status, 200);
    app.wait_status(stopped, job, "cancelled").await;
    assert_eq!(
        app.delete(&format!("/source-connections/{done}")).await.0,
        200
    );
    assert_eq!(app.delete("/collections/payload-keys").await.0, 200);

    let all = messages(&app, "").await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for m in &all {
        let event_type = m["event_type"].as_str().unwrap();
        let p = &m["payload"];
        let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, airweave_keys(event_type), "{event_type}: {p}");
        assert_eq!(p["event_type"], event_type);
        assert_eq!(p["organization_id"], c["organization_id"]);
        *seen.entry(event_type.to_owned()).or_default() += 1;
    }
    let expected: BTreeSet<&str> = EVENT_TYPES.into_iter().collect();
    assert_eq!(
        seen.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected,
        "every event type syncjobs records was made: {seen:?}"
    );

    // The values a client reads.
    let find = |t: &str| all.iter().find(|m| m["event_type"] == t).unwrap()["payload"].clone();
    let updated = find("collection.updated");
    assert_eq!(updated["collection_name"], "Payload Keys Renamed");
    assert_eq!(updated["collection_id"], c["id"]);
    assert_eq!(updated["collection_readable_id"], "payload-keys");
    let sync_failed = find("sync.failed");
    assert_eq!(sync_failed["sync_job_id"], failed_job.to_string());
    assert_eq!(sync_failed["source_type"], "stub");
    assert_eq!(sync_failed["error"], failed["error"]);
    assert_eq!(sync_failed["collection_name"], "Payload Keys Renamed");
    let deleted = find("collection.deleted");
    assert_eq!(deleted["collection_name"], "Payload Keys Renamed");
    let sc_created = find("source_connection.created");
    assert_eq!(sc_created["is_authenticated"], true);
    assert_eq!(sc_created["source_type"], "stub");
}

#[actix_web::test]
async fn deleting_a_collection_announces_it_and_not_each_connection_it_takes_along() {
    let app = spawn_app().await;
    subscribe(
        &app,
        &[
            "collection.deleted",
            "source_connection.deleted",
            "collection.updated",
        ],
    )
    .await;
    app.collection_with_id("doomed").await;
    let alone = connection(&app, "timed", "doomed", json!({})).await;
    let idle = connection(&app, "stub", "doomed", json!({})).await;
    let busy = connection(&app, "timed", "doomed", lasting(30.0)).await;
    let job = id(&app.run(busy).await);
    app.wait_status(busy, job, "running").await;
    // Deleted on its own: announced.
    assert_eq!(
        app.delete(&format!("/source-connections/{alone}")).await.0,
        200
    );
    // Taken along with the collection (one of them syncing): only the collection is.
    let (status, gone) = app.delete("/collections/doomed").await;
    assert_eq!(status, 200, "{gone}");
    for sc in [idle, busy] {
        assert_eq!(app.get(&format!("/source-connections/{sc}")).await.0, 404);
    }
    let got: Vec<(String, Value)> = messages(&app, "")
        .await
        .into_iter()
        .map(|m| {
            (
                m["event_type"].as_str().unwrap().to_owned(),
                m["payload"].clone(),
            )
        })
        .collect();
    let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        ["source_connection.deleted", "collection.deleted"],
        "{got:?}"
    );
    assert_eq!(got[0].1["source_connection_id"], alone.to_string());
    assert_eq!(got[1].1["collection_id"], gone["id"]);
    // The filter agrees.
    assert_eq!(
        messages(&app, "&event_types=source_connection.deleted")
            .await
            .len(),
        1
    );
}

#[actix_web::test]
async fn a_malformed_subscription_or_message_id_is_not_found_on_every_route() {
    let app = spawn_app().await;
    let sid = subscribe(&app, &["collection.created"]).await;
    app.collection("Makes A Message").await;
    let mid = messages(&app, "").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let since = json!({"since": "2020-01-01T00:00:00Z"});
    // Each id spelled so that a lenient parser would still read the existing one, and
    // some that are no UUID at all.
    let malformed = |id: &str| {
        vec![
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
            format!("{id}x"),
            "not-a-uuid".to_owned(),
            "ep_2bVxUn3RFnLYHa8z6ZKHMT9PqPX".to_owned(),
            "%20".to_owned(),
        ]
    };
    let subscription_not_found = json!({"detail": "Subscription not found"});
    for bad in malformed(&sid.to_string()) {
        let path = format!("/webhooks/subscriptions/{bad}");
        for (method, path, body) in [
            (Method::GET, path.clone(), None),
            (Method::GET, format!("{path}?include_secret=true"), None),
            (Method::PATCH, path.clone(), Some(json!({"disabled": true}))),
            // The id is looked at before the body.
            (Method::PATCH, path.clone(), Some(json!({"url": 5}))),
            (Method::POST, format!("{path}/recover"), Some(since.clone())),
            (Method::POST, format!("{path}/recover"), Some(json!({}))),
            (Method::DELETE, path.clone(), None),
        ] {
            let (status, v) = app
                .request_as(Some(&app.key), method.clone(), &path, body)
                .await;
            assert_eq!(
                (status.as_u16(), &v),
                (404, &subscription_not_found),
                "{method} {path}"
            );
        }
    }
    let message_not_found = json!({"detail": "Message not found"});
    for bad in malformed(&mid) {
        for path in [
            format!("/webhooks/messages/{bad}"),
            format!("/webhooks/messages/{bad}?include_attempts=true"),
        ] {
            let (status, v) = app.get(&path).await;
            assert_eq!((status.as_u16(), &v), (404, &message_not_found), "{path}");
        }
    }
    // Untouched, and found under their own ids (any case, as a UUID reads).
    let (status, s) = app
        .get(&format!(
            "/webhooks/subscriptions/{}",
            sid.to_string().to_uppercase()
        ))
        .await;
    assert_eq!((status.as_u16(), &s["disabled"]), (200, &json!(false)));
    assert_eq!(app.get(&format!("/webhooks/messages/{mid}")).await.0, 200);
}
