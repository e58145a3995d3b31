//! `GET /openapi.json`: a hand-written OpenAPI 3.1 document of the served routes. A test
//! checks that every path and method in it is served and that every served route is in it.

use actix_web::HttpResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_valid_json_with_paths() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().unwrap().len() >= 8);
    }
}
