//! The one place that maps failures to HTTP: every error answers JSON `{"detail": "..."}`
//! with the status and text of the wire contract, never a stack trace or an empty body.
//! The use cases' reasons ([`app::Error`]) become statuses and the contract's words here,
//! and only here (input that does not parse is worded by `input`, which reads it).

use crate::app;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use syncjobs_domain::{JobError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("No valid authentication provided")]
    Unauthenticated,
    #[error("Invalid or expired API key")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// Input that parses but is not acceptable (FastAPI's 422).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    /// The request body did not arrive in time; the connection is closed after the answer.
    #[error("{0}")]
    RequestTimeout(String),
    /// A dependency is gone (store closed, supervisor stopped); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else. The cause is logged, never sent.
    #[error("Internal server error")]
    Internal(String),
}

impl ApiError {
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    /// A path no route serves (FastAPI's 404).
    pub fn no_route() -> Self {
        ApiError::NotFound("Not Found".into())
    }
}

impl From<app::Error> for ApiError {
    fn from(e: app::Error) -> Self {
        use app::Error as E;
        match e {
            E::CollectionNotFound => ApiError::NotFound("Collection not found".into()),
            E::CollectionExists(readable_id) => ApiError::BadRequest(format!(
                "Collection with readable_id '{readable_id}' already exists"
            )),
            E::SourceConnectionNotFound => ApiError::NotFound("Source connection not found".into()),
            E::SourceConnectionExists => {
                ApiError::BadRequest("Source connection already exists".into())
            }
            E::NotACreation => ApiError::BadRequest(
                "Source connection creation must record SourceConnectionCreated".into(),
            ),
            E::UnknownSource(short_name) => {
                ApiError::NotFound(format!("Source '{short_name}' not found"))
            }
            // The registry's message names the field (`config.entity_count must be ...`).
            E::InvalidSourceConfig { message } => ApiError::Unprocessable(message),
            E::CredentialsNotAnObject => {
                ApiError::Unprocessable("authentication.credentials: expected an object".into())
            }
            E::UnsupportedAuthentication { short_name } => ApiError::BadRequest(format!(
                "Source {short_name} does not support this authentication method. \
                 Supported methods: ['direct']"
            )),
            E::JobNotFound | E::Job(JobError::NotFound) => {
                ApiError::NotFound("Sync job not found".into())
            }
            E::JobOfAnotherConnection => {
                ApiError::BadRequest("Sync job does not belong to this source connection".into())
            }
            E::CannotCancel(status) | E::Job(JobError::CannotCancel(status)) => {
                ApiError::BadRequest(format!("Cannot cancel job in {status} state"))
            }
            E::AlreadyActive(status) => ApiError::BadRequest(format!(
                "Cannot start new sync: a sync job is already {status}"
            )),
            E::Job(JobError::AlreadyExists) => {
                ApiError::BadRequest("Sync job already exists".into())
            }
            E::Job(JobError::InvalidTransition { status, command }) => {
                ApiError::BadRequest(format!("Cannot {command} a job in {status} state"))
            }
            E::Job(JobError::CountsWentDown) => {
                ApiError::BadRequest("Counts may not go down".into())
            }
            E::Job(JobError::NotYetDue { deadline }) => ApiError::BadRequest(format!(
                "The watchdog deadline {deadline} has not passed yet"
            )),
            // Only a rescue from a lost worker can be refused so; no API call makes one.
            E::Job(e @ JobError::NotOnWorker { .. }) => ApiError::BadRequest(e.to_string()),
            E::JobVersionNotFound { version, last } => ApiError::NotFound(format!(
                "Sync job version {version} not found: its versions are 1 to {last}"
            )),
            E::Contention(stream) => {
                ApiError::Unavailable(format!("Too many concurrent changes to {stream}"))
            }
            E::Store(e) => e.into(),
            E::History(cause) => ApiError::Internal(cause),
            E::SupervisorStopped => {
                ApiError::Unavailable("The job supervisor is not running".into())
            }
            E::ReadModel(e) => e.into(),
            E::WebhookSubscriptionNotFound => ApiError::NotFound("Subscription not found".into()),
            E::InvalidWebhookSubscription(e) => ApiError::Unprocessable(webhook_detail(&e)),
            E::BadWebhookSecret(e) => ApiError::Unprocessable(e.to_string()),
        }
    }
}

/// A refused subscription in words that name the field.
fn webhook_detail(e: &syncjobs_domain::WebhookError) -> String {
    use syncjobs_domain::webhook::EVENT_TYPES;
    use syncjobs_domain::WebhookError as W;
    match e {
        W::InvalidUrl(why) => why.clone(),
        W::NoEventTypes => "event_types cannot be empty".into(),
        W::UnknownEventType(t) => format!(
            "event_types: unknown event type '{t}'; known types: {}",
            EVENT_TYPES.join(", ")
        ),
        other => other.to_string(),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => ApiError::Unavailable("Event store is unavailable".into()),
            // The cause is path-free by contract (the store logged the full error); the
            // client learns why, and that retrying later may work.
            StoreError::Unavailable { cause } => {
                ApiError::Unavailable(format!("Event store is unavailable: {cause}"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The read model's database failed a read: away (PostgreSQL restarting, unreachable),
/// 503; else logged, answered 500.
impl From<syncjobs_projections::ReadError> for ApiError {
    fn from(e: syncjobs_projections::ReadError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(%e, "read model database unavailable");
            ApiError::Unavailable("Read model database is unavailable".into())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(cause) => tracing::error!(%cause, "request failed"),
            ApiError::Unavailable(detail) => tracing::warn!(%detail, "request refused: 503"),
            _ => {}
        }
        let mut res = HttpResponse::build(self.status_code());
        if let ApiError::RequestTimeout(_) = self {
            // The rest of the body may still come: the connection cannot be reused.
            res.force_close();
        }
        res.json(serde_json::json!({ "detail": self.to_string() }))
    }
}

/// Turns any extractor error actix raises (query strings, paths) into a JSON `detail`.
pub fn extractor_error(err: impl std::fmt::Display, what: &str) -> actix_web::Error {
    ApiError::Unprocessable(format!("Invalid {what}: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body(e: ApiError) -> (u16, serde_json::Value) {
        let r = e.error_response();
        let status = r.status().as_u16();
        let bytes = r.into_body().try_into_bytes().unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn errors_answer_the_contract_status_and_a_json_detail() {
        assert_eq!(
            body(ApiError::Unauthenticated),
            (
                401,
                serde_json::json!({"detail": "No valid authentication provided"})
            )
        );
        assert_eq!(
            body(ApiError::Forbidden),
            (
                403,
                serde_json::json!({"detail": "Invalid or expired API key"})
            )
        );
        assert_eq!(
            body(app::Error::JobNotFound.into()),
            (404, serde_json::json!({"detail": "Sync job not found"}))
        );
        let (status, detail) = body(ApiError::Internal("disk on fire at /secret/path".into()));
        assert_eq!(status, 500);
        assert_eq!(
            detail["detail"], "Internal server error",
            "causes are never sent"
        );
        assert_eq!(body(StoreError::Closed.into()).0, 503);
    }

    #[test]
    fn a_read_model_database_that_is_away_answers_503_else_500() {
        use syncjobs_projections::ReadError;
        assert_eq!(
            body(ReadError::Unavailable("pool timed out".into()).into()),
            (
                503,
                serde_json::json!({"detail": "Read model database is unavailable"})
            )
        );
        assert_eq!(body(ReadError::Decode("bad row".into()).into()).0, 500);
    }

    #[test]
    fn an_unavailable_store_answers_503_naming_the_cause() {
        let full = StoreError::Unavailable {
            cause: "database or disk is full".into(),
        };
        assert_eq!(
            body(full.into()),
            (
                503,
                serde_json::json!({"detail": "Event store is unavailable: database or disk is full"})
            )
        );
    }

    #[test]
    fn the_use_cases_reasons_answer_the_contract_words() {
        use syncjobs_domain::JobStatus;
        let detail = |e: app::Error| body(e.into());
        let bad_request = |text: &str| (400, serde_json::json!({ "detail": text }));
        assert_eq!(
            detail(app::Error::CannotCancel(JobStatus::Completed)),
            bad_request("Cannot cancel job in completed state")
        );
        assert_eq!(
            detail(app::Error::AlreadyActive(JobStatus::Running)),
            bad_request("Cannot start new sync: a sync job is already running")
        );
        assert_eq!(
            detail(app::Error::CollectionExists("twice".into())),
            bad_request("Collection with readable_id 'twice' already exists")
        );
        assert_eq!(
            detail(app::Error::UnsupportedAuthentication {
                short_name: "timed".into()
            }),
            bad_request(
                "Source timed does not support this authentication method. \
                 Supported methods: ['direct']"
            )
        );
        assert_eq!(
            detail(app::Error::JobOfAnotherConnection),
            bad_request("Sync job does not belong to this source connection")
        );
        assert_eq!(
            detail(app::Error::SourceConnectionNotFound),
            (
                404,
                serde_json::json!({"detail": "Source connection not found"})
            )
        );
        assert_eq!(
            detail(app::Error::UnknownSource("nope".into())),
            (
                404,
                serde_json::json!({"detail": "Source 'nope' not found"})
            )
        );
        assert_eq!(
            detail(app::Error::JobVersionNotFound {
                version: 9,
                last: 4
            }),
            (
                404,
                serde_json::json!({"detail": "Sync job version 9 not found: its versions are 1 to 4"})
            )
        );
        assert_eq!(
            detail(app::Error::Contention("collection_name-x".into())),
            (
                503,
                serde_json::json!({"detail": "Too many concurrent changes to collection_name-x"})
            )
        );
        assert_eq!(
            detail(app::Error::SupervisorStopped),
            (
                503,
                serde_json::json!({"detail": "The job supervisor is not running"})
            )
        );
        let (status, hidden) = detail(app::Error::History("job stream is corrupt".into()));
        assert_eq!(
            (status, &hidden["detail"]),
            (500, &serde_json::json!("Internal server error"))
        );
    }
}
