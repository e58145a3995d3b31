//! The events the benchmarks write: what the service itself records for a job (created,
//! started, progress reports, completed) and for the objects around it, so that bodies,
//! sizes and indexes are the real ones.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use serde_json::json;
use syncjobs_domain::events::{
    AccessEvent, CollectionEvent, EntityCounts, Metadata, NewEvent, SourceConnectionEvent,
    SyncJobEvent,
};
use uuid::Uuid;

/// Progress reports in one generated job stream (the "ProgressRecorded x7").
pub const PROGRESS_REPORTS: u64 = 7;
/// Events in one generated job stream: created, started, the progress reports, completed.
pub const EVENTS_PER_JOB: u64 = PROGRESS_REPORTS + 3;

fn metadata(correlation_id: Uuid, caused_by: &str) -> Metadata {
    Metadata {
        causation_id: None,
        correlation_id: Some(correlation_id),
        caused_by: caused_by.to_string(),
    }
}

fn counts(inserted: u64) -> EntityCounts {
    EntityCounts {
        inserted,
        ..EntityCounts::default()
    }
}

/// A progress report of a running job, as a worker records it.
pub fn progress(inserted: u64, correlation_id: Uuid) -> NewEvent {
    NewEvent::new(
        SyncJobEvent::ProgressRecorded {
            counts: counts(inserted),
        },
        Utc::now(),
        metadata(correlation_id, "worker:bench"),
    )
}

/// The config of a timed source as the API stores it.
pub fn timed_config(entity_count: u64, duration_seconds: f64, seed: i64) -> serde_json::Value {
    json!({"entity_count": entity_count, "duration_seconds": duration_seconds, "seed": seed})
}

/// The stream of a job that ran to completion: JobCreated, JobStarted, [`PROGRESS_REPORTS`]
/// progress reports and JobCompleted, five seconds apart from `at`.
pub fn completed_job(
    job_id: Uuid,
    source_connection_id: Uuid,
    organization_id: Uuid,
    at: DateTime<Utc>,
) -> Vec<NewEvent> {
    let per_report = 100;
    let mut bodies = vec![
        SyncJobEvent::JobCreated {
            job_id,
            source_connection_id,
            organization_id,
            short_name: "timed".into(),
            config: timed_config(per_report * PROGRESS_REPORTS, 60.0, 42),
        },
        SyncJobEvent::JobStarted {
            worker: "syncjobs-bench".into(),
        },
    ];
    bodies.extend(
        (1..=PROGRESS_REPORTS).map(|k| SyncJobEvent::ProgressRecorded {
            counts: counts(k * per_report),
        }),
    );
    bodies.push(SyncJobEvent::JobCompleted {
        counts: counts(PROGRESS_REPORTS * per_report),
    });
    let correlation_id = Uuid::new_v4();
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let caused_by = if i == 0 {
                "api-key:bench"
            } else {
                "worker:bench"
            };
            NewEvent::new(
                body,
                at + TimeDelta::seconds(5 * i as i64),
                metadata(correlation_id, caused_by),
            )
        })
        .collect()
}

/// The generated organization takes the name the servers' bootstrap key is registered
/// for, so that key sees it (`/health` counts only the key's own organization).
pub fn organization_created(organization_id: Uuid, at: DateTime<Utc>) -> NewEvent {
    NewEvent::new(
        AccessEvent::OrganizationCreated {
            organization_id,
            name: syncjobs::api::keys::DEFAULT_ORGANIZATION.into(),
        },
        at,
        metadata(Uuid::new_v4(), "cli"),
    )
}

pub fn collection_created(
    collection_id: Uuid,
    organization_id: Uuid,
    readable_id: &str,
    at: DateTime<Utc>,
) -> NewEvent {
    NewEvent::new(
        CollectionEvent::CollectionCreated {
            collection_id,
            organization_id,
            name: format!("Bench {readable_id}"),
            readable_id: readable_id.to_string(),
        },
        at,
        metadata(Uuid::new_v4(), "api-key:bench"),
    )
}

pub struct SourceConnectionSpec<'a> {
    pub source_connection_id: Uuid,
    pub organization_id: Uuid,
    pub collection_id: Uuid,
    pub readable_collection_id: &'a str,
    pub index: usize,
}

pub fn source_connection_created(spec: &SourceConnectionSpec<'_>, at: DateTime<Utc>) -> NewEvent {
    NewEvent::new(
        SourceConnectionEvent::SourceConnectionCreated {
            source_connection_id: spec.source_connection_id,
            organization_id: spec.organization_id,
            collection_id: spec.collection_id,
            readable_collection_id: spec.readable_collection_id.to_string(),
            name: format!("timed {}", spec.index),
            description: None,
            short_name: "timed".into(),
            config: timed_config(700, 60.0, 42),
            auth_method: "direct".into(),
            authenticated: true,
        },
        at,
        metadata(Uuid::new_v4(), "api-key:bench"),
    )
}
