//! PostgreSQL's errors as the store's: what an operator fixes (the server down or
//! unreachable, a full disk, a read-only server) is [`StoreError::Unavailable`] with a short,
//! fixed cause; anything else is [`StoreError::Backend`]. No message carries credentials.

use std::error::Error as _;
use syncjobs_domain::redact::redact;
use syncjobs_domain::StoreError;

/// The cause a client sees when the connection broke mid-way or could not be made.
pub(crate) const LOST: &str = "the database connection was lost";
pub(crate) const UNREACHABLE: &str = "the database is unreachable";

/// `e` as the store reports it; the full (redacted) error is logged when the cause leaves
/// it out.
pub(crate) fn store_error(e: &tokio_postgres::Error) -> StoreError {
    match unavailable_cause(e) {
        Some(cause) => {
            tracing::warn!(error = %redact(&describe(e)), cause, "event store unavailable");
            StoreError::Unavailable {
                cause: cause.to_owned(),
            }
        }
        None => StoreError::Backend(redact(&describe(e)).into_owned()),
    }
}

/// `e` with what the server or the socket said: tokio-postgres's own text is only its
/// kind ("db error"). A server's error gives its severity, code and message, never its
/// detail, which may quote a row's values.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), e.source()) {
        (Some(db), _) => format!(
            "{e}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        ),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

/// A connection the pool could not hand out.
pub(crate) fn pool_error(e: &deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => store_error(e),
        PoolError::Timeout(_) => {
            tracing::warn!(error = %redact(&e.to_string()), "event store unavailable");
            StoreError::Unavailable {
                cause: UNREACHABLE.to_owned(),
            }
        }
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Backend(redact(&other.to_string()).into_owned()),
    }
}

/// Is `e` a unique violation (`23505`): someone holds this (stream, version) already.
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// The connection `e` came from is gone (closed by the server, terminated, broken): what
/// was not committed on it was rolled back.
pub(crate) fn connection_gone(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => matches!(code.code(), "57P01" | "57P02") || code.code().starts_with("08"),
        None => e.is_closed(),
    }
}

pub(crate) fn unavailable_cause(e: &tokio_postgres::Error) -> Option<&'static str> {
    let Some(code) = e.code() else {
        if e.is_closed() {
            return Some(LOST);
        }
        // An I/O error under the client's error: refused, reset, timed out.
        let io = e
            .source()
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
        return io.then_some(UNREACHABLE);
    };
    let code = code.code();
    Some(match code {
        "53100" => "database or disk is full",
        "53300" => "the database has too many connections",
        "25006" => "the database is read-only",
        "57P01" | "57P02" => "the database is shutting down",
        "57P03" => "the database is starting up",
        _ if code.starts_with("08") => LOST,
        _ if code.starts_with("53") => "the database is out of resources",
        _ if code.starts_with("58") => "the database has an I/O error",
        _ => return None,
    })
}
