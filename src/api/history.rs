//! A job's own history, read from its stream in the log (not in Airweave):
//!
//! - `GET .../jobs/{job_id}/events`: every event as JSON (the export form that `syncjobs
//!   replay --server` reads), or with `Accept: text/event-stream` the same events as
//!   server-sent events, `id:` = stream version, followed live until the job is final.
//!   `Last-Event-ID: N` resumes after version N: nothing missed, nothing repeated.
//! - `GET .../jobs/{job_id}/state?version=N`: the job object as it was right after version N,
//!   folded by the service's own fold ([`state_at`]), for time travel.
//!
//! Both check ownership exactly like the job route ([`owned_job`]).

use super::auth::ApiContext;
use super::error::ApiError;
use super::input::{clip, Query};
use super::jobs::owned_job;
use super::sse::{
    accepts_event_stream, comment, follow_job, frame, response, settle_final, store_failure,
    with_heartbeat,
};
use super::wire::JobOut;
use super::{ok_json, AppState};
use crate::replay::{export_value, state_at};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures::StreamExt;
use std::collections::HashMap;
use syncjobs_domain::events::stream;
use syncjobs_domain::RecordedEvent;
use uuid::Uuid;

/// The header a reconnecting EventSource sends with the last `id:` it received.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The version to resume after: 0 without the header (or with an empty one, which
/// EventSource never sends but a proxy might), 422 for anything but an integer >= 0.
fn last_event_id(req: &HttpRequest) -> Result<u64, ApiError> {
    let Some(value) = req.headers().get(LAST_EVENT_ID) else {
        return Ok(0);
    };
    let bad = |shown: &str| {
        ApiError::Unprocessable(format!(
            "Last-Event-ID must be a stream version (an integer >= 0), got {shown:?}"
        ))
    };
    let text = value
        .to_str()
        .map_err(|_| bad("a header that is not text"))?
        .trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<u64>().map_err(|_| bad(&clip(text)))
}

fn read_failure(job_id: Uuid) -> impl Fn(crate::replay::ReplayError) -> ApiError {
    move |e| {
        tracing::error!(%job_id, %e, "a job's history cannot be read");
        ApiError::internal(e)
    }
}

/// One event as a server-sent event: `id:` its stream version, `data:` its export form.
fn event_frame(e: &RecordedEvent) -> Result<Bytes, crate::replay::ReplayError> {
    Ok(frame(Some(e.version), &export_value(e)?.to_string()))
}

pub async fn events(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let live = accepts_event_stream(&req);
    let after = if live { last_event_id(&req)? } else { 0 };
    let (_, job_id) = owned_job(&state, &ctx, &path.0, &path.1)?;
    let events = state.store.read_stream(&stream::job(job_id), 0).await?;
    let Some(last) = events.last() else {
        return Err(ApiError::job_not_found());
    };
    if !live {
        let body = events
            .iter()
            .map(export_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_failure(job_id))?;
        return ok_json(&body);
    }
    let finished = events
        .iter()
        .any(|e| e.job_event().is_some_and(|j| j.is_final()));
    if finished && after >= last.version {
        // Nothing left and nothing will come: 204 is how SSE tells a client (a browser's
        // EventSource reconnecting after the end) to stop reconnecting.
        return Ok(HttpResponse::NoContent().finish());
    }
    state.settle(last.global_position).await;
    let events = settle_final(
        follow_job(state.store.clone(), job_id, events, after),
        state.projection.clone(),
        state.settings.read_your_writes_timeout,
    );
    let frames = events
        .scan(false, move |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            let out = match item.map(|e| event_frame(&e)) {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => {
                    *ended = true;
                    comment(&format!("error: {}", read_failure(job_id)(e)))
                }
                // The client sees the stream end; it resumes with Last-Event-ID.
                Err(e) => {
                    *ended = true;
                    comment(&format!("error: {}", store_failure(job_id, e)))
                }
            };
            futures::future::ready(Some(out))
        })
        .boxed();
    let guard = state.streams.track("events", job_id);
    Ok(response(
        with_heartbeat(frames, state.settings.sse_heartbeat, comment("heartbeat")),
        guard,
    ))
}

pub async fn state(
    ctx: ApiContext,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    if !query.contains_key("version") {
        return Err(ApiError::Unprocessable(
            "version is required: the stream version to show the job at (1 or more)".into(),
        ));
    }
    let version = Query(&query).int("version", 0, 0, i64::MAX)? as u64;
    let (_, job_id) = owned_job(&state, &ctx, &path.0, &path.1)?;
    let events = state.store.read_stream(&stream::job(job_id), 0).await?;
    let last = events.last().map_or(0, |e| e.version);
    match state_at(&events, version).map_err(read_failure(job_id))? {
        Some(job) => ok_json(&JobOut::new(&job)),
        None => Err(ApiError::NotFound(format!(
            "Sync job version {version} not found: its versions are 1 to {last}"
        ))),
    }
}
