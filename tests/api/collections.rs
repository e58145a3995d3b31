//! Collections: fields, generated readable ids, duplicates, listing, delete, status.

use crate::helpers::{id, spawn_app, spawn_app_with, Destination, Options};
use serde_json::{json, Value};

pub fn assert_timestamp(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    // 2026-04-23T10:00:00.123456Z
    assert_eq!(s.len(), 27, "{s}");
    assert!(
        s.ends_with('Z') && &s[10..11] == "T" && &s[19..20] == ".",
        "{s}"
    );
    assert!(chrono::DateTime::parse_from_rfc3339(s).is_ok(), "{s}");
}

#[actix_web::test]
async fn create_answers_every_collection_field() {
    let app = spawn_app().await;
    let (status, c) = app
        .post(
            "/collections",
            json!({"name": "Finance Data", "readable_id": "finance-data"}),
        )
        .await;
    assert_eq!(status, 200, "{c}");
    for field in [
        "id",
        "name",
        "readable_id",
        "organization_id",
        "created_at",
        "modified_at",
        "status",
        "vector_size",
        "embedding_model_name",
    ] {
        assert!(c.get(field).is_some(), "missing {field}: {c}");
    }
    assert_eq!(c["name"], "Finance Data");
    assert_eq!(c["readable_id"], "finance-data");
    assert_eq!(c["status"], "NEEDS SOURCE");
    assert_eq!(c["vector_size"], 0);
    assert_eq!(c["embedding_model_name"], "none");
    assert_timestamp(&c["created_at"]);
    assert_timestamp(&c["modified_at"]);
    assert_eq!(app.get("/collections/finance-data").await.1, c);
}

#[actix_web::test]
async fn without_a_readable_id_one_is_made_from_the_name() {
    let app = spawn_app().await;
    let c = app.collection("Finance Data").await;
    let rid = c["readable_id"].as_str().unwrap();
    assert!(
        rid.starts_with("finance-data-") && rid.len() == "finance-data-".len() + 6,
        "{rid}"
    );
    let other = app.collection("Finance Data").await;
    assert_ne!(other["readable_id"], c["readable_id"]);
}

#[actix_web::test]
async fn a_duplicate_readable_id_is_400_and_racing_creates_have_one_winner() {
    let app = spawn_app().await;
    let body = json!({"name": "Twice", "readable_id": "twice"});
    assert_eq!(app.post("/collections", body.clone()).await.0, 200);
    let (status, err) = app.post("/collections", body).await;
    assert_eq!(status, 400);
    assert_eq!(
        err["detail"],
        "Collection with readable_id 'twice' already exists"
    );

    let racers = (0..8).map(|_| {
        app.post(
            "/collections",
            json!({"name": "Race", "readable_id": "race"}),
        )
    });
    let results = futures::future::join_all(racers).await;
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 200).count(),
        1,
        "{results:?}"
    );
    assert!(
        results.iter().all(|(s, _)| *s == 200 || *s == 400),
        "{results:?}"
    );
    let (_, list) = app.get("/collections?limit=1000").await;
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|c| c["readable_id"] == "race")
            .count(),
        1
    );
}

#[actix_web::test]
async fn list_is_newest_first_and_pages() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.post(
            "/collections",
            json!({"name": format!("Coll {i}"), "readable_id": format!("c{i}")}),
        )
        .await;
    }
    let (status, all) = app.get("/collections").await;
    assert_eq!(status, 200);
    let rids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["readable_id"].as_str().unwrap())
        .collect();
    assert_eq!(rids, ["c4", "c3", "c2", "c1", "c0"]);
    let (_, page) = app.get("/collections?skip=1&limit=2").await;
    let rids: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["readable_id"].as_str().unwrap())
        .collect();
    assert_eq!(rids, ["c3", "c2"]);
    let (_, found) = app.get("/collections?search=coll%203").await;
    assert_eq!(found.as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn unknown_collections_are_404() {
    let app = spawn_app().await;
    for (status, body) in [
        app.get("/collections/nope").await,
        app.delete("/collections/nope").await,
    ] {
        assert_eq!(status, 404);
        assert_eq!(body, json!({"detail": "Collection not found"}));
    }
}

#[actix_web::test]
async fn trailing_slashes_are_accepted() {
    let app = spawn_app().await;
    let (status, c) = app
        .post(
            "/collections/",
            json!({"name": "Slashed", "readable_id": "slashed"}),
        )
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(app.get("/collections/").await.0, 200);
    assert_eq!(app.get("/collections/slashed/").await.1["id"], c["id"]);
    assert_eq!(app.get("/health/").await.0, 200);
}

#[actix_web::test]
async fn delete_answers_the_collection_as_it_was_and_frees_its_readable_id() {
    let app = spawn_app().await;
    let c = app.collection_with_id("gone-soon").await;
    let (status, body) = app.delete("/collections/gone-soon").await;
    assert_eq!(status, 200);
    assert_eq!(body, c);
    assert_eq!(app.get("/collections/gone-soon").await.0, 404);
    let again = app.collection_with_id("gone-soon").await;
    assert_ne!(again["id"], c["id"]);
}

#[actix_web::test]
async fn status_follows_the_last_jobs_of_its_connections() {
    let failing = spawn_app_with(Options {
        destination: Destination::FailingAfter(0),
        ..Options::default()
    })
    .await;
    failing.collection_with_id("statuses").await;
    let sc = id(&failing
        .source_connection(
            "statuses",
            json!({"entity_count": 3, "duration_seconds": 0.1}),
        )
        .await);
    let job = id(&failing.run(sc).await);
    failing.wait_status(sc, job, "failed").await;
    assert_eq!(
        failing.get("/collections/statuses").await.1["status"],
        "ERROR"
    );

    let app = spawn_app().await;
    let c = app.collection_with_id("statuses").await;
    assert_eq!(c["status"], "NEEDS SOURCE");
    let ok = id(&app
        .source_connection(
            "statuses",
            json!({"entity_count": 1, "duration_seconds": 0.1}),
        )
        .await);
    let job = id(&app.run(ok).await);
    app.wait_status(ok, job, "completed").await;
    assert_eq!(app.get("/collections/statuses").await.1["status"], "ACTIVE");
}

impl crate::helpers::TestApp {
    pub async fn collection_with_id(&self, rid: &str) -> Value {
        let (status, c) = self
            .post(
                "/collections",
                json!({"name": format!("Collection {rid}"), "readable_id": rid}),
            )
            .await;
        assert_eq!(status, 200, "{c}");
        c
    }
}

async fn patch(app: &crate::helpers::TestApp, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, v) = app
        .request_as(Some(&app.key), reqwest::Method::PATCH, path, body)
        .await;
    (status.as_u16(), v)
}

#[actix_web::test]
async fn patch_renames_a_collection_and_keeps_its_readable_id() {
    let app = spawn_app().await;
    let (_, c) = app
        .post(
            "/collections",
            json!({"name": "Finance Data", "readable_id": "finance-data"}),
        )
        .await;
    // Airweave's CollectionUpdate: `name`, `sync_config`; `readable_id` is not one of its
    // fields and never changes.
    let (status, renamed) = patch(
        &app,
        "/collections/finance-data",
        Some(json!({"name": "Finance Archive", "readable_id": "moved", "sync_config": null})),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["name"], "Finance Archive");
    for same in [
        "id",
        "readable_id",
        "organization_id",
        "created_at",
        "status",
    ] {
        assert_eq!(renamed[same], c[same], "{same}");
    }
    assert_timestamp(&renamed["modified_at"]);
    assert!(
        renamed["modified_at"].as_str() > c["modified_at"].as_str(),
        "{renamed}"
    );
    assert_eq!(app.get("/collections/finance-data").await.1, renamed);
    assert_eq!(app.get("/collections/moved").await.0, 404);
    let (_, list) = app.get("/collections").await;
    assert_eq!(list, json!([renamed.clone()]));

    // Changing nothing is still an answer (Airweave's too): the collection as it is, its
    // modified_at untouched. A trailing slash is the same route.
    for body in [
        json!({}),
        json!({"name": null}),
        json!({"name": "Finance Archive"}),
        json!({"sync_config": {"handlers": {"enable_vector_handlers": false}}}),
    ] {
        let (status, same) = patch(&app, "/collections/finance-data/", Some(body.clone())).await;
        assert_eq!((status, &same), (200, &renamed), "{body}");
    }
}

#[actix_web::test]
async fn a_refused_patch_says_why_and_changes_nothing() {
    let app = spawn_app().await;
    let c = app.collection("Kept As Is").await;
    let path = format!("/collections/{}", c["readable_id"].as_str().unwrap());
    let detail = |text: &str| json!({ "detail": text });
    for (body, status, why) in [
        (
            Some(json!({"name": "abc"})),
            422,
            detail("name: must be between 4 and 64 characters (got 3)"),
        ),
        (
            Some(json!({"name": "x".repeat(65)})),
            422,
            detail("name: must be between 4 and 64 characters (got 65)"),
        ),
        (
            Some(json!({"name": 42})),
            422,
            detail("name: expected a string, got a number"),
        ),
        (
            Some(json!({"name": "tab\there"})),
            422,
            detail("name: control characters are not allowed (U+0009 at character 4)"),
        ),
        (
            Some(json!({"sync_config": "fast"})),
            422,
            detail("sync_config: expected an object, got a string"),
        ),
        (
            Some(json!(["name"])),
            422,
            detail("Request body must be a JSON object"),
        ),
        (
            None,
            422,
            detail("Request body is required (a JSON object)"),
        ),
    ] {
        assert_eq!(
            patch(&app, &path, body.clone()).await,
            (status, why),
            "{body:?}"
        );
    }
    // The body is checked first (FastAPI validates before the handler looks anything up).
    assert_eq!(
        patch(&app, "/collections/nope", Some(json!({"name": "ab"})))
            .await
            .0,
        422
    );
    let not_found = (404, detail("Collection not found"));
    assert_eq!(
        patch(
            &app,
            "/collections/nope",
            Some(json!({"name": "Good Name"}))
        )
        .await,
        not_found
    );
    let (status, v) = app
        .request_as(
            Some(&app.other_key),
            reqwest::Method::PATCH,
            &path,
            Some(json!({"name": "Not Theirs"})),
        )
        .await;
    assert_eq!((status.as_u16(), v), not_found, "another organization's");
    let (status, v) = app
        .request_as(
            None,
            reqwest::Method::PATCH,
            &path,
            Some(json!({"name": "Anon Name"})),
        )
        .await;
    assert_eq!(status.as_u16(), 401, "{v}");
    assert_eq!(app.get(&path).await.1, c, "nothing changed");
}
