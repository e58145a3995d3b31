//! A source connection's own stream as an aggregate: created once, deleted at most once.
//! Its jobs live in job streams.

use crate::aggregate::{Aggregate, FoldError};
use crate::events::{Event, RecordedEvent, SourceConnectionEvent};
use uuid::Uuid;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceConnection {
    pub version: u64,
    pub created: bool,
    pub deleted: bool,
}

/// What can be asked of a source connection's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConnectionCommand {
    /// Records this `SourceConnectionCreated` (the caller chose its id and checked its input).
    Create(SourceConnectionEvent),
    Delete {
        source_connection_id: Uuid,
        /// Its collection is being deleted (see `SourceConnectionDeleted::with_collection`).
        with_collection: bool,
    },
}

/// Why a source connection command was refused. The API words these its own way
/// (`api::error` in the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceConnectionError {
    #[error("no such source connection")]
    NotFound,
    #[error("the source connection exists already")]
    AlreadyExists,
    /// A `Create` that carries another event: a caller's mistake, refused before it is stored.
    #[error("Source connection creation must record SourceConnectionCreated")]
    NotACreation,
}

impl Aggregate for SourceConnection {
    const NAME: &'static str = "source connection";
    type Event = SourceConnectionEvent;
    type Command = SourceConnectionCommand;
    type Error = SourceConnectionError;

    fn initial() -> Self {
        SourceConnection::default()
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn evolve(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        let Event::SourceConnection(event) = &e.event else {
            return Err(FoldError::Foreign(e.event_type()));
        };
        let does_not_fit = |why| FoldError::DoesNotFit {
            event: e.event_type(),
            why,
        };
        match event {
            SourceConnectionEvent::SourceConnectionCreated { .. } if self.created => {
                return Err(does_not_fit("the source connection exists"))
            }
            SourceConnectionEvent::SourceConnectionCreated { .. } => self.created = true,
            SourceConnectionEvent::SourceConnectionDeleted { .. }
                if !self.created || self.deleted =>
            {
                return Err(does_not_fit("no source connection to delete"))
            }
            SourceConnectionEvent::SourceConnectionDeleted { .. } => self.deleted = true,
        }
        self.version = e.version;
        Ok(())
    }

    fn decide(
        &self,
        command: &SourceConnectionCommand,
    ) -> Result<Vec<SourceConnectionEvent>, SourceConnectionError> {
        match command {
            SourceConnectionCommand::Create(
                created @ SourceConnectionEvent::SourceConnectionCreated { .. },
            ) => {
                if self.created {
                    return Err(SourceConnectionError::AlreadyExists);
                }
                Ok(vec![created.clone()])
            }
            SourceConnectionCommand::Create(_) => Err(SourceConnectionError::NotACreation),
            SourceConnectionCommand::Delete {
                source_connection_id,
                with_collection,
            } => {
                if !self.created || self.deleted {
                    return Err(SourceConnectionError::NotFound);
                }
                Ok(vec![SourceConnectionEvent::SourceConnectionDeleted {
                    source_connection_id: *source_connection_id,
                    with_collection: *with_collection,
                }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateTest;

    fn created(id: Uuid) -> SourceConnectionEvent {
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
        }
    }

    fn delete(id: Uuid) -> SourceConnectionCommand {
        SourceConnectionCommand::Delete {
            source_connection_id: id,
            with_collection: false,
        }
    }

    #[test]
    fn a_source_connection_is_created_once() {
        let id = Uuid::from_u128(7);
        let s = AggregateTest::<SourceConnection>::given([])
            .when(SourceConnectionCommand::Create(created(id)))
            .then([created(id)]);
        assert!(s.created && !s.deleted && s.version == 1);
        AggregateTest::<SourceConnection>::given([created(id)])
            .when(SourceConnectionCommand::Create(created(id)))
            .then_err(SourceConnectionError::AlreadyExists);
        AggregateTest::<SourceConnection>::given([])
            .when(SourceConnectionCommand::Create(
                SourceConnectionEvent::SourceConnectionDeleted {
                    source_connection_id: id,
                    with_collection: false,
                },
            ))
            .then_err(SourceConnectionError::NotACreation);
    }

    #[test]
    fn a_source_connection_is_deleted_once() {
        let id = Uuid::from_u128(7);
        AggregateTest::<SourceConnection>::given([])
            .when(delete(id))
            .then_err(SourceConnectionError::NotFound);
        let s = AggregateTest::<SourceConnection>::given([created(id)])
            .when(delete(id))
            .then([SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id: id,
                with_collection: false,
            }]);
        assert!(s.deleted);
        let deleted = AggregateTest::<SourceConnection>::given([
            created(id),
            SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id: id,
                with_collection: false,
            },
        ]);
        deleted
            .when(delete(id))
            .then_err(SourceConnectionError::NotFound);
        deleted
            .when(SourceConnectionCommand::Create(created(id)))
            .then_err(SourceConnectionError::AlreadyExists);
    }

    #[test]
    fn a_stream_that_breaks_the_rules_does_not_fold() {
        let id = Uuid::from_u128(7);
        let err = AggregateTest::<SourceConnection>::fold_error;
        assert!(matches!(
            err(vec![created(id), created(id)]),
            FoldError::DoesNotFit { .. }
        ));
        assert!(matches!(
            err(vec![SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id: id,
                with_collection: false,
            }]),
            FoldError::DoesNotFit { .. }
        ));
    }
}
