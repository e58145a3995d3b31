//! The one command path: load (fold) -> decide -> append (expected version) -> evolve, with
//! reload-and-decide-again on conflict.
//!
//! Every write to any aggregate's stream goes through [`execute`]: a job's, from its actor,
//! the supervisor's watchdog or recovery; a collection's or source connection's, from the
//! API; the access stream's, from the API, the `keys` CLI and the start-up bootstrap key.
//! Optimistic concurrency makes this safe across threads and processes: a conflict means
//! someone else appended first, so we read what they wrote and decide again against it,
//! never overwrite it.

use syncjobs_domain::{
    Aggregate, Clock, EventStore, ExpectedVersion, FoldError, Metadata, NewEvent, RecordedEvent,
    StoreError,
};

/// How many conflicts in a row one command tolerates before giving up, whatever the
/// aggregate. Each retry means another writer made progress, so hitting this needs a
/// pathological storm of writers on one stream.
pub const MAX_CONFLICT_RETRIES: usize = 64;

/// Why a command did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The aggregate refused the command (its own words).
    #[error(transparent)]
    Rejected(E),
    /// The stream does not fold: a corrupted or hand-edited log.
    #[error("stream {stream} does not fold: {reason}")]
    Corrupt { stream: String, reason: FoldError },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// [`MAX_CONFLICT_RETRIES`] conflicts in a row. `aggregate` is [`Aggregate::NAME`].
    #[error("too many concurrent changes to {aggregate}; try again")]
    Contention {
        stream: String,
        aggregate: &'static str,
    },
}

/// A command's effect: the state after it, and the events it appended (possibly none).
#[derive(Debug, Clone)]
pub struct Executed<A> {
    pub state: A,
    pub events: Vec<RecordedEvent>,
}

impl<A> Executed<A> {
    /// Global position of the last appended event (0 if nothing was appended).
    pub fn position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.global_position)
    }
}

/// The state of `stream`, folded from its first event.
pub async fn load<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
) -> Result<A, CommandError<A::Error>> {
    Ok(load_with_position(store, stream).await?.0)
}

/// [`load`], with the global position of the stream's last event (what a reader must have
/// folded to show this state; 0 for an empty stream).
pub async fn load_with_position<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
) -> Result<(A, u64), CommandError<A::Error>> {
    let events = store.read_stream(stream, 0).await?;
    let position = events.last().map_or(0, |e| e.global_position);
    let mut state = A::initial();
    evolve(stream, &mut state, &events)?;
    Ok((state, position))
}

fn evolve<A: Aggregate>(
    stream: &str,
    state: &mut A,
    events: &[RecordedEvent],
) -> Result<(), CommandError<A::Error>> {
    state
        .evolve_all(events)
        .map_err(|reason| CommandError::Corrupt {
            stream: stream.to_owned(),
            reason,
        })
}

/// Runs `command` against the aggregate of `stream`, starting from `known` (a possibly
/// stale state; None to load it). Returns the state after it and what was appended: an
/// empty decision appends nothing.
pub async fn execute<A: Aggregate>(
    store: &dyn EventStore,
    clock: &dyn Clock,
    stream: &str,
    known: Option<A>,
    command: &A::Command,
    metadata: &Metadata,
) -> Result<Executed<A>, CommandError<A::Error>> {
    let mut state = match known {
        Some(state) => state,
        None => load(store, stream).await?,
    };
    for _ in 0..MAX_CONFLICT_RETRIES {
        let decided = state.decide(command).map_err(CommandError::Rejected)?;
        if decided.is_empty() {
            return Ok(Executed {
                state,
                events: vec![],
            });
        }
        let expected = ExpectedVersion::Exact(state.version());
        let now = clock.now();
        let new_events = decided
            .into_iter()
            .map(|e| NewEvent::new(e, now, metadata.clone()))
            .collect();
        match store.append(stream, expected, new_events).await {
            Ok(recorded) => {
                evolve(stream, &mut state, &recorded)?;
                return Ok(Executed {
                    state,
                    events: recorded,
                });
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(stream, aggregate = A::NAME, "version conflict, reloading");
                // Fold only what we have not seen yet.
                let newer = store.read_stream(stream, state.version()).await?;
                evolve(stream, &mut state, &newer)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Contention {
        stream: stream.to_owned(),
        aggregate: A::NAME,
    })
}
