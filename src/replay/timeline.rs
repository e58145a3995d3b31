//! The state of a job after each of its events, computed by the service's own fold
//! ([`JobState::evolve`]): what `replay` prints and what time travel (`state_at`) answers.

use super::ReplayError;
use syncjobs_domain::{FoldError, JobState, RecordedEvent};

/// Why one event could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Fold(#[from] FoldError),
    #[error("{0} is not a job event")]
    NotAJobEvent(&'static str),
}

/// One event and the state it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub event: RecordedEvent,
    pub state: JobState,
}

/// The event the fold refused, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    pub event: RecordedEvent,
    pub error: StepError,
}

/// A replayed history: every step that folded, then the failure that stopped it, if any.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Replay {
    pub steps: Vec<Step>,
    pub failure: Option<StepFailure>,
}

impl Replay {
    /// The state after the last event that folded.
    pub fn last_state(&self) -> Option<&JobState> {
        self.steps.last().map(|s| &s.state)
    }
}

/// Folds `events` (one job stream, in order) step by step, stopping after version
/// `to_version` if given, or at the first event the fold refuses.
pub fn replay(events: &[RecordedEvent], to_version: Option<u64>) -> Replay {
    let mut out = Replay::default();
    let mut state: Option<JobState> = None;
    for e in events {
        if to_version.is_some_and(|n| e.version > n) {
            break;
        }
        let next = match e.job_event() {
            Some(event) => {
                JobState::evolve(state.take(), event, e.recorded_at).map_err(StepError::from)
            }
            None => Err(StepError::NotAJobEvent(e.event_type())),
        };
        match next {
            Ok(s) => {
                state = Some(s.clone());
                out.steps.push(Step {
                    event: e.clone(),
                    state: s,
                });
            }
            Err(error) => {
                out.failure = Some(StepFailure {
                    event: e.clone(),
                    error,
                });
                break;
            }
        }
    }
    out
}

/// The job as it was right after stream version `version` (time travel, for
/// `GET .../jobs/{job_id}/state?version=N`).
///
/// `events` is one job stream in order (as `read_stream` returns it). `Ok(None)` when that
/// version does not exist (0, or beyond the end of the stream), so the API can answer 404.
/// An error means the stored history itself is broken: a version gap (the returned state
/// would not be "after version N") or an event the fold refuses.
pub fn state_at(events: &[RecordedEvent], version: u64) -> Result<Option<JobState>, ReplayError> {
    let mut state: Option<JobState> = None;
    let mut expected = 1;
    for e in events.iter().take_while(|e| e.version <= version) {
        if e.version != expected {
            return Err(ReplayError::VersionGap {
                stream: e.stream_id.clone(),
                expected,
                found: e.version,
            });
        }
        let step = |source| ReplayError::Step {
            stream: e.stream_id.clone(),
            version: e.version,
            source,
        };
        let event = e
            .job_event()
            .ok_or_else(|| step(StepError::NotAJobEvent(e.event_type())))?;
        state = Some(JobState::evolve(state, event, e.recorded_at).map_err(|f| step(f.into()))?);
        expected += 1;
    }
    if expected <= version {
        return Ok(None);
    }
    Ok(state)
}
