//! Given/when/then for every [`Aggregate`] (feature `testkit`): past events, one command,
//! and the events it decides (or the error it is refused with).
//!
//! ```ignore
//! AggregateTest::<Job>::given([created(), started()])
//!     .when(JobCommand::Complete { counts })
//!     .then([SyncJobEvent::JobCompleted { counts }]);
//! ```
//!
//! The given events are recorded one second apart from [`at`]`(0)`, with versions 1, 2, ...,
//! and folded through [`Aggregate::evolve`] exactly as a stream read from a store is; the
//! events a command decides are recorded after them the same way.

use crate::aggregate::{Aggregate, FoldError};
use crate::events::{Event, Metadata, RecordedEvent, CURRENT_SCHEMA_VERSION};
use chrono::{DateTime, TimeZone, Utc};
use std::fmt::Debug;
use uuid::Uuid;

/// The time the `i`-th given event is recorded at (a fixed, whole-second instant + i s).
pub fn at(i: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + i, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `event` as a store would hand it back: version `version`, recorded at `at(version - 1)`.
pub fn recorded(version: u64, event: impl Into<Event>) -> RecordedEvent {
    RecordedEvent {
        event_id: Uuid::now_v7(),
        stream_id: "test".into(),
        version,
        global_position: version,
        recorded_at: at(version as i64 - 1),
        schema_version: CURRENT_SCHEMA_VERSION,
        metadata: Metadata::default(),
        event: event.into(),
    }
}

/// A history folded into its aggregate, ready for commands.
#[derive(Debug, Clone)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
    history: Vec<RecordedEvent>,
}

impl<A: Aggregate + Debug> AggregateTest<A>
where
    A::Command: Debug,
    A::Event: Debug + PartialEq + Clone,
    A::Error: PartialEq,
{
    /// Records `events` and folds them; panics if they do not fold (use [`Self::fold_error`]).
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let history: Vec<RecordedEvent> = events
            .into_iter()
            .zip(1..)
            .map(|(e, v)| recorded(v, e))
            .collect();
        let state = A::fold(&history).unwrap_or_else(|e| panic!("the given events fold: {e}"));
        AggregateTest { state, history }
    }

    /// Why `events` do not fold; panics if they do.
    pub fn fold_error(events: impl IntoIterator<Item = impl Into<Event>>) -> FoldError {
        let history: Vec<RecordedEvent> = events
            .into_iter()
            .zip(1..)
            .map(|(e, v)| recorded(v, e))
            .collect();
        match A::fold(&history) {
            Ok(state) => panic!("expected a fold error, folded into {state:?}"),
            Err(e) => e,
        }
    }

    /// The state the given events fold into.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Decides `command` against the given state.
    pub fn when(&self, command: A::Command) -> Decision<'_, A> {
        let result = self.state.decide(&command);
        Decision {
            given: self,
            command: format!("{command:?}"),
            result,
        }
    }
}

/// What a command decided, to be checked.
pub struct Decision<'a, A: Aggregate> {
    given: &'a AggregateTest<A>,
    command: String,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate + Debug> Decision<'_, A>
where
    A::Command: Debug,
    A::Event: Debug + PartialEq + Clone,
    A::Error: PartialEq,
{
    /// Asserts the command decided exactly `expected`; returns the state after them.
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let (events, after) = self.accepted();
        assert_eq!(events, expected, "the events decided");
        after
    }

    /// Asserts the command was refused with `expected`.
    pub fn then_err(self, expected: A::Error) {
        assert_eq!(self.rejected(), expected, "the refusal");
    }

    /// Asserts the command was accepted; its events, and the state after them.
    pub fn accepted(self) -> (Vec<A::Event>, A) {
        let events = match self.result {
            Ok(events) => events,
            Err(e) => panic!("{} refused on {:?}: {e:?}", self.command, self.given.state),
        };
        let mut after = self.given.state.clone();
        let first = self.given.history.len() as u64 + 1;
        for (e, v) in events.iter().cloned().zip(first..) {
            after
                .evolve(&recorded(v, e))
                .unwrap_or_else(|err| panic!("the decided events fold: {err}"));
        }
        (events, after)
    }

    /// Asserts the command was refused; the error.
    pub fn rejected(self) -> A::Error {
        match self.result {
            Ok(events) => panic!(
                "{} accepted on {:?}: {events:?}",
                self.command, self.given.state
            ),
            Err(e) => e,
        }
    }

    /// The decision as it is, for checks that need a pattern.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}
