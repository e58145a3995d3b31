//! `/webhooks/subscriptions`: Airweave's shapes, validation, secrets, org isolation.

use crate::collections::assert_timestamp;
use crate::helpers::{id, spawn_app, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const SUBSCRIPTIONS: &str = "/webhooks/subscriptions";

async fn subscribe(app: &TestApp, body: Value) -> Value {
    let (status, s) = app.post(SUBSCRIPTIONS, body).await;
    assert_eq!(status, 200, "{s}");
    s
}

async fn patch(app: &TestApp, key: &str, id: Uuid, body: Value) -> (u16, Value) {
    let (status, v) = app
        .request_as(
            Some(key),
            Method::PATCH,
            &format!("{SUBSCRIPTIONS}/{id}"),
            Some(body),
        )
        .await;
    (status.as_u16(), v)
}

#[actix_web::test]
async fn a_subscription_speaks_airweaves_fields_and_shows_its_secret_only_when_asked() {
    let app = spawn_app().await;
    let s = subscribe(
        &app,
        json!({"url": "https://hooks.example.com/syncjobs",
               "event_types": ["sync.completed", "sync.failed"],
               "description": "prod"}),
    )
    .await;
    let fields: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "created_at",
        "description",
        "disabled",
        "filter_types",
        "health_status",
        "id",
        "updated_at",
        "url",
    ];
    expected.sort_unstable();
    assert_eq!(fields, expected, "{s}");
    assert_eq!(s["url"], "https://hooks.example.com/syncjobs");
    assert_eq!(s["filter_types"], json!(["sync.completed", "sync.failed"]));
    assert_eq!(s["disabled"], false);
    assert_eq!(s["description"], "prod");
    assert_eq!(s["health_status"], "unknown");
    assert_timestamp(&s["created_at"]);
    assert_timestamp(&s["updated_at"]);
    let sid = id(&s);

    let (status, detail) = app.get(&format!("{SUBSCRIPTIONS}/{sid}")).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["secret"], Value::Null, "no secret unless asked");
    assert_eq!(detail["delivery_attempts"], json!([]));
    assert_eq!(detail["url"], s["url"]);
    let (_, with) = app
        .get(&format!("{SUBSCRIPTIONS}/{sid}?include_secret=true"))
        .await;
    let secret = with["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 30,
        "{secret}"
    );
    let (_, again) = app
        .get(&format!("{SUBSCRIPTIONS}/{sid}?include_secret=true"))
        .await;
    assert_eq!(again["secret"], secret, "the secret is kept, not redrawn");
    // The secret never appears elsewhere.
    let (_, list) = app.get(SUBSCRIPTIONS).await;
    assert!(!list.to_string().contains(secret));
    assert_eq!(list, json!([s]));

    // A secret of the subscriber's own, with or without the prefix.
    let own = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mine = subscribe(
        &app,
        json!({"url": "http://127.0.0.1:9/h", "event_types": ["sync.pending"], "secret": own}),
    )
    .await;
    let (_, shown) = app
        .get(&format!("{SUBSCRIPTIONS}/{}?include_secret=1", id(&mine)))
        .await;
    assert_eq!(shown["secret"], format!("whsec_{own}"));
    // Newest first.
    let (_, list) = app.get(SUBSCRIPTIONS).await;
    assert_eq!(list[0]["id"], mine["id"]);
    assert_eq!(list[1]["id"], s["id"]);
}

#[actix_web::test]
async fn bad_urls_unknown_event_types_and_bad_secrets_are_refused_naming_them() {
    let app = spawn_app().await;
    let refused = async |body: Value| {
        let (status, v) = app.post(SUBSCRIPTIONS, body).await;
        assert_eq!(status, 422, "{v}");
        v["detail"].as_str().unwrap().to_owned()
    };
    for url in [
        "ftp://example.com/x",
        "example.com/hook",
        "https://user:pw@example.com/",
        "javascript:alert(1)",
        "http://exa mple.com/",
        "",
    ] {
        let detail = refused(json!({"url": url, "event_types": ["sync.completed"]})).await;
        assert!(detail.starts_with("url"), "{url}: {detail}");
    }
    let detail = refused(json!({"url": "https://example.com/h",
                                "event_types": ["sync.completed", "sync.exploded"]}))
    .await;
    assert!(detail.contains("'sync.exploded'"), "{detail}");
    let detail = refused(json!({"url": "https://example.com/h", "event_types": []})).await;
    assert_eq!(detail, "event_types cannot be empty");
    let detail =
        refused(json!({"url": "https://example.com/h", "event_types": "sync.failed"})).await;
    assert!(
        detail.starts_with("event_types: expected an array"),
        "{detail}"
    );
    let detail = refused(json!({"url": "https://example.com/h", "event_types": [1]})).await;
    assert!(detail.starts_with("event_types[0]"), "{detail}");
    let detail = refused(json!({"event_types": ["sync.failed"]})).await;
    assert_eq!(detail, "url: field required");
    for secret in ["short", "whsec_not*base64*at*all*but*long*enough"] {
        let detail = refused(json!({"url": "https://example.com/h",
                                    "event_types": ["sync.failed"], "secret": secret}))
        .await;
        assert!(detail.starts_with("secret"), "{detail}");
    }
    // Nothing was recorded by any of them.
    assert_eq!(app.get(SUBSCRIPTIONS).await.1, json!([]));
}

#[actix_web::test]
async fn a_patch_changes_only_what_it_names_and_validates_it() {
    let app = spawn_app().await;
    let s = subscribe(
        &app,
        json!({"url": "https://example.com/a", "event_types": ["sync.completed"]}),
    )
    .await;
    let sid = id(&s);
    let (status, p) = patch(&app, &app.key, sid, json!({"disabled": true})).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["disabled"], true);
    assert_eq!(p["url"], s["url"]);
    assert_eq!(p["filter_types"], s["filter_types"]);
    assert_eq!(p["created_at"], s["created_at"]);
    assert_ne!(p["updated_at"], s["updated_at"]);
    let (_, got) = app.get(&format!("{SUBSCRIPTIONS}/{sid}")).await;
    assert_eq!(got["disabled"], true, "read your writes: {got}");

    let (status, p) = patch(
        &app,
        &app.key,
        sid,
        json!({"url": "http://127.0.0.1:1/b", "event_types": ["sync.failed", "collection.created"],
               "disabled": false}),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["url"], "http://127.0.0.1:1/b");
    assert_eq!(
        p["filter_types"],
        json!(["sync.failed", "collection.created"])
    );
    assert_eq!(p["disabled"], false);

    let (status, e) = patch(&app, &app.key, sid, json!({"event_types": ["nope"]})).await;
    assert_eq!(status, 422, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("'nope'"), "{e}");
    let (status, e) = patch(&app, &app.key, sid, json!({"url": "gopher://x"})).await;
    assert_eq!(status, 422, "{e}");
    let (status, e) = patch(&app, &app.key, sid, json!({"disabled": "yes"})).await;
    assert_eq!(status, 422, "{e}");
    let (_, after) = app.get(&format!("{SUBSCRIPTIONS}/{sid}")).await;
    assert_eq!(
        after["url"], "http://127.0.0.1:1/b",
        "refused patches changed nothing"
    );
    assert_eq!(
        after["filter_types"],
        json!(["sync.failed", "collection.created"])
    );
}

#[actix_web::test]
async fn another_organizations_or_a_malformed_or_deleted_id_is_not_found() {
    let app = spawn_app().await;
    let s = subscribe(
        &app,
        json!({"url": "https://example.com/a", "event_types": ["sync.completed"]}),
    )
    .await;
    let sid = id(&s);
    let path = format!("{SUBSCRIPTIONS}/{sid}");
    let not_found = json!({"detail": "Subscription not found"});
    let other = Some(app.other_key.as_str());
    for method in [Method::GET, Method::DELETE] {
        let (status, v) = app.request_as(other, method, &path, None).await;
        assert_eq!((status.as_u16(), &v), (404, &not_found));
    }
    assert_eq!(
        patch(&app, &app.other_key, sid, json!({"disabled": true})).await,
        (404, not_found.clone())
    );
    let (_, theirs) = app
        .request_as(other, Method::GET, SUBSCRIPTIONS, None)
        .await;
    assert_eq!(theirs, json!([]), "other organizations see none of it");
    for bad in ["not-a-uuid", "ep_2bVxUn3RFnLYHa8z6ZKHMT9PqPX"] {
        let (status, v) = app.get(&format!("{SUBSCRIPTIONS}/{bad}")).await;
        assert_eq!((status.as_u16(), &v), (404, &not_found), "{bad}");
    }
    // Untouched by the other organization's attempts.
    let (_, still) = app.get(&path).await;
    assert_eq!(still["disabled"], false);

    let (status, gone) = app.delete(&path).await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["id"], s["id"], "the subscription as it was");
    assert_eq!(app.get(&path).await.0, 404);
    assert_eq!(app.delete(&path).await.0, 404);
    assert_eq!(app.get(SUBSCRIPTIONS).await.1, json!([]));
    // Without a key: the API's usual 401.
    let (status, _) = app.request_as(None, Method::GET, SUBSCRIPTIONS, None).await;
    assert_eq!(status, 401);
}
