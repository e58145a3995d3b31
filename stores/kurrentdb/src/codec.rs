//! Events, versions and positions between syncjobs and KurrentDB (see the crate docs for the
//! mapping). Pure functions: everything here is tested without a server.

use chrono::{DateTime, Utc};
use kurrentdb::{CurrentRevision, EventData, Position, StreamPosition, StreamState};
use serde::{Deserialize, Serialize};
use syncjobs_domain::events::{Event, Metadata, NewEvent, RecordedEvent, CURRENT_SCHEMA_VERSION};
use syncjobs_domain::{ExpectedVersion, StoreError};
use uuid::Uuid;

/// Our envelope, stored as the KurrentDB event's JSON metadata (the body is its data).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    recorded_at: DateTime<Utc>,
    schema_version: u32,
    #[serde(flatten)]
    metadata: Metadata,
}

/// The stream state KurrentDB checks for our expected version (versions count from 1,
/// revisions from 0).
pub(crate) fn stream_state(expected: ExpectedVersion) -> StreamState {
    match expected {
        ExpectedVersion::Any => StreamState::Any,
        ExpectedVersion::Exact(0) => StreamState::NoStream,
        ExpectedVersion::Exact(n) => StreamState::StreamRevision(n - 1),
    }
}

/// Our version of a stream KurrentDB reports as `current` (0: no stream).
pub(crate) fn version_of(current: CurrentRevision) -> u64 {
    match current {
        CurrentRevision::NoStream => 0,
        CurrentRevision::Current(revision) => revision + 1,
    }
}

/// The conflict KurrentDB's `WrongExpectedVersion` is.
pub(crate) fn conflict(
    stream: &str,
    expected: ExpectedVersion,
    current: CurrentRevision,
) -> StoreError {
    StoreError::Conflict {
        stream: stream.to_owned(),
        expected,
        actual: version_of(current),
    }
}

/// Where a read of a stream's events with version > `after` starts: the revision `after`
/// (version `after + 1`).
pub(crate) fn stream_from(after: u64) -> StreamPosition<u64> {
    match after {
        0 => StreamPosition::Start,
        revision => StreamPosition::Position(revision),
    }
}

/// Where a read of `$all` after `after` starts. A forward read includes the event at its
/// starting position, so the caller drops events at or before `after` ([`is_after`]); our
/// events have commit = prepare, which makes `(after, after)` exactly the event's position.
pub(crate) fn all_from(after: u64) -> StreamPosition<Position> {
    match after {
        0 => StreamPosition::Start,
        p => StreamPosition::Position(Position {
            commit: p,
            prepare: p,
        }),
    }
}

/// Whether an event at `position` of `$all` comes after `after` (the global position we
/// expose is the commit position).
pub(crate) fn is_after(position: Position, after: u64) -> bool {
    position.commit > after
}

/// `event` as KurrentDB stores it: a JSON event of its type, under our event id, with our
/// envelope as its metadata.
pub(crate) fn encode(event: &NewEvent) -> Result<EventData, StoreError> {
    let envelope = Envelope {
        recorded_at: event.recorded_at,
        schema_version: CURRENT_SCHEMA_VERSION,
        metadata: event.metadata.clone(),
    };
    let unencodable = |e: serde_json::Error| {
        StoreError::Backend(format!("event {} cannot be encoded: {e}", event.event_id))
    };
    EventData::json(event.event.event_type(), &event.event)
        .map_err(unencodable)?
        .id(event.event_id)
        .metadata_as_json(&envelope)
        .map_err(unencodable)
}

/// One stored event's parts, as KurrentDB hands them back.
pub(crate) struct Stored<'a> {
    pub(crate) id: Uuid,
    /// Our stream name (the namespace already taken off).
    pub(crate) stream: &'a str,
    pub(crate) revision: u64,
    pub(crate) position: Position,
    pub(crate) event_type: &'a str,
    pub(crate) data: &'a [u8],
    pub(crate) metadata: &'a [u8],
}

/// The event `stored` holds, upcast to the current schema.
pub(crate) fn decode(stored: Stored<'_>) -> Result<RecordedEvent, StoreError> {
    let position = stored.position.commit;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let envelope: Envelope = serde_json::from_slice(stored.metadata)
        .map_err(|e| corrupt(format!("metadata of event {}: {e}", stored.id)))?;
    let body = std::str::from_utf8(stored.data)
        .map_err(|e| corrupt(format!("body of event {} is not UTF-8: {e}", stored.id)))?;
    let event = Event::from_stored_as(envelope.schema_version, stored.event_type, body)
        .map_err(|e| corrupt(format!("body of event {}: {e}", stored.id)))?;
    Ok(RecordedEvent {
        event_id: stored.id,
        stream_id: stored.stream.to_owned(),
        version: stored.revision + 1,
        global_position: position,
        recorded_at: envelope.recorded_at,
        schema_version: envelope.schema_version,
        metadata: envelope.metadata,
        event,
    })
}

/// `event` as recorded at `revision` and `position`: what an append returns, without
/// decoding what it has just written.
pub(crate) fn recorded(
    stream: &str,
    event: NewEvent,
    revision: u64,
    position: u64,
) -> RecordedEvent {
    RecordedEvent {
        event_id: event.event_id,
        stream_id: stream.to_owned(),
        version: revision + 1,
        global_position: position,
        recorded_at: event.recorded_at,
        schema_version: CURRENT_SCHEMA_VERSION,
        metadata: event.metadata,
        event: event.event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncjobs_domain::events::SyncJobEvent;

    fn sample() -> NewEvent {
        NewEvent::new(
            SyncJobEvent::CancelRequested {
                requested_by: "api-key:k".into(),
                timeout_seconds: 180,
            },
            // Nanoseconds: the envelope must keep them all.
            DateTime::from_timestamp(1_767_225_600, 123_456_789).unwrap(),
            Metadata::caused_by("api-key:k").with_correlation(Uuid::now_v7()),
        )
    }

    #[test]
    fn expected_versions_count_from_one_and_revisions_from_zero() {
        assert_eq!(stream_state(ExpectedVersion::Any), StreamState::Any);
        assert_eq!(
            stream_state(ExpectedVersion::Exact(0)),
            StreamState::NoStream
        );
        assert_eq!(
            stream_state(ExpectedVersion::Exact(1)),
            StreamState::StreamRevision(0)
        );
        assert_eq!(
            stream_state(ExpectedVersion::Exact(7)),
            StreamState::StreamRevision(6)
        );
        assert_eq!(version_of(CurrentRevision::NoStream), 0);
        assert_eq!(version_of(CurrentRevision::Current(0)), 1);
        assert_eq!(version_of(CurrentRevision::Current(6)), 7);
    }

    #[test]
    fn a_wrong_expected_version_is_a_typed_conflict_with_our_versions() {
        match conflict(
            "job-1",
            ExpectedVersion::Exact(0),
            CurrentRevision::Current(0),
        ) {
            StoreError::Conflict {
                stream,
                expected,
                actual,
            } => {
                assert_eq!(stream, "job-1");
                assert_eq!(expected, ExpectedVersion::Exact(0));
                assert_eq!(actual, 1, "revision 0 is our version 1");
            }
            other => panic!("{other:?}"),
        }
        let e = conflict("s", ExpectedVersion::Exact(5), CurrentRevision::NoStream);
        assert!(e.is_conflict());
        assert!(e.to_string().contains("actual 0"), "{e}");
    }

    #[test]
    fn reads_start_where_the_caller_left_off_and_drop_what_it_has_seen() {
        assert_eq!(stream_from(0), StreamPosition::Start);
        assert_eq!(
            stream_from(3),
            StreamPosition::Position(3),
            "version 3 seen: the next is version 4, revision 3"
        );
        assert_eq!(all_from(0), StreamPosition::Start);
        let p = Position {
            commit: 4711,
            prepare: 4711,
        };
        assert_eq!(all_from(4711), StreamPosition::Position(p));
        // The read includes its starting event: it is dropped, what follows is kept,
        // however far away (positions are byte offsets, never +1).
        assert!(!is_after(p, 4711));
        assert!(is_after(
            Position {
                commit: 9000,
                prepare: 9000
            },
            4711
        ));
        assert!(!is_after(
            Position {
                commit: 100,
                prepare: 100
            },
            4711
        ));
    }

    /// The bytes KurrentDB would store for `event`: `EventData`'s are private, so they are
    /// made as `EventData::json`/`metadata_as_json` make them (`serde_json::to_vec`).
    fn stored_bytes(event: &NewEvent) -> (Vec<u8>, Vec<u8>) {
        let data = serde_json::to_vec(&event.event).unwrap();
        let metadata = serde_json::to_vec(&Envelope {
            recorded_at: event.recorded_at,
            schema_version: CURRENT_SCHEMA_VERSION,
            metadata: event.metadata.clone(),
        })
        .unwrap();
        (data, metadata)
    }

    #[test]
    fn an_event_reads_back_as_it_was_appended() {
        let event = sample();
        encode(&event).expect("an event encodes");
        let (data, metadata) = stored_bytes(&event);
        assert_eq!(
            std::str::from_utf8(&data).unwrap(),
            event.event.to_json().unwrap(),
            "the body is the event's JSON, as the other stores keep it"
        );
        let position = Position {
            commit: 90_210,
            prepare: 90_210,
        };
        let read = decode(Stored {
            id: event.event_id,
            stream: "job-1",
            revision: 2,
            position,
            event_type: event.event.event_type(),
            data: &data,
            metadata: &metadata,
        })
        .unwrap();
        let appended = recorded("job-1", event, 2, 90_210);
        assert_eq!(read, appended, "decode and the append's answer agree");
        assert_eq!(read.version, 3);
        assert_eq!(read.global_position, 90_210);
        assert_eq!(read.recorded_at.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(read.event_type(), "CancelRequested");
    }

    #[test]
    fn an_unreadable_event_is_corrupt_at_its_position() {
        let event = sample();
        let (data, metadata) = stored_bytes(&event);
        let position = Position {
            commit: 77,
            prepare: 77,
        };
        let stored = |event_type, data, metadata| Stored {
            id: event.event_id,
            stream: "job-1",
            revision: 0,
            position,
            event_type,
            data,
            metadata,
        };
        for (what, s) in [
            ("metadata", stored("CancelRequested", &data, b"{}")),
            ("body", stored("CancelRequested", b"{\"type\":", &metadata)),
            ("body", stored("CancelRequested", b"\xff\xfe", &metadata)),
        ] {
            match decode(s) {
                Err(StoreError::Corrupt { position, reason }) => {
                    assert_eq!(position, 77);
                    assert!(reason.contains(what), "{reason}");
                    assert!(reason.contains(&event.event_id.to_string()), "{reason}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}
