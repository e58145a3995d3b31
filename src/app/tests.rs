//! The use cases' races, which the API suite cannot stage: a sync started while its
//! connection is being deleted, and a connection deleted while its sync is being started.
//! A store that runs a hook just before one append puts the other party exactly in between.

use super::source_connections::NewSourceConnection;
use super::*;
use crate::replay::state_at;
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::sync::Mutex;
use syncjobs_actors::pipeline::MemoryDestination;
use syncjobs_actors::{
    start_supervisor, NewJob, ProgressSink, Recovery, RunOutcome, RunSpec, SupervisorSettings,
    SyncRunner,
};
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    EntityCounts, ExpectedVersion, InMemoryStore, JobStatus, Metadata, NewEvent, RecordedEvent,
    SourceConnectionEvent, StoreError, SyncJobEvent, SystemClock,
};
use syncjobs_projections::{spawn_projector, ProjectorConfig, ProjectorHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// An in-memory store that runs a hook once, just before the first append holding an event
/// of the given type.
#[derive(Default)]
struct HookedStore {
    inner: Arc<InMemoryStore>,
    hook: Mutex<Option<(&'static str, Hook)>>,
}

impl HookedStore {
    fn before_append_of(&self, event_type: &'static str, hook: Hook) {
        *self.hook.lock().unwrap() = Some((event_type, hook));
    }
}

#[async_trait]
impl EventStore for HookedStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let due = {
            let mut hook = self.hook.lock().unwrap();
            match &*hook {
                Some((t, _)) if events.iter().any(|e| e.event.event_type() == *t) => hook.take(),
                _ => None,
            }
        };
        if let Some((_, hook)) = due {
            hook().await;
        }
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, after).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }

    fn backend(&self) -> &'static str {
        "hooked"
    }
}

/// A sync that runs until it is cancelled, then stops at once.
struct UntilCancelled;

#[async_trait]
impl SyncRunner for UntilCancelled {
    async fn run(&self, _: RunSpec, cancel: CancellationToken, _: ProgressSink) -> RunOutcome {
        cancel.cancelled().await;
        RunOutcome::Cancelled(EntityCounts::default())
    }
}

const WAIT: Duration = Duration::from_secs(5);

async fn app_on(store: Arc<HookedStore>) -> (App, ProjectorHandle) {
    let store: Arc<dyn EventStore> = store;
    let (projection, writer) = Projection::temporary().unwrap();
    let projector = spawn_projector(store.clone(), writer, ProjectorConfig::default());
    let clock: SharedClock = Arc::new(SystemClock);
    let jobs = start_supervisor(
        store.clone(),
        Arc::new(UntilCancelled),
        clock.clone(),
        SupervisorSettings {
            recovery: Recovery::Jobs(vec![]),
            ..Default::default()
        },
    );
    jobs.ready().await;
    let app = App {
        store,
        clock,
        jobs,
        projection,
        destination: MemoryDestination::new(),
        settings: Settings {
            read_your_writes_timeout: WAIT,
            delete_wait: WAIT,
        },
    };
    (app, projector)
}

/// A new organization's caller with one collection and one source connection (no sync yet).
async fn connection(app: &App) -> (Caller, Uuid) {
    let caller = Caller::new(Uuid::now_v7(), Uuid::now_v7());
    let collection = app.create_collection(&caller, "Races", None).await.unwrap();
    let id = app
        .create_source_connection(
            &caller,
            NewSourceConnection {
                short_name: "timed",
                readable_collection_id: &collection.readable_id,
                name: None,
                description: None,
                config: None,
                authentication: None,
                sync_immediately: false,
            },
        )
        .await
        .unwrap();
    (caller, id)
}

/// The status of every job of the connection, as its own stream in the log says (the read
/// model forgets the final jobs of a deleted connection).
async fn jobs_in_log(store: &HookedStore, id: Uuid) -> Vec<JobStatus> {
    let mut out = vec![];
    for e in store.inner.read_all(0, 10_000).await.unwrap() {
        if let Some(SyncJobEvent::JobCreated {
            job_id,
            source_connection_id,
            ..
        }) = e.job_event()
        {
            if *source_connection_id == id {
                let events = store
                    .inner
                    .read_stream(&stream::job(*job_id), 0)
                    .await
                    .unwrap();
                let last = events.last().map_or(0, |e| e.version);
                out.push(state_at(&events, last).unwrap().unwrap().status);
            }
        }
    }
    out
}

#[actix_web::test]
async fn a_sync_started_while_its_connection_is_deleted_is_stopped_before_the_delete_answers() {
    let store = Arc::new(HookedStore::default());
    let (app, _projector) = app_on(store.clone()).await;
    let (caller, id) = connection(&app).await;
    // The delete found no live sync; a run gets in just before the deletion is recorded.
    let (jobs, organization_id) = (app.jobs.clone(), caller.organization_id);
    store.before_append_of(
        "SourceConnectionDeleted",
        Box::new(move || {
            Box::pin(async move {
                jobs.create(NewJob {
                    source_connection_id: id,
                    organization_id,
                    short_name: "timed".into(),
                    config: serde_json::json!({}),
                    caused_by: "racer".into(),
                    latest_job: None,
                })
                .await
                .unwrap();
            })
        }),
    );

    let before = app
        .delete_source_connection(&caller, id, async |_, sc, _| sc.name.clone())
        .await
        .unwrap();

    assert_eq!(
        before, "Timed Connection",
        "answered with the connection as it was"
    );

    assert_eq!(
        jobs_in_log(&store, id).await,
        [JobStatus::Cancelled],
        "the delete answered only once the sync that raced it had stopped"
    );
    assert!(app
        .projection
        .read(async |m| m.source_connection(caller.organization_id, id).await)
        .await
        .unwrap()
        .is_none());
}

#[actix_web::test]
async fn a_run_whose_connection_is_deleted_meanwhile_is_not_found_and_its_job_is_cancelled() {
    let store = Arc::new(HookedStore::default());
    let (app, _projector) = app_on(store.clone()).await;
    let (caller, id) = connection(&app).await;
    // The connection is deleted (by another request) just before the run's job is recorded.
    let inner = store.inner.clone();
    store.before_append_of(
        "JobCreated",
        Box::new(move || {
            Box::pin(async move {
                let deleted = NewEvent::new(
                    SourceConnectionEvent::SourceConnectionDeleted {
                        source_connection_id: id,
                        with_collection: false,
                    },
                    chrono::Utc::now(),
                    Metadata::default(),
                );
                inner
                    .append(
                        &stream::source_connection(id),
                        ExpectedVersion::Exact(1),
                        vec![deleted],
                    )
                    .await
                    .unwrap();
            })
        }),
    );

    let refused = app.run_sync(&caller, id).await.unwrap_err();

    assert!(
        matches!(refused, Error::SourceConnectionNotFound),
        "{refused:?}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while jobs_in_log(&store, id).await != [JobStatus::Cancelled] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run's job was not cancelled: {:?}",
            jobs_in_log(&store, id).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn a_cancel_refused_for_a_final_job_names_the_state_the_read_model_shows() {
    let store = Arc::new(HookedStore::default());
    let (app, _projector) = app_on(store.clone()).await;
    let (caller, id) = connection(&app).await;
    let job = app.run_sync(&caller, id).await.unwrap();
    assert_eq!(job.status, JobStatus::Pending);
    let first = app.cancel_job(&caller, id, job.job_id).await.unwrap();
    assert!(
        matches!(first.status, JobStatus::Cancelling | JobStatus::Cancelled),
        "{first:?}"
    );
    assert!(
        app.projection
            .wait_until(
                async |m| Ok(m
                    .job(job.job_id)
                    .await?
                    .is_some_and(|j| j.status == JobStatus::Cancelled)),
                WAIT
            )
            .await
    );
    match app.cancel_job(&caller, id, job.job_id).await {
        Err(Error::CannotCancel(status)) => assert_eq!(status, JobStatus::Cancelled),
        other => panic!("{other:?}"),
    }
    let stranger = Caller::new(Uuid::now_v7(), Uuid::now_v7());
    assert!(matches!(
        app.cancel_job(&stranger, id, job.job_id).await,
        Err(Error::SourceConnectionNotFound)
    ));
}
