//! The read model against histories written to a real (in-memory) store: what each kind of
//! event does to the rows, a restart from the stored position against a rebuild from zero,
//! and the projector.

use chrono::{Duration as ChronoDuration, TimeZone, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    AccessEvent, CollectionEvent, EntityCounts, Event, EventStore, ExpectedVersion, InMemoryStore,
    JobState, JobStatus, Metadata, NewEvent, RecordedEvent, SourceConnectionEvent, SyncJobEvent,
};
use syncjobs_projections::{
    spawn_projector, ApiKey, Collection, CollectionStatus, ModelDump, Organization, Projection,
    ProjectionWriter, ProjectorConfig, ReadError, SourceConnection, SourceConnectionStatus,
};
use uuid::Uuid;

mod engines;
use engines::{on_each_engine, testkit, Engine, Place};

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

/// A read model in a database of its own, with the queries the API makes.
struct Model {
    projection: Projection,
    writer: ProjectionWriter,
    _place: Place,
}

impl Model {
    async fn new(engine: Engine) -> Model {
        let place = Place::new(engine).await;
        let (projection, writer) = place.open().await;
        Model {
            projection,
            writer,
            _place: place,
        }
    }

    async fn read<R>(
        &self,
        f: impl AsyncFnOnce(&syncjobs_projections::ReadView<'_>) -> Result<R, ReadError>,
    ) -> R {
        self.projection.read(f).await.unwrap()
    }

    /// Folds `events` in one transaction; the new position.
    async fn apply(&self, events: &[RecordedEvent]) -> u64 {
        self.writer
            .apply_batch(events.iter().cloned())
            .await
            .unwrap()
    }

    fn position(&self) -> u64 {
        self.projection.position()
    }
    async fn dump(&self) -> ModelDump {
        self.read(async |m| m.dump().await).await
    }
    async fn job(&self, id: Uuid) -> Option<JobState> {
        self.read(async |m| m.job(id).await).await
    }
    async fn jobs_of(&self, sc: Uuid) -> Vec<JobState> {
        self.read(async |m| m.jobs_of(sc, 0, usize::MAX).await)
            .await
    }
    async fn last_job(&self, sc: Uuid) -> Option<JobState> {
        self.read(async |m| m.last_job(sc).await).await
    }
    async fn active_jobs_of(&self, sc: Uuid) -> Vec<Uuid> {
        self.read(async |m| m.active_jobs_of(sc).await).await
    }
    async fn source_connection(&self, org: Uuid, id: Uuid) -> Option<SourceConnection> {
        self.read(async |m| m.source_connection(org, id).await)
            .await
    }
    async fn source_connections(&self, org: Uuid) -> Vec<SourceConnection> {
        self.read(async |m| m.source_connections(org, 0, usize::MAX, |_| true).await)
            .await
    }
    async fn source_connection_status(&self, sc: SourceConnection) -> SourceConnectionStatus {
        self.read(async |m| m.source_connection_status(&sc).await)
            .await
    }
    async fn collection(&self, org: Uuid, rid: &str) -> Option<Collection> {
        self.read(async |m| m.collection(org, rid).await).await
    }
    async fn collections(&self, org: Uuid) -> Vec<Collection> {
        self.read(async |m| m.collections(org, 0, usize::MAX, |_| true).await)
            .await
    }
    async fn collection_status(&self, id: Uuid) -> CollectionStatus {
        self.read(async |m| m.collection_status(id).await).await
    }
    async fn authenticate(&self, hash: &str, now: chrono::DateTime<Utc>) -> Option<ApiKey> {
        self.read(async |m| m.authenticate(hash, now).await).await
    }
    async fn has_source_connection(&self, org: Uuid, id: Uuid) -> bool {
        self.read(async |m| m.has_source_connection(org, id).await)
            .await
    }
    async fn organization_by_name(&self, name: &str) -> Option<Organization> {
        self.read(async |m| m.organization_by_name(name).await)
            .await
    }
}

async fn fold(engine: Engine, events: &[RecordedEvent]) -> Model {
    let m = Model::new(engine).await;
    m.apply(events).await;
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
            with_collection: false,
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
    for name in [Some("Finance Renamed"), None] {
        h.append(
            &stream::collection_name(org, "finance"),
            CollectionEvent::CollectionUpdated {
                collection_id: c1,
                name: name.map(str::to_owned),
            },
        )
        .await;
    }
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
    on_each_engine(
        "job_rows_follow_the_lifecycle_with_recorded_times_and_counts",
        job_rows_follow_the_lifecycle_with_recorded_times_and_counts_on,
    )
    .await;
}

async fn job_rows_follow_the_lifecycle_with_recorded_times_and_counts_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let job = h.job(org, sc, &[started()]).await;
    let m = fold(engine, &h.all().await).await;
    let row = m.job(job).await.unwrap();
    assert_eq!(row.status, JobStatus::Running);
    assert!(row.started_at.is_some() && row.completed_at.is_none());
    assert_eq!(
        m.source_connection_status(m.source_connection(org, sc).await.unwrap())
            .await,
        SourceConnectionStatus::Syncing
    );

    h.job_event(job, SyncJobEvent::ProgressRecorded { counts: counts(3) })
        .await;
    h.job_event(job, cancel_requested()).await;
    h.job_event(job, cancelled(5)).await;
    let m = fold(engine, &h.all().await).await;
    let row = m.job(job).await.unwrap();
    assert_eq!(row.status, JobStatus::Cancelled);
    assert_eq!(row.counts, counts(5));
    assert_eq!(
        row.completed_at.unwrap() - row.started_at.unwrap(),
        ChronoDuration::seconds(3)
    );
    assert_eq!(
        m.source_connection_status(m.source_connection(org, sc).await.unwrap())
            .await,
        SourceConnectionStatus::Active
    );
}

#[tokio::test]
async fn a_late_event_after_a_final_state_changes_nothing() {
    on_each_engine(
        "a_late_event_after_a_final_state_changes_nothing",
        a_late_event_after_a_final_state_changes_nothing_on,
    )
    .await;
}

async fn a_late_event_after_a_final_state_changes_nothing_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let job = h
        .job(org, sc, &[started(), cancel_requested(), cancelled(2)])
        .await;
    h.job_event(job, completed(99)).await;
    let m = fold(engine, &h.all().await).await;
    assert_eq!(m.job(job).await.unwrap().status, JobStatus::Cancelled);
    assert_eq!(m.job(job).await.unwrap().counts, counts(2));
    assert_eq!(
        m.position(),
        h.all().await.len() as u64,
        "the position still moves on"
    );
}

#[tokio::test]
async fn jobs_list_newest_first_and_runs_are_counted() {
    on_each_engine(
        "jobs_list_newest_first_and_runs_are_counted",
        jobs_list_newest_first_and_runs_are_counted_on,
    )
    .await;
}

async fn jobs_list_newest_first_and_runs_are_counted_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let a = h.job(org, sc, &[started(), completed(1)]).await;
    let b = h.job(org, sc, &[started(), failed()]).await;
    let d = h.job(org, sc, &[]).await;
    let m = fold(engine, &h.all().await).await;
    let ids: Vec<Uuid> = m.jobs_of(sc).await.iter().map(|j| j.job_id).collect();
    assert_eq!(ids, vec![d, b, a]);
    let row = m.source_connection(org, sc).await.unwrap();
    assert_eq!(
        (row.total_runs, row.successful_runs, row.failed_runs),
        (3, 1, 1)
    );
    assert_eq!(m.last_job(sc).await.unwrap().job_id, d);
    assert_eq!(m.active_jobs_of(sc).await, vec![d]);
    assert_eq!(
        m.source_connection_status(row).await,
        SourceConnectionStatus::Syncing
    );
    assert_eq!(
        m.dump().await.counts,
        vec![(org, [1, 1, 1])],
        "health's counts: the pending job is active"
    );
}

#[tokio::test]
async fn statuses_follow_airweave_rules() {
    on_each_engine(
        "statuses_follow_airweave_rules",
        statuses_follow_airweave_rules_on,
    )
    .await;
}

async fn statuses_follow_airweave_rules_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("o").await;
    let empty = h.collection(org, "empty").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let m = fold(engine, &h.all().await).await;
    assert_eq!(
        m.collection_status(empty).await,
        CollectionStatus::NeedsSource
    );
    assert_eq!(m.collection_status(c).await, CollectionStatus::NeedsSource);
    assert_eq!(
        m.source_connection_status(m.source_connection(org, sc).await.unwrap())
            .await,
        SourceConnectionStatus::PendingSync
    );

    h.job(org, sc, &[started(), failed()]).await;
    let m = fold(engine, &h.all().await).await;
    assert_eq!(m.collection_status(c).await, CollectionStatus::Error);
    assert_eq!(
        m.source_connection_status(m.source_connection(org, sc).await.unwrap())
            .await,
        SourceConnectionStatus::Error
    );

    h.job(org, sc, &[started(), completed(1)]).await;
    let m = fold(engine, &h.all().await).await;
    assert_eq!(m.collection_status(c).await, CollectionStatus::Active);
    assert_eq!(CollectionStatus::NeedsSource.as_str(), "NEEDS SOURCE");
}

#[tokio::test]
async fn organizations_see_only_their_own_rows() {
    on_each_engine(
        "organizations_see_only_their_own_rows",
        organizations_see_only_their_own_rows_on,
    )
    .await;
}

async fn organizations_see_only_their_own_rows_on(engine: Engine) {
    let mut h = History::new();
    let a = h.org("a").await;
    let b = h.org("b").await;
    let ca = h.collection(a, "same").await;
    let cb = h.collection(b, "same").await;
    let sca = h.source_connection(a, ca, "same").await;
    let m = fold(engine, &h.all().await).await;
    assert_eq!(m.collection(a, "same").await.unwrap().id, ca);
    assert_eq!(m.collection(b, "same").await.unwrap().id, cb);
    assert!(m.source_connection(b, sca).await.is_none());
    assert_eq!(m.source_connections(b).await.len(), 0);
    assert_eq!(
        m.collections(a)
            .await
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![ca]
    );
}

#[tokio::test]
async fn deletes_remove_rows_and_free_the_readable_id() {
    on_each_engine(
        "deletes_remove_rows_and_free_the_readable_id",
        deletes_remove_rows_and_free_the_readable_id_on,
    )
    .await;
}

async fn deletes_remove_rows_and_free_the_readable_id_on(engine: Engine) {
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
            with_collection: false,
        },
    )
    .await;
    let m = fold(engine, &h.all().await).await;
    assert!(m.source_connection(org, sc).await.is_none());
    assert!(
        m.job(done).await.is_none(),
        "final jobs go with their connection"
    );
    assert_eq!(
        m.active_jobs_of(sc).await,
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
    let m = fold(engine, &h.all().await).await;
    assert!(m.job(live).await.is_none());
    assert!(m.collection(org, "c").await.is_none());
    let again = h.collection(org, "c").await;
    let m = fold(engine, &h.all().await).await;
    assert_eq!(m.collection(org, "c").await.unwrap().id, again);
}

#[tokio::test]
async fn an_update_renames_a_collection_and_one_without_a_name_changes_no_row() {
    on_each_engine(
        "an_update_renames_a_collection_and_one_without_a_name_changes_no_row",
        an_update_renames_a_collection_and_one_without_a_name_changes_no_row_on,
    )
    .await;
}

async fn an_update_renames_a_collection_and_one_without_a_name_changes_no_row_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let other = h.collection(org, "other").await;
    let update = |name: Option<&str>| CollectionEvent::CollectionUpdated {
        collection_id: c,
        name: name.map(str::to_owned),
    };
    let renamed = h
        .append(&stream::collection_name(org, "c"), update(Some("Renamed")))
        .await;
    h.append(&stream::collection_name(org, "c"), update(None))
        .await;
    let m = fold(engine, &h.all().await).await;
    let row = m.collection(org, "c").await.unwrap();
    assert_eq!((row.id, row.name.as_str()), (c, "Renamed"));
    assert_eq!(
        row.modified_at, renamed.recorded_at,
        "moved by the rename only"
    );
    assert!(row.created_at < row.modified_at);
    let untouched = m.collection(org, "other").await.unwrap();
    assert_eq!(
        (untouched.id, untouched.name.as_str()),
        (other, "Collection other")
    );
    assert_eq!(untouched.modified_at, untouched.created_at);
}

#[tokio::test]
async fn keys_authenticate_until_revoked_or_expired() {
    on_each_engine(
        "keys_authenticate_until_revoked_or_expired",
        keys_authenticate_until_revoked_or_expired_on,
    )
    .await;
}

async fn keys_authenticate_until_revoked_or_expired_on(engine: Engine) {
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
    let m = fold(engine, &h.all().await).await;
    let before = soon - ChronoDuration::seconds(1);
    assert_eq!(
        m.authenticate("k", before).await.unwrap().organization_id,
        org
    );
    assert!(m.authenticate("e", before).await.is_some());
    assert!(m.authenticate("e", soon).await.is_none(), "expired");
    assert!(m.authenticate("nope", before).await.is_none());
    h.append(stream::ACCESS, AccessEvent::ApiKeyRevoked { key_id: key })
        .await;
    let m = fold(engine, &h.all().await).await;
    assert!(m.authenticate("k", before).await.is_none(), "revoked");
    assert_eq!(m.organization_by_name("o").await.unwrap().id, org);
}

#[tokio::test]
async fn applying_an_event_twice_is_a_no_op() {
    on_each_engine(
        "applying_an_event_twice_is_a_no_op",
        applying_an_event_twice_is_a_no_op_on,
    )
    .await;
}

async fn applying_an_event_twice_is_a_no_op_on(engine: Engine) {
    let h = rich_history().await;
    let events = h.all().await;
    let once = fold(engine, &events).await;
    let twice = fold(engine, &events).await;
    for e in &events {
        assert_eq!(
            twice.apply(std::slice::from_ref(e)).await,
            events.len() as u64
        );
    }
    assert_eq!(once.dump().await, twice.dump().await);
}

#[tokio::test]
async fn folding_event_by_event_gives_the_same_model_as_one_batch() {
    on_each_engine(
        "folding_event_by_event_gives_the_same_model_as_one_batch",
        folding_event_by_event_gives_the_same_model_as_one_batch_on,
    )
    .await;
}

async fn folding_event_by_event_gives_the_same_model_as_one_batch_on(engine: Engine) {
    let h = rich_history().await;
    let events = h.all().await;
    let one_by_one = Model::new(engine).await;
    for e in &events {
        assert_eq!(
            one_by_one.apply(std::slice::from_ref(e)).await,
            e.global_position
        );
    }
    assert_eq!(
        one_by_one.dump().await,
        fold(engine, &events).await.dump().await
    );
}

#[tokio::test]
async fn a_restart_from_the_stored_position_equals_a_rebuild_from_zero() {
    on_each_engine(
        "a_restart_from_the_stored_position_equals_a_rebuild_from_zero",
        a_restart_from_the_stored_position_equals_a_rebuild_from_zero_on,
    )
    .await;
}

async fn a_restart_from_the_stored_position_equals_a_rebuild_from_zero_on(engine: Engine) {
    let h = rich_history().await;
    let events = h.all().await;
    let from_zero = fold(engine, &events).await.dump().await;
    for cut in [
        0,
        1,
        events.len() / 3,
        events.len() / 2,
        events.len() - 1,
        events.len(),
    ] {
        let place = Place::new(engine).await;
        {
            let (_, writer) = place.open().await;
            writer
                .apply_batch(events[..cut].iter().cloned())
                .await
                .unwrap();
        }
        let (resumed, writer) = place.open().await;
        assert_eq!(
            resumed.position(),
            cut as u64,
            "resumed from the stored position"
        );
        // at-least-once: the follower may redeliver from before the stored position
        writer
            .apply_batch(events[cut.saturating_sub(2)..].iter().cloned())
            .await
            .unwrap();
        assert_eq!(
            resumed.read(async |m| m.dump().await).await.unwrap(),
            from_zero,
            "cut at {cut}"
        );
    }
}

#[tokio::test]
async fn a_read_model_ahead_of_the_store_or_of_another_schema_is_rebuilt() {
    let h = rich_history().await;
    let events = h.all().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read_model.db");
    let head = events.len() as u64;
    {
        let (_, writer) = Projection::open(&path, head).unwrap();
        writer.apply_batch(events.iter().cloned()).await.unwrap();
    }
    assert_eq!(Projection::open(&path, head).unwrap().0.position(), head);
    // Another (shorter) log: this model is not of it.
    let (emptied, _) = Projection::open(&path, head - 1).unwrap();
    assert_eq!(emptied.position(), 0);
    assert_eq!(
        emptied.read(async |m| m.dump().await).await.unwrap(),
        ModelDump::default()
    );
    {
        let (_, writer) = Projection::open(&path, head).unwrap();
        writer.apply_batch(events.iter().cloned()).await.unwrap();
    }
    // A schema this build does not know.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE projection SET schema_version = 999", [])
        .unwrap();
    let (rebuilt, _) = Projection::open(&path, head).unwrap();
    assert_eq!(rebuilt.position(), 0);
    assert_eq!(
        rebuilt.read(async |m| m.dump().await).await.unwrap(),
        ModelDump::default()
    );
}

#[tokio::test]
async fn a_deleted_connection_s_final_jobs_vanish_at_once_and_are_purged_later() {
    on_each_engine(
        "a_deleted_connection_s_final_jobs_vanish_at_once_and_are_purged_later",
        a_deleted_connection_s_final_jobs_vanish_at_once_and_are_purged_later_on,
    )
    .await;
}

async fn a_deleted_connection_s_final_jobs_vanish_at_once_and_are_purged_later_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let mut done = Vec::new();
    for _ in 0..(syncjobs_projections::db::fold::PURGE_BATCH + 5) {
        done.push(h.job(org, sc, &[started(), completed(1)]).await);
    }
    let live = h.job(org, sc, &[started()]).await;
    h.append(
        &stream::source_connection(sc),
        SourceConnectionEvent::SourceConnectionDeleted {
            source_connection_id: sc,
            with_collection: false,
        },
    )
    .await;
    let m = fold(engine, &h.all().await).await;
    assert!(m.job(done[0]).await.is_none());
    assert_eq!(
        m.jobs_of(sc)
            .await
            .iter()
            .map(|j| j.job_id)
            .collect::<Vec<_>>(),
        vec![live]
    );
    assert_eq!(m.dump().await.counts, vec![(org, [1, 0, 0])]);
    let rows = async |m: &Model| m.read(async |v| v.job_rows().await).await;
    assert_eq!(rows(&m).await, done.len() as u64 + 1);
    while m.writer.purge_step().await.unwrap() {}
    assert_eq!(rows(&m).await, 1, "only the live job's row is left");
    h.job_event(live, cancel_requested()).await;
    h.job_event(live, cancelled(1)).await;
    let events = h.all().await;
    m.apply(&events).await;
    assert_eq!(
        rows(&m).await,
        0,
        "a job ending after its connection is gone is forgotten"
    );
    assert_eq!(m.dump().await, fold(engine, &events).await.dump().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_follows_live_appends_and_commits_them() {
    let mut h = rich_history().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read_model.db");
    let store: Arc<dyn EventStore> = h.store.clone();
    let (projection, writer) = Projection::open(&path, u64::MAX).unwrap();
    let handle = spawn_projector(store.clone(), writer, ProjectorConfig { poll_every: None });
    let org = h.org("late").await;
    let last = h.collection(org, "late").await;
    let head = *store.watch_head().borrow();
    projection
        .wait_for(head, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        projection
            .read(async |m| m.collection(org, "late").await)
            .await
            .unwrap()
            .map(|c| c.id),
        Some(last)
    );
    let expected = fold(Engine::Sqlite, &h.all().await).await.dump().await;
    assert_eq!(
        projection.read(async |m| m.dump().await).await.unwrap(),
        expected
    );
    handle.shutdown().await;
    drop(projection);
    let (reopened, _) = Projection::open(&path, u64::MAX).unwrap();
    assert_eq!(
        reopened.position(),
        head,
        "every batch is committed as it is folded"
    );
    assert_eq!(
        reopened.read(async |m| m.dump().await).await.unwrap(),
        expected
    );
}

/// A delete of a connection with many jobs leaves a long purge to run, in steps; a command's
/// events arriving meanwhile are folded between two steps (a command waits for its fold),
/// not after the whole purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_folds_new_events_before_it_goes_on_purging() {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "big").await;
    let steps = 40;
    for _ in 0..steps * syncjobs_projections::db::fold::PURGE_BATCH {
        h.job(org, sc, &[started(), completed(1)]).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = h.store.clone();
    let (projection, writer) =
        Projection::open(&dir.path().join("read_model.db"), u64::MAX).unwrap();
    let handle = spawn_projector(store.clone(), writer, ProjectorConfig { poll_every: None });
    let head = *store.watch_head().borrow();
    projection
        .wait_for(head, Duration::from_secs(60))
        .await
        .unwrap();
    let rows = async || projection.read(async |v| v.job_rows().await).await.unwrap();
    let before = rows().await;
    h.append(
        &stream::source_connection(sc),
        SourceConnectionEvent::SourceConnectionDeleted {
            source_connection_id: sc,
            with_collection: false,
        },
    )
    .await;
    let deleted = *store.watch_head().borrow();
    projection
        .wait_for(deleted, Duration::from_secs(10))
        .await
        .unwrap();
    // A command meanwhile: its event is folded while most of the purge is still to do.
    let other = h.collection(org, "made during the purge").await;
    let made = *store.watch_head().borrow();
    projection
        .wait_for(made, Duration::from_secs(10))
        .await
        .unwrap();
    let left = rows().await;
    assert!(
        left > before / 2,
        "the command's fold waited for the purge: {left} of {before} rows left"
    );
    assert!(projection
        .read(async |m| m.collection_by_id(other).await)
        .await
        .unwrap()
        .is_some());
    // And the purge then finishes by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rows().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the purge finishes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_position_nobody_writes_is_bounded() {
    let m = Model::new(Engine::Sqlite).await;
    let projection = m.projection.clone();
    let err = projection
        .wait_for(7, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert_eq!((err.wanted, err.reached), (7, 0));
    assert!(
        !projection
            .wait_until(async |m| Ok(m.position() > 0), Duration::from_secs(1))
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
    let m = Model::new(Engine::Sqlite).await;
    let projection = m.projection.clone();
    let handle = spawn_projector(
        store,
        m.writer,
        ProjectorConfig {
            poll_every: Some(Duration::from_millis(10)),
        },
    );
    let org = h.org("from-the-cli").await;
    let head = h.all().await.len() as u64;
    projection
        .wait_for(head, Duration::from_secs(5))
        .await
        .expect("polling found the other process's event");
    assert!(projection
        .read(async |m| m.organization(org).await)
        .await
        .unwrap()
        .is_some());
    handle.shutdown().await;
}

#[tokio::test]
async fn a_file_that_is_no_database_is_replaced_by_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read_model.db");
    std::fs::write(
        &path,
        b"SJREADMD an old snapshot, or garbage: no SQLite header",
    )
    .unwrap();
    let (projection, writer) = Projection::open(&path, u64::MAX).unwrap();
    assert_eq!(projection.position(), 0);
    let h = rich_history().await;
    let events = h.all().await;
    writer.apply_batch(events.iter().cloned()).await.unwrap();
    assert_eq!(
        projection.read(async |m| m.dump().await).await.unwrap(),
        fold(Engine::Sqlite, &events).await.dump().await
    );
}

/// The caches of final jobs and of keys never answer what the database no longer says.
#[tokio::test]
async fn cached_rows_follow_deletes_revocations_and_new_keys() {
    on_each_engine(
        "cached_rows_follow_deletes_revocations_and_new_keys",
        cached_rows_follow_deletes_revocations_and_new_keys_on,
    )
    .await;
}

async fn cached_rows_follow_deletes_revocations_and_new_keys_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let done = h.job(org, sc, &[started(), completed(1)]).await;
    let m = fold(engine, &h.all().await).await;
    let now = Utc.timestamp_opt(1_850_000_000, 0).unwrap();
    // Read twice: the second answer may come from the caches.
    for _ in 0..2 {
        assert!(m.job(done).await.is_some());
        assert!(m.authenticate("k", now).await.is_none(), "no such key yet");
        assert!(m.has_source_connection(org, sc).await);
        assert!(
            !m.has_source_connection(Uuid::new_v4(), sc).await,
            "another organization's connection is not there"
        );
    }
    let key = Uuid::new_v4();
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
    h.append(
        &stream::source_connection(sc),
        SourceConnectionEvent::SourceConnectionDeleted {
            source_connection_id: sc,
            with_collection: false,
        },
    )
    .await;
    m.apply(&h.all().await).await;
    assert!(m.job(done).await.is_none(), "its connection is gone");
    assert!(
        !m.has_source_connection(org, sc).await,
        "gone at once, cached or not"
    );
    assert!(
        m.authenticate("k", now).await.is_some(),
        "the new key works at once"
    );
    h.append(stream::ACCESS, AccessEvent::ApiKeyRevoked { key_id: key })
        .await;
    m.apply(&h.all().await).await;
    assert!(m.authenticate("k", now).await.is_none(), "revoked at once");
}

/// Two writers on one file (a server still stopping while the next one starts on the same
/// data directory): each folds every event, and still none applies twice.
#[tokio::test]
async fn a_second_writer_on_the_same_file_never_applies_an_event_twice() {
    let mut h = History::new();
    let org = h.org("o").await;
    let c = h.collection(org, "c").await;
    let sc = h.source_connection(org, c, "c").await;
    let job = h.job(org, sc, &[started()]).await;
    let half = h.all().await.len();
    h.job_event(job, completed(3)).await;
    let events = h.all().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read_model.db");
    let (first, one) = Projection::open(&path, u64::MAX).unwrap();
    one.apply_batch(events[..half].iter().cloned())
        .await
        .unwrap();
    // The next server starts: it sees the running job too.
    let (_, two) = Projection::open(&path, u64::MAX).unwrap();
    two.apply_batch(events.iter().cloned()).await.unwrap();
    one.apply_batch(events.iter().cloned()).await.unwrap();
    assert_eq!(
        first.read(async |m| m.dump().await).await.unwrap(),
        fold(Engine::Sqlite, &events).await.dump().await
    );
}

/// Two nodes on one PostgreSQL database, each following the whole log in batches of its
/// own cut, at the same time: the rows equal one fold of the log (no event applied twice,
/// none skipped) and each node publishes the head, whoever folded what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_folding_one_log_into_one_postgresql_database_apply_each_event_once() {
    let Some(admin) = testkit::admin_url("two_nodes_folding_one_log") else {
        return;
    };
    let h = rich_history().await;
    let events = h.all().await;
    let expected = fold(Engine::Postgres, &events).await.dump().await;
    let db = testkit::TestDb::create(&admin).await;
    let ((first, one), (second, two)) = two_nodes(&db.url).await;
    let follow = |writer: ProjectionWriter, size: usize| {
        let events = events.clone();
        tokio::spawn(async move {
            for batch in events.chunks(size) {
                writer.apply_batch(batch.iter().cloned()).await.unwrap();
            }
            writer
        })
    };
    let (one, two) = tokio::join!(follow(one, 2), follow(two, 3));
    let (_one, _two) = (one.unwrap(), two.unwrap());
    let head = events.len() as u64;
    assert_eq!((first.position(), second.position()), (head, head));
    for node in [&first, &second] {
        assert_eq!(node.read(async |m| m.dump().await).await.unwrap(), expected);
    }
}

/// A node's caches follow events another node folded: the events reach every node, and
/// the invalidations come from them, not from having folded them.
#[tokio::test]
async fn a_node_forgets_cached_rows_changed_by_events_another_node_folded() {
    let Some(admin) = testkit::admin_url("a_node_forgets_cached_rows") else {
        return;
    };
    let mut h = History::new();
    let org = h.org("o").await;
    let key = Uuid::new_v4();
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
    let db = testkit::TestDb::create(&admin).await;
    let (_, one) = Projection::open_postgres(&db.url, false, Default::default())
        .await
        .unwrap();
    let (other, two) = Projection::open_postgres(&db.url, false, Default::default())
        .await
        .unwrap();
    let created = h.all().await;
    one.apply_batch(created.iter().cloned()).await.unwrap();
    two.apply_batch(created.iter().cloned()).await.unwrap();
    let now = Utc.timestamp_opt(1_850_000_000, 0).unwrap();
    let authenticate = async || {
        other
            .read(async |m| m.authenticate("k", now).await)
            .await
            .unwrap()
    };
    assert!(authenticate().await.is_some());
    assert!(
        other.authenticate_cached("k", now).is_some(),
        "the key is cached on the second node"
    );
    h.append(stream::ACCESS, AccessEvent::ApiKeyRevoked { key_id: key })
        .await;
    let all = h.all().await;
    one.apply_batch(all.iter().cloned()).await.unwrap();
    // The second node's batch: already folded by the first, applied nowhere again.
    two.apply_batch(all[created.len()..].iter().cloned())
        .await
        .unwrap();
    assert_eq!(other.position(), all.len() as u64);
    assert!(authenticate().await.is_none(), "revoked on every node");
}

/// Two nodes' read models on one PostgreSQL database.
async fn two_nodes(
    url: &str,
) -> (
    (Projection, ProjectionWriter),
    (Projection, ProjectionWriter),
) {
    let open = || async { Projection::open_postgres(url, false, Default::default()).await };
    (open().await.unwrap(), open().await.unwrap())
}

/// What a node keeps between batches (its live jobs, the connections' organizations, the
/// subscriptions and names a webhook message reads) follows the events another node folded:
/// the node that folds next gives the rows a single writer would, with the job's state as
/// the other node left it, the subscription it disabled and the collection it renamed.
#[tokio::test]
async fn a_node_folding_after_another_builds_on_what_the_other_folded() {
    let Some(admin) = testkit::admin_url("a_node_folding_after_another") else {
        return;
    };
    let mut h = History::new();
    let org = h.org("o").await;
    let col = h.collection(org, "col").await;
    let kept = h.source_connection(org, col, "col").await;
    let deleted = h.source_connection(org, col, "col").await;
    let (sub_stream, sub) =
        subscription_created(7, org, &["sync.cancelled", "sync.completed"], None);
    h.append(&sub_stream, sub).await;
    let job = h.job(org, kept, &[started()]).await;
    let doomed = h.job(org, deleted, &[started()]).await;
    let prefix = h.all().await.len();
    // Folded by the first node only: progress and a cancel request of the job the second
    // node holds, a renamed collection, a deleted connection, a disabled subscription.
    h.job_event(job, SyncJobEvent::ProgressRecorded { counts: counts(4) })
        .await;
    h.job_event(job, cancel_requested()).await;
    h.append(
        &stream::collection_name(org, "col"),
        CollectionEvent::CollectionUpdated {
            collection_id: col,
            name: Some("Renamed".into()),
        },
    )
    .await;
    h.append(
        &stream::source_connection(deleted),
        SourceConnectionEvent::SourceConnectionDeleted {
            source_connection_id: deleted,
            with_collection: false,
        },
    )
    .await;
    let middle = h.all().await.len();
    // Folded by the second node: the ends of both jobs, then the subscription disabled and
    // a last completion that must make no delivery.
    h.job_event(job, cancelled(4)).await;
    h.job_event(doomed, completed(2)).await;
    h.append(&sub_stream, toggled(org, true)).await;
    let after = h.job(org, kept, &[started(), completed(3)]).await;
    let events = h.all().await;
    let expected = fold(Engine::Postgres, &events).await.dump().await;

    let db = testkit::TestDb::create(&admin).await;
    let ((first, one), (second, two)) = two_nodes(&db.url).await;
    two.apply_batch(events[..prefix].iter().cloned())
        .await
        .unwrap();
    one.apply_batch(events[..middle].iter().cloned())
        .await
        .unwrap();
    two.apply_batch(events[prefix..].iter().cloned())
        .await
        .unwrap();
    one.apply_batch(events[middle..].iter().cloned())
        .await
        .unwrap();
    for node in [&first, &second] {
        assert_eq!(node.position(), events.len() as u64);
        assert_eq!(node.read(async |m| m.dump().await).await.unwrap(), expected);
    }
    let job = second
        .read(async |m| m.job(job).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((job.status, job.counts.inserted), (JobStatus::Cancelled, 4));
    assert!(second
        .read(async |m| m.job(after).await)
        .await
        .unwrap()
        .is_some_and(|j| j.status == JobStatus::Completed));
}

/// A PostgreSQL read model in a fresh database that has folded `folded`, and a client of
/// that database of the test's own (to break the tables on purpose).
async fn postgres_model_after(
    admin: &str,
    folded: &[RecordedEvent],
) -> (
    testkit::TestDb,
    Projection,
    ProjectionWriter,
    tokio_postgres::Client,
) {
    let db = testkit::TestDb::create(admin).await;
    let (model, writer) = Projection::open_postgres(&db.url, false, Default::default())
        .await
        .unwrap();
    writer.apply_batch(folded.iter().cloned()).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    (db, model, writer, client)
}

/// The end of a batch goes to PostgreSQL in one pipeline with its position and `COMMIT`:
/// when one of those writes fails, nothing of the batch is kept (not the rows written
/// before it, not the position), and the writer folds the batch again once it can.
#[tokio::test]
async fn a_batch_whose_last_writes_fail_keeps_nothing_and_folds_again_later() {
    let Some(admin) = testkit::admin_url("a_batch_whose_last_writes_fail") else {
        return;
    };
    let mut h = History::new();
    let org = h.org("o").await;
    let head = h.all().await.len() as u64;
    let col = h.collection(org, "col").await;
    let events = h.all().await;
    let (_db, model, writer, client) = postgres_model_after(&admin, &events[..head as usize]).await;
    // The collection's row goes in during the fold; the organization's count only at the
    // end, with the position, which this constraint makes fail.
    client
        .batch_execute(
            "ALTER TABLE read_organization_counts ADD CONSTRAINT no_collections
             CHECK (collections = 0)",
        )
        .await
        .unwrap();
    let failed = writer.apply_batch(events.iter().cloned()).await;
    assert!(failed.is_err(), "the count's write fails");
    let stored: i64 = client
        .query_one("SELECT position FROM read_projection", &[])
        .await
        .unwrap()
        .get(0);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM read_collections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (stored as u64, rows),
        (head, 0),
        "nothing of the batch is kept"
    );
    assert_eq!(model.position(), head);
    client
        .batch_execute("ALTER TABLE read_organization_counts DROP CONSTRAINT no_collections")
        .await
        .unwrap();
    writer.apply_batch(events.iter().cloned()).await.unwrap();
    let found = model
        .read(async |m| m.collections(org, 0, 10, |_| true).await)
        .await
        .unwrap();
    assert_eq!(found.iter().map(|c| c.id).collect::<Vec<_>>(), vec![col]);
    let counted: i64 = client
        .query_one("SELECT collections FROM read_organization_counts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 1);
}

/// A source connection is created on its own stream only (as the API appends it): a
/// creation on another stream, or again on its own, makes no row and counts nothing. The
/// fold relies on it to insert a connection whose stream starts in the batch without
/// looking for its row first.
#[tokio::test]
async fn a_source_connection_is_created_on_its_own_stream_only() {
    on_each_engine(
        "a_source_connection_is_created_on_its_own_stream_only",
        a_source_connection_is_created_on_its_own_stream_only_on,
    )
    .await;
}

async fn a_source_connection_is_created_on_its_own_stream_only_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("o").await;
    let col = h.collection(org, "col").await;
    let created = |id: Uuid, name: &str| SourceConnectionEvent::SourceConnectionCreated {
        source_connection_id: id,
        organization_id: org,
        collection_id: col,
        readable_collection_id: "col".into(),
        name: name.into(),
        description: None,
        short_name: "timed".into(),
        config: serde_json::json!({}),
        auth_method: "direct".into(),
        authenticated: true,
    };
    let stray = Uuid::new_v4();
    h.append(
        &stream::collection_name(org, "col"),
        created(stray, "Stray"),
    )
    .await;
    let sc = h.source_connection(org, col, "col").await;
    h.append(&stream::source_connection(sc), created(sc, "Again"))
        .await;
    // The stray id's own stream may still create it later.
    let late = h
        .append(&stream::source_connection(stray), created(stray, "Late"))
        .await;
    let events = h.all().await;
    for batch in [&events[..], &events[..late.global_position as usize - 1]] {
        let m = fold(engine, batch).await;
        let listed: Vec<(Uuid, String)> = m
            .source_connections(org)
            .await
            .into_iter()
            .map(|c| (c.id, c.name))
            .collect();
        let mut expected = vec![(sc, "Timed Connection".to_owned())];
        if batch.len() == events.len() {
            expected.push((stray, "Late".to_owned()));
        }
        expected.sort();
        let mut listed = listed;
        listed.sort();
        assert_eq!(listed, expected, "after {} events", batch.len());
        assert_eq!(
            m.dump().await.counts,
            vec![(org, [1, expected.len() as u64, 0])],
            "counted once each"
        );
    }
}

/// On PostgreSQL a connection's row is sent without waiting for its answer (the next
/// statements of the batch follow it on the connection). When that write fails, the
/// batch's error is its error, not the "transaction aborted" of the statement after it,
/// nothing of the batch is kept, and the batch folds once the cause is gone.
#[tokio::test]
async fn a_write_sent_ahead_that_fails_is_the_batch_s_error_and_nothing_is_kept() {
    let Some(admin) = testkit::admin_url("a_write_sent_ahead_that_fails") else {
        return;
    };
    let mut h = History::new();
    let org = h.org("o").await;
    let head = h.all().await.len() as u64;
    let col = h.collection(org, "col").await;
    let sc = h.source_connection(org, col, "col").await;
    let job = h.job(org, sc, &[started(), completed(3)]).await;
    let events = h.all().await;
    let (_db, model, writer, client) = postgres_model_after(&admin, &events[..head as usize]).await;
    client
        .batch_execute(
            "ALTER TABLE read_source_connections ADD CONSTRAINT no_timed_connections
             CHECK (short_name <> convert_to('timed', 'UTF8'))",
        )
        .await
        .unwrap();
    let failed = writer.apply_batch(events.iter().cloned()).await;
    let err = failed
        .expect_err("the connection's row is refused")
        .to_string();
    assert!(
        err.contains("no_timed_connections"),
        "the cause is named: {err}"
    );
    let count = async |table: &str| -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(
        (
            count("read_collections").await,
            count("read_source_connections").await,
            count("read_jobs").await
        ),
        (0, 0, 0),
        "nothing of the batch is kept"
    );
    assert_eq!(model.position(), head);
    client
        .batch_execute("ALTER TABLE read_source_connections DROP CONSTRAINT no_timed_connections")
        .await
        .unwrap();
    writer.apply_batch(events.iter().cloned()).await.unwrap();
    let runs = model
        .read(async |m| m.source_connection(org, sc).await)
        .await
        .unwrap()
        .map(|c| (c.total_runs, c.successful_runs));
    assert_eq!(runs, Some((1, 1)), "the connection and its run are in");
    let state = model.read(async |m| m.job(job).await).await.unwrap();
    assert_eq!(state.map(|s| s.status), Some(JobStatus::Completed));
}

/// A read model of another schema version is emptied and rebuilt from the log.
#[tokio::test]
async fn a_postgresql_read_model_of_another_schema_version_is_rebuilt() {
    let Some(admin) = testkit::admin_url("a_postgresql_read_model_of_another_schema") else {
        return;
    };
    let events = rich_history().await.all().await;
    let db = testkit::TestDb::create(&admin).await;
    {
        let (_, writer) = Projection::open_postgres(&db.url, false, Default::default())
            .await
            .unwrap();
        writer.apply_batch(events.iter().cloned()).await.unwrap();
    }
    let (reopened, _) = Projection::open_postgres(&db.url, false, Default::default())
        .await
        .unwrap();
    assert_eq!(reopened.position(), events.len() as u64);
    db.client()
        .await
        .execute("UPDATE read_projection SET schema_version = 999", &[])
        .await
        .unwrap();
    let (rebuilt, writer) = Projection::open_postgres(&db.url, false, Default::default())
        .await
        .unwrap();
    assert_eq!(rebuilt.position(), 0);
    assert_eq!(
        rebuilt.read(async |m| m.dump().await).await.unwrap(),
        ModelDump::default()
    );
    writer.apply_batch(events.iter().cloned()).await.unwrap();
    assert_eq!(
        rebuilt.read(async |m| m.dump().await).await.unwrap(),
        fold(Engine::Postgres, &events).await.dump().await
    );
    // `syncjobs rebuild-read-model`: emptied on demand, whatever its version.
    let (emptied, _) = Projection::open_postgres(&db.url, true, Default::default())
        .await
        .unwrap();
    assert_eq!(emptied.position(), 0);
    assert_eq!(
        emptied.read(async |m| m.dump().await).await.unwrap(),
        ModelDump::default()
    );
}

/// Two nodes (two store instances, two projectors) on one PostgreSQL database, appending in
/// turn: each node's `wait_for` reaches every append, whichever node folded it, and both
/// serve the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_s_projector_reaches_every_append_whoever_folds_it() {
    let Some(admin) = testkit::admin_url("every_node_s_projector_reaches_every_append") else {
        return;
    };
    let db = testkit::TestDb::create(&admin).await;
    let stores: [Arc<dyn EventStore>; 2] = [db.store().await, db.store().await];
    let mut nodes = Vec::new();
    for store in &stores {
        let (projection, writer) = Projection::open_postgres(&db.url, false, Default::default())
            .await
            .unwrap();
        let handle = spawn_projector(store.clone(), writer, ProjectorConfig { poll_every: None });
        nodes.push((projection, handle));
    }
    let at = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    let mut orgs = Vec::new();
    for i in 0..20 {
        let id = Uuid::new_v4();
        let recorded = stores[i % 2]
            .append(
                stream::ACCESS,
                ExpectedVersion::Any,
                vec![NewEvent::new(
                    AccessEvent::OrganizationCreated {
                        organization_id: id,
                        name: format!("org {i}"),
                    },
                    at,
                    Metadata::default(),
                )],
            )
            .await
            .unwrap();
        let position = recorded[0].global_position;
        // Read-your-writes on both nodes, the appending one and the other.
        for (projection, _) in &nodes {
            projection
                .wait_for(position, Duration::from_secs(10))
                .await
                .unwrap();
            let found = projection
                .read(async |m| m.organization(id).await)
                .await
                .unwrap();
            assert!(found.is_some(), "org {i} at {position}");
        }
        orgs.push(id);
    }
    let dumps: Vec<ModelDump> = {
        let mut out = Vec::new();
        for (projection, _) in &nodes {
            out.push(projection.read(async |m| m.dump().await).await.unwrap());
        }
        out
    };
    assert_eq!(dumps[0].organizations.len(), orgs.len());
    assert_eq!(dumps[0].organizations, dumps[1].organizations);
    for (_, handle) in nodes {
        handle.shutdown().await;
    }
}

/// PostgreSQL drops the read model's connections (a restart, `pg_terminate_backend`):
/// what fails meanwhile fails as unavailable (503 to clients), and reads and commits work
/// again by themselves, on new connections, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_connections_are_cut_the_postgresql_read_model_works_again_by_itself() {
    let Some(admin) = testkit::admin_url("after_its_connections_are_cut") else {
        return;
    };
    let h = rich_history().await;
    let events = h.all().await;
    let (half, rest) = events.split_at(events.len() / 2);
    let db = testkit::TestDb::create(&admin).await;
    let (projection, writer) = Projection::open_postgres(&db.url, false, Default::default())
        .await
        .unwrap();
    writer.apply_batch(half.iter().cloned()).await.unwrap();
    assert!(projection.read(async |m| m.dump().await).await.is_ok());
    let cut = db
        .client()
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'syncjobs-read-model'",
            &[],
        )
        .await
        .unwrap();
    assert!(!cut.is_empty(), "the read model's connections were cut");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match writer.apply_batch(rest.iter().cloned()).await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "{e}");
            }
        }
    }
    let dump = loop {
        match projection.read(async |m| m.dump().await).await {
            Ok(d) => break d,
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "{e}");
            }
        }
    };
    assert_eq!(dump, fold(Engine::Postgres, &events).await.dump().await);
}

#[tokio::test]
async fn each_subscription_offers_its_oldest_due_delivery_and_attempts_move_it_on() {
    on_each_engine(
        "each_subscription_offers_its_oldest_due_delivery_and_attempts_move_it_on",
        each_subscription_offers_its_oldest_due_delivery_and_attempts_move_it_on_on,
    )
    .await;
}

async fn each_subscription_offers_its_oldest_due_delivery_and_attempts_move_it_on_on(
    engine: Engine,
) {
    use syncjobs_domain::WebhookEvent;
    let mut h = History::new();
    let org = h.org("default").await;
    let other = h.org("other").await;
    let subscribe = |id: u128, organization_id: Uuid, types: &[&str]| {
        (
            stream::webhook_subscription(Uuid::from_u128(id)),
            WebhookEvent::WebhookSubscriptionCreated {
                subscription_id: Uuid::from_u128(id),
                organization_id,
                url: format!("http://127.0.0.1:9/{id}"),
                event_types: types.iter().map(|t| t.to_string()).collect(),
                description: None,
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                recover_since: None,
            },
        )
    };
    for (s, e) in [
        subscribe(1, org, &["collection.created"]),
        subscribe(2, org, &["collection.created", "collection.deleted"]),
        subscribe(3, org, &["collection.deleted"]),
        subscribe(4, other, &["collection.created"]),
    ] {
        h.append(&s, e).await;
    }
    let c1 = h.collection(org, "first").await;
    let c2 = h.collection(org, "second").await;
    let m = fold(engine, &h.all().await).await;
    let far = Utc.timestamp_opt(1_900_000_000, 0).unwrap();
    let due = m
        .read(async |v| v.due_webhook_deliveries(far, 100).await)
        .await;
    // One each for the two subscriptions that want `collection.created`: the oldest.
    let mut subs: Vec<u128> = due.iter().map(|d| d.subscription_id.as_u128()).collect();
    subs.sort_unstable();
    assert_eq!(subs, [1, 2]);
    let messages = m
        .read(async |v| v.webhook_messages(org, &[], 10).await)
        .await;
    assert_eq!(
        messages.len(),
        2,
        "one message per event with a webhook type"
    );
    let oldest = messages[1].id;
    assert!(due
        .iter()
        .all(|d| d.message_id == oldest && d.attempts == 0));
    let payload: serde_json::Value = serde_json::from_str(&messages[1].payload).unwrap();
    assert_eq!(payload["collection_id"], c1.to_string());
    // Nothing is due before its time.
    let before = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    assert!(m
        .read(async |v| v.due_webhook_deliveries(before, 100).await)
        .await
        .is_empty());

    // A success ends subscription 1's first delivery: its second is offered next.
    h.append(
        &stream::webhook_delivery(oldest, Uuid::from_u128(1)),
        WebhookEvent::WebhookAttemptRecorded {
            message_id: oldest,
            subscription_id: Uuid::from_u128(1),
            organization_id: org,
            attempt: 1,
            url: "http://127.0.0.1:9/1".into(),
            status_code: 204,
            response: String::new(),
            next_attempt_at: None,
        },
    )
    .await;
    let m = fold(engine, &h.all().await).await;
    let due = m
        .read(async |v| v.due_webhook_deliveries(far, 100).await)
        .await;
    let one = due
        .iter()
        .find(|d| d.subscription_id == Uuid::from_u128(1))
        .unwrap();
    assert_ne!(one.message_id, oldest);
    let payload: serde_json::Value = serde_json::from_str(&one.payload).unwrap();
    assert_eq!(payload["collection_id"], c2.to_string());
    let attempts = m
        .read(async |v| v.webhook_attempts(oldest, true, 10).await)
        .await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, 204);
}

/// A subscription's creation event (id `id`), optionally asking for messages since `since`.
fn subscription_created(
    id: u128,
    organization_id: Uuid,
    types: &[&str],
    recover_since: Option<chrono::DateTime<Utc>>,
) -> (String, syncjobs_domain::WebhookEvent) {
    (
        stream::webhook_subscription(Uuid::from_u128(id)),
        syncjobs_domain::WebhookEvent::WebhookSubscriptionCreated {
            subscription_id: Uuid::from_u128(id),
            organization_id,
            url: format!("http://127.0.0.1:9/{id}"),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            description: None,
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            recover_since,
        },
    )
}

fn toggled(organization_id: Uuid, disabled: bool) -> syncjobs_domain::WebhookEvent {
    syncjobs_domain::WebhookEvent::WebhookSubscriptionUpdated {
        organization_id,
        url: None,
        event_types: None,
        disabled: Some(disabled),
        description: None,
        recover_since: None,
    }
}

/// The due deliveries' (subscription, message) pairs, all of them (each subscription's
/// oldest first: read one at a time, as the dispatcher does, ending each as it goes).
async fn due_of(m: &Model, subscription: u128) -> Vec<Uuid> {
    let far = Utc.timestamp_opt(1_900_000_000, 0).unwrap();
    let mut h = m
        .read(async |v| v.due_webhook_deliveries(far, 1000).await)
        .await;
    h.retain(|d| d.subscription_id == Uuid::from_u128(subscription));
    h.iter().map(|d| d.message_id).collect()
}

/// Every delivery of a subscription in the order the dispatcher takes them (due time, then
/// log position), from the dump.
fn deliveries_in_order(dump: &ModelDump, subscription: u128) -> Vec<(Uuid, String)> {
    let position = |id: Uuid| {
        dump.webhook_messages
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.created_position)
    };
    let mut d: Vec<_> = dump
        .webhook_deliveries
        .iter()
        .filter(|d| d.1 == Uuid::from_u128(subscription))
        .collect();
    d.sort_by_key(|d| (d.5.clone(), position(d.0)));
    d.iter().map(|d| (d.0, d.2.clone())).collect()
}

#[tokio::test]
async fn every_event_is_a_message_and_only_enabled_subscriptions_that_want_it_get_deliveries() {
    on_each_engine(
        "every_event_is_a_message_and_only_enabled_subscriptions_that_want_it_get_deliveries",
        every_event_is_a_message_and_only_enabled_subscriptions_that_want_it_get_deliveries_on,
    )
    .await;
}

async fn every_event_is_a_message_and_only_enabled_subscriptions_that_want_it_get_deliveries_on(
    engine: Engine,
) {
    let mut h = History::new();
    let quiet = h.org("quiet").await;
    let subscribed = h.org("subscribed").await;
    let paused = h.org("paused").await;
    let (s, e) = subscription_created(1, subscribed, &["sync.completed"], None);
    h.append(&s, e).await;
    let (s, e) = subscription_created(2, paused, &["sync.completed"], None);
    h.append(&s, e).await;
    h.append(&s, toggled(paused, true)).await;
    let mut jobs = HashMap::new();
    for org in [quiet, subscribed, paused] {
        let c = h.collection(org, &format!("c-{org}")).await;
        let sc = h.source_connection(org, c, &format!("c-{org}")).await;
        jobs.insert(org, h.job(org, sc, &[started(), completed(3)]).await);
    }

    let events = h.all().await;
    let one_batch = fold(engine, &events).await;
    let one_by_one = Model::new(engine).await;
    for e in &events {
        one_by_one.apply(std::slice::from_ref(e)).await;
    }
    assert_eq!(one_batch.dump().await, one_by_one.dump().await);
    for m in [one_batch, one_by_one] {
        for org in [quiet, subscribed, paused] {
            let made = m
                .read(async |v| v.webhook_messages(org, &[], 100).await)
                .await;
            // Newest first: the organization's whole history, wanted or not.
            assert_eq!(
                made.iter()
                    .map(|m| m.event_type.as_str())
                    .collect::<Vec<_>>(),
                [
                    "sync.completed",
                    "sync.running",
                    "sync.pending",
                    "source_connection.created",
                    "collection.created"
                ],
                "{org}"
            );
            let payload: serde_json::Value = serde_json::from_str(&made[0].payload).unwrap();
            assert_eq!(payload["sync_job_id"], jobs[&org].to_string());
            assert_eq!(payload["entities_inserted"], 3);
            let types = ["sync.pending".to_owned(), "collection.created".to_owned()];
            let filtered = m
                .read(async |v| v.webhook_messages(org, &types, 100).await)
                .await;
            assert_eq!(
                filtered
                    .iter()
                    .map(|m| m.event_type.as_str())
                    .collect::<Vec<_>>(),
                ["sync.pending", "collection.created"]
            );
            let one = m
                .read(async |v| v.webhook_messages(org, &[], 1).await)
                .await;
            assert_eq!(one, made[..1]);
        }
        assert_eq!(due_of(&m, 1).await.len(), 1, "the enabled one wants it");
        assert!(
            due_of(&m, 2).await.is_empty(),
            "the disabled subscription has no delivery"
        );
        assert_eq!(m.dump().await.webhook_deliveries.len(), 1);
    }
}

#[tokio::test]
async fn a_subscription_asking_for_past_events_gets_each_matching_message_once_in_log_order() {
    on_each_engine(
        "a_subscription_asking_for_past_events_gets_each_matching_message_once_in_log_order",
        a_subscription_asking_for_past_events_gets_each_matching_message_once_in_log_order_on,
    )
    .await;
}

async fn a_subscription_asking_for_past_events_gets_each_matching_message_once_in_log_order_on(
    engine: Engine,
) {
    let mut h = History::new();
    let org = h.org("org").await;
    let other = h.org("other").await;
    let c = h.collection(org, "old").await; // before `since`
    let since = Utc.timestamp_opt(1_800_000_000 + h.tick + 1, 0).unwrap();
    let sc = h.source_connection(org, c, "old").await;
    let first = h.job(org, sc, &[started(), completed(1)]).await;
    let second = h.job(org, sc, &[started(), failed()]).await;
    let c2 = h.collection(other, "theirs").await;
    let sc2 = h.source_connection(other, c2, "theirs").await;
    h.job(other, sc2, &[started(), completed(1)]).await;
    let types = ["sync.completed", "sync.failed", "collection.created"];
    let (s, e) = subscription_created(1, org, &types, Some(since));
    h.append(&s, e).await;
    // After the subscription: delivered as usual, after the past ones.
    let third = h.job(org, sc, &[started(), completed(2)]).await;

    let events = h.all().await;
    let one_batch = fold(engine, &events).await;
    let one_by_one = Model::new(engine).await;
    for e in &events {
        one_by_one.apply(std::slice::from_ref(e)).await;
    }
    // A restart part-way (and an event folded twice) changes nothing.
    let cut = events.len() - 3;
    let restarted = Model::new(engine).await;
    restarted.apply(&events[..cut]).await;
    restarted.apply(&events[cut - 2..]).await;
    assert_eq!(one_batch.dump().await, one_by_one.dump().await);
    assert_eq!(one_batch.dump().await, restarted.dump().await);

    let dump = one_batch.dump().await;
    let jobs_of = |ids: &[(Uuid, String)]| -> Vec<(String, String)> {
        ids.iter()
            .map(|(id, status)| {
                let m = dump.webhook_messages.iter().find(|m| m.id == *id).unwrap();
                let p: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
                (
                    format!(
                        "{} {}",
                        m.event_type,
                        p["sync_job_id"].as_str().unwrap_or("-")
                    ),
                    status.clone(),
                )
            })
            .collect()
    };
    let pending = |e: &str, job: Uuid| (format!("{e} {job}"), "pending".to_owned());
    assert_eq!(
        jobs_of(&deliveries_in_order(&dump, 1)),
        [
            pending("sync.completed", first),
            pending("sync.failed", second),
            pending("sync.completed", third),
        ],
        "the old collection is before `since`, the other organization's are not its own"
    );
}

#[tokio::test]
async fn enabling_again_with_recover_since_delivers_what_was_missed_while_disabled() {
    on_each_engine(
        "enabling_again_with_recover_since_delivers_what_was_missed_while_disabled",
        enabling_again_with_recover_since_delivers_what_was_missed_while_disabled_on,
    )
    .await;
}

async fn enabling_again_with_recover_since_delivers_what_was_missed_while_disabled_on(
    engine: Engine,
) {
    use syncjobs_domain::WebhookEvent;
    let mut h = History::new();
    let org = h.org("org").await;
    let (s, e) = subscription_created(1, org, &["collection.created"], None);
    h.append(&s, e).await;
    let a = h.collection(org, "a").await;
    let since = Utc.timestamp_opt(1_800_000_000 + h.tick, 0).unwrap();
    h.append(
        &s,
        WebhookEvent::WebhookSubscriptionDisabled {
            organization_id: org,
            reason: "failing".into(),
            failing_since: since,
        },
    )
    .await;
    let b = h.collection(org, "b").await;
    let m = fold(engine, &h.all().await).await;
    let sub = m
        .read(async |v| v.webhook_subscription(org, Uuid::from_u128(1)).await)
        .await
        .unwrap();
    assert!(sub.disabled);
    assert_eq!(sub.disabled_reason.as_deref(), Some("failing"));
    assert_eq!(m.dump().await.webhook_deliveries.len(), 1, "b got none");
    h.append(
        &s,
        WebhookEvent::WebhookSubscriptionUpdated {
            organization_id: org,
            url: None,
            event_types: None,
            disabled: Some(false),
            description: None,
            recover_since: Some(since),
        },
    )
    .await;
    let m = fold(engine, &h.all().await).await;
    let sub = m
        .read(async |v| v.webhook_subscription(org, Uuid::from_u128(1)).await)
        .await
        .unwrap();
    assert!(!sub.disabled);
    assert_eq!(sub.disabled_reason, None);
    let dump = m.dump().await;
    let collection_of = |id: Uuid| {
        let m = dump.webhook_messages.iter().find(|m| m.id == id).unwrap();
        let p: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
        p["collection_id"].as_str().unwrap().to_owned()
    };
    let order: Vec<String> = deliveries_in_order(&dump, 1)
        .iter()
        .map(|(id, _)| collection_of(*id))
        .collect();
    assert_eq!(order, [a.to_string(), b.to_string()]);
}

/// A clock the test sets.
struct ManualClock(std::sync::Mutex<chrono::DateTime<Utc>>);

impl syncjobs_domain::Clock for ManualClock {
    fn now(&self) -> chrono::DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn messages_past_retention_are_purged_with_their_deliveries_and_a_rebuild_keeps_them_out() {
    on_each_engine(
        "messages_past_retention_are_purged_with_their_deliveries_and_a_rebuild_keeps_them_out",
        messages_past_retention_are_purged_with_their_deliveries_and_a_rebuild_keeps_them_out_on,
    )
    .await;
}

async fn messages_past_retention_are_purged_with_their_deliveries_and_a_rebuild_keeps_them_out_on(
    engine: Engine,
) {
    use syncjobs_domain::WebhookEvent;
    let mut h = History::new();
    let org = h.org("org").await;
    let (s, e) = subscription_created(1, org, &["collection.created"], None);
    h.append(&s, e).await;
    // 300 old messages: more than one purge step.
    let mut old = Vec::new();
    for i in 0..300 {
        old.push(h.collection(org, &format!("old-{i}")).await);
    }
    let all_old = h.all().await;
    let first_old = all_old
        .iter()
        .find(|e| matches!(e.event, Event::Collection(_)))
        .unwrap()
        .event_id;
    h.append(
        &stream::webhook_delivery(first_old, Uuid::from_u128(1)),
        WebhookEvent::WebhookAttemptRecorded {
            message_id: first_old,
            subscription_id: Uuid::from_u128(1),
            organization_id: org,
            attempt: 1,
            url: "http://127.0.0.1:9/1".into(),
            status_code: 500,
            response: "no".into(),
            next_attempt_at: None,
        },
    )
    .await;
    // A day later by the recorded times.
    h.tick += 86_400;
    let fresh = h.collection(org, "fresh").await;
    let clock = Arc::new(ManualClock(std::sync::Mutex::new(
        Utc.timestamp_opt(1_800_000_000 + h.tick, 0).unwrap(),
    )));
    let retention = syncjobs_projections::Retention {
        period: ChronoDuration::hours(12),
        clock: clock.clone(),
    };

    let m = Model::new(engine).await;
    let events = h.all().await;
    m.apply(&events).await;
    assert_eq!(
        m.dump().await.webhook_messages.len(),
        301,
        "no retention set"
    );
    assert_eq!(m.dump().await.webhook_attempts.len(), 1);
    m.writer.set_retention(Some(retention.clone())).await;
    let mut steps = 0;
    while m.writer.purge_step().await.unwrap() {
        steps += 1;
    }
    assert_eq!(steps, 1, "a full step, then the rest");
    let dump = m.dump().await;
    assert_eq!(dump.webhook_messages.len(), 1);
    let p: serde_json::Value = serde_json::from_str(&dump.webhook_messages[0].payload).unwrap();
    assert_eq!(p["collection_id"], fresh.to_string());
    assert_eq!(
        deliveries_in_order(&dump, 1).len(),
        1,
        "the old deliveries (pending ones too) went with their messages"
    );
    assert!(dump.webhook_attempts.is_empty());
    // Not due again before a minute by the clock: nothing is looked at.
    assert!(!m.writer.purge_step().await.unwrap());

    // A rebuild with the same retention makes none of them again, attempts included.
    let rebuilt = Model::new(engine).await;
    rebuilt.writer.set_retention(Some(retention)).await;
    rebuilt.apply(&events).await;
    let again = rebuilt.dump().await;
    assert_eq!(again.webhook_messages, dump.webhook_messages);
    assert_eq!(again.webhook_deliveries, dump.webhook_deliveries);
    assert_eq!(again.webhook_attempts, dump.webhook_attempts);
    assert_eq!(again.collections.len(), 301, "only messages are affected");
}

#[tokio::test]
async fn failing_since_is_the_first_failure_after_the_last_success() {
    on_each_engine(
        "failing_since_is_the_first_failure_after_the_last_success",
        failing_since_is_the_first_failure_after_the_last_success_on,
    )
    .await;
}

async fn failing_since_is_the_first_failure_after_the_last_success_on(engine: Engine) {
    use syncjobs_domain::WebhookEvent;
    let mut h = History::new();
    let org = h.org("org").await;
    let (s, e) = subscription_created(1, org, &["collection.created"], None);
    h.append(&s, e).await;
    let mut messages = Vec::new();
    for i in 0..4 {
        h.collection(org, &format!("c{i}")).await;
        messages.push(h.all().await.last().unwrap().event_id);
    }
    let attempt = async |h: &mut History, message: Uuid, status_code: u16| {
        h.append(
            &stream::webhook_delivery(message, Uuid::from_u128(1)),
            WebhookEvent::WebhookAttemptRecorded {
                message_id: message,
                subscription_id: Uuid::from_u128(1),
                organization_id: org,
                attempt: 1,
                url: "http://127.0.0.1:9/1".into(),
                status_code,
                response: String::new(),
                next_attempt_at: None,
            },
        )
        .await
        .recorded_at
    };
    let failing_since = async |h: &History| {
        let m = fold(engine, &h.all().await).await;
        m.read(async |v| v.webhook_subscription(org, Uuid::from_u128(1)).await)
            .await
            .unwrap()
            .failing_since
    };
    assert_eq!(failing_since(&h).await, None);
    let first_failure = attempt(&mut h, messages[0], 500).await;
    attempt(&mut h, messages[1], 0).await;
    assert_eq!(failing_since(&h).await, Some(first_failure));
    attempt(&mut h, messages[2], 204).await;
    assert_eq!(failing_since(&h).await, None, "a success ends the run");
    let again = attempt(&mut h, messages[3], 503).await;
    assert_eq!(failing_since(&h).await, Some(again));
    // Enabled again by hand (after being disabled): failures count afresh.
    h.append(&s, toggled(org, true)).await;
    h.append(&s, toggled(org, false)).await;
    assert_eq!(failing_since(&h).await, None);
}

#[tokio::test]
async fn many_new_jobs_in_one_batch_fold_as_they_do_one_by_one() {
    on_each_engine(
        "many_new_jobs_in_one_batch_fold_as_they_do_one_by_one",
        many_new_jobs_in_one_batch_fold_as_they_do_one_by_one_on,
    )
    .await;
}

/// Hundreds of jobs created in one batch (a first start, a backlog) go in by another path on
/// PostgreSQL (a `COPY` of the new rows) than a few do: the model must not tell them apart,
/// whether a job starts and ends in one batch or its row is written again by a later one.
async fn many_new_jobs_in_one_batch_fold_as_they_do_one_by_one_on(engine: Engine) {
    let mut h = History::new();
    let org = h.org("default").await;
    let c = h.collection(org, "bulk").await;
    let scs = [
        h.source_connection(org, c, "bulk").await,
        h.source_connection(org, c, "bulk").await,
    ];
    let mut live = Vec::new();
    for i in 0..300u64 {
        let sc = scs[(i % 2) as usize];
        match i % 3 {
            0 => {
                h.job(org, sc, &[started(), completed(i)]).await;
            }
            1 => live.push(h.job(org, sc, &[started()]).await),
            _ => {
                h.job(org, sc, &[failed()]).await;
            }
        }
    }
    for (i, job) in live.iter().enumerate() {
        let end = if i % 2 == 0 {
            completed(7)
        } else {
            cancelled(3)
        };
        if i % 4 < 2 {
            h.job_event(*job, SyncJobEvent::ProgressRecorded { counts: counts(1) })
                .await;
            h.job_event(*job, end).await;
        }
    }
    let events = h.all().await;
    let one_by_one = Model::new(engine).await;
    for e in &events {
        one_by_one.apply(std::slice::from_ref(e)).await;
    }
    let expected = one_by_one.dump().await;
    assert_eq!(
        fold(engine, &events).await.dump().await,
        expected,
        "one batch"
    );
    // Cuts inside the jobs' lives: rows of jobs created by one batch are written again by
    // the next.
    for size in [97, 400] {
        let chunked = Model::new(engine).await;
        for chunk in events.chunks(size) {
            chunked.apply(chunk).await;
        }
        assert_eq!(chunked.dump().await, expected, "batches of {size}");
    }
    let jobs = one_by_one.jobs_of(scs[0]).await.len() + one_by_one.jobs_of(scs[1]).await.len();
    assert_eq!(jobs, 300, "every job has a row");
}
