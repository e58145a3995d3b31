//! Reading untrusted input: JSON bodies (bounded), typed fields with errors that name the
//! field, path UUIDs and query parameters. Nothing here panics or changes state; every
//! refusal is an [`ApiError`] with a clear `detail`.
//!
//! Bodies are read after authentication (the handler calls [`read_json`] itself), so an
//! anonymous client learns nothing but 401 and cannot make the server buffer a body.

use super::error::ApiError;
use actix_web::{web, HttpRequest};
use futures::StreamExt;
use serde_json::{Map, Value};
use std::collections::HashMap;
use uuid::Uuid;

/// Reads the whole body as one JSON object, refusing more than `limit` bytes with 413.
/// The content type is not checked: clients that forget the header still mean JSON.
pub async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("Request body is larger than {limit} bytes"));
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("Cannot read request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Unprocessable(
            "Request body is required (a JSON object)".into(),
        ));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::Unprocessable(
            "Request body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::Unprocessable(format!(
            "Request body is not valid JSON: {e}"
        ))),
    }
}

/// Typed access to the fields of a JSON object; errors name the field.
pub struct Fields<'a>(pub &'a Map<String, Value>);

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::Unprocessable(format!(
        "{field}: expected {expected}, got {}",
        type_name(got)
    ))
}

impl<'a> Fields<'a> {
    /// A string field that may be absent or null.
    pub fn opt_str(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(wrong_type(field, "a string", other)),
        }
    }

    pub fn req_str(&self, field: &str) -> Result<&'a str, ApiError> {
        self.opt_str(field)?
            .ok_or_else(|| ApiError::Unprocessable(format!("{field}: field required")))
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(field, "a boolean", other)),
        }
    }

    pub fn opt_object(&self, field: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(wrong_type(field, "an object", other)),
        }
    }
}

/// Checks a string's length in characters, Airweave's bounds for names.
pub fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(ApiError::Unprocessable(format!(
            "{field}: must be between {min} and {max} characters (got {n})"
        )));
    }
    Ok(())
}

/// A UUID from a path segment: 422 `<param> is not a valid UUID: <value>`.
pub fn path_uuid(param: &str, value: &str) -> Result<Uuid, ApiError> {
    // Only the canonical hyphenated form and the bare 32-hex form, like pydantic.
    let ok_shape = value.len() == 36 || value.len() == 32;
    match Uuid::parse_str(value) {
        Ok(id) if ok_shape => Ok(id),
        _ => Err(ApiError::Unprocessable(format!(
            "{param} is not a valid UUID: {}",
            clip(value)
        ))),
    }
}

/// Echoes at most a bounded piece of client input back in an error.
pub fn clip(value: &str) -> String {
    const MAX: usize = 100;
    if value.chars().count() <= MAX {
        value.to_owned()
    } else {
        let mut s: String = value.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

/// Query parameters, parsed by actix; the values are checked here.
pub struct Query<'a>(pub &'a HashMap<String, String>);

impl Query<'_> {
    /// An integer parameter in `min..=max`, `default` when absent.
    pub fn int(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        let Some(raw) = self.0.get(name) else {
            return Ok(default);
        };
        let bound = || {
            if max == i64::MAX {
                format!("{name} must be an integer greater than or equal to {min}")
            } else {
                format!("{name} must be an integer between {min} and {max}")
            }
        };
        match raw.trim().parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            Ok(_) => Err(ApiError::Unprocessable(format!(
                "{} (got {v})",
                bound(),
                v = clip(raw)
            ))),
            Err(_) => Err(ApiError::Unprocessable(format!(
                "{} (got {:?})",
                bound(),
                clip(raw)
            ))),
        }
    }

    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Airweave's readable id rule: lower-case letters and digits in hyphen-separated groups.
pub fn valid_readable_id(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_uuids_name_the_parameter_and_the_value() {
        let id = Uuid::new_v4();
        assert_eq!(path_uuid("job_id", &id.to_string()).unwrap(), id);
        assert_eq!(path_uuid("job_id", &id.simple().to_string()).unwrap(), id);
        let e = path_uuid("source_connection_id", "not-a-uuid").unwrap_err();
        assert_eq!(
            e.to_string(),
            "source_connection_id is not a valid UUID: not-a-uuid"
        );
        assert!(
            path_uuid("x", &format!("{{{id}}}")).is_err(),
            "braced forms are refused"
        );
        let long = "x".repeat(10_000);
        assert!(path_uuid("x", &long).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn readable_ids_follow_the_airweave_pattern() {
        for ok in ["a", "finance-data-ab123", "x1-2-3"] {
            assert!(valid_readable_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "A", "a_b", "a b", "é"] {
            assert!(!valid_readable_id(bad), "{bad}");
        }
    }

    #[test]
    fn query_ints_are_bounded_and_explained() {
        let q: HashMap<String, String> = [
            ("limit".to_string(), "0".to_string()),
            ("skip".into(), "x".into()),
        ]
        .into();
        let q = Query(&q);
        let e = q.int("limit", 100, 1, 1000).unwrap_err().to_string();
        assert!(
            e.contains("limit must be an integer between 1 and 1000"),
            "{e}"
        );
        let e = q.int("skip", 0, 0, i64::MAX).unwrap_err().to_string();
        assert!(
            e.starts_with("skip must be an integer greater than or equal to 0"),
            "{e}"
        );
        assert_eq!(q.int("other", 7, 0, 10).unwrap(), 7);
    }

    #[test]
    fn fields_name_themselves_in_type_errors() {
        let v: Map<String, Value> =
            serde_json::from_str(r#"{"name": 5, "ok": "x", "flag": "yes"}"#).unwrap();
        let f = Fields(&v);
        assert_eq!(
            f.req_str("name").unwrap_err().to_string(),
            "name: expected a string, got a number"
        );
        assert_eq!(
            f.req_str("missing").unwrap_err().to_string(),
            "missing: field required"
        );
        assert_eq!(f.opt_str("ok").unwrap(), Some("x"));
        assert!(f
            .opt_bool("flag")
            .unwrap_err()
            .to_string()
            .starts_with("flag:"));
        assert!(check_len("name", "abc", 4, 64)
            .unwrap_err()
            .to_string()
            .contains("between 4 and 64"));
    }
}
