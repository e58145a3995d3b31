//! Running a sync and cancelling a job. Ownership (organization, source connection, job of
//! that connection) is checked on the read model before the supervisor is asked anything;
//! the job's actor then decides against the job's own stream, which is what makes racing
//! cancels record exactly one request.

use super::{lookup, App, Caller, Error};
use syncjobs_actors::{CommandOutcome, JobsError, NewJob};
use syncjobs_domain::{JobError, JobState};
use uuid::Uuid;

impl App {
    /// Starts a sync of the caller's source connection: the new job, `pending`, once the
    /// read model shows it. A delete of the connection that raced the start wins: the job
    /// is cancelled again and the connection is not found.
    pub async fn run_sync(
        &self,
        caller: &Caller,
        source_connection_id: Uuid,
    ) -> Result<JobState, Error> {
        let outcome = self.start_job(caller, source_connection_id).await?;
        self.settle(outcome.position).await;
        // A delete that raced this run has already swept the connection's jobs, or will not
        // see this one: then stop it here rather than let it sync for a deleted connection.
        let deleted = self
            .projection
            .read(async |m| {
                Ok::<_, Error>(
                    m.source_connection(caller.organization_id, source_connection_id)
                        .await?
                        .is_none(),
                )
            })
            .await?;
        if deleted {
            let _ = self
                .jobs
                .cancel(outcome.state.job_id, caller.principal())
                .await;
            return Err(Error::SourceConnectionNotFound);
        }
        Ok(outcome.state)
    }

    /// Asks job `job_id` of the caller's source connection `sc` to stop: the job as the
    /// request left it (`cancelling`, or `cancelled` if it had not started), once the read
    /// model shows at least that much.
    pub async fn cancel_job(
        &self,
        caller: &Caller,
        sc: Uuid,
        job_id: Uuid,
    ) -> Result<JobState, Error> {
        self.projection
            .read(async |m| {
                lookup::connection_job(m, caller, sc, job_id)
                    .await
                    .map(|_| ())
            })
            .await?;
        let outcome = match self.jobs.cancel(job_id, caller.principal()).await {
            Ok(outcome) => outcome,
            Err(e) => return Err(self.refusal(e).await),
        };
        tracing::info!(%job_id, source_connection_id = %sc, status = %outcome.state.status, "sync job cancel requested");
        self.settle(outcome.position).await;
        Ok(outcome.state)
    }

    /// Asks the supervisor for a pending job of the connection. Not settled: the caller
    /// waits for the position it answers with.
    pub(super) async fn start_job(
        &self,
        caller: &Caller,
        source_connection_id: Uuid,
    ) -> Result<CommandOutcome, Error> {
        let (sc, latest) = self
            .projection
            .read(async |m| {
                let sc = lookup::source_connection(m, caller, source_connection_id).await?;
                let latest = m.last_job(source_connection_id).await?.map(|j| j.job_id);
                Ok::<_, Error>((sc, latest))
            })
            .await?;
        self.create_job(
            caller,
            source_connection_id,
            sc.short_name,
            sc.config,
            latest,
        )
        .await
    }

    /// [`App::start_job`] for a connection whose source and config the caller knows (it has
    /// just created it): no read of the read model, which may not show the connection yet.
    /// `latest_job`: the connection's latest job as the read model shows it, where the write
    /// side starts looking for the active one (see `syncjobs_actors::job_after`).
    pub(super) async fn create_job(
        &self,
        caller: &Caller,
        source_connection_id: Uuid,
        short_name: String,
        config: serde_json::Value,
        latest_job: Option<Uuid>,
    ) -> Result<CommandOutcome, Error> {
        let outcome = match self
            .jobs
            .create(NewJob {
                source_connection_id,
                organization_id: caller.organization_id,
                short_name,
                config,
                caused_by: caller.principal(),
                latest_job,
            })
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => return Err(self.refusal(e).await),
        };
        tracing::info!(job_id = %outcome.state.job_id, %source_connection_id, "sync job created");
        Ok(outcome)
    }

    /// Asks every pending or running job of the connection to stop; returns the ids of its
    /// jobs that were not final (cancelling ones included, which need no asking).
    pub(super) async fn cancel_active(
        &self,
        caller: &Caller,
        source_connection_id: Uuid,
    ) -> Result<Vec<Uuid>, Error> {
        let active = self
            .projection
            .read(async |m| m.active_jobs_of(source_connection_id).await)
            .await?;
        for &job_id in &active {
            match self.jobs.cancel(job_id, caller.principal()).await {
                Ok(o) => {
                    tracing::info!(%job_id, status = %o.state.status, "sync job cancelled for a delete")
                }
                // Already cancelling, or ended meanwhile: nothing to ask.
                Err(JobsError::CannotCancel { .. } | JobsError::Job(JobError::NotFound)) => {}
                Err(err) => {
                    tracing::warn!(%job_id, %err, "could not cancel a sync job for a delete")
                }
            }
        }
        Ok(active)
    }
}
