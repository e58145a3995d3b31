//! The OpenAPI document says what the server does: the routes (both ways), which fields
//! take null, the bounds of query parameters, and the errors each operation answers.

use crate::helpers::{spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

#[actix_web::test]
async fn every_documented_route_is_served_and_every_served_route_is_documented() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = syncjobs::api::endpoints()
        .iter()
        .map(|e| (e.method.to_string(), e.path.to_string()))
        .collect();
    assert_eq!(documented, served);

    for (method, path) in &documented {
        let concrete = path
            .replace("{readable_id}", "no-such-collection")
            .replace("{source_connection_id}", &Uuid::new_v4().to_string())
            .replace("{job_id}", &Uuid::new_v4().to_string());
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        // Not through `request_as`: `/metrics` answers text, not JSON.
        let r = app
            .client
            .request(method.clone(), app.url(&concrete))
            .header("x-api-key", &app.key)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path} is not routed: {body}");
        let detail = serde_json::from_str::<Value>(&body).map(|b| b["detail"].clone());
        assert!(
            detail.map_or(true, |d| d != "Not Found"),
            "{method} {path} is not routed"
        );
    }
}

async fn document(app: &crate::helpers::TestApp) -> Value {
    let (status, doc) = app
        .request_as(None, Method::GET, "/openapi.json", None)
        .await;
    assert_eq!(status, 200);
    doc
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling {r}")),
        None => schema,
    }
}

fn allows_null(doc: &Value, schema: &Value) -> bool {
    let schema = resolve(doc, schema);
    let in_type = match &schema["type"] {
        Value::String(t) => t == "null",
        Value::Array(ts) => ts.iter().any(|t| t == "null"),
        _ => false,
    };
    in_type
        || schema["enum"]
            .as_array()
            .is_some_and(|e| e.contains(&Value::Null))
        || ["oneOf", "anyOf"].iter().any(|k| {
            schema[*k]
                .as_array()
                .is_some_and(|alts| alts.iter().any(|s| allows_null(doc, s)))
        })
}

/// Every field of every request body: `null` is accepted exactly where the document says
/// the field is nullable, and refused (422, naming the field) where it does not.
#[actix_web::test]
async fn null_in_a_body_is_accepted_exactly_where_the_document_says_so() {
    let app = spawn_app().await;
    app.collection_with_id("nulls").await;
    let doc = document(&app).await;
    let bodies = [
        (
            "/collections",
            "CollectionCreate",
            json!({"name": "Null Check"}),
        ),
        (
            "/source-connections",
            "SourceConnectionCreate",
            json!({"short_name": "timed", "readable_collection_id": "nulls",
                   "authentication": {"credentials": {}}, "sync_immediately": false}),
        ),
        (
            "/webhooks/subscriptions",
            "WebhookSubscriptionCreate",
            json!({"url": "http://127.0.0.1:9/hook", "event_types": ["sync.completed"]}),
        ),
    ];
    let mut checked = 0;
    for (path, schema_name, base) in bodies {
        let schema = &doc["components"]["schemas"][schema_name];
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for (field, field_schema) in schema["properties"].as_object().unwrap() {
            let mut body = base.clone();
            body[field] = Value::Null;
            let (status, answer) = app.post(path, body).await;
            let nullable = allows_null(&doc, field_schema);
            assert!(
                !(nullable && required.contains(&field.as_str())),
                "{schema_name}.{field}: required and nullable"
            );
            if nullable {
                assert_eq!(status, 200, "{schema_name}.{field}: null refused: {answer}");
            } else {
                assert_eq!(
                    status, 422,
                    "{schema_name}.{field}: null accepted: {answer}"
                );
                assert!(
                    answer["detail"]
                        .as_str()
                        .unwrap()
                        .starts_with(field.as_str()),
                    "{answer}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 13, "{checked} fields checked");
}

/// Every integer query parameter has both bounds documented, and they are the server's:
/// one past either bound is refused with 422, the bounds themselves are not.
#[actix_web::test]
async fn documented_query_bounds_are_the_servers_bounds() {
    let app = spawn_app().await;
    let sc = app
        .idle_connection(json!({"entity_count": 1, "duration_seconds": 0.1}))
        .await;
    let job = crate::helpers::id(&app.run(sc).await);
    let doc = document(&app).await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(get) = item.get("get") else { continue };
        let params = get["parameters"].as_array().cloned().unwrap_or_default();
        for p in params.iter().filter(|p| p["in"] == "query") {
            let schema = &p["schema"];
            if schema["type"] != "integer" {
                continue;
            }
            let name = p["name"].as_str().unwrap();
            let min = schema["minimum"]
                .as_i64()
                .unwrap_or_else(|| panic!("{path} {name}: no minimum"));
            let max = schema["maximum"]
                .as_u64()
                .unwrap_or_else(|| panic!("{path} {name}: no maximum"));
            let concrete = path
                .replace("{source_connection_id}", &sc.to_string())
                .replace("{job_id}", &job.to_string());
            for outside in [(min - 1).to_string(), (u128::from(max) + 1).to_string()] {
                let (status, body) = app.get(&format!("{concrete}?{name}={outside}")).await;
                assert_eq!(status, 422, "{path} {name}={outside}: {body}");
                assert!(body["detail"].as_str().unwrap().contains(name), "{body}");
            }
            for inside in [min.to_string(), max.to_string()] {
                let (status, body) = app.get(&format!("{concrete}?{name}={inside}")).await;
                assert_ne!(status, 422, "{path} {name}={inside}: {body}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "{checked} parameters checked");
}

/// Provokes the errors each operation can answer and checks the document lists them.
#[actix_web::test]
async fn every_error_an_operation_answers_is_documented_for_it() {
    let app = spawn_app_with(crate::helpers::Options {
        settings: |s| s.body_timeout_ms = 300,
        ..Default::default()
    })
    .await;
    let doc = document(&app).await;
    let unknown = Uuid::new_v4().to_string();
    let mut seen = 0;
    for e in syncjobs::api::endpoints() {
        let op = &doc["paths"][e.path][e.method.as_str().to_lowercase()];
        let documented = |status: u16| op["responses"].get(status.to_string()).is_some();
        let secured = op.get("security") != Some(&json!([]));
        let concrete = |id: &str| {
            e.path
                .replace("{readable_id}", "no-such-collection")
                .replace("{source_connection_id}", id)
                .replace("{job_id}", id)
        };
        let method = Method::from_bytes(e.method.as_str().as_bytes()).unwrap();
        let mut answers: Vec<(String, u16)> = Vec::new();
        let call = |key: Option<&str>, path: String, body: Option<&str>| {
            let mut req = app.client.request(method.clone(), app.url(&path));
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            if let Some(body) = body {
                req = req.body(body.to_owned());
            }
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let body_op = method == Method::POST && e.path.matches('/').count() == 1;
        let body = body_op.then_some("{");
        if secured {
            answers.push(("no key".into(), call(None, concrete(&unknown), body).await));
            answers.push((
                "unknown key".into(),
                call(Some("sjk_unknown_0123456789"), concrete(&unknown), body).await,
            ));
        }
        if e.path.contains("_id}") && !e.path.contains("{readable_id}") {
            answers.push((
                "bad uuid".into(),
                call(Some(&app.key), concrete("not-a-uuid"), None).await,
            ));
        }
        if e.path.contains('{') {
            answers.push((
                "unknown id".into(),
                call(Some(&app.key), concrete(&unknown), None).await,
            ));
        }
        if body_op {
            let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(32 * 1024));
            answers.push((
                "bad json".into(),
                call(Some(&app.key), concrete(""), Some("{")).await,
            ));
            answers.push((
                "too large".into(),
                call(Some(&app.key), concrete(""), Some(&big)).await,
            ));
            let mut conn =
                tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
                    .await
                    .unwrap();
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: test\r\nx-api-key: {}\r\nContent-Length: 100\r\n\r\n{{\"na",
                e.path, app.key
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                conn.read_to_end(&mut raw),
            )
            .await
            .expect("the stalled request is answered")
            .unwrap();
            let status: u16 = String::from_utf8_lossy(&raw)
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            answers.push(("stalled body".into(), status));
        }
        for (what, status) in answers {
            assert!(
                documented(status),
                "{} {}: {what} answered {status}, which is not documented",
                e.method,
                e.path
            );
            seen += 1;
        }
        assert!(
            op["responses"].get("500").is_some(),
            "{} {}: no 500",
            e.method,
            e.path
        );
    }
    assert!(seen >= 40, "{seen} answers checked");
}
