//! Which sources exist and what their `config` means: the pipeline's registry decides, so
//! that what the API stores is exactly what the runner will accept.

use super::error::ApiError;
use serde_json::{Map, Value};
use syncjobs_actors::pipeline::{validate_source_config, SourceConfigError};

/// The config to record for a new source connection of `short_name`, defaults filled in.
pub fn validate_config(
    short_name: &str,
    config: Option<&Map<String, Value>>,
) -> Result<Value, ApiError> {
    let config = config.map_or(Value::Null, |m| Value::Object(m.clone()));
    validate_source_config(short_name, &config).map_err(|e| match e {
        e @ SourceConfigError::UnknownSource(_) => ApiError::NotFound(e.to_string()),
        SourceConfigError::Invalid { message, .. } => ApiError::Unprocessable(message),
    })
}

/// The display name Airweave gives a source (`timed` -> `Timed`), for default connection names.
pub fn display_name(short_name: &str) -> String {
    let mut c = short_name.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
