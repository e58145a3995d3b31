//! The client's errors as the store's: what an operator fixes or waits out (the server down
//! or unreachable, no leader, a timeout, refused credentials) is [`StoreError::Unavailable`]
//! with a short, fixed cause; anything else is [`StoreError::Backend`]. Conflicts are mapped
//! where the stream and expected version are known (`codec::conflict`). No message carries
//! credentials.

use kurrentdb::Error;
use syncjobs_domain::redact::redact;
use syncjobs_domain::StoreError;

pub(crate) const UNREACHABLE: &str = "KurrentDB is unreachable";
pub(crate) const LOST: &str = "the KurrentDB connection was lost";
pub(crate) const DOWN: &str = "KurrentDB is unavailable";
pub(crate) const TIMEOUT: &str = "KurrentDB did not answer in time";
pub(crate) const NOT_LEADER: &str = "the KurrentDB node is not the leader";
pub(crate) const DENIED: &str = "KurrentDB refused the credentials";

/// `e` as the store reports it; the full (redacted) error is logged when the cause leaves
/// it out.
pub(crate) fn store_error(e: &Error) -> StoreError {
    let text = redact(&e.to_string()).into_owned();
    match unavailable_cause(e) {
        Some(cause) => {
            tracing::warn!(error = %text, cause, "event store unavailable");
            StoreError::Unavailable {
                cause: cause.to_owned(),
            }
        }
        None => StoreError::Backend(match e {
            Error::ResourceDeleted => "a stream of the store was deleted in KurrentDB".to_owned(),
            _ => format!("KurrentDB: {text}"),
        }),
    }
}

fn unavailable_cause(e: &Error) -> Option<&'static str> {
    Some(match e {
        Error::GrpcConnectionError(_) => UNREACHABLE,
        Error::ConnectionClosed => LOST,
        // The client's name for gRPC's Unavailable, Internal, DataLoss and Unknown: the node
        // went away (the client picks a node again).
        Error::ServerError(_) => DOWN,
        Error::DeadlineExceeded => TIMEOUT,
        Error::NotLeaderException(_) => NOT_LEADER,
        Error::AccessDenied => DENIED,
        _ => return None,
    })
}

/// After `e` the client is dead: it failed to connect, and will answer every later call
/// with `ConnectionClosed` until it is rebuilt.
pub(crate) fn client_is_dead(e: &Error) -> bool {
    matches!(e, Error::ConnectionClosed | Error::GrpcConnectionError(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kurrentdb::{CurrentRevision, Endpoint, GrpcConnectionError, StreamState};

    fn cause(e: Error) -> String {
        match store_error(&e) {
            StoreError::Unavailable { cause } => cause,
            other => panic!("{e:?} is not unavailable: {other:?}"),
        }
    }

    #[test]
    fn what_an_operator_fixes_is_unavailable_and_named() {
        assert_eq!(
            cause(Error::GrpcConnectionError(GrpcConnectionError::Grpc(
                "transport error: connection refused".into()
            ))),
            "KurrentDB is unreachable"
        );
        assert_eq!(
            cause(Error::GrpcConnectionError(
                GrpcConnectionError::MaxDiscoveryAttemptReached(3)
            )),
            UNREACHABLE
        );
        assert_eq!(cause(Error::ConnectionClosed), LOST);
        assert_eq!(
            cause(Error::ServerError("status: Unavailable".into())),
            DOWN
        );
        assert_eq!(cause(Error::DeadlineExceeded), TIMEOUT);
        assert_eq!(
            cause(Error::NotLeaderException(Endpoint {
                host: "node2".into(),
                port: 2113
            })),
            NOT_LEADER
        );
        assert_eq!(cause(Error::AccessDenied), DENIED);
    }

    #[test]
    fn anything_else_is_a_backend_error_without_credentials() {
        let e = store_error(&Error::InternalParsingError(
            "bad frame from esdb://admin:s3cret@db:2113".into(),
        ));
        match e {
            StoreError::Backend(text) => {
                assert!(text.contains("bad frame"), "{text}");
                assert!(text.contains("esdb://admin:***@db:2113"), "{text}");
                assert!(!text.contains("s3cret"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store_error(&Error::ResourceDeleted),
            StoreError::Backend(t) if t.contains("deleted")
        ));
        // Mapped where the stream is known; met anywhere else it is not a conflict of ours.
        let wrong = Error::WrongExpectedVersion {
            expected: StreamState::NoStream,
            current: CurrentRevision::Current(0),
        };
        assert!(matches!(store_error(&wrong), StoreError::Backend(_)));
    }

    #[test]
    fn only_a_failed_connect_kills_the_client() {
        assert!(client_is_dead(&Error::ConnectionClosed));
        assert!(client_is_dead(&Error::GrpcConnectionError(
            GrpcConnectionError::Grpc("refused".into())
        )));
        // The client reconnects by itself after these.
        assert!(!client_is_dead(&Error::ServerError("gone".into())));
        assert!(!client_is_dead(&Error::DeadlineExceeded));
    }
}
