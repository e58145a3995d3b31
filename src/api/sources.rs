//! Which sources exist and what their `config` means.
//!
//! Provisional: until the pipeline's registry (`syncjobs_actors::pipeline::validate_source_config`)
//! is merged, this knows the one source the contract names, `timed`, with its documented
//! config. It will delegate to the registry so that the API and the runner agree exactly.

use super::error::ApiError;
use serde_json::{Map, Value};

/// The config to record for a new source connection of `short_name`, defaults filled in.
pub fn validate_config(
    short_name: &str,
    config: Option<&Map<String, Value>>,
) -> Result<Value, ApiError> {
    if short_name != "timed" {
        return Err(ApiError::NotFound(format!(
            "Source '{short_name}' not found"
        )));
    }
    let empty = Map::new();
    let config = config.unwrap_or(&empty);
    let invalid =
        |field: &str, message: &str| ApiError::Unprocessable(format!("config.{field}: {message}"));
    let entity_count = match config.get("entity_count") {
        None | Some(Value::Null) => 100,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "entity_count",
                    "must be an integer between 1 and 10000",
                ))
            }
        },
    };
    let duration_seconds = match config.get("duration_seconds") {
        None | Some(Value::Null) => 10.0,
        Some(v) => match v.as_f64() {
            Some(d) if (0.1..=600.0).contains(&d) => d,
            _ => {
                return Err(invalid(
                    "duration_seconds",
                    "must be a number between 0.1 and 600",
                ))
            }
        },
    };
    let seed = match config.get("seed") {
        None | Some(Value::Null) => 42,
        Some(v) => match v.as_i64() {
            Some(s) => s,
            _ => return Err(invalid("seed", "must be an integer")),
        },
    };
    Ok(serde_json::json!({
        "entity_count": entity_count,
        "duration_seconds": duration_seconds,
        "seed": seed,
    }))
}

/// The display name Airweave gives a source (`timed` -> `Timed`), for default connection names.
pub fn display_name(short_name: &str) -> String {
    let mut c = short_name.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
