//! The caller's own things on the read model. Another organization's collection,
//! connection or job does not exist for a caller: it is "not found", never "forbidden".

use super::{Caller, Error};
use syncjobs_domain::JobState;
use syncjobs_projections::{Collection, ReadView, SourceConnection};
use uuid::Uuid;

/// The caller's collection with this readable id.
pub async fn collection(
    m: &ReadView<'_>,
    caller: &Caller,
    readable_id: &str,
) -> Result<Collection, Error> {
    m.collection(caller.organization_id, readable_id)
        .await?
        .ok_or(Error::CollectionNotFound)
}

/// The caller's source connection with this id.
pub async fn source_connection(
    m: &ReadView<'_>,
    caller: &Caller,
    id: Uuid,
) -> Result<SourceConnection, Error> {
    m.source_connection(caller.organization_id, id)
        .await?
        .ok_or(Error::SourceConnectionNotFound)
}

/// The caller's job, whatever its connection.
pub async fn job(m: &ReadView<'_>, caller: &Caller, job_id: Uuid) -> Result<JobState, Error> {
    m.job(job_id)
        .await?
        .filter(|j| j.organization_id == caller.organization_id)
        .ok_or(Error::JobNotFound)
}

/// The job of the caller's source connection `sc`: first the connection (not found), then
/// the job (not found), then that the job is the connection's.
pub async fn connection_job(
    m: &ReadView<'_>,
    caller: &Caller,
    sc: Uuid,
    job_id: Uuid,
) -> Result<JobState, Error> {
    if !m.has_source_connection(caller.organization_id, sc).await? {
        return Err(Error::SourceConnectionNotFound);
    }
    let job = job(m, caller, job_id).await?;
    if job.source_connection_id != sc {
        return Err(Error::JobOfAnotherConnection);
    }
    Ok(job)
}
