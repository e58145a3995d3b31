//! Fuzz target: the read model's database across crashes.
//!
//! Property: however a history is cut into committed batches, with the process stopping
//! between any of them (the database closed and opened again) and the follower redelivering
//! events from before the stored position (it is at-least-once), the model equals the fold
//! of the whole log in one go: no event is applied twice, none is skipped. Purge steps of
//! deleted connections' jobs, run at any point, change nothing a reader sees.

#[path = "../../tests/support/cases.rs"]
mod cases;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    AccessEvent, CollectionEvent, EntityCounts, Event, Metadata, RecordedEvent,
    SourceConnectionEvent, SyncJobEvent, WebhookEvent,
};
use syncjobs_projections::{ModelDump, Projection};
use uuid::Uuid;

mod engines;
use engines::{testkit, Engine, Place};

/// One source connection's story in a generated model.
#[derive(Debug, Clone)]
struct Story {
    name: String,
    /// 0 pending, 1 running, 2 completed, 3 failed, 4 cancelling, 5 cancelled, 6 forced.
    job: u8,
    inserted: u64,
    deleted_connection: bool,
}

fn story() -> impl Strategy<Value = Story> {
    (
        prop::collection::vec(any::<char>(), 4..20).prop_map(String::from_iter),
        0u8..7,
        any::<u64>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(name, job, inserted, deleted_connection)| Story {
            name,
            job,
            inserted,
            deleted_connection,
        })
}

/// A history with organizations, a key, collections, source connections and jobs in every
/// state, some of their connections deleted.
fn history() -> impl Strategy<Value = Vec<RecordedEvent>> {
    (any::<u64>(), prop::collection::vec(story(), 0..5)).prop_map(|(seed, stories)| {
        let mut events: Vec<(String, Event)> = Vec::new();
        let id = |n: u64| Uuid::from_u64_pair(seed, n);
        let org = id(0);
        events.push((
            stream::ACCESS.into(),
            AccessEvent::OrganizationCreated {
                organization_id: org,
                name: "default".into(),
            }
            .into(),
        ));
        events.push((
            stream::ACCESS.into(),
            AccessEvent::ApiKeyCreated {
                key_id: id(1),
                organization_id: org,
                key_hash: format!("{seed:064x}"),
                prefix: "sjk_".into(),
                expires_at: None,
            }
            .into(),
        ));
        // A webhook subscription to everything: each lifecycle event becomes a message
        // with a delivery, which every cut of the history must make the same.
        events.push((
            stream::webhook_subscription(id(2)),
            WebhookEvent::WebhookSubscriptionCreated {
                subscription_id: id(2),
                organization_id: org,
                url: "http://127.0.0.1:9/hook".into(),
                event_types: syncjobs_domain::webhook::EVENT_TYPES
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
                description: None,
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            }
            .into(),
        ));
        for (i, s) in stories.iter().enumerate() {
            let n = 10 * (i as u64 + 1);
            let (collection, sc, job) = (id(n), id(n + 1), id(n + 2));
            let counts = EntityCounts {
                inserted: s.inserted,
                ..Default::default()
            };
            events.push((
                stream::collection(collection),
                CollectionEvent::CollectionCreated {
                    collection_id: collection,
                    organization_id: org,
                    name: s.name.clone(),
                    readable_id: format!("c{i}"),
                }
                .into(),
            ));
            events.push((
                stream::source_connection(sc),
                SourceConnectionEvent::SourceConnectionCreated {
                    source_connection_id: sc,
                    organization_id: org,
                    collection_id: collection,
                    readable_collection_id: format!("c{i}"),
                    name: s.name.clone(),
                    description: Some(s.name.clone()),
                    short_name: "timed".into(),
                    config: serde_json::json!({"entity_count": 10, "duration_seconds": 0.5}),
                    auth_method: "direct".into(),
                    authenticated: true,
                }
                .into(),
            ));
            // Renamed (its messages name the new name), or patched with no change.
            if i % 3 != 2 {
                events.push((
                    stream::collection(collection),
                    CollectionEvent::CollectionUpdated {
                        collection_id: collection,
                        name: (i % 3 == 0).then(|| format!("{} renamed", s.name)),
                    }
                    .into(),
                ));
            }
            let mut job_events = vec![SyncJobEvent::JobCreated {
                job_id: job,
                source_connection_id: sc,
                organization_id: org,
                short_name: "timed".into(),
                config: serde_json::json!({"seed": i}),
            }];
            if s.job >= 1 {
                job_events.push(SyncJobEvent::JobStarted { worker: "w".into() });
            }
            match s.job {
                2 => job_events.push(SyncJobEvent::JobCompleted { counts }),
                3 => job_events.push(SyncJobEvent::JobFailed {
                    error: s.name.clone(),
                    error_category: None,
                    counts,
                    counts_reconciled: i % 2 == 0,
                }),
                4..=6 => job_events.push(SyncJobEvent::CancelRequested {
                    requested_by: "api".into(),
                    timeout_seconds: 3,
                }),
                _ => {}
            }
            match s.job {
                5 => job_events.push(SyncJobEvent::Cancelled {
                    counts,
                    note: None,
                    counts_reconciled: false,
                }),
                6 => job_events.push(SyncJobEvent::ForceCancelled {
                    error: "forced".into(),
                    timeout_seconds: 3,
                    requested_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
                    counts,
                    counts_reconciled: true,
                }),
                _ => {}
            }
            events.extend(
                job_events
                    .into_iter()
                    .map(|e| (stream::job(job), Event::from(e))),
            );
            if s.deleted_connection {
                events.push((
                    stream::source_connection(sc),
                    SourceConnectionEvent::SourceConnectionDeleted {
                        source_connection_id: sc,
                        with_collection: i % 2 == 1,
                    }
                    .into(),
                ));
            }
        }
        let mut recorded = Vec::new();
        for (i, (stream_id, event)) in events.into_iter().enumerate() {
            let position = i as u64 + 1;
            recorded.push(RecordedEvent {
                event_id: id(1_000_000 + position),
                stream_id,
                version: 1,
                global_position: position,
                recorded_at: Utc
                    .timestamp_opt(1_800_000_000 + position as i64, 7)
                    .unwrap(),
                schema_version: 2,
                metadata: Metadata::default(),
                event,
            });
        }
        recorded
    })
}

/// What happens after a committed batch.
#[derive(Debug, Clone, Copy)]
enum Then {
    GoOn,
    /// The process stops and starts again.
    Crash,
    /// The follower delivers again this many events from before the position.
    Redeliver(usize),
    /// The projector purges a step of deleted connections' jobs.
    Purge,
}

fn then() -> impl Strategy<Value = Then> {
    prop_oneof![
        Just(Then::GoOn),
        Just(Then::Crash),
        (1usize..6).prop_map(Then::Redeliver),
        Just(Then::Purge),
    ]
}

/// One runtime for every case (proptest's bodies are not async).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        })
        .block_on(f)
}

async fn dump(projection: &Projection) -> ModelDump {
    projection.read(async |m| m.dump().await).await.unwrap()
}

async fn whole(engine: Engine, events: &[RecordedEvent]) -> ModelDump {
    let place = Place::new(engine).await;
    let (projection, writer) = place.open().await;
    writer.apply_batch(events.iter().cloned()).await.unwrap();
    dump(&projection).await
}

/// Folds `events` in batches of the steps' sizes, crashing (reopening), redelivering and
/// purging between them as the steps say: the model must equal one fold of the whole log.
async fn crash_story(
    engine: Engine,
    events: Vec<RecordedEvent>,
    steps: Vec<(usize, Then)>,
) -> Result<(), TestCaseError> {
    let expected = whole(engine, &events).await;
    let place = Place::new(engine).await;
    let (mut projection, mut writer) = place.open().await;
    let mut steps = steps.into_iter().cycle();
    loop {
        let at = writer.position() as usize;
        if at >= events.len() {
            break;
        }
        let (size, then) = steps.next().unwrap();
        let end = (at + size).min(events.len());
        writer
            .apply_batch(events[at..end].iter().cloned())
            .await
            .unwrap();
        prop_assert_eq!(projection.position(), end as u64);
        match then {
            Then::GoOn => {}
            Then::Crash => {
                drop((projection, writer));
                (projection, writer) = place.open().await;
                prop_assert_eq!(projection.position(), end as u64, "the position survives");
            }
            Then::Redeliver(n) => {
                let from = end.saturating_sub(n);
                writer
                    .apply_batch(events[from..end].iter().cloned())
                    .await
                    .unwrap();
                prop_assert_eq!(projection.position(), end as u64);
            }
            Then::Purge => {
                writer.purge_step().await.unwrap();
            }
        }
    }
    while writer.purge_step().await.unwrap() {}
    prop_assert_eq!(dump(&projection).await, expected);
    Ok(())
}

proptest! {
    #![proptest_config(cases::cases(64))]

    #[test]
    fn crashes_between_batches_never_apply_twice_nor_skip(
        events in history(),
        steps in prop::collection::vec((1usize..8, then()), 1..40),
    ) {
        block_on(crash_story(Engine::Sqlite, events, steps))?;
    }
}

proptest! {
    // Each case is two fresh databases on the server: fewer of them.
    #![proptest_config(cases::cases(12))]

    #[test]
    fn on_postgresql_crashes_between_batches_never_apply_twice_nor_skip(
        events in history(),
        steps in prop::collection::vec((1usize..8, then()), 1..40),
    ) {
        if testkit::admin_url("on_postgresql_crashes_between_batches_never_apply_twice_nor_skip").is_some() {
            block_on(crash_story(Engine::Postgres, events, steps))?;
        }
    }
}
