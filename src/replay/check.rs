//! Invariants of the log that the fold cannot see, checked per stream, and `verify`: every
//! stream of a store replayed through the current code.
//!
//! The fold trusts what was recorded (it must, to read history written by older code), so
//! a checker beside it looks for what should never have been recorded: version gaps,
//! global positions that do not increase, a ForceCancelled before its watchdog deadline,
//! cumulative counts going down, events in the wrong kind of stream. Events after a final
//! state and other lifecycle breaks are reported by the fold itself.

use super::render::{absolute, counts_text};
use super::ReplayError;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    EntityCounts, EventStore, FoldError, JobState, RecordedEvent, StoreError, SyncJobEvent,
};
use uuid::Uuid;

/// What is wrong with one event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("does not fold: {0}")]
    DoesNotFold(FoldError),
    #[error("{0} is not a job event, in a job stream")]
    NotAJobEvent(&'static str),
    #[error("job event {0} in a stream that is not a job stream")]
    JobEventOutsideJobStream(&'static str),
    #[error("JobCreated names job {created_for}, not this stream's job")]
    WrongJob { created_for: Uuid },
    #[error("belongs to stream {found}, not to this one")]
    WrongStream { found: String },
    #[error("version gap: expected v{expected}, found v{found}")]
    VersionGap { expected: u64, found: u64 },
    #[error("global position {found} does not come after {previous}")]
    PositionNotIncreasing { previous: u64, found: u64 },
    #[error(
        "ForceCancelled recorded at {}, before its watchdog deadline {}",
        absolute(*.at),
        absolute(*.deadline)
    )]
    ForcedBeforeDeadline {
        at: DateTime<Utc>,
        deadline: DateTime<Utc>,
    },
    #[error("ForceCancelled without a pending CancelRequested")]
    ForcedWithoutRequest,
    #[error("counts went down: {} -> {}", counts_text(.before), counts_text(.after))]
    CountsWentDown {
        before: EntityCounts,
        after: EntityCounts,
    },
    #[error("unreadable event: {0}")]
    Unreadable(String),
}

/// A problem and where it is. `stream` is None only for an event too broken to say.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub stream: Option<String>,
    pub version: Option<u64>,
    pub global_position: Option<u64>,
    pub problem: Problem,
}

impl Issue {
    fn at(e: &RecordedEvent, stream: &str, problem: Problem) -> Issue {
        Issue {
            stream: Some(stream.to_owned()),
            version: Some(e.version),
            global_position: Some(e.global_position),
            problem,
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stream {
            Some(s) => f.write_str(s)?,
            None => f.write_str("(unknown stream)")?,
        }
        if let Some(v) = self.version {
            write!(f, " v{v}")?;
        }
        if let Some(p) = self.global_position {
            write!(f, " (position {p})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Checks one stream event by event, so that `verify` keeps one small state per stream
/// instead of the whole log.
#[derive(Debug, Clone)]
pub struct StreamChecker {
    stream: String,
    is_job: bool,
    last_version: u64,
    last_position: u64,
    events: u64,
    state: Option<JobState>,
    /// Set once the fold refused an event: later states would be guesses.
    broken: bool,
    last_counts: Option<EntityCounts>,
    issues: Vec<Issue>,
}

impl StreamChecker {
    pub fn new(stream: &str) -> Self {
        StreamChecker {
            stream: stream.to_owned(),
            is_job: stream.starts_with(stream::JOB_PREFIX),
            last_version: 0,
            last_position: 0,
            events: 0,
            state: None,
            broken: false,
            last_counts: None,
            issues: Vec::new(),
        }
    }

    /// Checks the stream's next event.
    pub fn feed(&mut self, e: &RecordedEvent) {
        if e.stream_id != self.stream {
            let problem = Problem::WrongStream {
                found: e.stream_id.clone(),
            };
            self.issues.push(Issue::at(e, &self.stream, problem));
            return;
        }
        self.events += 1;
        let expected = self.last_version + 1;
        if e.version != expected {
            self.push(
                e,
                Problem::VersionGap {
                    expected,
                    found: e.version,
                },
            );
        }
        self.last_version = self.last_version.max(e.version);
        if e.global_position <= self.last_position {
            self.push(
                e,
                Problem::PositionNotIncreasing {
                    previous: self.last_position,
                    found: e.global_position,
                },
            );
        }
        self.last_position = self.last_position.max(e.global_position);

        match (self.is_job, e.job_event()) {
            (true, Some(event)) => self.feed_job(e, event),
            (true, None) => self.push(e, Problem::NotAJobEvent(e.event_type())),
            (false, Some(_)) => self.push(e, Problem::JobEventOutsideJobStream(e.event_type())),
            (false, None) => {}
        }
    }

    fn feed_job(&mut self, e: &RecordedEvent, event: &SyncJobEvent) {
        if let SyncJobEvent::JobCreated { job_id, .. } = event {
            if stream::job_id(&self.stream) != Some(*job_id) {
                self.push(
                    e,
                    Problem::WrongJob {
                        created_for: *job_id,
                    },
                );
            }
        }
        if let Some(after) = counts_of(event) {
            if let Some(before) = self.last_counts {
                if !after.dominates(&before) {
                    self.push(e, Problem::CountsWentDown { before, after });
                }
            }
            self.last_counts = Some(after);
        }
        // A resumed job's next run counts from nothing: the check starts again after it.
        if let SyncJobEvent::JobResumed { .. } = event {
            self.last_counts = None;
        }
        if self.broken {
            return;
        }
        if matches!(event, SyncJobEvent::ForceCancelled { .. }) {
            // The deadline is the one the state before this event was waiting for:
            // recorded time of CancelRequested + the timeout recorded with it.
            match &self.state {
                Some(s) if s.status.is_final() => {} // the fold reports the event after final
                Some(s) => match s.watchdog_deadline() {
                    Some(deadline) if e.recorded_at < deadline => {
                        self.push(
                            e,
                            Problem::ForcedBeforeDeadline {
                                at: e.recorded_at,
                                deadline,
                            },
                        );
                    }
                    Some(_) => {}
                    None => self.push(e, Problem::ForcedWithoutRequest),
                },
                None => {} // the fold reports a stream that does not start with JobCreated
            }
        }
        match JobState::evolve(self.state.take(), event, e.recorded_at) {
            Ok(mut s) => {
                if s.status.is_final() {
                    // The fold never reads a final job's config again; a store of a million
                    // jobs should not keep a million configs in memory to check them.
                    s.config = serde_json::Value::Null;
                }
                self.state = Some(s);
            }
            Err(err) => {
                self.push(e, Problem::DoesNotFold(err));
                self.broken = true;
            }
        }
    }

    fn push(&mut self, e: &RecordedEvent, problem: Problem) {
        self.issues.push(Issue::at(e, &self.stream, problem));
    }

    /// How many events of this stream were checked.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Everything found, in the order of the events.
    pub fn finish(self) -> Vec<Issue> {
        self.issues
    }
}

/// The counts an event carries, for the "counts never go down" check.
fn counts_of(event: &SyncJobEvent) -> Option<EntityCounts> {
    match event {
        SyncJobEvent::ProgressRecorded { counts }
        | SyncJobEvent::JobCompleted { counts }
        | SyncJobEvent::JobFailed { counts, .. }
        | SyncJobEvent::Cancelled { counts, .. }
        | SyncJobEvent::ForceCancelled { counts, .. } => Some(*counts),
        // The lost run's counts: not below the ones before it (checked as it is fed), and
        // the next run's start from nothing (the feed forgets them after it).
        SyncJobEvent::JobResumed { counts, .. } => Some(*counts),
        SyncJobEvent::JobCreated { .. }
        | SyncJobEvent::JobStarted { .. }
        | SyncJobEvent::CancelRequested { .. } => None,
    }
}

/// Checks one stream's events (in stream order). The stream is that of the first event.
pub fn check_stream(events: &[RecordedEvent]) -> Vec<Issue> {
    let Some(first) = events.first() else {
        return Vec::new();
    };
    let mut checker = StreamChecker::new(&first.stream_id);
    for e in events {
        checker.feed(e);
    }
    checker.finish()
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VerifyReport {
    /// Events read (unreadable ones not included).
    pub events: u64,
    pub streams: usize,
    /// The last global position read.
    pub head: u64,
    /// Unreadable events first (by position), then each stream's issues, streams by name.
    pub issues: Vec<Issue>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }

    /// The streams with at least one issue, each once, in report order.
    pub fn bad_streams(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in self.issues.iter().filter_map(|i| i.stream.as_deref()) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

/// How many events `verify` reads at a time.
const VERIFY_BATCH: usize = 1024;

/// Replays every stream of the store through the current code and reports every problem.
///
/// An event the store cannot read ([`StoreError::Corrupt`]) is reported by position and
/// skipped; every other event is still checked. Other store errors abort: a verify that
/// silently skipped part of the log would report a clean store it never saw.
pub async fn verify(store: &dyn EventStore) -> Result<VerifyReport, ReplayError> {
    let mut report = VerifyReport::default();
    let mut checkers: BTreeMap<String, StreamChecker> = BTreeMap::new();
    let mut after = 0u64;
    // A corrupt position reported by the store: read the good events before it, then skip it.
    let mut corrupt: Option<(u64, String)> = None;
    loop {
        if let Some((position, reason)) = &corrupt {
            if *position <= after + 1 {
                report.issues.push(Issue {
                    stream: None,
                    version: None,
                    global_position: Some(*position),
                    problem: Problem::Unreadable(reason.clone()),
                });
                after = after.max(*position);
                corrupt = None;
                continue;
            }
        }
        let limit = match &corrupt {
            Some((position, _)) => usize::try_from(position - after - 1).unwrap_or(VERIFY_BATCH),
            None => VERIFY_BATCH,
        }
        .min(VERIFY_BATCH);
        match store.read_all(after, limit).await {
            Ok(batch) => {
                let Some(last) = batch.last().map(|e| e.global_position) else {
                    match &corrupt {
                        // Nothing readable before the corrupt event: skip straight to it.
                        Some((position, _)) => {
                            after = *position - 1;
                            continue;
                        }
                        None => break,
                    }
                };
                if last <= after {
                    // read_all went backwards: reading on could loop forever.
                    return Err(ReplayError::Store(StoreError::Backend(format!(
                        "read_all after {after} returned position {last}"
                    ))));
                }
                for e in &batch {
                    checkers
                        .entry(e.stream_id.clone())
                        .or_insert_with(|| StreamChecker::new(&e.stream_id))
                        .feed(e);
                    report.events += 1;
                }
                after = last;
            }
            Err(StoreError::Corrupt { position, reason }) => {
                if position <= after || corrupt.as_ref().is_some_and(|(p, _)| *p == position) {
                    // The store blames a position we already passed, or the same one twice:
                    // record it and move past it rather than ask again forever.
                    report.issues.push(Issue {
                        stream: None,
                        version: None,
                        global_position: Some(position),
                        problem: Problem::Unreadable(reason),
                    });
                    after = after.max(position);
                    corrupt = None;
                } else {
                    corrupt = Some((position, reason));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    report.head = after;
    report.streams = checkers.len();
    for (_, checker) in checkers {
        report.issues.extend(checker.finish());
    }
    Ok(report)
}
