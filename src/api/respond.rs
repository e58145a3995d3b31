//! Success answers: JSON 200s.

use super::error::ApiError;
use super::wire::JobOut;
use actix_web::HttpResponse;
use serde::Serialize;

/// A JSON 200 response.
pub fn ok_json(body: &impl Serialize) -> Result<HttpResponse, ApiError> {
    // One job is ~400 bytes: start there rather than grow from serde_json's 128.
    let mut bytes = Vec::with_capacity(512);
    serde_json::to_writer(&mut bytes, body).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(bytes))
}

/// One job as a JSON 200 response, by [`JobOut::write_json`]: clients poll it.
pub fn ok_job(job: &JobOut<'_>) -> Result<HttpResponse, ApiError> {
    let mut bytes = Vec::with_capacity(512);
    job.write_json(&mut bytes).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(bytes))
}
