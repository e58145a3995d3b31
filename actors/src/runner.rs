//! The seam between a job actor and the work it drives: a [`SyncRunner`] runs one sync
//! (the pipeline issue supplies the real one), stops when its token is cancelled, and
//! reports cumulative counts through a [`ProgressSink`].

use async_trait::async_trait;
use syncjobs_domain::EntityCounts;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a run needs to know, taken from the job's JobCreated event.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub job_id: Uuid,
    pub source_connection_id: Uuid,
    pub organization_id: Uuid,
    pub short_name: String,
    pub config: serde_json::Value,
}

/// How a run ended. Every variant carries the counts of what was really written.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Completed(EntityCounts),
    /// The run stopped because its token was cancelled; writes in flight were finished.
    Cancelled(EntityCounts),
    Failed {
        error: String,
        counts: EntityCounts,
    },
}

impl RunOutcome {
    pub fn counts(&self) -> EntityCounts {
        match self {
            RunOutcome::Completed(c) | RunOutcome::Cancelled(c) => *c,
            RunOutcome::Failed { counts, .. } => *counts,
        }
    }
}

/// Where a run reports its cumulative counts. Cheap: the latest value wins, and the job
/// actor decides when a change is worth a ProgressRecorded event.
#[derive(Debug, Clone)]
pub struct ProgressSink(watch::Sender<EntityCounts>);

impl ProgressSink {
    pub fn new() -> (ProgressSink, watch::Receiver<EntityCounts>) {
        let (tx, rx) = watch::channel(EntityCounts::default());
        (ProgressSink(tx), rx)
    }

    pub fn report(&self, counts: EntityCounts) {
        self.0.send_replace(counts);
    }
}

#[async_trait]
pub trait SyncRunner: Send + Sync + 'static {
    /// Runs one sync to its end. Must return promptly (within one entity's processing time)
    /// once `cancel` fires, with `RunOutcome::Cancelled` and the counts written so far.
    async fn run(
        &self,
        spec: RunSpec,
        cancel: CancellationToken,
        progress: ProgressSink,
    ) -> RunOutcome;

    /// What the job's runs durably wrote, as the destination counts it, for a final event
    /// recorded without the run's own report (recovery after a crash, the watchdog). None:
    /// this runner keeps no such record, or it cannot be read now; the last progress report's
    /// counts are used instead.
    async fn durable_counts(&self, _job_id: Uuid) -> Option<EntityCounts> {
        None
    }
}
