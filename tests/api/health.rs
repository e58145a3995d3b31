use crate::helpers::{parts, spawn_app};

#[actix_web::test]
async fn health_answers_without_a_key_and_shows_the_store_and_projection() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    let (status, body) = parts(r).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["store"]["backend"], "memory");
    assert_eq!(body["projection"]["lag"], 0);
    assert_eq!(body["supervisor"]["status"], "running");
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
