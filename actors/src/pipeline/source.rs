//! Sources: the [`Source`] trait (a stoppable async stream of entities), the registry of
//! known sources by `short_name`, and config validation at source-connection creation.
//!
//! Stopping is the source's job: the pipeline hands it a token and waits for its stream to
//! end. A source that ignores the token (the `timed` source with `ignore_cancel`, or a real
//! upstream API that hangs) keeps the run alive; only the watchdog ends such a job.

use super::entity::Entity;
use super::stub::{StubConfig, StubSource};
use super::timed::{TimedConfig, TimedSource};
use futures::stream::BoxStream;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The stream a source yields. An `Err` item fails the run (a source error, not a
/// per-entity processing error).
pub type EntityStream = BoxStream<'static, Result<Entity, SourceError>>;

/// A source failed as a whole (upstream unreachable, bad credentials...): the run fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source error: {0}")]
pub struct SourceError(pub String);

/// A source of entities for one run.
pub trait Source: Send + Sync + 'static {
    /// The `short_name` this source answers to (`timed`).
    fn short_name(&self) -> &str;

    /// Opens the entity stream. Once `stop` fires, a well-behaved source ends its stream
    /// (yields `None`) promptly, without waiting for its next scheduled entity.
    fn stream(&self, stop: CancellationToken) -> EntityStream;
}

/// Why a source connection's source or config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceConfigError {
    /// No source has this short_name (the API answers 404, in its own words).
    #[error("Source '{0}' not found")]
    UnknownSource(String),
    /// A config field is missing its type or range, or is not a field of the source.
    /// `message` names the field (`config.entity_count must be between 1 and 10000`).
    #[error("{message}")]
    Invalid { field: String, message: String },
}

impl SourceConfigError {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        SourceConfigError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

const KNOWN_SOURCES: &[&str] = &["timed", "stub"];

/// The short_names a source connection may use.
pub fn known_sources() -> &'static [&'static str] {
    KNOWN_SOURCES
}

/// Checks a source connection's `config` for `short_name` and returns it normalised, with
/// defaults filled in (so what is stored is what will run). `null` means "all defaults".
/// Unknown keys and wrong types are refused, not ignored: a typo must not silently run with
/// a default.
pub fn validate_source_config(
    short_name: &str,
    config: &Value,
) -> Result<Value, SourceConfigError> {
    match short_name {
        "timed" => Ok(TimedConfig::from_json(config)?.to_json()),
        "stub" => Ok(StubConfig::from_json(config)?.to_json()),
        other => Err(SourceConfigError::UnknownSource(other.to_string())),
    }
}

/// Checks a source connection's direct credentials for `short_name` (Airweave's auth
/// config of the source: `timed_key` or `stub_key`, any string, may be left out). They are
/// never stored.
pub fn validate_credentials(
    short_name: &str,
    credentials: &serde_json::Map<String, Value>,
) -> Result<(), SourceConfigError> {
    match short_name {
        "timed" => super::stub::check_key("timed_key", credentials),
        "stub" => super::stub::check_key("stub_key", credentials),
        other => Err(SourceConfigError::UnknownSource(other.to_string())),
    }
}

/// Builds the source a run needs. The config is validated again here: a job's stream may hold
/// a config written before a rule changed, and a run must fail cleanly on it.
pub fn open_source(short_name: &str, config: &Value) -> Result<Box<dyn Source>, SourceConfigError> {
    match short_name {
        "timed" => Ok(Box::new(TimedSource::new(TimedConfig::from_json(config)?))),
        "stub" => Ok(Box::new(StubSource::new(StubConfig::from_json(config)?))),
        other => Err(SourceConfigError::UnknownSource(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invalid_message(short_name: &str, config: Value) -> (String, String) {
        match validate_source_config(short_name, &config) {
            Err(SourceConfigError::Invalid { field, message }) => (field, message),
            other => panic!("expected Invalid for {config}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_an_empty_or_null_config() {
        let expected = json!({"entity_count": 100, "duration_seconds": 10.0, "seed": 42});
        assert_eq!(
            validate_source_config("timed", &Value::Null).unwrap(),
            expected
        );
        assert_eq!(
            validate_source_config("timed", &json!({})).unwrap(),
            expected
        );
    }

    #[test]
    fn given_values_are_kept_and_normalised() {
        let out = validate_source_config(
            "timed",
            &json!({"entity_count": 10000, "duration_seconds": 600, "seed": -7}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"entity_count": 10000, "duration_seconds": 600.0, "seed": -7})
        );
        let out = validate_source_config(
            "timed",
            &json!({"entity_count": 1, "duration_seconds": 0.1, "ignore_cancel": true}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"entity_count": 1, "duration_seconds": 0.1, "seed": 42, "ignore_cancel": true})
        );
    }

    #[test]
    fn out_of_range_values_name_the_field_and_the_range() {
        for bad in [json!(0), json!(10001), json!(-1)] {
            let (field, message) = invalid_message("timed", json!({ "entity_count": bad }));
            assert_eq!(field, "config.entity_count");
            assert_eq!(message, "config.entity_count must be between 1 and 10000");
        }
        for bad in [json!(0.09), json!(600.5), json!(0), json!(-3.0)] {
            let (field, message) = invalid_message("timed", json!({ "duration_seconds": bad }));
            assert_eq!(field, "config.duration_seconds");
            assert_eq!(
                message,
                "config.duration_seconds must be between 0.1 and 600"
            );
        }
    }

    #[test]
    fn wrong_types_are_refused() {
        for (key, bad) in [
            ("entity_count", json!("100")),
            ("entity_count", json!(10.5)),
            ("entity_count", json!(null)),
            ("duration_seconds", json!("10")),
            ("duration_seconds", json!(true)),
            ("seed", json!(1.5)),
            ("seed", json!("42")),
            ("seed", json!(u64::MAX)),
            ("ignore_cancel", json!("yes")),
        ] {
            let (field, message) = invalid_message("timed", json!({ key: bad }));
            assert_eq!(field, format!("config.{key}"));
            assert!(
                message.starts_with(&format!("config.{key} must be")),
                "{message}"
            );
        }
        let (field, message) = invalid_message("timed", json!([1, 2]));
        assert_eq!(field, "config");
        assert_eq!(message, "config must be an object");
    }

    /// JSON Schema's `integer` (the OpenAPI document's word) includes `5.0`; so does
    /// pydantic's `int` in Airweave.
    #[test]
    fn integral_numbers_written_with_a_fraction_are_integers() {
        let out = validate_source_config("timed", &json!({"entity_count": 5.0, "seed": -232546.0}))
            .unwrap();
        assert_eq!(out["entity_count"], json!(5));
        assert_eq!(out["seed"], json!(-232546));
        for past_i64 in ["1e19", "-9223372036854775809", "9223372036854775808"] {
            let bad: Value = serde_json::from_str(past_i64).unwrap();
            let (_, message) = invalid_message("timed", json!({ "seed": bad }));
            assert!(
                message.starts_with("config.seed must be an integer"),
                "{message}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let (field, message) = invalid_message("timed", json!({"entity_cont": 5}));
        assert_eq!(field, "config.entity_cont");
        assert!(message.contains("config.entity_cont is not a field of the timed source"));
        assert!(message.contains("entity_count"));
    }

    #[test]
    fn unknown_source_is_its_own_error() {
        let err = validate_source_config("github", &json!({})).unwrap_err();
        assert_eq!(err, SourceConfigError::UnknownSource("github".into()));
        assert_eq!(err.to_string(), "Source 'github' not found");
        assert!(open_source("github", &json!({})).is_err());
        assert_eq!(known_sources(), &["timed", "stub"]);
    }
}
