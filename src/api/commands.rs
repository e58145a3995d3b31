//! Collections and source connections as event-sourced aggregates: a fold of their stream,
//! pure decisions over it, and one append loop (read, decide, append at the exact version,
//! and on a conflict read and decide again, never overwrite).
//!
//! A collection's events live in the stream of its readable id within its organization
//! (`collection_name-<org>-<readable_id>`), so that "the readable id is free" and "create it"
//! are one optimistic append: of two racing creates exactly one wins.

use chrono::{DateTime, Utc};
use std::sync::Arc;
use syncjobs_domain::{
    CollectionEvent, Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent,
    SourceConnectionEvent, StoreError,
};
use uuid::Uuid;

/// Optimistic retries before a command gives up on a hot stream.
const MAX_ATTEMPTS: usize = 16;

/// A stream's state as far as decisions need it.
pub trait Aggregate: Sized {
    fn fold(events: &[RecordedEvent]) -> Self;
    /// The stream version this state reflects (0 = empty stream).
    fn version(&self) -> u64;
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    #[error("{0}")]
    Rejected(E),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many concurrent changes to {0}")]
    Contention(String),
}

/// Reads `stream`, folds it, decides, and appends at exactly the version decided on.
/// Returns what was appended (nothing when the decision was "no change").
pub async fn decide_and_append<A, E, Ev>(
    store: &Arc<dyn EventStore>,
    stream: &str,
    recorded_at: impl Fn() -> DateTime<Utc>,
    metadata: &Metadata,
    decide: impl Fn(&A) -> Result<Vec<Ev>, E>,
) -> Result<Vec<RecordedEvent>, CommandError<E>>
where
    A: Aggregate,
    Ev: Into<Event>,
{
    for _ in 0..MAX_ATTEMPTS {
        let state = A::fold(&store.read_stream(stream, 0).await?);
        let events = decide(&state).map_err(CommandError::Rejected)?;
        if events.is_empty() {
            return Ok(vec![]);
        }
        let at = recorded_at();
        let new = events
            .into_iter()
            .map(|e| NewEvent::new(e, at, metadata.clone()))
            .collect();
        match store
            .append(stream, ExpectedVersion::Exact(state.version()), new)
            .await
        {
            Ok(recorded) => return Ok(recorded),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Contention(stream.to_owned()))
}

/// The stream of one readable id: which collection (if any) holds it now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionName {
    pub version: u64,
    pub live: Option<Uuid>,
}

impl Aggregate for CollectionName {
    fn fold(events: &[RecordedEvent]) -> Self {
        let mut s = CollectionName::default();
        for e in events {
            s.version = e.version;
            match &e.event {
                Event::Collection(CollectionEvent::CollectionCreated { collection_id, .. }) => {
                    s.live = Some(*collection_id)
                }
                Event::Collection(CollectionEvent::CollectionDeleted { collection_id })
                    if s.live == Some(*collection_id) =>
                {
                    s.live = None
                }
                _ => {}
            }
        }
        s
    }

    fn version(&self) -> u64 {
        self.version
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectionError {
    #[error("Collection with readable_id '{0}' already exists")]
    AlreadyExists(String),
    #[error("Collection not found")]
    NotFound,
}

pub fn decide_create_collection(
    s: &CollectionName,
    collection_id: Uuid,
    organization_id: Uuid,
    name: &str,
    readable_id: &str,
) -> Result<Vec<CollectionEvent>, CollectionError> {
    if s.live.is_some() {
        return Err(CollectionError::AlreadyExists(readable_id.to_owned()));
    }
    Ok(vec![CollectionEvent::CollectionCreated {
        collection_id,
        organization_id,
        name: name.to_owned(),
        readable_id: readable_id.to_owned(),
    }])
}

pub fn decide_delete_collection(
    s: &CollectionName,
    collection_id: Uuid,
) -> Result<Vec<CollectionEvent>, CollectionError> {
    if s.live != Some(collection_id) {
        return Err(CollectionError::NotFound);
    }
    Ok(vec![CollectionEvent::CollectionDeleted { collection_id }])
}

/// A source connection's own stream: created, and perhaps deleted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceConnectionStream {
    pub version: u64,
    pub created: bool,
    pub deleted: bool,
}

impl Aggregate for SourceConnectionStream {
    fn fold(events: &[RecordedEvent]) -> Self {
        let mut s = SourceConnectionStream::default();
        for e in events {
            s.version = e.version;
            match &e.event {
                Event::SourceConnection(SourceConnectionEvent::SourceConnectionCreated {
                    ..
                }) => s.created = true,
                Event::SourceConnection(SourceConnectionEvent::SourceConnectionDeleted {
                    ..
                }) => s.deleted = true,
                _ => {}
            }
        }
        s
    }

    fn version(&self) -> u64 {
        self.version
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceConnectionError {
    #[error("Source connection not found")]
    NotFound,
    #[error("Source connection already exists")]
    AlreadyExists,
}

pub fn decide_create_source_connection(
    s: &SourceConnectionStream,
    created: SourceConnectionEvent,
) -> Result<Vec<SourceConnectionEvent>, SourceConnectionError> {
    if s.created {
        return Err(SourceConnectionError::AlreadyExists);
    }
    Ok(vec![created])
}

pub fn decide_delete_source_connection(
    s: &SourceConnectionStream,
    source_connection_id: Uuid,
) -> Result<Vec<SourceConnectionEvent>, SourceConnectionError> {
    if !s.created || s.deleted {
        return Err(SourceConnectionError::NotFound);
    }
    Ok(vec![SourceConnectionEvent::SourceConnectionDeleted {
        source_connection_id,
    }])
}

/// Airweave's readable id from a name: lower-case, only `[a-z0-9]` and single hyphens,
/// then a random 6-character suffix (`Finance Data` -> `finance-data-ab12x9`).
pub fn readable_id_from_name(name: &str) -> String {
    use rand::distr::{Distribution, Uniform};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut slug = String::with_capacity(name.len() + 7);
    let mut pending_hyphen = false;
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_hyphen && !slug.is_empty() {
                slug.push('-');
            }
            pending_hyphen = false;
            slug.push(c);
        } else if c.is_whitespace() || c == '-' {
            pending_hyphen = true;
        }
        // anything else is dropped, as Airweave does
    }
    if !slug.is_empty() {
        slug.push('-');
    }
    let mut rng = rand::rng();
    if let Ok(pick) = Uniform::new(0, ALPHABET.len()) {
        for _ in 0..6 {
            slug.push(ALPHABET[pick.sample(&mut rng)] as char);
        }
    }
    slug
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncjobs_domain::{InMemoryStore, SystemClock};

    fn recorded(version: u64, e: impl Into<Event>) -> RecordedEvent {
        RecordedEvent {
            event_id: Uuid::now_v7(),
            stream_id: "s".into(),
            version,
            global_position: version,
            recorded_at: Utc::now(),
            schema_version: 2,
            metadata: Metadata::default(),
            event: e.into(),
        }
    }

    #[test]
    fn a_readable_id_is_taken_while_its_collection_lives_and_free_after_delete() {
        let (org, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let empty = CollectionName::default();
        let created = decide_create_collection(&empty, a, org, "Name", "rid").unwrap();
        let mut log = vec![recorded(1, created[0].clone())];
        let s = CollectionName::fold(&log);
        assert_eq!((s.version, s.live), (1, Some(a)));
        assert_eq!(
            decide_create_collection(&s, b, org, "Other", "rid")
                .unwrap_err()
                .to_string(),
            "Collection with readable_id 'rid' already exists"
        );
        assert_eq!(
            decide_delete_collection(&s, b),
            Err(CollectionError::NotFound)
        );
        log.push(recorded(
            2,
            decide_delete_collection(&s, a).unwrap()[0].clone(),
        ));
        let s = CollectionName::fold(&log);
        assert_eq!((s.version, s.live), (2, None));
        assert_eq!(
            decide_delete_collection(&s, a),
            Err(CollectionError::NotFound)
        );
        assert!(decide_create_collection(&s, b, org, "Again", "rid").is_ok());
    }

    #[test]
    fn a_source_connection_is_deleted_once() {
        let id = Uuid::new_v4();
        let s = SourceConnectionStream::default();
        assert_eq!(
            decide_delete_source_connection(&s, id),
            Err(SourceConnectionError::NotFound)
        );
        let log = vec![recorded(
            1,
            SourceConnectionEvent::SourceConnectionCreated {
                source_connection_id: id,
                organization_id: id,
                collection_id: id,
                readable_collection_id: "c".into(),
                name: "n".into(),
                description: None,
                short_name: "timed".into(),
                config: serde_json::json!({}),
                auth_method: "direct".into(),
                authenticated: true,
            },
        )];
        let s = SourceConnectionStream::fold(&log);
        let del = decide_delete_source_connection(&s, id).unwrap();
        let mut log = log;
        log.push(recorded(2, del[0].clone()));
        let s = SourceConnectionStream::fold(&log);
        assert!(s.deleted);
        assert_eq!(
            decide_delete_source_connection(&s, id),
            Err(SourceConnectionError::NotFound)
        );
    }

    #[test]
    fn readable_ids_from_names_follow_airweave() {
        let id = readable_id_from_name("  Finance  Data (Q1)! ");
        assert!(id.starts_with("finance-data-q1-"), "{id}");
        assert_eq!(id.len(), "finance-data-q1-".len() + 6);
        assert!(super::super::input::valid_readable_id(&id));
        let only_suffix = readable_id_from_name("!!!!");
        assert_eq!(only_suffix.len(), 6);
        assert!(super::super::input::valid_readable_id(&only_suffix));
        assert_ne!(readable_id_from_name("same"), readable_id_from_name("same"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_many_racing_creates_of_one_readable_id_exactly_one_wins() {
        let store: Arc<dyn EventStore> = InMemoryStore::new();
        let org = Uuid::new_v4();
        let stream = syncjobs_domain::events::stream::collection_name(org, "race");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (store, stream) = (store.clone(), stream.clone());
                tokio::spawn(async move {
                    let id = Uuid::new_v4();
                    decide_and_append(
                        &store,
                        &stream,
                        || SystemClock.now(),
                        &Metadata::default(),
                        |s: &CollectionName| decide_create_collection(s, id, org, "Race", "race"),
                    )
                    .await
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => won += usize::from(!r.is_empty()),
                Err(CommandError::Rejected(CollectionError::AlreadyExists(_))) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(store.read_stream(&stream, 0).await.unwrap().len(), 1);
    }

    use syncjobs_domain::Clock;
}
