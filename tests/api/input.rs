//! Bad input never panics and never changes state; each gets a clear JSON detail.

use crate::helpers::{parts, spawn_app};
use reqwest::Method;
use serde_json::json;

#[actix_web::test]
async fn bad_input_is_refused_clearly_and_records_nothing() {
    let app = spawn_app().await;
    app.collection_with_id("target").await;
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(20 * 1024));
    let long_id = "9".repeat(5000);
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (Method::POST, "/collections".into(), Some(r#"{"name":"#.into()), 422, "not valid JSON"),
        (Method::POST, "/collections".into(), Some("[]".into()), 422, "must be a JSON object"),
        (Method::POST, "/collections".into(), Some("".into()), 422, "Request body is required"),
        (Method::POST, "/collections".into(), Some(r#"{"name": 5}"#.into()), 422, "name: expected a string, got a number"),
        (Method::POST, "/collections".into(), Some("{}".into()), 422, "name: field required"),
        (Method::POST, "/collections".into(), Some(r#"{"name": "abc"}"#.into()), 422, "name: must be between 4 and 64 characters"),
        (Method::POST, "/collections".into(), Some(json!({"name": "y".repeat(65)}).to_string()), 422, "name: must be between 4 and 64"),
        (Method::POST, "/collections".into(), Some(r#"{"name": "Valid", "readable_id": "Bad_ID"}"#.into()), 422, "readable_id: must match"),
        (Method::POST, "/collections".into(), Some(r#"{"name": "Valid", "readable_id": "a--b"}"#.into()), 422, "readable_id"),
        (Method::POST, "/collections".into(), Some(r#"{"name": "Valid", "readable_id": 7}"#.into()), 422, "readable_id: expected a string"),
        (Method::POST, "/collections".into(), Some(big), 413, "larger than"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": 1, "readable_collection_id": "target"}"#.into()), 422, "short_name: expected a string"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed"}"#.into()), 422, "readable_collection_id: field required"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "sync_immediately": "yes"}"#.into()), 422, "sync_immediately: expected a boolean"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "config": "big"}"#.into()), 422, "config: expected an object"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "config": {"entity_count": 10001}}"#.into()), 422, "config.entity_count"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "config": {"duration_seconds": "slow"}}"#.into()), 422, "config.duration_seconds"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "name": "abc"}"#.into()), 422, "name: must be between 4 and 42"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "authentication": {"credentials": "pw"}}"#.into()), 422, "authentication.credentials"),
        (Method::POST, "/collections".into(), Some(r#"{"name":"dup","name":"long enough"}"#.into()), 422, "name: duplicate key in JSON object"),
        (Method::POST, "/collections".into(), Some(r#"{"name":"long enough","readable_id":"a","readable_id":"b"}"#.into()), 422, "readable_id: duplicate key in JSON object"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "config": {"entity_count": 5, "entity_count": 6}}"#.into()), 422, "config.entity_count: duplicate key in JSON object"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "authentication": {"credentials": {"k": 1, "k": 2}}}"#.into()), 422, "authentication.credentials.k: duplicate key"),
        (Method::POST, "/collections".into(), Some(r#"{"name": "nul\u0000name"}"#.into()), 422, "name: control characters are not allowed (U+0000 at character 4)"),
        (Method::POST, "/collections".into(), Some(r#"{"name": "two\nlines"}"#.into()), 422, "name: control characters are not allowed (U+000A"),
        (Method::POST, "/collections".into(), Some(json!({"name": "c1 \u{85} char"}).to_string()), 422, "name: control characters are not allowed (U+0085"),
        (Method::POST, "/collections".into(), Some(r#"{"name": "Valid", "readable_id": "a\u0000"}"#.into()), 422, "readable_id: must match"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "name": "tab\there"}"#.into()), 422, "name: control characters are not allowed (U+0009"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "target", "description": "bell\u0007"}"#.into()), 422, "description: control characters are not allowed (U+0007"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed", "readable_collection_id": "tar\u007fget"}"#.into()), 422, "readable_collection_id: control characters are not allowed (U+007F"),
        (Method::POST, "/source-connections".into(), Some(r#"{"short_name": "timed\u0000", "readable_collection_id": "target"}"#.into()), 422, "short_name: control characters are not allowed"),
        (Method::GET, "/source-connections/not-a-uuid".into(), None, 422, "source_connection_id is not a valid UUID: not-a-uuid"),
        (Method::DELETE, "/source-connections/not-a-uuid".into(), None, 422, "source_connection_id is not a valid UUID"),
        (Method::POST, "/source-connections/not-a-uuid/run".into(), None, 422, "source_connection_id is not a valid UUID"),
        (Method::GET, "/source-connections/not-a-uuid/jobs".into(), None, 422, "source_connection_id is not a valid UUID"),
        (Method::GET, format!("/source-connections/{long_id}"), None, 422, "is not a valid UUID"),
        (Method::GET, "/collections?limit=0".into(), None, 422, "limit must be an integer between 1 and 1000"),
        (Method::GET, "/collections?limit=1001".into(), None, 422, "limit must be an integer between 1 and 1000"),
        (Method::GET, "/collections?limit=abc".into(), None, 422, "limit must be an integer"),
        (Method::GET, "/collections?skip=-1".into(), None, 422, "skip must be an integer greater than or equal to 0"),
        (Method::GET, "/source-connections?limit=5000".into(), None, 422, "limit must be an integer between 1 and 1000"),
        (Method::GET, "/collections/%C3%A9t%C3%A9".into(), None, 404, "Collection not found"),
    ];
    let head = app.head();
    for (method, path, body, status, needle) in cases {
        let mut req = app
            .client
            .request(method.clone(), app.url(&path))
            .header("x-api-key", &app.key);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let (got, body) = parts(req.send().await.unwrap()).await;
        let short_path: String = path.chars().take(60).collect();
        assert_eq!(got.as_u16(), status, "{method} {short_path}: {body}");
        let detail = body["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail: {body}"));
        assert!(
            detail.contains(needle),
            "{method} {short_path}: {detail:?} lacks {needle:?}"
        );
        assert!(detail.len() < 400, "details stay short: {}", detail.len());
    }
    assert_eq!(app.head(), head, "no refused request recorded anything");
    assert_eq!(app.get("/source-connections").await.1, json!([]));
    assert_eq!(
        app.get("/health").await.0,
        200,
        "and the server is still up"
    );
}

#[actix_web::test]
async fn a_json_body_is_read_whatever_its_content_type() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/collections"))
        .header("x-api-key", &app.key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"name": "Curl Without Header", "readable_id": "curl"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = parts(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["readable_id"], "curl");
}

#[actix_web::test]
async fn an_oversized_body_without_a_length_is_refused_while_streaming() {
    let app = spawn_app().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|_| Ok(vec![b' '; 1024])).collect();
    let r = app
        .client
        .post(app.url("/collections"))
        .header("x-api-key", &app.key)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let (status, body) = parts(r).await;
    assert_eq!(status, 413, "{body}");
}

#[actix_web::test]
async fn a_description_may_span_lines_and_nulls_mean_absent() {
    let app = spawn_app().await;
    app.collection_with_id("target").await;
    let (status, body) = app
        .post(
            "/source-connections",
            json!({
                "short_name": "timed",
                "readable_collection_id": "target",
                "name": null,
                "description": "first line\r\n\tsecond line",
                "config": null,
                "authentication": null,
                "sync_immediately": false,
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["description"], "first line\r\n\tsecond line");
    assert_eq!(body["name"], "Timed Connection");
    let (status, body) = app
        .post(
            "/collections",
            json!({"name": "Null Readable Id", "readable_id": null}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["readable_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("null-readable-id-")),
        "{body}"
    );
}
