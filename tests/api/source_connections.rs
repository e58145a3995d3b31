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

/// A stub source connection in `collection` (no first sync); its body.
async fn stub(app: &crate::helpers::TestApp, collection: &str, config: Value) -> (u16, Value) {
    let (status, body) = app
        .post(
            "/source-connections",
            json!({
                "short_name": "stub",
                "readable_collection_id": collection,
                "config": config,
                "authentication": {"credentials": {"stub_key": "anything"}},
                "sync_immediately": false,
            }),
        )
        .await;
    (status.as_u16(), body)
}

#[actix_web::test]
async fn the_stub_source_syncs_its_entities_and_fails_on_purpose_with_fail_after() {
    let app = spawn_app().await;
    app.collection_with_id("stubbed").await;
    let (status, sc) = stub(&app, "stubbed", json!({"entity_count": 25, "seed": 3})).await;
    assert_eq!(status, 200, "{sc}");
    assert_eq!(sc["short_name"], "stub");
    assert_eq!(sc["name"], "Stub Connection");
    assert_eq!(
        sc["config"],
        json!({"entity_count": 25, "seed": 3, "generation_delay_ms": 0,
               "small_entity_weight": 30, "medium_entity_weight": 30, "large_entity_weight": 10,
               "small_file_weight": 15, "large_file_weight": 5, "code_file_weight": 10,
               "inject_special_tokens": false, "custom_content_prefix": null, "fail_after": -1}),
        "every field, defaults filled in"
    );
    let sc_id = id(&sc);
    let job = id(&app.run(sc_id).await);
    let done = app.wait_status(sc_id, job, "completed").await;
    assert_eq!(
        done["entities_inserted"], 25,
        "the container counts, as in Airweave"
    );
    assert_eq!(done["error"], Value::Null);
    assert_eq!(app.entity_count(sc_id).await, 25);

    // fail_after: the run fails on purpose, with Airweave's words.
    let (status, failing) = stub(
        &app,
        "stubbed",
        json!({"entity_count": 1000, "fail_after": 4, "generation_delay_ms": 1}),
    )
    .await;
    assert_eq!(status, 200, "{failing}");
    let failing = id(&failing);
    let job = id(&app.run(failing).await);
    let failed = app.wait_status(failing, job, "failed").await;
    assert_eq!(
        failed["error"],
        "source error: Stub source simulated failure after 4 entities (fail_after=4)",
        "{failed}"
    );
    // What was written before the failure stays, and is what the job counts.
    let written = failed["entities_inserted"].as_u64().unwrap();
    assert!(written <= 5, "{failed}");
    assert_eq!(app.entity_count(failing).await, written);
    let (_, after) = app.get(&format!("/source-connections/{failing}")).await;
    assert_eq!(after["status"], "error", "{after}");
    assert_eq!(after["sync"]["failed_runs"], 1);
}

#[actix_web::test]
async fn a_stub_config_or_credential_that_is_not_airweaves_is_refused_by_name() {
    let app = spawn_app().await;
    app.collection_with_id("stubbed").await;
    for (config, detail) in [
        (
            json!({"entity_count": 0}),
            "config.entity_count must be between 1 and 100000",
        ),
        (
            json!({"fail_after": -2}),
            "config.fail_after must be between -1 and 100000",
        ),
        (
            json!({"fail_after": 1.5}),
            "config.fail_after must be an integer between -1 and 100000",
        ),
        (
            json!({"generation_delay_ms": 20000}),
            "config.generation_delay_ms must be between 0 and 10000",
        ),
        (
            json!({"large_file_weight": 101}),
            "config.large_file_weight must be between 0 and 100",
        ),
        (
            json!({"inject_special_tokens": "yes"}),
            "config.inject_special_tokens must be a boolean",
        ),
        (json!([1]), "config: expected an object, got an array"),
    ] {
        let (status, body) = stub(&app, "stubbed", config.clone()).await;
        assert_eq!(
            (status, body),
            (422, json!({ "detail": detail })),
            "{config}"
        );
    }
    // A key of the timed source is no key of the stub's.
    let (status, body) = stub(&app, "stubbed", json!({"duration_seconds": 5})).await;
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("config.duration_seconds is not a field of the stub source (fields: entity_count, seed, generation_delay_ms"),
        "{detail}"
    );
    let (status, body) = app
        .post(
            "/source-connections",
            json!({"short_name": "stub", "readable_collection_id": "stubbed",
                   "authentication": {"credentials": {"stub_key": 7}}}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (
            422,
            json!({"detail": "authentication.credentials.stub_key must be a string"})
        )
    );
    // The timed source's key likewise.
    let (status, body) = app
        .post(
            "/source-connections",
            json!({"short_name": "timed", "readable_collection_id": "stubbed",
                   "authentication": {"credentials": {"timed_key": ["x"]}}}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (
            422,
            json!({"detail": "authentication.credentials.timed_key must be a string"})
        )
    );
    assert_eq!(app.get("/source-connections").await.1, json!([]));
}
