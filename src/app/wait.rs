//! Read-your-writes, bounded. Appends are durable before these waits start, so a wait that
//! times out does not fail the use case: the lag is logged and the answer goes out.

use super::{App, Error};
use syncjobs_actors::JobsError;
use uuid::Uuid;

impl App {
    /// Waits until the read model has folded the event at `position` (0: nothing to wait
    /// for), so that a client told "done" sees it done on its next read.
    pub async fn settle(&self, position: u64) {
        if position == 0 {
            return;
        }
        if let Err(lag) = self
            .projection
            .wait_for(position, self.settings.read_your_writes_timeout)
            .await
        {
            tracing::warn!(%lag, "read model lagging behind a command's append");
        }
    }

    /// The supervisor's refusal, once the read model shows the state it names: like a
    /// success, a refusal that says `completed` (or `already running`) is never followed by
    /// a read that still says otherwise. Bounded as [`App::settle`] is.
    pub(super) async fn refusal(&self, e: JobsError) -> Error {
        match &e {
            JobsError::CannotCancel { position, .. } => self.settle(*position).await,
            JobsError::AlreadyActive {
                position, job_id, ..
            } => {
                if *position > 0 {
                    self.settle(*position).await;
                } else {
                    // Its creation was still being appended: wait for the job itself.
                    let job_id = *job_id;
                    if !self
                        .projection
                        .wait_until(
                            async |m| Ok(m.job(job_id).await?.is_some()),
                            self.settings.read_your_writes_timeout,
                        )
                        .await
                    {
                        tracing::warn!(%job_id, "read model lagging behind an active job");
                    }
                }
            }
            _ => {}
        }
        e.into()
    }

    /// Airweave's barrier before a delete: waits (bounded by the delete wait) until no job
    /// of these source connections is pending, running or cancelling.
    pub(super) async fn wait_for_jobs_to_end(&self, source_connections: &[Uuid]) {
        let ended = self
            .projection
            .wait_until(
                async |m| {
                    for id in source_connections {
                        if !m.active_jobs_of(*id).await?.is_empty() {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                },
                self.settings.delete_wait,
            )
            .await;
        if !ended {
            tracing::warn!(
                source_connections = source_connections.len(),
                wait = ?self.settings.delete_wait,
                "deleting source connections whose syncs have not stopped yet"
            );
        }
    }
}
