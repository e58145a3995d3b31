//! The one command path, for aggregates other than jobs (the job races are in
//! supervisor.rs): exactly one of racing decisions wins, a conflict is decided again on
//! what the other writer wrote, and a stream that never stops moving ends in contention
//! after one bound, the same for every aggregate.

use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use syncjobs_actors::command::{self, CommandError, Executed, MAX_CONFLICT_RETRIES};
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    Access, AccessCommand, AccessEvent, Aggregate, CollectionCommand, CollectionError,
    CollectionName, EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent, NewKeyRecord,
    RecordedEvent, StoreError, SystemClock,
};
use tokio::sync::watch;
use uuid::Uuid;

/// `command` on `stream` through the one command path.
async fn run<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
    known: Option<A>,
    command: &A::Command,
) -> Result<Executed<A>, CommandError<A::Error>> {
    command::execute(
        store,
        &SystemClock,
        stream,
        known,
        command,
        &Metadata::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_racing_creates_of_one_readable_id_exactly_one_wins() {
    let store: Arc<dyn EventStore> = InMemoryStore::new();
    let org = Uuid::new_v4();
    let stream = stream::collection_name(org, "race");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::spawn(async move {
                let create = CollectionCommand::Create {
                    collection_id: Uuid::new_v4(),
                    organization_id: org,
                    name: "Race".into(),
                    readable_id: "race".into(),
                };
                run::<CollectionName>(&*store, &stream, None, &create).await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => won += usize::from(!r.events.is_empty()),
            Err(CommandError::Rejected(CollectionError::AlreadyExists(_))) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.read_stream(&stream, 0).await.unwrap().len(), 1);
}

fn key(organization: &str, hash: &str) -> NewKeyRecord {
    NewKeyRecord {
        organization: organization.into(),
        new_organization_id: Uuid::new_v4(),
        key_id: Uuid::new_v4(),
        key_hash: hash.into(),
        prefix: "sjk_test".into(),
        expires_at: None,
    }
}

/// A store on which another writer appends a key to the `access` stream just before each
/// of ours, `remaining` times: every append of ours then conflicts.
struct Busy {
    inner: Arc<InMemoryStore>,
    remaining: AtomicUsize,
}

#[async_trait]
impl EventStore for Busy {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let left = self.remaining.load(Ordering::SeqCst);
        if left > 0 {
            self.remaining.store(left - 1, Ordering::SeqCst);
            let theirs = AccessEvent::ApiKeyCreated {
                key_id: Uuid::new_v4(),
                organization_id: self.organization().await,
                key_hash: format!("theirs-{left}"),
                prefix: "sjk_them".into(),
                expires_at: None,
            };
            let at = chrono::Utc::now();
            self.inner
                .append(
                    stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new(theirs, at, Metadata::default())],
                )
                .await?;
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
        "busy"
    }
}

impl Busy {
    /// A store whose `access` stream holds the organization "acme" and one key.
    async fn new(conflicts: usize) -> Busy {
        let inner = InMemoryStore::new();
        let first = AccessCommand::CreateKey(key("acme", "first"));
        run::<Access>(&*inner, stream::ACCESS, None, &first)
            .await
            .unwrap();
        Busy {
            inner,
            remaining: AtomicUsize::new(conflicts),
        }
    }

    async fn organization(&self) -> Uuid {
        let access: Access = command::load(&*self.inner, stream::ACCESS).await.unwrap();
        access.organization("acme").unwrap()
    }
}

#[tokio::test]
async fn a_conflict_is_decided_again_on_what_the_other_writer_wrote() {
    let store = Busy::new(3).await;
    // Stale on purpose: the state before the other writer's keys.
    let known: Access = command::load(&store, stream::ACCESS).await.unwrap();
    let ours = AccessCommand::CreateKey(key("acme", "ours"));
    let executed = run(&store, stream::ACCESS, Some(known), &ours)
        .await
        .unwrap();
    assert_eq!(
        executed.events.len(),
        1,
        "the organization exists: only the key"
    );
    assert_eq!(
        executed.state.keys().len(),
        5,
        "theirs (3), the first and ours"
    );
    assert_eq!(executed.state.version, 6);
    // A decision that the other writers made moot is refused, not overwritten.
    let store = Busy::new(1).await;
    let again = AccessCommand::CreateKey(key("acme", "theirs-1"));
    let refused = run::<Access>(&store, stream::ACCESS, None, &again)
        .await
        .unwrap_err();
    assert_eq!(refused.to_string(), "this key is already registered");
}

#[tokio::test]
async fn a_stream_that_never_stops_moving_ends_in_contention_after_one_bound() {
    let store = Busy::new(MAX_CONFLICT_RETRIES).await;
    let ours = AccessCommand::CreateKey(key("acme", "ours"));
    let err = run::<Access>(&store, stream::ACCESS, None, &ours)
        .await
        .unwrap_err();
    assert!(matches!(&err, CommandError::Contention { stream, .. } if stream == "access"));
    assert_eq!(
        err.to_string(),
        "too many concurrent changes to API keys; try again"
    );
    // One conflict fewer than the bound, and the command lands.
    let store = Busy::new(MAX_CONFLICT_RETRIES - 1).await;
    let landed = run::<Access>(&store, stream::ACCESS, None, &ours)
        .await
        .unwrap();
    assert_eq!(landed.events.len(), 1);
}
