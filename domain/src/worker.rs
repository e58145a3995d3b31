//! A worker node's liveness, folded from its stream (`worker-<id>`), and the one decision
//! taken from its heartbeats: it is lost.
//!
//! Heartbeats are rows in the store, not events ([`crate::store::EventStore::heartbeat`]);
//! the decision is an event, appended expecting the version the detector folded, so among
//! all the nodes that see the silence exactly one records it, and a worker that started again
//! meanwhile (a newer WorkerStarted) is not declared lost on stale news.

use crate::events::WorkerEvent;
use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    /// Announced and not stopped or lost since.
    Live,
    /// Stopped gracefully (its jobs handed back).
    Stopped,
    /// Declared lost: every node rescues the jobs it held.
    Lost,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerState {
    pub id: String,
    pub status: WorkerStatus,
    /// When its latest WorkerStarted was recorded: alive then, even before a first beat.
    pub started_at: DateTime<Utc>,
    /// When it was last seen, as its WorkerLost recorded (None unless lost).
    pub last_seen: Option<DateTime<Utc>>,
    /// The stream version this state reflects.
    pub version: u64,
}

impl WorkerState {
    /// Folds one event (recorded at `at`, version `version`) into the state before it. A
    /// stream that does not start with WorkerStarted folds from its first WorkerStarted.
    pub fn evolve(
        state: Option<WorkerState>,
        event: &WorkerEvent,
        at: DateTime<Utc>,
        version: u64,
    ) -> Option<WorkerState> {
        let mut s = match (state, event) {
            (_, WorkerEvent::WorkerStarted { id, .. }) => WorkerState {
                id: id.clone(),
                status: WorkerStatus::Live,
                started_at: at,
                last_seen: None,
                version,
            },
            (None, _) => return None,
            (Some(s), _) => s,
        };
        match event {
            WorkerEvent::WorkerStarted { .. } => {}
            WorkerEvent::WorkerStopped { .. } => s.status = WorkerStatus::Stopped,
            WorkerEvent::WorkerLost { last_seen, .. } => {
                s.status = WorkerStatus::Lost;
                s.last_seen = Some(*last_seen);
            }
        }
        s.version = version;
        Some(s)
    }

    /// When it was last known alive: its latest heartbeat, or its start if later (a beat
    /// from before a restart says nothing of the new process).
    pub fn seen_at(&self, last_beat: Option<DateTime<Utc>>) -> DateTime<Utc> {
        last_beat.map_or(self.started_at, |b| b.max(self.started_at))
    }

    /// WorkerLost when a live worker has been silent for `timeout` or more at `now`.
    pub fn decide_lost(
        &self,
        last_beat: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        timeout: std::time::Duration,
        detected_by: &str,
    ) -> Option<WorkerEvent> {
        if self.status != WorkerStatus::Live {
            return None;
        }
        let seen = self.seen_at(last_beat);
        let timeout_d = Duration::from_std(timeout).unwrap_or(Duration::MAX);
        if now.signed_duration_since(seen) < timeout_d {
            return None;
        }
        Some(WorkerEvent::WorkerLost {
            id: self.id.clone(),
            last_seen: seen,
            timeout_seconds: timeout.as_secs(),
            detected_by: detected_by.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::at as t;

    fn started() -> WorkerEvent {
        WorkerEvent::WorkerStarted {
            id: "w1".into(),
            host: "h".into(),
            pid: 1,
            capacity: Some(2),
        }
    }

    fn live() -> WorkerState {
        WorkerState::evolve(None, &started(), t(0), 1).unwrap()
    }

    #[test]
    fn a_silent_worker_is_lost_from_its_timeout_on_never_before() {
        let w = live();
        let timeout = std::time::Duration::from_secs(30);
        // Beat at 10 s: alive until 40 s.
        assert_eq!(w.decide_lost(Some(t(10)), t(39), timeout, "n"), None);
        let Some(WorkerEvent::WorkerLost {
            id,
            last_seen,
            timeout_seconds,
            detected_by,
        }) = w.decide_lost(Some(t(10)), t(40), timeout, "n")
        else {
            panic!("not lost at its timeout");
        };
        assert_eq!(
            (
                id.as_str(),
                last_seen,
                timeout_seconds,
                detected_by.as_str()
            ),
            ("w1", t(10), 30, "n")
        );
        // Never beat: silent since it started.
        assert!(w.decide_lost(None, t(30), timeout, "n").is_some());
        assert!(w.decide_lost(None, t(29), timeout, "n").is_none());
    }

    #[test]
    fn a_stopped_or_lost_worker_is_not_lost_again_and_a_restart_makes_it_live() {
        let timeout = std::time::Duration::from_secs(30);
        let stopped = WorkerState::evolve(
            Some(live()),
            &WorkerEvent::WorkerStopped {
                id: "w1".into(),
                handed_back: 0,
            },
            t(5),
            2,
        )
        .unwrap();
        assert_eq!(stopped.status, WorkerStatus::Stopped);
        assert_eq!(stopped.decide_lost(None, t(1000), timeout, "n"), None);
        let lost = live()
            .decide_lost(Some(t(3)), t(100), timeout, "n")
            .unwrap();
        let lost = WorkerState::evolve(Some(live()), &lost, t(100), 2).unwrap();
        assert_eq!(
            (lost.status, lost.last_seen),
            (WorkerStatus::Lost, Some(t(3)))
        );
        assert_eq!(lost.decide_lost(None, t(1000), timeout, "n"), None);
        // Started again under the same id: live, seen from its new start, whatever old
        // beat the store still holds.
        let again = WorkerState::evolve(Some(lost), &started(), t(200), 3).unwrap();
        assert_eq!((again.status, again.version), (WorkerStatus::Live, 3));
        assert_eq!(again.seen_at(Some(t(3))), t(200));
        assert!(again
            .decide_lost(Some(t(3)), t(229), timeout, "n")
            .is_none());
    }
}
