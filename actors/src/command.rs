//! decide -> append (expected version) -> apply, with reload-and-retry on conflict.
//!
//! Every write to a job stream goes through [`execute`], whether it comes from the job's
//! actor, the supervisor's watchdog or recovery. Optimistic concurrency makes this safe
//! across threads and processes: a conflict means someone else appended first, so we reload
//! and decide again against what they wrote, never overwrite it.

use syncjobs_domain::events::stream;
use syncjobs_domain::{
    Clock, EventStore, ExpectedVersion, JobCommand, JobError, JobState, Metadata, NewEvent,
    RecordedEvent, StoreError,
};
use uuid::Uuid;

/// How many conflicts in a row one command tolerates before giving up. Each retry means
/// another writer made progress, so hitting this needs a pathological storm of writers.
const MAX_CONFLICT_RETRIES: usize = 64;

/// Why a command did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] JobError),
    #[error("job {job_id} stream does not fold: {reason}")]
    Corrupt { job_id: Uuid, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A command's effect: the state after it, and the events it appended (possibly none).
#[derive(Debug, Clone)]
pub struct Executed {
    pub state: JobState,
    pub events: Vec<RecordedEvent>,
}

impl Executed {
    /// Global position of the last appended event (0 if nothing was appended).
    pub fn position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.global_position)
    }
}

/// Loads a job's state by folding its stream.
pub async fn load(store: &dyn EventStore, job_id: Uuid) -> Result<Option<JobState>, CommandError> {
    let events = store.read_stream(&stream::job(job_id), 0).await?;
    fold_recorded(job_id, None, &events)
}

/// [`load`], with the global position of the stream's last event (what a reader must have
/// folded to show this state).
pub async fn load_with_position(
    store: &dyn EventStore,
    job_id: Uuid,
) -> Result<Option<(JobState, u64)>, CommandError> {
    let events = store.read_stream(&stream::job(job_id), 0).await?;
    let position = events.last().map_or(0, |e| e.global_position);
    Ok(fold_recorded(job_id, None, &events)?.map(|state| (state, position)))
}

fn fold_recorded(
    job_id: Uuid,
    mut state: Option<JobState>,
    events: &[RecordedEvent],
) -> Result<Option<JobState>, CommandError> {
    for e in events {
        let Some(job_event) = e.job_event() else {
            return Err(CommandError::Corrupt {
                job_id,
                reason: format!("{} in a job stream", e.event_type()),
            });
        };
        state = Some(
            JobState::evolve(state, job_event, e.recorded_at).map_err(|err| {
                CommandError::Corrupt {
                    job_id,
                    reason: err.to_string(),
                }
            })?,
        );
    }
    Ok(state)
}

/// Runs `command` against the job, starting from `known` (a possibly stale state; None to
/// load it). Returns the new state and what was appended.
pub async fn execute(
    store: &dyn EventStore,
    clock: &dyn Clock,
    job_id: Uuid,
    known: Option<JobState>,
    command: &JobCommand,
    metadata: &Metadata,
) -> Result<Executed, CommandError> {
    let stream_id = stream::job(job_id);
    let mut state = match known {
        Some(s) => Some(s),
        None => load(store, job_id).await?,
    };
    for _ in 0..MAX_CONFLICT_RETRIES {
        let decided = command.decide_on(state.as_ref())?;
        if decided.is_empty() {
            let state = state.ok_or(JobError::NotFound)?;
            return Ok(Executed {
                state,
                events: vec![],
            });
        }
        let expected = ExpectedVersion::Exact(state.as_ref().map_or(0, |s| s.version));
        let now = clock.now();
        let new_events = decided
            .into_iter()
            .map(|e| NewEvent::new(e, now, metadata.clone()))
            .collect();
        match store.append(&stream_id, expected, new_events).await {
            Ok(recorded) => {
                let state = fold_recorded(job_id, state, &recorded)?.ok_or(JobError::NotFound)?;
                return Ok(Executed {
                    state,
                    events: recorded,
                });
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(%job_id, command = command.name(), "version conflict, reloading");
                // Fold only what we have not seen yet.
                let after = state.as_ref().map_or(0, |s| s.version);
                let newer = store.read_stream(&stream_id, after).await?;
                state = fold_recorded(job_id, state, &newer)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Backend(format!(
        "job {job_id}: gave up after {MAX_CONFLICT_RETRIES} version conflicts in a row"
    ))
    .into())
}
