//! A job's own history, read from its stream in the log (not in Airweave):
//!
//! - `GET .../jobs/{job_id}/events`: every event as JSON (the export form that `syncjobs
//!   replay --server` reads), or with `Accept: text/event-stream` the same events as
//!   server-sent events, `id:` = stream version, followed live until the job is final.
//!   `Last-Event-ID: N` resumes after version N: nothing missed, nothing repeated.
//! - `GET .../jobs/{job_id}/state?version=N`: the job object as it was right after version N,
//!   folded by the service's own fold (`replay::state_at`), for time travel.
//!
//! Both check ownership exactly like the job route.

use super::error::ApiError;
use super::input::{job_path, job_version, last_event_id};
use super::sse::{
    accepts_event_stream, comment, follow_job, frame, response, settle_final, store_failure,
    with_heartbeat,
};
use super::wire::JobOut;
use super::{ok_json, AppState};
use crate::app::history::unreadable;
use crate::app::{self, Caller};
use crate::replay::export_value;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures::StreamExt;
use std::collections::HashMap;
use syncjobs_domain::RecordedEvent;

/// One event as a server-sent event: `id:` its stream version, `data:` its export form.
fn event_frame(e: &RecordedEvent) -> Result<Bytes, crate::replay::ReplayError> {
    Ok(frame(Some(e.version), &export_value(e)?.to_string()))
}

pub async fn events(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let live = accepts_event_stream(&req);
    let after = if live { last_event_id(&req)? } else { 0 };
    let (sc, job_id) = job_path(&path)?;
    // A live stream subscribes before the store is read: see `live` on the hand-over.
    let sub = live.then(|| state.live.subscribe(job_id));
    let events = state.job_events(&caller, sc, job_id).await?;
    let Some(sub) = sub else {
        let body = events
            .iter()
            .map(export_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(unreadable(job_id))?;
        return ok_json(&body);
    };
    let last = events.last().ok_or(app::Error::JobNotFound)?;
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
        follow_job(sub, events, after),
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
                    comment(&format!("error: {}", ApiError::from(unreadable(job_id)(e))))
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
        with_heartbeat(frames, state.http.sse_heartbeat, comment("heartbeat")),
        guard,
    ))
}

pub async fn state(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let version = job_version(&query)?;
    let (sc, job_id) = job_path(&path)?;
    let job = state.job_state_at(&caller, sc, job_id, version).await?;
    ok_json(&JobOut::new(&job))
}
