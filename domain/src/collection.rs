//! A collection's readable id as an aggregate: which collection (if any) holds it now, and
//! that collection's name.
//!
//! A collection's events live in the stream of its readable id within its organization
//! (`collection_name-<org>-<readable_id>`), so that "the readable id is free" and "create it"
//! are one optimistic append: of two racing creates exactly one wins, and a deleted id can
//! be taken again.

use crate::aggregate::{Aggregate, FoldError};
use crate::events::{CollectionEvent, Event, RecordedEvent};
use uuid::Uuid;

/// The stream of one readable id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionName {
    pub version: u64,
    /// The collection that holds the readable id now.
    pub live: Option<Uuid>,
    /// Its name (empty while none lives): an update records a name only if it changes.
    pub name: String,
}

/// What can be asked of a readable id. Ids are chosen by the caller so `decide` is pure.
#[derive(Debug, Clone, PartialEq)]
pub enum CollectionCommand {
    Create {
        collection_id: Uuid,
        organization_id: Uuid,
        name: String,
        readable_id: String,
    },
    /// Airweave's `PATCH /collections/{readable_id}`: `name` (already checked by the
    /// caller) replaces the collection's; `None` changes nothing, and is recorded all the
    /// same (Airweave announces every update).
    Update {
        collection_id: Uuid,
        name: Option<String>,
    },
    Delete {
        collection_id: Uuid,
    },
}

/// Why a collection command was refused. The API words these its own way (`api::error` in
/// the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectionError {
    #[error("the readable id {0:?} is held by a live collection")]
    AlreadyExists(String),
    #[error("no such collection")]
    NotFound,
}

impl Aggregate for CollectionName {
    const NAME: &'static str = "collection";
    type Event = CollectionEvent;
    type Command = CollectionCommand;
    type Error = CollectionError;

    fn initial() -> Self {
        CollectionName::default()
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn evolve(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        let does_not_fit = |why| FoldError::DoesNotFit {
            event: e.event_type(),
            why,
        };
        match &e.event {
            Event::Collection(CollectionEvent::CollectionCreated {
                collection_id,
                name,
                ..
            }) => {
                if self.live.is_some() {
                    return Err(does_not_fit("the readable id is taken"));
                }
                self.live = Some(*collection_id);
                self.name.clone_from(name);
            }
            Event::Collection(CollectionEvent::CollectionUpdated {
                collection_id,
                name,
            }) => {
                if self.live != Some(*collection_id) {
                    return Err(does_not_fit("not the collection holding the readable id"));
                }
                if let Some(name) = name {
                    self.name.clone_from(name);
                }
            }
            Event::Collection(CollectionEvent::CollectionDeleted { collection_id }) => {
                if self.live != Some(*collection_id) {
                    return Err(does_not_fit("not the collection holding the readable id"));
                }
                self.live = None;
                self.name.clear();
            }
            _ => return Err(FoldError::Foreign(e.event_type())),
        }
        self.version = e.version;
        Ok(())
    }

    fn decide(&self, command: &CollectionCommand) -> Result<Vec<CollectionEvent>, CollectionError> {
        match command {
            CollectionCommand::Create {
                collection_id,
                organization_id,
                name,
                readable_id,
            } => {
                if self.live.is_some() {
                    return Err(CollectionError::AlreadyExists(readable_id.clone()));
                }
                Ok(vec![CollectionEvent::CollectionCreated {
                    collection_id: *collection_id,
                    organization_id: *organization_id,
                    name: name.clone(),
                    readable_id: readable_id.clone(),
                }])
            }
            CollectionCommand::Update {
                collection_id,
                name,
            } => {
                if self.live != Some(*collection_id) {
                    return Err(CollectionError::NotFound);
                }
                Ok(vec![CollectionEvent::CollectionUpdated {
                    collection_id: *collection_id,
                    name: name.clone().filter(|n| *n != self.name),
                }])
            }
            CollectionCommand::Delete { collection_id } => {
                if self.live != Some(*collection_id) {
                    return Err(CollectionError::NotFound);
                }
                Ok(vec![CollectionEvent::CollectionDeleted {
                    collection_id: *collection_id,
                }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateTest;

    fn create(collection_id: Uuid, name: &str) -> CollectionCommand {
        CollectionCommand::Create {
            collection_id,
            organization_id: Uuid::from_u128(9),
            name: name.into(),
            readable_id: "rid".into(),
        }
    }

    fn created(collection_id: Uuid) -> CollectionEvent {
        CollectionEvent::CollectionCreated {
            collection_id,
            organization_id: Uuid::from_u128(9),
            name: "Name".into(),
            readable_id: "rid".into(),
        }
    }

    #[test]
    fn a_readable_id_is_taken_while_its_collection_lives_and_free_after_delete() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let s = AggregateTest::<CollectionName>::given([])
            .when(create(a, "Name"))
            .then([created(a)]);
        assert_eq!((s.version, s.live, s.name.as_str()), (1, Some(a), "Name"));

        let live = AggregateTest::<CollectionName>::given([created(a)]);
        assert_eq!(
            live.when(create(b, "Other")).rejected(),
            CollectionError::AlreadyExists("rid".into())
        );
        live.when(CollectionCommand::Delete { collection_id: b })
            .then_err(CollectionError::NotFound);
        let s = live
            .when(CollectionCommand::Delete { collection_id: a })
            .then([CollectionEvent::CollectionDeleted { collection_id: a }]);
        assert_eq!((s.version, s.live), (2, None));

        let deleted = AggregateTest::<CollectionName>::given([
            created(a),
            CollectionEvent::CollectionDeleted { collection_id: a },
        ]);
        deleted
            .when(CollectionCommand::Delete { collection_id: a })
            .then_err(CollectionError::NotFound);
        let (_, s) = deleted.when(create(b, "Again")).accepted();
        assert_eq!((s.version, s.live), (3, Some(b)));
    }

    fn update(collection_id: Uuid, name: Option<&str>) -> CollectionCommand {
        CollectionCommand::Update {
            collection_id,
            name: name.map(str::to_owned),
        }
    }

    fn updated(collection_id: Uuid, name: Option<&str>) -> CollectionEvent {
        CollectionEvent::CollectionUpdated {
            collection_id,
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn an_update_records_a_new_name_and_an_unchanged_one_as_no_change() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let live = AggregateTest::<CollectionName>::given([created(a)]);
        let s = live
            .when(update(a, Some("Renamed")))
            .then([updated(a, Some("Renamed"))]);
        assert_eq!((s.version, s.name.as_str()), (2, "Renamed"));
        // Airweave answers and announces a patch that changes nothing: it is recorded,
        // without a name.
        let s = live.when(update(a, Some("Name"))).then([updated(a, None)]);
        assert_eq!((s.version, s.name.as_str()), (2, "Name"));
        live.when(update(a, None)).then([updated(a, None)]);
        // The name it was renamed to is the one compared next.
        AggregateTest::<CollectionName>::given([created(a), updated(a, Some("Renamed"))])
            .when(update(a, Some("Name")))
            .then([updated(a, Some("Name"))]);
        live.when(update(b, Some("Other")))
            .then_err(CollectionError::NotFound);
        AggregateTest::<CollectionName>::given([])
            .when(update(a, Some("Other")))
            .then_err(CollectionError::NotFound);
        AggregateTest::<CollectionName>::given([
            created(a),
            CollectionEvent::CollectionDeleted { collection_id: a },
        ])
        .when(update(a, Some("Other")))
        .then_err(CollectionError::NotFound);
    }

    #[test]
    fn a_stream_that_breaks_the_rules_does_not_fold() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let err = AggregateTest::<CollectionName>::fold_error;
        assert!(matches!(
            err(vec![created(a), created(b)]),
            FoldError::DoesNotFit { .. }
        ));
        assert!(matches!(
            err(vec![
                created(a),
                CollectionEvent::CollectionDeleted { collection_id: b }
            ]),
            FoldError::DoesNotFit { .. }
        ));
        assert!(matches!(
            err(vec![updated(a, Some("Early"))]),
            FoldError::DoesNotFit { .. }
        ));
        assert!(matches!(
            err(vec![created(a), updated(b, None)]),
            FoldError::DoesNotFit { .. }
        ));
        assert_eq!(
            AggregateTest::<CollectionName>::fold_error([Event::from(
                crate::events::AccessEvent::ApiKeyRevoked { key_id: a }
            )]),
            FoldError::Foreign("ApiKeyRevoked")
        );
    }
}
