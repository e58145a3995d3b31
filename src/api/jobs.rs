//! Sync job routes: run, list, get, and the cancel contract of API.md.

use super::error::ApiError;
use super::input::{job_path, path_uuid, Query};
use super::respond::ok_job;
use super::wire::JobOut;
use super::{ok_json, AppState};
use crate::app::{lookup, Caller};
use actix_web::{web, HttpResponse};
use std::collections::HashMap;

/// Answers with the new job, `pending`.
pub async fn run(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("source_connection_id", &path)?;
    let job = state.run_sync(&caller, id).await?;
    ok_job(&JobOut::new(&job))
}

pub async fn list(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("source_connection_id", &path)?;
    let limit = Query(&query).int("limit", 100, 1, 1000)? as usize;
    state
        .projection
        .read(async |m| {
            lookup::source_connection(m, &caller, id).await?;
            let jobs = m.jobs_of(id, 0, limit).await?;
            ok_json(&jobs.iter().map(JobOut::new).collect::<Vec<_>>())
        })
        .await
}

pub async fn get(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (sc, job_id) = job_path(&path)?;
    // Checked and answered under one read of the model: the answer is the job checked.
    state
        .projection
        .read(async |m| {
            ok_job(&JobOut::new(
                &lookup::connection_job(m, &caller, sc, job_id).await?,
            ))
        })
        .await
}

/// Answers with the job as the request left it: `cancelling`, or `cancelled` if it had not
/// started.
pub async fn cancel(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (sc, job_id) = job_path(&path)?;
    let job = state.cancel_job(&caller, sc, job_id).await?;
    ok_job(&JobOut::new(&job))
}
