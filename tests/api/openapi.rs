//! The OpenAPI document matches the real routes, both ways.

use crate::helpers::spawn_app;
use reqwest::Method;
use std::collections::BTreeSet;
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
        let (status, body) = app
            .request_as(Some(&app.key), method.clone(), &concrete, None)
            .await;
        assert_ne!(status, 405, "{method} {path} is not routed: {body}");
        assert_ne!(body["detail"], "Not Found", "{method} {path} is not routed");
    }
}
