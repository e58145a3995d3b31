//! The read model is derived: a restart from its database's stored position, or a rebuild
//! from the log with no read model at all, answers exactly what the running server answered.

use crate::helpers::{id, spawn, spawn_app, Options};
use serde_json::json;
use std::sync::Arc;
use syncjobs::backend::ReadModelAt;
use syncjobs_domain::SyncJobEvent;
use syncjobs_store_postgres::testkit;

async fn snapshot_of_answers(
    app: &crate::helpers::TestApp,
    sc: uuid::Uuid,
) -> Vec<serde_json::Value> {
    vec![
        app.get("/collections").await.1,
        app.get("/source-connections").await.1,
        app.get(&format!("/source-connections/{sc}")).await.1,
        app.get(&format!("/source-connections/{sc}/jobs")).await.1,
    ]
}

/// The read model's stored position: in `read_model.db`, or in the PostgreSQL store's
/// database.
async fn stored_position(app: &crate::helpers::TestApp) -> Option<u64> {
    match &app.read_model {
        ReadModelAt::DataDir => rusqlite::Connection::open(app.settings.read_model_path())
            .ok()
            .and_then(|c| {
                c.query_row("SELECT position FROM projection", [], |r| {
                    r.get::<_, i64>(0)
                })
                .ok()
                .map(|p| p as u64)
            }),
        ReadModelAt::Postgres(url, _) => testkit::client(url.expose())
            .await
            .query_opt("SELECT position FROM read_projection", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0) as u64),
    }
}

/// Waits until the stored read model is at the store's head: the stopped application has
/// committed its last batch and will commit no other.
async fn checkpoint_at_head(app: &crate::helpers::TestApp) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let at = stored_position(app).await;
        if at == Some(app.head()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoint at {at:?}, head {}",
            app.head()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn restarts_and_rebuilds_give_the_same_answers() {
    let first = spawn_app().await;
    let sc = first
        .idle_connection(json!({"entity_count": 2, "duration_seconds": 0.1}))
        .await;
    for _ in 0..2 {
        let job = id(&first.run(sc).await);
        first.wait_status(sc, job, "completed").await;
    }
    first.collection_with_id("extra").await;
    first.delete("/collections/extra").await;
    let before = snapshot_of_answers(&first, sc).await;
    first.handle.stop(true).await;
    checkpoint_at_head(&first).await;

    let options = || Options {
        store: Some(first.store.clone()),
        read_model: Some(first.read_model.clone()),
        data_dir: Some(Arc::clone(&first.data_dir)),
        bootstrap_key: Some(first.key.clone()),
        ..Options::default()
    };
    let from_checkpoint = spawn(options()).await.app;
    let mut answers = snapshot_of_answers(&from_checkpoint, sc).await;
    // entity counts come from the destination, which the test keeps per application
    answers[1][0]["entity_count"] = before[1][0]["entity_count"].clone();
    answers[2]["entities"] = before[2]["entities"].clone();
    assert_eq!(answers, before);
    from_checkpoint.handle.stop(true).await;
    checkpoint_at_head(&from_checkpoint).await;

    from_checkpoint.discard_read_model().await;
    // What earlier releases left behind: a JSON checkpoint and a binary snapshot, which are
    // neither read nor kept.
    let legacy = first.settings.legacy_checkpoint_paths();
    for old in &legacy {
        std::fs::write(old, br#"{"format":1,"model":{"position":1}}"#).unwrap();
    }
    let rebuilt = spawn(options()).await.app;
    assert!(
        legacy.iter().all(|old| !old.exists()),
        "the old checkpoints are removed"
    );
    let mut answers = snapshot_of_answers(&rebuilt, sc).await;
    answers[1][0]["entity_count"] = before[1][0]["entity_count"].clone();
    answers[2]["entities"] = before[2]["entities"].clone();
    assert_eq!(answers, before);
}

#[actix_web::test]
async fn a_first_start_without_any_key_makes_one_once() {
    let first = spawn(Options {
        bootstrap_key: None,
        ..Options::default()
    })
    .await;
    let key = first.generated_key.clone().expect("a key was generated");
    assert!(key.starts_with("sjk_"));
    assert_eq!(first.app.get("/collections").await.0, 200, "and it works");
    first.app.handle.stop(true).await;
    let again = spawn(Options {
        bootstrap_key: None,
        store: Some(first.app.store.clone()),
        read_model: Some(first.app.read_model.clone()),
        ..Options::default()
    })
    .await;
    assert!(
        again.generated_key.is_none(),
        "a key exists now: none is made"
    );
    let with_bootstrap = spawn(Options {
        bootstrap_key: Some("a-known-bootstrap-key-1234".into()),
        store: Some(first.app.store.clone()),
        read_model: Some(first.app.read_model.clone()),
        ..Options::default()
    })
    .await;
    assert!(with_bootstrap.generated_key.is_none());
    assert_eq!(
        with_bootstrap.app.get("/collections").await.0,
        200,
        "the bootstrap key is registered although keys exist"
    );
    let stored = serde_json::to_string(
        &syncjobs_domain::EventStore::read_all(first.app.store.as_ref(), 0, 10_000)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        !stored.contains(&key) && !stored.contains("a-known-bootstrap-key-1234"),
        "keys are stored only as hashes"
    );
}

/// A restart finds, through the read model, the jobs the old process left unfinished: the
/// running one is resumed (SYNCJOBS_MAX_RESUMES, default 1) and runs again, the cancelling
/// one keeps the deadline it was given.
#[actix_web::test]
async fn a_restart_resumes_interrupted_jobs_and_keeps_cancel_deadlines() {
    let options = |store, data_dir, key| Options {
        store,
        data_dir,
        bootstrap_key: key,
        cancel_timeout_seconds: 3,
        ..Options::default()
    };
    let first = spawn(options(None, None, None)).await.app;
    let running_sc = first.idle_connection(crate::helpers::lasting(600.0)).await;
    let stuck_sc = first
        .idle_connection(json!({
            "entity_count": 1000, "duration_seconds": 600, "ignore_cancel": true
        }))
        .await;
    let running = id(&first.run(running_sc).await);
    let stuck = id(&first.run(stuck_sc).await);
    first.wait_status(running_sc, running, "running").await;
    first.wait_status(stuck_sc, stuck, "running").await;
    // Taken before the request, so no earlier than the recorded request the deadline runs from.
    let requested = std::time::Instant::now();
    let (status, body) = first
        .post_empty(&format!(
            "/source-connections/{stuck_sc}/jobs/{stuck}/cancel"
        ))
        .await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("cancelling"))
    );
    first.handle.stop(true).await;

    let second = spawn(options(
        Some(first.store.clone()),
        Some(Arc::clone(&first.data_dir)),
        Some(first.key.clone()),
    ))
    .await
    .app;
    // Resumed, with the rows its lost run wrote, and claimed again.
    let resumed_with = async {
        loop {
            let events = second.job_events(running).await;
            let types: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
            if types.ends_with(&["JobResumed", "JobStarted"])
                || types.ends_with(&["JobResumed", "JobStarted", "ProgressRecorded"])
            {
                let resumed = events.iter().find_map(|e| match e.job_event() {
                    Some(r @ SyncJobEvent::JobResumed { .. }) => Some(r.clone()),
                    _ => None,
                });
                break resumed;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let resumed = tokio::time::timeout(std::time::Duration::from_secs(10), resumed_with)
        .await
        .expect("resumed and claimed again within 10 s");
    let Some(SyncJobEvent::JobResumed {
        attempt: 1,
        counts_reconciled: true,
        counts: lost_run,
        ..
    }) = resumed
    else {
        panic!("{resumed:?}");
    };
    assert!(
        lost_run.inserted <= second.entity_count(running_sc).await,
        "{lost_run:?}"
    );
    // The claim is in the log; the read model shows it once its projector has folded it (a
    // GET is not this test's own command, so it is not read-your-writes).
    second.wait_status(running_sc, running, "running").await;
    // Unless the restart itself outlasted the deadline (a loaded machine), the job is still
    // waiting for it.
    let status = second.job(stuck_sc, stuck).await["status"].clone();
    assert!(
        status == "cancelling" || requested.elapsed() >= std::time::Duration::from_secs(3),
        "the watchdog waits for the deadline recorded before the restart, got {status}"
    );
    let forced = second.wait_status(stuck_sc, stuck, "cancelled").await;
    assert!(
        requested.elapsed() >= std::time::Duration::from_secs(3),
        "forced {:?} after the request, before its 3 s deadline",
        requested.elapsed()
    );
    // Neither run reported its last writes: both endings take the destination's counts.
    assert_eq!(
        forced["error_details"],
        json!({"forced_by": "watchdog", "timeout_seconds": 3, "counts_reconciled": true})
    );
    assert_eq!(
        forced["entities_inserted"],
        second.entity_count(stuck_sc).await
    );
}

/// A process died while its job ran: the log has the job's start and a progress report of 3
/// entities, the destination 10 rows the job wrote after it. The next start resumes the job
/// recording the destination's counts (and that they were reconciled); the resumed run
/// finds those rows there (kept) and completes with every entity in the destination.
#[actix_web::test]
async fn a_job_interrupted_by_a_crash_is_resumed_with_the_rows_it_wrote_and_completes() {
    use syncjobs_actors::pipeline::Entity;
    use syncjobs_domain::events::stream;
    use syncjobs_domain::{EntityCounts, ExpectedVersion, Metadata, NewEvent, SyncJobEvent};

    let first = spawn_app().await;
    let sc = first.idle_connection(json!({"entity_count": 50})).await;
    let (_, connection) = first.get(&format!("/source-connections/{sc}")).await;
    let organization_id: uuid::Uuid = connection["organization_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let job = uuid::Uuid::now_v7();
    let events = [
        SyncJobEvent::JobCreated {
            job_id: job,
            source_connection_id: sc,
            organization_id,
            short_name: "timed".into(),
            config: json!({"entity_count": 50}),
        },
        SyncJobEvent::JobStarted {
            worker: "dead".into(),
        },
        SyncJobEvent::ProgressRecorded {
            counts: EntityCounts {
                inserted: 3,
                ..Default::default()
            },
        },
    ]
    .into_iter()
    .map(|e| NewEvent::new(e, chrono::Utc::now(), Metadata::default()))
    .collect();
    first
        .store
        .append(&stream::job(job), ExpectedVersion::Exact(0), events)
        .await
        .unwrap();
    let records = (0..10)
        .map(|i| {
            Entity {
                entity_id: format!("e-{i}"),
                entity_type: "TimedEntity".into(),
                content: json!({ "i": i }),
            }
            .into_record()
            .unwrap()
        })
        .collect();
    first.destination.write(sc, job, records, 0).await.unwrap();
    first.handle.stop(true).await;

    let second = spawn(Options {
        store: Some(first.store.clone()),
        read_model: Some(first.read_model.clone()),
        data_dir: Some(Arc::clone(&first.data_dir)),
        bootstrap_key: Some(first.key.clone()),
        ..Options::default()
    })
    .await
    .app;
    let completed = second.wait_status(sc, job, "completed").await;
    let events = second.job_events(job).await;
    let resumed = events.iter().find_map(|e| match e.job_event() {
        Some(r @ SyncJobEvent::JobResumed { .. }) => Some(r.clone()),
        _ => None,
    });
    assert!(
        matches!(
            resumed,
            Some(SyncJobEvent::JobResumed {
                attempt: 1,
                counts: EntityCounts { inserted: 10, .. },
                counts_reconciled: true,
                ..
            })
        ),
        "the lost run's counts are the destination's 10 rows, not its report of 3: {resumed:?}"
    );
    // The resumed run is a whole sync: the source's 50 entities and their container are
    // in the destination, and the 10 rows written before the crash (ids e-0..e-9, which
    // this source does not yield) are removed as any stale rows are.
    let total = second.get(&format!("/source-connections/{sc}")).await.1["entities"]
        ["total_entities"]
        .clone();
    assert_eq!(total, 51, "{completed}");
    assert_eq!(
        (
            &completed["entities_inserted"],
            &completed["entities_deleted"]
        ),
        (&json!(51), &json!(10)),
        "{completed}"
    );
}
