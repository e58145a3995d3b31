//! Why a use case did not do what it was asked, in the domain's terms. `api::error` maps
//! each reason to a status and the contract's words; the CLI prints the `Display` text.

use crate::replay::ReplayError;
use syncjobs_actors::command::CommandError;
use syncjobs_actors::pipeline::SourceConfigError;
use syncjobs_actors::JobsError;
use syncjobs_domain::{
    CollectionError, JobError, JobStatus, SourceConnectionError, StoreError, WebhookError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such collection")]
    CollectionNotFound,
    /// The readable id is held by a live collection of the organization.
    #[error("the readable id {0:?} is taken")]
    CollectionExists(String),
    #[error("no such source connection")]
    SourceConnectionNotFound,
    #[error("the source connection exists already")]
    SourceConnectionExists,
    /// A create that records something else than a creation: a caller's mistake.
    #[error("a source connection's creation must record its creation")]
    NotACreation,
    /// No source has this short name.
    #[error("no source {0:?}")]
    UnknownSource(String),
    /// The source's registry refused the config; `message` names the field.
    #[error("invalid source config: {message}")]
    InvalidSourceConfig { message: String },
    /// Credentials were given, but not as an object.
    #[error("the credentials are not an object")]
    CredentialsNotAnObject,
    /// Only direct credentials are supported.
    #[error("source {short_name} takes direct credentials only")]
    UnsupportedAuthentication { short_name: String },
    #[error("no such sync job")]
    JobNotFound,
    /// The job exists, but belongs to another source connection than the one named.
    #[error("the sync job is another source connection's")]
    JobOfAnotherConnection,
    /// The job is not pending or running.
    #[error("a job in {0} state cannot be cancelled")]
    CannotCancel(JobStatus),
    /// The source connection has a job in this (non-final) status already.
    #[error("a sync job is {0} already")]
    AlreadyActive(JobStatus),
    /// Any other refusal of the job's own decisions.
    #[error("the job refused: {0}")]
    Job(JobError),
    /// A job's stream has no such version.
    #[error("sync job version {version} does not exist (1 to {last})")]
    JobVersionNotFound { version: u64, last: u64 },
    /// Other writers kept winning the race to one stream: retrying later may work.
    #[error("too many concurrent changes to {0}")]
    Contention(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stream does not fold, or a job's history cannot be exported.
    #[error("a job's history cannot be read: {0}")]
    History(String),
    /// The job supervisor has stopped (the server is stopping).
    #[error("the job supervisor is not running")]
    SupervisorStopped,
    #[error("no such webhook subscription")]
    WebhookSubscriptionNotFound,
    /// A subscription refused for its content (url, event types, description).
    #[error("invalid webhook subscription: {0}")]
    InvalidWebhookSubscription(WebhookError),
    /// A given secret is not `whsec_` + base64 of enough bytes.
    #[error(transparent)]
    BadWebhookSecret(#[from] crate::webhooks::sign::BadSecret),
    /// The read model's database failed a read.
    #[error(transparent)]
    ReadModel(#[from] syncjobs_projections::ReadError),
}

impl From<JobsError> for Error {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::Job(JobError::NotFound) => Error::JobNotFound,
            JobsError::Job(JobError::CannotCancel(status))
            | JobsError::CannotCancel { status, .. } => Error::CannotCancel(status),
            JobsError::AlreadyActive { status, .. } => Error::AlreadyActive(status),
            JobsError::Job(e) => Error::Job(e),
            JobsError::Store(e) => Error::Store(e),
            e @ JobsError::Corrupt(_) => Error::History(e.to_string()),
            JobsError::Unavailable => Error::SupervisorStopped,
        }
    }
}

impl From<ReplayError> for Error {
    fn from(e: ReplayError) -> Self {
        Error::History(e.to_string())
    }
}

impl From<SourceConfigError> for Error {
    fn from(e: SourceConfigError) -> Self {
        match e {
            SourceConfigError::UnknownSource(short_name) => Error::UnknownSource(short_name),
            SourceConfigError::Invalid { message, .. } => Error::InvalidSourceConfig { message },
        }
    }
}

impl<E: std::error::Error> From<CommandError<E>> for Error
where
    Error: From<E>,
{
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(e) => e.into(),
            CommandError::Store(e) => Error::Store(e),
            CommandError::Contention { stream, .. } => Error::Contention(stream),
            e @ CommandError::Corrupt { .. } => Error::History(e.to_string()),
        }
    }
}

impl From<CollectionError> for Error {
    fn from(e: CollectionError) -> Self {
        match e {
            CollectionError::AlreadyExists(readable_id) => Error::CollectionExists(readable_id),
            CollectionError::NotFound => Error::CollectionNotFound,
        }
    }
}

impl From<syncjobs_domain::webhook::DeliveryError> for Error {
    /// A delivery's commands (recover) never refuse; this only meets the command path's
    /// bound.
    fn from(e: syncjobs_domain::webhook::DeliveryError) -> Self {
        Error::Contention(e.to_string())
    }
}

impl From<WebhookError> for Error {
    fn from(e: WebhookError) -> Self {
        match e {
            // A subscription id is drawn fresh for every create: a clash is not the
            // caller's to fix.
            WebhookError::NotFound | WebhookError::AlreadyExists => {
                Error::WebhookSubscriptionNotFound
            }
            e => Error::InvalidWebhookSubscription(e),
        }
    }
}

impl From<SourceConnectionError> for Error {
    fn from(e: SourceConnectionError) -> Self {
        match e {
            SourceConnectionError::NotFound => Error::SourceConnectionNotFound,
            SourceConnectionError::AlreadyExists => Error::SourceConnectionExists,
            SourceConnectionError::NotACreation => Error::NotACreation,
        }
    }
}
