//! A job's own history, read from its stream in the log rather than the read model: its
//! events, and its state right after any version (folded by the service's own fold, so that
//! what it shows is what the service decided on).

use super::{lookup, App, Caller, Error};
use crate::replay::{state_at, ReplayError};
use syncjobs_domain::events::stream;
use syncjobs_domain::{JobState, RecordedEvent};
use uuid::Uuid;

/// A history that does not fold or export: logged here, with the job, as it is found.
pub fn unreadable(job_id: Uuid) -> impl Fn(ReplayError) -> Error {
    move |e| {
        tracing::error!(%job_id, %e, "a job's history cannot be read");
        e.into()
    }
}

impl App {
    /// Every event of job `job_id` of the caller's source connection `sc`, oldest first
    /// (never empty).
    pub async fn job_events(
        &self,
        caller: &Caller,
        sc: Uuid,
        job_id: Uuid,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let events = self.own_job_stream(caller, sc, job_id).await?;
        if events.is_empty() {
            return Err(Error::JobNotFound);
        }
        Ok(events)
    }

    /// Job `job_id` of the caller's source connection `sc` as it was right after `version`
    /// of its stream.
    pub async fn job_state_at(
        &self,
        caller: &Caller,
        sc: Uuid,
        job_id: Uuid,
        version: u64,
    ) -> Result<JobState, Error> {
        let events = self.own_job_stream(caller, sc, job_id).await?;
        let last = events.last().map_or(0, |e| e.version);
        state_at(&events, version)
            .map_err(unreadable(job_id))?
            .ok_or(Error::JobVersionNotFound { version, last })
    }

    /// The stream of the job, once the read model says it is the caller's connection's.
    async fn own_job_stream(
        &self,
        caller: &Caller,
        sc: Uuid,
        job_id: Uuid,
    ) -> Result<Vec<RecordedEvent>, Error> {
        self.projection
            .read(async |m| {
                lookup::connection_job(m, caller, sc, job_id)
                    .await
                    .map(|_| ())
            })
            .await?;
        Ok(self.store.read_stream(&stream::job(job_id), 0).await?)
    }
}
