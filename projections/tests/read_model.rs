//! The read model against histories written to a real (in-memory) store: what each kind of
//! event does to the rows, rebuilds from zero against snapshot + follow, and the projector.

use chrono::{Duration as ChronoDuration, TimeZone, Utc};
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    AccessEvent, CollectionEvent, EntityCounts, Event, EventStore, ExpectedVersion, InMemoryStore,
    JobStatus, Metadata, NewEvent, RecordedEvent, SourceConnectionEvent, SyncJobEvent,
};
use syncjobs_projections::{
    load_model, snapshot, spawn_projector, CollectionStatus, Projection, ProjectorConfig,
    ReadModel, SourceConnectionStatus,
};
use uuid::Uuid;

/// Appends events with recorded times one second apart, from a fixed origin.
struct History {
    store: Arc<InMemoryStore>,
    tick: i64,
}

impl History {
    fn new() -> Self {
        History {
            store: InMemoryStore::new(),
            tick: 0,
        }
    }

    async fn append(&mut self, stream: &str, event: impl Into<Event>) -> RecordedEvent {
        self.tick += 1;
        let at = Utc.timestamp_opt(1_800_000_000 + self.tick, 0).unwrap();
        let mut recorded = self
            .store
            .append(
                stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(event, at, Metadata::default())],
            )
            .await
            .unwrap();
        recorded.pop().unwrap()
    }

    async fn all(&self) -> Vec<RecordedEvent> {
        self.store.read_all(0, usize::MAX).await.unwrap()
    }

    async fn org(&mut self, name: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.append(
            stream::ACCESS,
            AccessEvent::OrganizationCreated {
                organization_id: id,
                name: name.into(),
            },
        )
        .await;
        id
    }

    async fn collection(&mut self, org: Uuid, rid: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.append(
            &stream::collection_name(org, rid),
            CollectionEvent::CollectionCreated {
                collection_id: id,
                organization_id: org,
                name: format!("Collection {rid}"),
                readable_id: rid.into(),
            },
        )
        .await;
        id
    }

    async fn source_connection(&mut self, org: Uuid, collection: Uuid, rid: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.append(
            &stream::source_connection(id),
            SourceConnectionEvent::SourceConnectionCreated {
                source_connection_id: id,
                organization_id: org,
                collection_id: collection,
                readable_collection_id: rid.into(),
                name: "Timed Connection".into(),
                description: None,
                short_name: "timed".into(),
                config: serde_json::json!({"entity_count": 3}),
                auth_method: "direct".into(),
                authenticated: true,
            },
        )
        .await;
        id
    }

    async fn job(&mut self, org: Uuid, sc: Uuid, events: &[SyncJobEvent]) -> Uuid {
        let id = Uuid::new_v4();
        let s = stream::job(id);
        self.append(
            &s,
            SyncJobEvent::JobCreated {
                job_id: id,
                source_connection_id: sc,
                organization_id: org,
                short_name: "timed".into(),
                config: serde_json::json!({"entity_count": 3, "seed": id.to_string()}),
            },
        )
        .await;
        for e in events {
            self.append(&s, e.clone()).await;
        }
        id
    }

    async fn job_event(&mut self, job: Uuid, e: SyncJobEvent) {
        self.append(&stream::job(job), e).await;
    }
}

fn counts(n: u64) -> EntityCounts {
    EntityCounts {
        inserted: n,
        ..Default::default()
    }
}
fn started() -> SyncJobEvent {
    SyncJobEvent::JobStarted { worker: "w".into() }
}
fn completed(n: u64) -> SyncJobEvent {
    SyncJobEvent::JobCompleted { counts: counts(n) }
}
fn failed() -> SyncJobEvent {
    SyncJobEvent::JobFailed {
        error: "boom".into(),
        error_category: None,
        counts: counts(1),
        counts_reconciled: false,
    }
}
fn cancel_requested() -> SyncJobEvent {
    SyncJobEvent::CancelRequested {
        requested_by: "test".into(),
        timeout_seconds: 180,
    }
}
fn cancelled(n: u64) -> SyncJobEvent {
    SyncJobEvent::Cancelled {
        counts: counts(n),
        note: None,
        counts_reconciled: false,
    }
}

fn fold(events: &[RecordedEvent]) -> ReadModel {
    let mut m = ReadModel::new();
    for e in events {
        m.apply(e);
    }
    m
}

/// A history touching every kind of event, including deletes and late job events.
async fn rich_history() -> History {
    let mut h = History::new();
    let org = h.org("default").await;
    let other = h.org("other").await;
    h.append(
        stream::ACCESS,
        AccessEvent::ApiKeyCreated {
            key_id: Uuid::new_v4(),
            organization_id: org,
            key_hash: "a".repeat(64),
            prefix: "sjk_aaaa".into(),
            expires_at: None,
        },
    )
    .await;
    let c1 = h.collection(org, "finance").await;
    let c2 = h.collection(other, "finance").await;
    let sc1 = h.source_connection(org, c1, "finance").await;
    let sc2 = h.source_connection(other, c2, "finance").await;
    h.job(org, sc1, &[started(), completed(10)]).await;
    let running = h.job(org, sc1, &[started()]).await;
    h.job(other, sc2, &[failed()]).await;
    let doomed = h.source_connection(org, c1, "finance").await;
    let live = h.job(org, doomed, &[started()]).await;
    h.job(org, doomed, &[started(), completed(1)]).await;
    h.append(
        &stream::source_connection(doomed),
        SourceConnectionEvent::SourceConnectionDeleted {
            source_connection_id: doomed,
        },
    )
    .await;
    h.job_event(live, cancel_requested()).await;
    h.job_event(live, cancelled(2)).await;
    h.job_event(
        running,
        SyncJobEvent::ProgressRecorded { counts: counts(4) },
    )
    .await;
    let gone = h.collection(org, "gone").await;
    h.append(
        &stream::collection_name(org, "gone"),
        CollectionEvent::CollectionDeleted {
            collection_id: gone,
        },
    )
    .await;
    h
}

#[tokio::test]
async fn job_rows_follow_the_lifecycle_with_recorded_times_and_counts() {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let job = h.job(org, sc, &[started()]).await;
    let m = fold(&h.all().await);
    let row = m.job(job).unwrap();
    assert_eq!(row.status, JobStatus::Running);
    assert!(row.started_at.is_some() && row.completed_at.is_none());
    assert_eq!(
        m.source_connection_status(m.source_connection(org, sc).unwrap()),
        SourceConnectionStatus::Syncing
    );

    h.job_event(job, SyncJobEvent::ProgressRecorded { counts: counts(3) })
        .await;
    h.job_event(job, cancel_requested()).await;
    h.job_event(job, cancelled(5)).await;
    let m = fold(&h.all().await);
    let row = m.job(job).unwrap();
    assert_eq!(row.status, JobStatus::Cancelled);
    assert_eq!(row.counts, counts(5));
    assert_eq!(
        row.completed_at.unwrap() - row.started_at.unwrap(),
        ChronoDuration::seconds(3)
    );
    assert_eq!(
        m.source_connection_status(m.source_connection(org, sc).unwrap()),
        SourceConnectionStatus::Active
    );
}

#[tokio::test]
async fn a_late_event_after_a_final_state_changes_nothing() {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let job = h
        .job(org, sc, &[started(), cancel_requested(), cancelled(2)])
        .await;
    h.job_event(job, completed(99)).await;
    let m = fold(&h.all().await);
    assert_eq!(m.job(job).unwrap().status, JobStatus::Cancelled);
    assert_eq!(m.job(job).unwrap().counts, counts(2));
    assert_eq!(
        m.position(),
        h.all().await.len() as u64,
        "the position still moves on"
    );
}

#[tokio::test]
async fn jobs_list_newest_first_and_runs_are_counted() {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let a = h.job(org, sc, &[started(), completed(1)]).await;
    let b = h.job(org, sc, &[started(), failed()]).await;
    let d = h.job(org, sc, &[]).await;
    let m = fold(&h.all().await);
    let ids: Vec<Uuid> = m.jobs_of(sc).map(|j| j.job_id).collect();
    assert_eq!(ids, vec![d, b, a]);
    let row = m.source_connection(org, sc).unwrap();
    assert_eq!(
        (row.total_runs, row.successful_runs, row.failed_runs),
        (3, 1, 1)
    );
    assert_eq!(m.last_job(sc).unwrap().job_id, d);
    assert_eq!(m.active_jobs_of(sc), vec![d]);
    assert_eq!(
        m.source_connection_status(row),
        SourceConnectionStatus::Syncing
    );
}

#[tokio::test]
async fn statuses_follow_airweave_rules() {
    let mut h = History::new();
    let org = h.org("o").await;
    let empty = h.collection(org, "empty").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let m = fold(&h.all().await);
    assert_eq!(m.collection_status(empty), CollectionStatus::NeedsSource);
    assert_eq!(m.collection_status(c), CollectionStatus::NeedsSource);
    assert_eq!(
        m.source_connection_status(m.source_connection(org, sc).unwrap()),
        SourceConnectionStatus::PendingSync
    );

    h.job(org, sc, &[started(), failed()]).await;
    let m = fold(&h.all().await);
    assert_eq!(m.collection_status(c), CollectionStatus::Error);
    assert_eq!(
        m.source_connection_status(m.source_connection(org, sc).unwrap()),
        SourceConnectionStatus::Error
    );

    h.job(org, sc, &[started(), completed(1)]).await;
    let m = fold(&h.all().await);
    assert_eq!(m.collection_status(c), CollectionStatus::Active);
    assert_eq!(CollectionStatus::NeedsSource.as_str(), "NEEDS SOURCE");
}

#[tokio::test]
async fn organizations_see_only_their_own_rows() {
    let mut h = History::new();
    let a = h.org("a").await;
    let b = h.org("b").await;
    let ca = h.collection(a, "same").await;
    let cb = h.collection(b, "same").await;
    let sca = h.source_connection(a, ca, "same").await;
    let m = fold(&h.all().await);
    assert_eq!(m.collection(a, "same").unwrap().id, ca);
    assert_eq!(m.collection(b, "same").unwrap().id, cb);
    assert!(m.source_connection(b, sca).is_none());
    assert_eq!(m.source_connections(b).count(), 0);
    assert_eq!(m.collections(a).map(|c| c.id).collect::<Vec<_>>(), vec![ca]);
}

#[tokio::test]
async fn deletes_remove_rows_and_free_the_readable_id() {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let live = h.job(org, sc, &[started()]).await;
    let done = h.job(org, sc, &[started(), completed(1)]).await;
    h.append(
        &stream::source_connection(sc),
        SourceConnectionEvent::SourceConnectionDeleted {
            source_connection_id: sc,
        },
    )
    .await;
    let m = fold(&h.all().await);
    assert!(m.source_connection(org, sc).is_none());
    assert!(m.job(done).is_none(), "final jobs go with their connection");
    assert_eq!(
        m.active_jobs_of(sc),
        vec![live],
        "a live job stays findable until it ends"
    );
    h.job_event(live, cancel_requested()).await;
    h.job_event(live, cancelled(1)).await;
    h.append(
        &stream::collection_name(org, "c"),
        CollectionEvent::CollectionDeleted { collection_id: c },
    )
    .await;
    let m = fold(&h.all().await);
    assert!(m.job(live).is_none());
    assert!(m.collection(org, "c").is_none());
    let again = h.collection(org, "c").await;
    let m = fold(&h.all().await);
    assert_eq!(m.collection(org, "c").unwrap().id, again);
}

#[tokio::test]
async fn keys_authenticate_until_revoked_or_expired() {
    let mut h = History::new();
    let org = h.org("o").await;
    let key = Uuid::new_v4();
    let expiring = Uuid::new_v4();
    h.append(
        stream::ACCESS,
        AccessEvent::ApiKeyCreated {
            key_id: key,
            organization_id: org,
            key_hash: "k".into(),
            prefix: "p".into(),
            expires_at: None,
        },
    )
    .await;
    let soon = Utc.timestamp_opt(1_900_000_000, 0).unwrap();
    h.append(
        stream::ACCESS,
        AccessEvent::ApiKeyCreated {
            key_id: expiring,
            organization_id: org,
            key_hash: "e".into(),
            prefix: "p".into(),
            expires_at: Some(soon),
        },
    )
    .await;
    let m = fold(&h.all().await);
    let before = soon - ChronoDuration::seconds(1);
    assert_eq!(m.authenticate("k", before).unwrap().organization_id, org);
    assert!(m.authenticate("e", before).is_some());
    assert!(m.authenticate("e", soon).is_none(), "expired");
    assert!(m.authenticate("nope", before).is_none());
    h.append(stream::ACCESS, AccessEvent::ApiKeyRevoked { key_id: key })
        .await;
    let m = fold(&h.all().await);
    assert!(m.authenticate("k", before).is_none(), "revoked");
    assert_eq!(m.organization_by_name("o").unwrap().id, org);
}

#[tokio::test]
async fn applying_an_event_twice_is_a_no_op() {
    let h = rich_history().await;
    let events = h.all().await;
    let once = fold(&events);
    let mut twice = fold(&events);
    for e in &events {
        assert!(!twice.apply(e));
        assert!(!twice.apply_owned(e.clone()));
    }
    assert_eq!(once, twice);
}

#[tokio::test]
async fn folding_owned_events_gives_the_same_model() {
    let h = rich_history().await;
    let events = h.all().await;
    let mut owned = ReadModel::new();
    for e in events.iter().cloned() {
        assert!(owned.apply_owned(e));
    }
    assert_eq!(owned, fold(&events));
}

#[tokio::test]
async fn a_rebuild_from_zero_equals_snapshot_plus_follow() {
    let h = rich_history().await;
    let events = h.all().await;
    let from_zero = fold(&events);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read_model.snapshot");
    for cut in [
        0,
        1,
        events.len() / 3,
        events.len() / 2,
        events.len() - 1,
        events.len(),
    ] {
        snapshot::save(&path, &fold(&events[..cut])).unwrap();
        let mut resumed = snapshot::load(&path).unwrap().unwrap();
        assert_eq!(resumed.position(), cut as u64);
        // at-least-once: the follower may redeliver from before the checkpoint
        for e in &events[cut.saturating_sub(2)..] {
            resumed.apply(e);
        }
        assert_eq!(resumed, from_zero, "cut at {cut}");
    }
}

#[tokio::test]
async fn a_snapshot_of_another_format_or_ahead_of_the_store_is_ignored() {
    let h = rich_history().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read_model.snapshot");
    // A format-1 (JSON) checkpoint, as earlier releases wrote it.
    snapshot::write_atomic(&path, br#"{"format":1,"model":null}"#).unwrap();
    assert!(matches!(
        snapshot::load(&path),
        Err(syncjobs_projections::SnapshotError::NotASnapshot { .. })
    ));
    assert_eq!(load_model(Some(&path), h.store.as_ref()).position(), 0);
    snapshot::save(&path, &fold(&h.all().await)).unwrap();
    let empty = InMemoryStore::new();
    assert_eq!(load_model(Some(&path), empty.as_ref()).position(), 0);
    assert!(load_model(Some(&path), h.store.as_ref()).position() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_follows_live_appends_and_writes_its_checkpoint() {
    let mut h = rich_history().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read_model.snapshot");
    let store: Arc<dyn EventStore> = h.store.clone();
    let projection = Projection::new(ReadModel::new());
    let handle = spawn_projector(
        store.clone(),
        projection.clone(),
        ProjectorConfig {
            snapshot_path: Some(path.clone()),
            snapshot_every: Duration::from_millis(20),
            poll_every: None,
        },
    );
    let org = h.org("late").await;
    let last = h.collection(org, "late").await;
    let head = *store.watch_head().borrow();
    projection
        .wait_for(head, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        projection.read(|m| m.collection(org, "late").map(|c| c.id)),
        Some(last)
    );
    assert_eq!(projection.read(|m| m.clone()), fold(&h.all().await));
    handle.shutdown().await;
    let saved = snapshot::load(&path).unwrap().unwrap();
    assert_eq!(saved.position(), head, "shutdown writes a last checkpoint");
    assert_eq!(saved, fold(&h.all().await));
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_position_nobody_writes_is_bounded() {
    let projection = Projection::new(ReadModel::new());
    let err = projection
        .wait_for(7, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert_eq!((err.wanted, err.reached), (7, 0));
    assert!(
        !projection
            .wait_until(|m| m.position() > 0, Duration::from_secs(1))
            .await
    );
}

/// A store as another process sees it: the events are there, but its head never announces
/// them (the embedded store's head moves only with this process's own commits).
struct Elsewhere {
    inner: Arc<InMemoryStore>,
    silent_head: tokio::sync::watch::Sender<u64>,
}

#[async_trait::async_trait]
impl EventStore for Elsewhere {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, syncjobs_domain::StoreError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, syncjobs_domain::StoreError> {
        self.inner.read_stream(stream, after).await
    }
    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, syncjobs_domain::StoreError> {
        self.inner.read_all(after, limit).await
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.silent_head.subscribe()
    }
    fn backend(&self) -> &'static str {
        "elsewhere"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_by_another_process_are_picked_up_by_polling() {
    let mut h = History::new();
    let store: Arc<dyn EventStore> = Arc::new(Elsewhere {
        inner: h.store.clone(),
        silent_head: tokio::sync::watch::channel(0).0,
    });
    let projection = Projection::new(ReadModel::new());
    let handle = spawn_projector(
        store,
        projection.clone(),
        ProjectorConfig {
            snapshot_path: None,
            snapshot_every: Duration::from_secs(60),
            poll_every: Some(Duration::from_millis(10)),
        },
    );
    let org = h.org("from-the-cli").await;
    let head = h.all().await.len() as u64;
    projection
        .wait_for(head, Duration::from_secs(5))
        .await
        .expect("polling found the other process's event");
    assert!(projection.read(|m| m.organization(org).is_some()));
    handle.shutdown().await;
}
