//! A collection's readable id as an aggregate: which collection (if any) holds it now.
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
            Event::Collection(CollectionEvent::CollectionCreated { collection_id, .. }) => {
                if self.live.is_some() {
                    return Err(does_not_fit("the readable id is taken"));
                }
                self.live = Some(*collection_id);
            }
            Event::Collection(CollectionEvent::CollectionDeleted { collection_id }) => {
                if self.live != Some(*collection_id) {
                    return Err(does_not_fit("not the collection holding the readable id"));
                }
                self.live = None;
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
        assert_eq!((s.version, s.live), (1, Some(a)));

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
        assert_eq!(
            AggregateTest::<CollectionName>::fold_error([Event::from(
                crate::events::AccessEvent::ApiKeyRevoked { key_id: a }
            )]),
            FoldError::Foreign("ApiKeyRevoked")
        );
    }
}
