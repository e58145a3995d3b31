//! Sync job routes: run, list, get, and the cancel contract of API.md.
//!
//! Ownership (organization, source connection, job of that connection) is checked on the
//! read model before the supervisor is asked anything; the supervisor's job actor decides
//! the command itself against the job's stream, which is what makes concurrent cancels
//! record exactly one request.

use super::auth::ApiContext;
use super::error::ApiError;
use super::input::{path_uuid, Query};
use super::source_connections::existing;
use super::wire::JobOut;
use super::{ok_json, AppState};
use actix_web::{web, HttpResponse};
use std::collections::HashMap;
use syncjobs_actors::{CommandOutcome, JobsError, NewJob};
use syncjobs_domain::{JobError, JobState};
use syncjobs_projections::ReadModel;
use uuid::Uuid;

/// The supervisor's refusals in the contract's words.
pub fn jobs_error(e: JobsError) -> ApiError {
    match e {
        JobsError::Job(JobError::NotFound) => ApiError::job_not_found(),
        JobsError::Job(e) => ApiError::BadRequest(e.to_string()),
        e @ (JobsError::CannotCancel { .. } | JobsError::AlreadyActive { .. }) => {
            ApiError::BadRequest(e.to_string())
        }
        JobsError::Store(e) => e.into(),
        e @ JobsError::Corrupt(_) => ApiError::internal(e),
        JobsError::Unavailable => ApiError::Unavailable("The job supervisor is not running".into()),
    }
}

/// [`jobs_error`], once the read model shows the state the refusal names: like a 200, a
/// 400 that says `completed` (or `already running`) is never followed by a GET that still
/// says otherwise. Bounded by the read-your-writes timeout, as [`AppState::settle`] is.
pub async fn refusal(state: &AppState, e: JobsError) -> ApiError {
    match &e {
        JobsError::CannotCancel { position, .. } => state.settle(*position).await,
        JobsError::AlreadyActive {
            position, job_id, ..
        } => {
            if *position > 0 {
                state.settle(*position).await;
            } else {
                // Its creation was still being appended: wait for the job itself.
                let job_id = *job_id;
                let timeout = state.settings.read_your_writes_timeout;
                if !state
                    .projection
                    .wait_until(|m| m.job(job_id).is_some(), timeout)
                    .await
                {
                    tracing::warn!(%job_id, "read model lagging behind an active job");
                }
            }
        }
        _ => {}
    }
    jobs_error(e)
}

/// Answers with the job as the command left it (`pending` after a run, `cancelling` or
/// `cancelled` after a cancel), once the read model shows at least that much, so that the
/// next GET never goes back in time.
async fn respond_with_job(
    state: &AppState,
    outcome: &CommandOutcome,
) -> Result<HttpResponse, ApiError> {
    state.settle(outcome.position).await;
    ok_json(&JobOut::new(&outcome.state))
}

/// Asks the supervisor for a pending job of the connection; returns its outcome.
pub async fn start_job(
    state: &AppState,
    ctx: &ApiContext,
    source_connection_id: Uuid,
) -> Result<CommandOutcome, ApiError> {
    let (short_name, config) = state
        .projection
        .read(|m| {
            m.source_connection(ctx.organization_id, source_connection_id)
                .map(|sc| (sc.short_name.clone(), sc.config.clone()))
        })
        .ok_or_else(ApiError::source_connection_not_found)?;
    let outcome = match state
        .jobs
        .create(NewJob {
            source_connection_id,
            organization_id: ctx.organization_id,
            short_name,
            config,
            caused_by: ctx.principal(),
        })
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => return Err(refusal(state, e).await),
    };
    tracing::info!(job_id = %outcome.state.job_id, %source_connection_id, "sync job created");
    Ok(outcome)
}

pub async fn run(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = existing(&state, &ctx, &path)?;
    let outcome = start_job(&state, &ctx, id).await?;
    state.settle(outcome.position).await;
    // A delete that raced this run has already swept the connection's jobs, or will not
    // see this one: then stop it here rather than let it sync for a deleted connection.
    if state
        .projection
        .read(|m| m.source_connection(ctx.organization_id, id).is_none())
    {
        let _ = state
            .jobs
            .cancel(outcome.state.job_id, ctx.principal())
            .await;
        return Err(ApiError::source_connection_not_found());
    }
    respond_with_job(&state, &outcome).await
}

pub async fn list(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("source_connection_id", &path)?;
    let limit = Query(&query).int("limit", 100, 1, 1000)? as usize;
    state.projection.read(|m| {
        if m.source_connection(ctx.organization_id, id).is_none() {
            return Err(ApiError::source_connection_not_found());
        }
        let jobs: Vec<JobOut> = m.jobs_of(id).take(limit).map(JobOut::new).collect();
        ok_json(&jobs)
    })
}

/// The caller's job; another organization's job does not exist for it (404 `Sync job not found`).
pub fn own_job<'m>(
    m: &'m ReadModel,
    ctx: &ApiContext,
    job_id: Uuid,
) -> Result<&'m JobState, ApiError> {
    m.job(job_id)
        .filter(|j| j.organization_id == ctx.organization_id)
        .ok_or_else(ApiError::job_not_found)
}

/// Checks the UUIDs, then that the connection is the caller's and the job is that
/// connection's: 422, 404 `Source connection not found`, 404 `Sync job not found`, 400.
pub fn owned_job(
    state: &AppState,
    ctx: &ApiContext,
    sc_raw: &str,
    job_raw: &str,
) -> Result<(Uuid, Uuid), ApiError> {
    let sc = path_uuid("source_connection_id", sc_raw)?;
    let job = path_uuid("job_id", job_raw)?;
    state
        .projection
        .read(|m| connection_job(m, ctx, sc, job).map(|_| (sc, job)))
}

/// The checks of [`owned_job`] on a read model already read.
fn connection_job<'m>(
    m: &'m ReadModel,
    ctx: &ApiContext,
    sc: Uuid,
    job_id: Uuid,
) -> Result<&'m JobState, ApiError> {
    if m.source_connection(ctx.organization_id, sc).is_none() {
        return Err(ApiError::source_connection_not_found());
    }
    let job = own_job(m, ctx, job_id)?;
    if job.source_connection_id != sc {
        return Err(ApiError::BadRequest(
            "Sync job does not belong to this source connection".into(),
        ));
    }
    Ok(job)
}

pub async fn get(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let sc = path_uuid("source_connection_id", &path.0)?;
    let job_id = path_uuid("job_id", &path.1)?;
    // Checked and answered under one read of the model: the answer is the job checked.
    state
        .projection
        .read(|m| ok_json(&JobOut::new(connection_job(m, &ctx, sc, job_id)?)))
}

pub async fn cancel(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (sc, job_id) = owned_job(&state, &ctx, &path.0, &path.1)?;
    let outcome = match state.jobs.cancel(job_id, ctx.principal()).await {
        Ok(outcome) => outcome,
        Err(e) => return Err(refusal(&state, e).await),
    };
    tracing::info!(%job_id, source_connection_id = %sc, status = %outcome.state.status, "sync job cancel requested");
    respond_with_job(&state, &outcome).await
}

/// Asks every pending or running job of the connection to stop; returns the ids of its
/// jobs that were not final (cancelling ones included, which need no asking).
pub async fn cancel_active(
    state: &AppState,
    ctx: &ApiContext,
    source_connection_id: Uuid,
) -> Vec<Uuid> {
    let active = state
        .projection
        .read(|m| m.active_jobs_of(source_connection_id));
    for &job_id in &active {
        match state.jobs.cancel(job_id, ctx.principal()).await {
            Ok(o) => {
                tracing::info!(%job_id, status = %o.state.status, "sync job cancelled for a delete")
            }
            // Already cancelling, or ended meanwhile: nothing to ask.
            Err(JobsError::CannotCancel { .. } | JobsError::Job(JobError::NotFound)) => {}
            Err(err) => tracing::warn!(%job_id, %err, "could not cancel a sync job for a delete"),
        }
    }
    active
}
