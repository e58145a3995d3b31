//! Source connections: fields, the first sync, refusals, listing, sync details.

use crate::collections::assert_timestamp;
use crate::helpers::{id, spawn_app};
use serde_json::{json, Value};
use uuid::Uuid;

#[actix_web::test]
async fn create_answers_every_field_and_starts_a_pending_job_by_default() {
    let app = spawn_app().await;
    app.collection_with_id("docs").await;
    let (status, sc) = app
        .post(
            "/source-connections",
            json!({
                "short_name": "timed",
                "readable_collection_id": "docs",
                "config": {"entity_count": 5, "duration_seconds": 30},
                "authentication": {"credentials": {"timed_key": "anything"}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{sc}");
    for field in [
        "id",
        "organization_id",
        "name",
        "description",
        "short_name",
        "readable_collection_id",
        "status",
        "created_at",
        "modified_at",
        "auth",
        "config",
        "sync",
        "entities",
    ] {
        assert!(sc.get(field).is_some(), "missing {field}: {sc}");
    }
    assert_eq!(sc["name"], "Timed Connection");
    assert_eq!(sc["description"], Value::Null);
    assert_eq!(sc["short_name"], "timed");
    assert_eq!(sc["readable_collection_id"], "docs");
    assert_eq!(sc["auth"]["method"], "direct");
    assert_eq!(sc["auth"]["authenticated"], true);
    assert_eq!(
        sc["config"],
        json!({"entity_count": 5, "duration_seconds": 30.0, "seed": 42})
    );
    assert_eq!(sc["entities"], json!({"total_entities": 0, "by_type": {}}));
    assert!(
        !sc.to_string().contains("anything"),
        "credentials are never echoed"
    );
    assert_timestamp(&sc["created_at"]);
    assert_eq!(sc["status"], "syncing");
    let last = &sc["sync"]["last_job"];
    assert!(
        ["pending", "running"].contains(&last["status"].as_str().unwrap()),
        "{sc}"
    );
    assert!(
        last.get("source_connection_id").is_none(),
        "last_job has no source_connection_id"
    );
    for field in [
        "id",
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
    ] {
        assert!(last.get(field).is_some(), "last_job lacks {field}: {last}");
    }
    assert_eq!(sc["sync"]["total_runs"], 1);
    let (_, jobs) = app
        .get(&format!("/source-connections/{}/jobs", id(&sc)))
        .await;
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["id"], last["id"]);
}

#[actix_web::test]
async fn without_a_first_sync_the_connection_waits_for_one() {
    let app = spawn_app().await;
    app.collection_with_id("idle").await;
    let sc = app.source_connection("idle", json!({})).await;
    assert_eq!(sc["status"], "pending_sync");
    assert_eq!(
        sc["sync"],
        json!({"total_runs": 0, "successful_runs": 0, "failed_runs": 0, "last_job": null})
    );
    assert_eq!(
        sc["config"],
        json!({"entity_count": 100, "duration_seconds": 10.0, "seed": 42})
    );
}

#[actix_web::test]
async fn create_refuses_unknown_collections_sources_and_auth_methods() {
    let app = spawn_app().await;
    app.collection_with_id("known").await;
    let (status, body) = app
        .post(
            "/source-connections",
            json!({"short_name": "timed", "readable_collection_id": "unknown"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (404, json!({"detail": "Collection not found"}))
    );
    let (status, body) = app
        .post(
            "/source-connections",
            json!({"short_name": "nope", "readable_collection_id": "known"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (404, json!({"detail": "Source 'nope' not found"}))
    );
    let (status, body) = app
        .post("/source-connections", json!({"short_name": "timed", "readable_collection_id": "known", "authentication": {"access_token": "t"}}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("does not support this authentication method"));
    let (status, body) = app
        .post("/source-connections", json!({"short_name": "timed", "readable_collection_id": "known", "config": {"entity_count": 0}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("config.entity_count"),
        "{body}"
    );
    assert_eq!(app.get("/source-connections").await.1, json!([]));
}

#[actix_web::test]
async fn list_is_newest_first_filters_by_collection_and_has_list_item_fields() {
    let app = spawn_app().await;
    app.collection_with_id("one").await;
    app.collection_with_id("two").await;
    let a = id(&app.source_connection("one", json!({})).await);
    let b = id(&app.source_connection("two", json!({})).await);
    let c = id(&app.source_connection("one", json!({})).await);
    let ids = |v: &Value| -> Vec<Uuid> { v.as_array().unwrap().iter().map(id).collect() };
    let (status, all) = app.get("/source-connections").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&all), vec![c, b, a]);
    assert_eq!(
        ids(&app.get("/source-connections?collection=one").await.1),
        vec![c, a]
    );
    assert_eq!(
        ids(&app
            .get("/source-connections?collection=one&skip=1&limit=1")
            .await
            .1),
        vec![a]
    );
    assert_eq!(
        app.get("/source-connections?collection=none").await.1,
        json!([])
    );
    let item = &all[0];
    for field in [
        "id",
        "name",
        "short_name",
        "readable_collection_id",
        "created_at",
        "modified_at",
        "is_authenticated",
        "auth_method",
        "status",
    ] {
        assert!(item.get(field).is_some(), "missing {field}: {item}");
    }
    assert_eq!(item["auth_method"], "direct");
    assert_eq!(item["status"], "pending_sync");
}

#[actix_web::test]
async fn unknown_source_connections_are_404() {
    let app = spawn_app().await;
    let missing = Uuid::new_v4();
    for (status, body) in [
        app.get(&format!("/source-connections/{missing}")).await,
        app.delete(&format!("/source-connections/{missing}")).await,
        app.post_empty(&format!("/source-connections/{missing}/run"))
            .await,
        app.get(&format!("/source-connections/{missing}/jobs"))
            .await,
    ] {
        assert_eq!(
            (status.as_u16(), body),
            (404, json!({"detail": "Source connection not found"}))
        );
    }
}

#[actix_web::test]
async fn sync_details_and_entities_follow_finished_jobs() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 3, "duration_seconds": 0.1}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "completed").await;
    let (_, body) = app.get(&format!("/source-connections/{sc}")).await;
    assert_eq!(body["status"], "active");
    assert_eq!(body["sync"]["total_runs"], 1);
    assert_eq!(body["sync"]["successful_runs"], 1);
    assert_eq!(body["sync"]["last_job"]["status"], "completed");
    // the timed source yields one container entity, then the 3
    assert_eq!(body["sync"]["last_job"]["entities_inserted"], 4);
    let entities = &body["entities"];
    assert_eq!(entities["total_entities"], 4);
    assert_eq!(entities["by_type"]["TimedEntity"]["count"], 3);
    assert_eq!(entities["by_type"]["TimedContainerEntity"]["count"], 1);
    crate::collections::assert_timestamp(&entities["by_type"]["TimedEntity"]["last_updated"]);
    let (_, list) = app.get("/source-connections").await;
    assert_eq!(list[0]["entity_count"], 4);
}

/// Entities live beside the store: `entities.db` in the data directory on the embedded
/// store; the store's own database on PostgreSQL, with nothing in the data directory. Either
/// way the API shows their counts and deleting the connection purges them.
#[actix_web::test]
async fn entities_live_beside_the_store_and_go_with_their_connection() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 20, "duration_seconds": 0.1}))
        .await;
    let job = id(&app.run(sc).await);
    app.wait_status(sc, job, "completed").await;
    let (_, body) = app.get(&format!("/source-connections/{sc}")).await;
    assert_eq!(body["entities"]["total_entities"], 21, "{body}");
    let on_postgres = crate::helpers::postgres_server().is_some();
    let file = app
        .data_dir
        .path()
        .join(syncjobs_actors::pipeline::destination::ENTITIES_FILE);
    assert_eq!(
        file.exists(),
        !on_postgres,
        "entities.db in the data directory only beside the embedded store"
    );
    let (status, body) = app.delete(&format!("/source-connections/{sc}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.entity_count(sc).await, 0, "its entities went with it");
}
