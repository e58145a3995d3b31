//! Where each event goes on NATS: the subject scheme and the owner cache behind it.
//!
//! Subjects put the organization first so that NATS permissions and subscriptions can be cut
//! per tenant (`<prefix>.<org>.>`), then the aggregate, then the event type last so a
//! subscriber can filter on it with a `*` wildcard:
//!
//! - job events: `<prefix>.<org>.<source_connection_id>.<job_id>.<EventType>`
//! - collections: `<prefix>.<org>.collections.<collection_id>.<EventType>`
//! - source connections: `<prefix>.<org>.source_connections.<source_connection_id>.<EventType>`
//! - access events (organizations, API keys): never published (see [`Route::Skip`]).
//! - worker lifecycles (no organization: they are the operator's, not a tenant's):
//!   `<prefix>.workers.<worker_id>.<EventType>`; `workers` cannot be an organization id
//!   (a UUID), so no per-organization subscription receives them.
//!
//! Only a stream's first event names its owner (org, source connection), so the router keeps
//! a cache fed by the creation events it sees and reads the stream's first event on a miss
//! (after a restart from a cursor, say).

use std::collections::HashMap;
use syncjobs_domain::events::{
    stream, CollectionEvent, Event, RecordedEvent, SourceConnectionEvent, SyncJobEvent,
};
use syncjobs_domain::store::{EventStore, StoreError};
use uuid::Uuid;

/// The token used where an owner cannot be found (a stream whose first event is not its
/// creation event: a broken invariant, logged). Keeps the subject's shape so that per-org
/// subscriptions never receive an event they cannot be sure belongs to them.
pub const UNKNOWN_TOKEN: &str = "unknown";

/// The cache is dropped whole when it grows past this: entries for live aggregates come back
/// on the next miss, and a bound keeps a long-running relay's memory flat.
const CACHE_CAP: usize = 65_536;

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Publish on this subject.
    Publish(String),
    /// Do not publish. Access events carry API key hashes and prefixes: credential material
    /// never leaves the store, and no subscriber of job lifecycle needs it.
    Skip,
}

/// Who owns an aggregate stream, as its creation event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    organization_id: Uuid,
    /// Set for jobs only.
    source_connection_id: Option<Uuid>,
}

/// Computes subjects, remembering owners of the streams it has seen.
pub struct Router {
    prefix: String,
    owners: HashMap<String, Owner>,
}

impl Router {
    /// `prefix` must have passed [`validate_prefix`].
    pub fn new(prefix: impl Into<String>) -> Self {
        Router {
            prefix: prefix.into(),
            owners: HashMap::new(),
        }
    }

    /// The route of `ev`. Fails only when a cache miss needs a store read that fails: the
    /// caller retries, since skipping would lose the event.
    pub async fn route(
        &mut self,
        store: &dyn EventStore,
        ev: &RecordedEvent,
    ) -> Result<Route, StoreError> {
        let event_type = ev.event_type();
        let (kind, final_event) = match &ev.event {
            // Key hashes and webhook secrets are nobody's business on the bus.
            Event::Access(_) | Event::Webhook(_) => return Ok(Route::Skip),
            Event::Worker(_) => {
                let worker = stream::worker_id(&ev.stream_id).unwrap_or(&ev.stream_id);
                return Ok(Route::Publish(format!(
                    "{}.workers.{}.{event_type}",
                    self.prefix,
                    sanitize_token(worker)
                )));
            }
            Event::Job(e) => (Kind::Job, e.is_final()),
            Event::Collection(e) => (
                Kind::Collection,
                matches!(e, CollectionEvent::CollectionDeleted { .. }),
            ),
            Event::SourceConnection(e) => (
                Kind::SourceConnection,
                matches!(e, SourceConnectionEvent::SourceConnectionDeleted { .. }),
            ),
        };
        let owner = match owner_of(&ev.event) {
            Some(o) => {
                self.remember(&ev.stream_id, o);
                Some(o)
            }
            None => self.lookup(store, &ev.stream_id).await?,
        };
        if final_event {
            // Nothing more is expected on this stream; a late event just misses once.
            self.owners.remove(&ev.stream_id);
        }
        let org = owner.map_or_else(
            || UNKNOWN_TOKEN.to_owned(),
            |o| o.organization_id.to_string(),
        );
        let aggregate = aggregate_token(ev);
        let p = &self.prefix;
        let subject = match kind {
            Kind::Job => {
                let sc = owner
                    .and_then(|o| o.source_connection_id)
                    .map_or_else(|| UNKNOWN_TOKEN.to_owned(), |id| id.to_string());
                format!("{p}.{org}.{sc}.{aggregate}.{event_type}")
            }
            Kind::Collection => format!("{p}.{org}.collections.{aggregate}.{event_type}"),
            Kind::SourceConnection => {
                format!("{p}.{org}.source_connections.{aggregate}.{event_type}")
            }
        };
        Ok(Route::Publish(subject))
    }

    fn remember(&mut self, stream_id: &str, owner: Owner) {
        if self.owners.len() >= CACHE_CAP && !self.owners.contains_key(stream_id) {
            self.owners.clear();
        }
        self.owners.insert(stream_id.to_owned(), owner);
    }

    async fn lookup(
        &mut self,
        store: &dyn EventStore,
        stream_id: &str,
    ) -> Result<Option<Owner>, StoreError> {
        if let Some(o) = self.owners.get(stream_id) {
            return Ok(Some(*o));
        }
        let events = store.read_stream(stream_id, 0).await?;
        let owner = events.first().and_then(|first| owner_of(&first.event));
        match owner {
            Some(o) => self.remember(stream_id, o),
            None => tracing::warn!(
                stream = stream_id,
                "stream does not start with its creation event; publishing under '{UNKNOWN_TOKEN}'"
            ),
        }
        Ok(owner)
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.owners.len()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Job,
    Collection,
    SourceConnection,
}

fn owner_of(event: &Event) -> Option<Owner> {
    match event {
        Event::Job(SyncJobEvent::JobCreated {
            organization_id,
            source_connection_id,
            ..
        }) => Some(Owner {
            organization_id: *organization_id,
            source_connection_id: Some(*source_connection_id),
        }),
        Event::Collection(CollectionEvent::CollectionCreated {
            organization_id, ..
        })
        | Event::SourceConnection(SourceConnectionEvent::SourceConnectionCreated {
            organization_id,
            ..
        }) => Some(Owner {
            organization_id: *organization_id,
            source_connection_id: None,
        }),
        _ => None,
    }
}

/// The aggregate id token: the id in the stream name (`job-<uuid>` and so on), or the
/// sanitised stream name if it is not one of ours.
fn aggregate_token(ev: &RecordedEvent) -> String {
    let id = match &ev.event {
        Event::Job(_) => stream::job_id(&ev.stream_id),
        Event::Collection(_) => stream::collection_id(&ev.stream_id),
        Event::SourceConnection(_) => stream::source_connection_id(&ev.stream_id),
        Event::Access(_) | Event::Webhook(_) | Event::Worker(_) => None,
    };
    id.map_or_else(|| sanitize_token(&ev.stream_id), |id| id.to_string())
}

/// The job id of an event, for logs.
pub fn job_id_of(ev: &RecordedEvent) -> Option<Uuid> {
    match &ev.event {
        Event::Job(_) => stream::job_id(&ev.stream_id),
        _ => None,
    }
}

/// True for a character NATS does not allow inside a subject token.
fn forbidden(c: char) -> bool {
    c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control()
}

/// A valid NATS token made from arbitrary text: forbidden characters become `_`.
pub fn sanitize_token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    s.chars()
        .map(|c| if forbidden(c) { '_' } else { c })
        .collect()
}

/// Checks a subject prefix: one or more dot-separated literal tokens (no wildcards).
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("subject prefix is empty".into());
    }
    for token in prefix.split('.') {
        if token.is_empty() || token.chars().any(forbidden) {
            return Err(format!(
                "subject prefix {prefix:?} has an invalid token {token:?} \
                 (tokens are non-empty, without spaces, '*' or '>')"
            ));
        }
    }
    Ok(())
}

/// Checks a JetStream stream name (no spaces, dots, wildcards or path separators).
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    let bad = |c: char| forbidden(c) || c == '/' || c == '\\';
    if name.is_empty() || name.chars().any(bad) {
        return Err(format!(
            "stream name {name:?} is invalid (non-empty, without spaces, '.', '*', '>', '/', '\\')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use syncjobs_domain::events::{AccessEvent, EntityCounts, Metadata, NewEvent};
    use syncjobs_domain::store::{ExpectedVersion, InMemoryStore};

    fn meta() -> Metadata {
        Metadata::default()
    }

    async fn append(store: &InMemoryStore, s: &str, e: impl Into<Event>) -> RecordedEvent {
        let mut r = store
            .append(
                s,
                ExpectedVersion::Any,
                vec![NewEvent::new(e, Utc::now(), meta())],
            )
            .await
            .unwrap();
        r.remove(0)
    }

    fn job_created(org: Uuid, sc: Uuid, job: Uuid) -> SyncJobEvent {
        SyncJobEvent::JobCreated {
            job_id: job,
            source_connection_id: sc,
            organization_id: org,
            short_name: "timed".into(),
            config: serde_json::Value::Null,
        }
    }

    fn is_valid_subject(s: &str) -> bool {
        s.split('.')
            .all(|t| !t.is_empty() && !t.chars().any(forbidden))
    }

    #[tokio::test]
    async fn job_events_are_routed_by_org_source_connection_and_job() {
        let store = InMemoryStore::new();
        let (org, sc, job) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let s = stream::job(job);
        let created = append(&store, &s, job_created(org, sc, job)).await;
        let started = append(&store, &s, SyncJobEvent::JobStarted { worker: "w".into() }).await;
        let mut router = Router::new("syncjobs.events");
        for (ev, ty) in [(&created, "JobCreated"), (&started, "JobStarted")] {
            let route = router.route(store.as_ref(), ev).await.unwrap();
            assert_eq!(
                route,
                Route::Publish(format!("syncjobs.events.{org}.{sc}.{job}.{ty}"))
            );
        }
    }

    #[tokio::test]
    async fn a_cache_miss_reads_the_owner_from_the_streams_first_event() {
        let store = InMemoryStore::new();
        let (org, sc, job) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let s = stream::job(job);
        append(&store, &s, job_created(org, sc, job)).await;
        let done = append(
            &store,
            &s,
            SyncJobEvent::JobCompleted {
                counts: EntityCounts::default(),
            },
        )
        .await;
        // A fresh router (a relay restarted from a cursor past JobCreated).
        let mut router = Router::new("p");
        let route = router.route(store.as_ref(), &done).await.unwrap();
        assert_eq!(
            route,
            Route::Publish(format!("p.{org}.{sc}.{job}.JobCompleted"))
        );
        // The job is final: its cache entry is gone, so the cache stays bounded.
        assert_eq!(router.cached(), 0);
    }

    #[tokio::test]
    async fn collections_and_source_connections_get_their_own_subjects() {
        let store = InMemoryStore::new();
        let (org, cid, scid) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let cs = stream::collection(cid);
        let c1 = append(
            &store,
            &cs,
            CollectionEvent::CollectionCreated {
                collection_id: cid,
                organization_id: org,
                name: "n".into(),
                readable_id: "n-1".into(),
            },
        )
        .await;
        let c2 = append(
            &store,
            &cs,
            CollectionEvent::CollectionDeleted { collection_id: cid },
        )
        .await;
        let ss = stream::source_connection(scid);
        let s1 = append(
            &store,
            &ss,
            SourceConnectionEvent::SourceConnectionCreated {
                source_connection_id: scid,
                organization_id: org,
                collection_id: cid,
                readable_collection_id: "n-1".into(),
                name: "s".into(),
                description: None,
                short_name: "timed".into(),
                config: serde_json::Value::Null,
                auth_method: "direct".into(),
                authenticated: true,
            },
        )
        .await;
        let s2 = append(
            &store,
            &ss,
            SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id: scid,
                with_collection: false,
            },
        )
        .await;
        let mut router = Router::new("x.y");
        let mut got = vec![];
        for ev in [&c1, &c2, &s1, &s2] {
            got.push(router.route(store.as_ref(), ev).await.unwrap());
        }
        assert_eq!(
            got,
            vec![
                Route::Publish(format!("x.y.{org}.collections.{cid}.CollectionCreated")),
                Route::Publish(format!("x.y.{org}.collections.{cid}.CollectionDeleted")),
                Route::Publish(format!(
                    "x.y.{org}.source_connections.{scid}.SourceConnectionCreated"
                )),
                Route::Publish(format!(
                    "x.y.{org}.source_connections.{scid}.SourceConnectionDeleted"
                )),
            ]
        );
        assert_eq!(router.cached(), 0, "deleted aggregates leave the cache");
    }

    #[tokio::test]
    async fn access_events_are_never_published() {
        let store = InMemoryStore::new();
        let org = Uuid::new_v4();
        let mut router = Router::new("p");
        for e in [
            AccessEvent::OrganizationCreated {
                organization_id: org,
                name: "o".into(),
            },
            AccessEvent::ApiKeyCreated {
                key_id: Uuid::new_v4(),
                organization_id: org,
                key_hash: "deadbeef".into(),
                prefix: "sk_".into(),
                expires_at: None,
            },
        ] {
            let ev = append(&store, stream::ACCESS, e).await;
            assert_eq!(
                router.route(store.as_ref(), &ev).await.unwrap(),
                Route::Skip
            );
        }
    }

    #[tokio::test]
    async fn a_job_stream_without_its_creation_event_still_gets_a_valid_subject() {
        let store = InMemoryStore::new();
        let job = Uuid::new_v4();
        let ev = append(
            &store,
            &stream::job(job),
            SyncJobEvent::JobStarted { worker: "w".into() },
        )
        .await;
        let mut router = Router::new("p");
        let route = router.route(store.as_ref(), &ev).await.unwrap();
        assert_eq!(
            route,
            Route::Publish(format!("p.unknown.unknown.{job}.JobStarted"))
        );
        // A foreign stream name is sanitised into one token.
        let odd = append(
            &store,
            "weird stream.name>*",
            SyncJobEvent::JobStarted { worker: "w".into() },
        )
        .await;
        let Route::Publish(s) = router.route(store.as_ref(), &odd).await.unwrap() else {
            panic!("job events are published");
        };
        assert!(is_valid_subject(&s), "{s}");
        assert_eq!(s, "p.unknown.unknown.weird_stream_name__.JobStarted");
    }

    #[test]
    fn prefixes_and_stream_names_are_checked() {
        assert!(validate_prefix("syncjobs.events").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(validate_stream_name("SYNCJOBS").is_ok());
        for bad in ["", "A.B", "A B", "A*", "A/B"] {
            assert!(validate_stream_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(sanitize_token(""), "_");
    }
}
