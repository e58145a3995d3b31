//! Airweave's progress stream, `GET /sync/job/{job_id}/subscribe`, built from the job's
//! stream in the log (see docs/events.md for the messages and where they differ from Airweave).
//!
//! Messages (each one `data: <json>` line, no `id:`, like Airweave):
//! - first `{"type":"connected","job_id":"..."}`;
//! - then, if the job already has counts, one progress message with them, and one more per
//!   progress report (`ProgressRecorded`) appended while connected: Airweave's `SyncProgressUpdate`
//!   (`inserted, updated, deleted, kept, skipped, entities_encountered, status: null,
//!   last_update_timestamp`);
//! - the same shape with `status` set (`completed`, `failed`, `cancelled`) when the job is
//!   final, after which the stream ends (at once for a job that was final already);
//! - `{"type":"heartbeat"}` after 30 s without a message;
//! - `{"type":"error","message":"..."}` if the log cannot be read, then the end.

use super::error::ApiError;
use super::input::path_uuid;
use super::sse::{follow_job, frame, response, settle_final, store_failure, with_heartbeat};
use super::AppState;
use crate::app::{self, lookup, Caller};
use crate::replay::state_at;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use syncjobs_domain::events::{stream, SyncJobEvent};
use syncjobs_domain::{JobState, RecordedEvent, StoreError};
use uuid::Uuid;

/// The one key of `entities_encountered`: the log records a job's counts, not counts per
/// entity type (Airweave's keys), so the whole count is given under this key.
pub const ENCOUNTERED_KEY: &str = "total";

/// Airweave's `SyncProgressUpdate`, field for field.
#[derive(Serialize)]
struct ProgressUpdate {
    inserted: u64,
    updated: u64,
    deleted: u64,
    kept: u64,
    skipped: u64,
    entities_encountered: BTreeMap<&'static str, u64>,
    /// `null` while the job runs; its final status in the last message.
    status: Option<&'static str>,
    last_update_timestamp: String,
}

fn json_frame(value: &impl Serialize) -> Bytes {
    // Serialising these plain structs cannot fail; an empty object keeps the stream valid.
    frame(
        None,
        &serde_json::to_string(value).unwrap_or_else(|_| "{}".into()),
    )
}

/// The progress message for `job` as it stood after the event recorded at `at`.
fn progress(job: &JobState, at: DateTime<Utc>) -> Bytes {
    let c = &job.counts;
    json_frame(&ProgressUpdate {
        inserted: c.inserted,
        updated: c.updated,
        deleted: c.deleted,
        kept: c.kept,
        skipped: c.skipped,
        entities_encountered: BTreeMap::from([(ENCOUNTERED_KEY, c.encountered())]),
        status: job.status.is_final().then(|| job.status.as_str()),
        last_update_timestamp: syncjobs_domain::time::micros(&at),
    })
}

/// `{"type": ..., ...}` with `type` first, as Airweave writes it.
#[derive(Serialize)]
struct Typed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

fn error_frame(message: &str) -> Bytes {
    json_frame(&Typed {
        kind: "error",
        job_id: None,
        message: Some(message),
    })
}

/// The heartbeat message (sent by [`with_heartbeat`]).
pub fn heartbeat() -> Bytes {
    frame(None, r#"{"type":"heartbeat"}"#)
}

/// The messages for job `job_id` whose stream, read just now, is `initial`; `live` is
/// its events after `initial` (see [`follow_job`]). Err when the stored history does not
/// fold (or is empty: 404).
pub fn progress_frames(
    job_id: Uuid,
    initial: &[RecordedEvent],
    live: BoxStream<'static, Result<RecordedEvent, StoreError>>,
) -> Result<BoxStream<'static, Bytes>, ApiError> {
    let Some(last) = initial.last() else {
        return Err(app::Error::JobNotFound.into());
    };
    let (last_version, last_at) = (last.version, last.recorded_at);
    let job = state_at(initial, last_version)
        .map_err(app::Error::from)?
        .ok_or(app::Error::JobNotFound)?;
    let mut first = vec![json_frame(&Typed {
        kind: "connected",
        job_id: Some(job_id),
        message: None,
    })];
    if job.status.is_final() {
        first.push(progress(&job, last_at));
        return Ok(futures::stream::iter(first).boxed());
    }
    // Counts change only with a progress report or a resume (which starts them again from
    // zero; final events end above), so the last of those says when the current counts
    // were recorded.
    let last_report = initial.iter().rev().find(|e| {
        matches!(
            e.job_event(),
            Some(SyncJobEvent::ProgressRecorded { .. } | SyncJobEvent::JobResumed { .. })
        )
    });
    if let Some(e) = last_report {
        first.push(progress(&job, e.recorded_at));
    }
    let live = live
        .scan((Some(job), false), move |(job, ended), item| {
            if *ended {
                return futures::future::ready(None);
            }
            let (out, stop) = next_frame(job_id, job, item);
            *ended = stop;
            futures::future::ready(Some(out))
        })
        .filter_map(futures::future::ready);
    Ok(futures::stream::iter(first).chain(live).boxed())
}

/// Folds one followed event into `job`: the message it calls for, if any, and whether the
/// stream must end (a read error or a history that does not fold: said once, then the end).
fn next_frame(
    job_id: Uuid,
    job: &mut Option<JobState>,
    item: Result<RecordedEvent, StoreError>,
) -> (Option<Bytes>, bool) {
    let e = match item {
        Ok(e) => e,
        Err(err) => return (Some(error_frame(&store_failure(job_id, err))), true),
    };
    let Some(event) = e.job_event() else {
        tracing::error!(%job_id, version = e.version, "a job stream holds a non-job event");
        return (Some(error_frame("Internal server error")), true);
    };
    match JobState::evolve(job.take(), event, e.recorded_at) {
        Ok(next) => {
            // A resume starts the counts again (the next run's own): subscribers are told.
            let report = matches!(
                event,
                SyncJobEvent::ProgressRecorded { .. } | SyncJobEvent::JobResumed { .. }
            );
            let out = (report || event.is_final()).then(|| progress(&next, e.recorded_at));
            *job = Some(next);
            (out, false)
        }
        Err(err) => {
            tracing::error!(%job_id, version = e.version, %err, "a job stream does not fold");
            (Some(error_frame("Internal server error")), true)
        }
    }
}

pub async fn subscribe(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job_id = path_uuid("job_id", &path)?;
    // Subscribed before the store is read: see `live` on the hand-over.
    let sub = state.live.subscribe(job_id);
    state
        .projection
        .read(async |m| lookup::job(m, &caller, job_id).await.map(|_| ()))
        .await?;
    let initial = state.store.read_stream(&stream::job(job_id), 0).await?;
    let last = initial.last().map_or(0, |e| e.version);
    // The read model may lag the log a little: show nothing it does not show yet.
    if let Some(e) = initial.last() {
        state.settle(e.global_position).await;
    }
    let live = settle_final(
        follow_job(sub, initial.clone(), last),
        state.projection.clone(),
        state.settings.read_your_writes_timeout,
    );
    let frames = progress_frames(job_id, &initial, live)?;
    let guard = state.streams.track("subscribe", job_id);
    Ok(response(
        with_heartbeat(frames, state.http.sse_heartbeat, heartbeat()),
        guard,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::live::LiveJobs;
    use crate::api::sse::follow_job;
    use crate::api::sse::tests::{created, ev, followed, progress as progress_event};
    use serde_json::{json, Value};
    use std::time::Duration;
    use syncjobs_domain::events::EntityCounts;
    use syncjobs_domain::{EventStore, ExpectedVersion, InMemoryStore};
    use tokio::time::Instant;

    fn message(bytes: &Bytes) -> Value {
        let text = std::str::from_utf8(bytes).unwrap();
        let data = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("not one data line: {text:?}"));
        serde_json::from_str(data).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn connected_then_current_counts_heartbeats_progress_reports_and_the_final_message() {
        let store = InMemoryStore::new();
        let job = Uuid::new_v4();
        let name = stream::job(job);
        let started = SyncJobEvent::JobStarted { worker: "w".into() };
        store
            .append(
                &name,
                ExpectedVersion::Exact(0),
                vec![ev(created(job)), ev(started), ev(progress_event(3))],
            )
            .await
            .unwrap();
        let hub = LiveJobs::start(store.clone());
        let (initial, live) = followed(&hub, job, 3).await;
        let frames = progress_frames(job, &initial, live).unwrap();
        let mut s = with_heartbeat(frames, Duration::from_secs(30), heartbeat());
        let t0 = Instant::now();
        assert_eq!(
            s.next().await.unwrap(),
            format!("data: {{\"type\":\"connected\",\"job_id\":\"{job}\"}}\n\n"),
            "Airweave's first message, type first"
        );
        let now = message(&s.next().await.unwrap());
        assert_eq!(now["inserted"], 3);
        assert_eq!(now["entities_encountered"], json!({"total": 3}));
        assert_eq!(now["status"], Value::Null);
        for field in [
            "updated",
            "deleted",
            "kept",
            "skipped",
            "last_update_timestamp",
        ] {
            assert!(now.get(field).is_some(), "{field} missing: {now}");
        }
        assert_eq!(
            message(&s.next().await.unwrap()),
            json!({"type": "heartbeat"})
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        store
            .append(
                &name,
                ExpectedVersion::Exact(3),
                vec![ev(progress_event(8))],
            )
            .await
            .unwrap();
        assert_eq!(message(&s.next().await.unwrap())["inserted"], 8);
        let cancel = SyncJobEvent::CancelRequested {
            requested_by: "api-key:x".into(),
            timeout_seconds: 180,
        };
        let cancelled = SyncJobEvent::Cancelled {
            counts: EntityCounts {
                inserted: 9,
                skipped: 1,
                ..Default::default()
            },
            note: None,
            counts_reconciled: false,
        };
        store
            .append(
                &name,
                ExpectedVersion::Exact(4),
                vec![ev(cancel), ev(cancelled)],
            )
            .await
            .unwrap();
        let last = message(&s.next().await.unwrap());
        assert_eq!(
            (&last["status"], &last["inserted"], &last["skipped"]),
            (&json!("cancelled"), &json!(9), &json!(1)),
            "a cancel request alone sends nothing; the final message has the final counts"
        );
        assert_eq!(last["entities_encountered"], json!({"total": 10}));
        assert!(
            s.next().await.is_none(),
            "the stream ends after the final message"
        );
    }

    /// A resume (its worker was lost) starts the job's counts again: subscribers get a
    /// progress message at zero, then the resumed run's reports.
    #[tokio::test(start_paused = true)]
    async fn a_resume_sends_the_counts_starting_again() {
        let store = InMemoryStore::new();
        let job = Uuid::new_v4();
        let name = stream::job(job);
        let started = SyncJobEvent::JobStarted { worker: "w".into() };
        store
            .append(
                &name,
                ExpectedVersion::Exact(0),
                vec![ev(created(job)), ev(started), ev(progress_event(3))],
            )
            .await
            .unwrap();
        let hub = LiveJobs::start(store.clone());
        let (initial, live) = followed(&hub, job, 3).await;
        let mut s = progress_frames(job, &initial, live).unwrap();
        s.next().await.unwrap(); // connected
        assert_eq!(message(&s.next().await.unwrap())["inserted"], 3);
        let resumed = SyncJobEvent::JobResumed {
            attempt: 1,
            lost_worker: "w".into(),
            last_seen: None,
            counts: EntityCounts {
                inserted: 3,
                ..Default::default()
            },
            counts_reconciled: false,
            handed_back: false,
        };
        let again = SyncJobEvent::JobStarted { worker: "v".into() };
        store
            .append(
                &name,
                ExpectedVersion::Exact(3),
                vec![ev(resumed), ev(again), ev(progress_event(1))],
            )
            .await
            .unwrap();
        let restarted = message(&s.next().await.unwrap());
        assert_eq!(
            (&restarted["inserted"], &restarted["status"]),
            (&json!(0), &Value::Null),
            "{restarted}"
        );
        assert_eq!(message(&s.next().await.unwrap())["inserted"], 1);
    }

    #[tokio::test]
    async fn a_finished_job_gets_connected_and_its_final_message_only() {
        let store = InMemoryStore::new();
        let job = Uuid::new_v4();
        let name = stream::job(job);
        let failed = SyncJobEvent::JobFailed {
            error: "boom".into(),
            error_category: None,
            counts: EntityCounts::default(),
            counts_reconciled: false,
        };
        store
            .append(
                &name,
                ExpectedVersion::Exact(0),
                vec![ev(created(job)), ev(failed)],
            )
            .await
            .unwrap();
        let hub = LiveJobs::start(store.clone());
        let (initial, live) = followed(&hub, job, 2).await;
        let got: Vec<Value> = progress_frames(job, &initial, live)
            .unwrap()
            .map(|b| message(&b))
            .collect()
            .await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["type"], "connected");
        assert_eq!(got[1]["status"], "failed");
        let nothing = follow_job(hub.subscribe(Uuid::new_v4()), vec![], 0);
        assert!(
            progress_frames(job, &[], nothing).is_err(),
            "no events: 404"
        );
    }
}
