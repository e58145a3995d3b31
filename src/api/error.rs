//! The one place that maps failures to HTTP: every error answers JSON `{"detail": "..."}`
//! with the status and text of the wire contract, never a stack trace or an empty body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use syncjobs_actors::command::CommandError;
use syncjobs_domain::{CollectionError, SourceConnectionError, StoreError};

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
    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }

    pub fn collection_not_found() -> Self {
        ApiError::not_found("Collection")
    }

    pub fn source_connection_not_found() -> Self {
        ApiError::not_found("Source connection")
    }

    pub fn job_not_found() -> Self {
        ApiError::not_found("Sync job")
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => ApiError::Unavailable("Event store is unavailable".into()),
            // The cause is path-free by contract (the store logged the full error); the
            // client learns why, and that retrying later may work.
            StoreError::Unavailable { cause } => {
                ApiError::Unavailable(format!("Event store cannot write: {cause}"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl<E: std::error::Error> From<CommandError<E>> for ApiError
where
    ApiError: From<E>,
{
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(e) => e.into(),
            CommandError::Store(e) => e.into(),
            CommandError::Contention { stream, .. } => {
                ApiError::Unavailable(format!("Too many concurrent changes to {stream}"))
            }
            e @ CommandError::Corrupt { .. } => ApiError::internal(e),
        }
    }
}

impl From<CollectionError> for ApiError {
    fn from(e: CollectionError) -> Self {
        match e {
            CollectionError::NotFound => ApiError::collection_not_found(),
            e @ CollectionError::AlreadyExists(_) => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<SourceConnectionError> for ApiError {
    fn from(e: SourceConnectionError) -> Self {
        match e {
            SourceConnectionError::NotFound => ApiError::source_connection_not_found(),
            other => ApiError::BadRequest(other.to_string()),
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
            body(ApiError::job_not_found()),
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
    fn a_store_that_cannot_write_answers_503_naming_the_cause() {
        let full = StoreError::Unavailable {
            cause: "database or disk is full".into(),
        };
        assert_eq!(
            body(full.into()),
            (
                503,
                serde_json::json!({"detail": "Event store cannot write: database or disk is full"})
            )
        );
    }
}
