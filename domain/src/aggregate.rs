//! The one shape of every aggregate: a state folded from its stream (`evolve`), and pure
//! decisions over it (`decide(command) -> events | error`).
//!
//! Jobs, collections, source connections and access (organizations and keys) all take this
//! shape, so that one command path (`syncjobs_actors::command`) loads, decides, appends with
//! the expected version and retries on conflict for every one of them, and one harness
//! (`testkit`) tests their transitions given/when/then.

use crate::events::{Event, RecordedEvent};
use crate::job::JobStatus;

/// State + decide + evolve. `Self` is the state of one stream; [`Aggregate::initial`] is the
/// state of a stream with no events.
pub trait Aggregate: Clone + Send + Sync + 'static {
    /// What a message calls the streams of this aggregate ("API keys").
    const NAME: &'static str;
    /// Its own family of events.
    type Event: Into<Event> + Send;
    type Command: Send + Sync;
    /// Why a command is refused: domain reasons only, in the words the user reads.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The state of a stream with no events.
    fn initial() -> Self;

    /// The stream version this state reflects (0 = empty): what an append expects.
    fn version(&self) -> u64;

    /// Folds one recorded event (its time and version come with it). An event of another
    /// family, or one that does not fit the state, is a [`FoldError`]: the stream is corrupt.
    fn evolve(&mut self, event: &RecordedEvent) -> Result<(), FoldError>;

    /// What `command` means for this state. Never mutates: the caller appends the events at
    /// `self.version()` and folds them back in. No events means "nothing to do".
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds `events` onto this state, in order.
    fn evolve_all<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> Result<(), FoldError> {
        events.into_iter().try_for_each(|e| self.evolve(e))
    }

    /// The state of a whole stream.
    fn fold<'a>(events: impl IntoIterator<Item = &'a RecordedEvent>) -> Result<Self, FoldError> {
        let mut state = Self::initial();
        state.evolve_all(events)?;
        Ok(state)
    }
}

/// A stream that does not fold: a corrupted or hand-edited log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FoldError {
    #[error("the stream does not start with JobCreated (first event: {0})")]
    NotCreated(&'static str),
    #[error("JobCreated appears twice")]
    CreatedTwice,
    #[error("{event} after the job was already {status}")]
    AfterFinal {
        status: JobStatus,
        event: &'static str,
    },
    /// An event of another aggregate's family in this stream.
    #[error("{0} does not belong in this stream")]
    Foreign(&'static str),
    /// An event of the right family that the state before it cannot take.
    #[error("{event} does not fit: {why}")]
    DoesNotFit {
        event: &'static str,
        why: &'static str,
    },
}
