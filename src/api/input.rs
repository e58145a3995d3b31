//! Reading untrusted input: JSON bodies (bounded), typed fields with errors that name the
//! field, path UUIDs and query parameters. Nothing here panics or changes state; every
//! refusal is an [`ApiError`] with a clear `detail`.
//!
//! Bodies are read after authentication (the handler calls [`read_json`] itself), so an
//! anonymous client learns nothing but 401 and cannot make the server buffer a body.

use super::error::ApiError;
use super::ApiSettings;
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use actix_web::HttpRequest;
use futures::{Stream, StreamExt};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// Reads the whole body as one JSON object: at most `settings.max_body_bytes` (413 beyond),
/// within `settings.body_timeout` (408 after: a client that announces a body and never
/// sends it must not hold the connection and its handler), without duplicate keys (422).
/// The content type is not checked: clients that forget the header still mean JSON.
pub async fn read_json<S>(
    req: &HttpRequest,
    payload: S,
    settings: &ApiSettings,
) -> Result<Map<String, Value>, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = read_body(
        payload,
        declared,
        settings.max_body_bytes,
        settings.body_timeout,
    )
    .await?;
    parse_object(&body)
}

/// The body's bytes, bounded in size and in time.
async fn read_body<S>(
    mut payload: S,
    declared: Option<usize>,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let too_large =
        || ApiError::PayloadTooLarge(format!("Request body is larger than {limit} bytes"));
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let read = async {
        let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::BadRequest(format!("Cannot read request body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(body) => body,
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "Request body not received within {} s",
            timeout.as_secs_f64()
        ))),
    }
}

/// Parses a body as one JSON object. Unlike `serde_json::from_slice::<Value>` (where the
/// last of two equal keys silently wins), a key repeated in any object is refused, naming
/// where: `name: duplicate key in JSON object`, `config.seed: ...`.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Unprocessable(
            "Request body is required (a JSON object)".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = ValueSeed { at: &At::Root }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::Unprocessable(
            "Request body must be a JSON object".into(),
        )),
        Err(e) if e.is_data() => {
            // Only our visitor raises data errors: its message names the field; the
            // position serde_json appends says nothing more to the client.
            let text = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            Err(ApiError::Unprocessable(
                text.strip_suffix(&suffix).unwrap_or(&text).to_owned(),
            ))
        }
        Err(e) => Err(ApiError::Unprocessable(format!(
            "Request body is not valid JSON: {e}"
        ))),
    }
}

/// Where a value sits in the body, rendered only for an error (`config.seed`, `a[2].b`).
enum At<'a> {
    Root,
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root => Ok(()),
            At::Key(At::Root, key) => write!(f, "{}", clip(key)),
            At::Key(parent, key) => write!(f, "{parent}.{}", clip(key)),
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Builds a [`Value`] like serde_json's own, refusing duplicate keys.
struct ValueSeed<'a> {
    at: &'a At<'a>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed {
            at: &At::Index(self.at, items.len()),
        })? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = At::Key(self.at, &key);
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "{at}: duplicate key in JSON object"
                )));
            }
            let value = map.next_value_seed(ValueSeed { at: &at })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
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

    /// An array of strings that may be absent or null; at most `max` items.
    pub fn opt_str_list(&self, field: &str, max: usize) -> Result<Option<Vec<String>>, ApiError> {
        let items = match self.0.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(wrong_type(field, "an array of strings", other)),
        };
        if items.len() > max {
            return Err(ApiError::Unprocessable(format!(
                "{field}: at most {max} items"
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type(&format!("{field}[{i}]"), "a string", other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An ISO 8601 date-time that may be absent or null; without an offset it is UTC (as
    /// pydantic reads a naive one for Airweave).
    pub fn opt_datetime(
        &self,
        field: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        let Some(s) = self.opt_str(field)? else {
            return Ok(None);
        };
        let parsed = chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .map(|t| t.and_utc())
            })
            .map_err(|_| {
                ApiError::Unprocessable(format!(
                    "{field}: expected an ISO 8601 date-time, got {}",
                    clip(s)
                ))
            })?;
        Ok(Some(parsed))
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

/// Which control characters a text field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// Names and ids: none.
    OneLine,
    /// Free text (descriptions): tab, line feed and carriage return only.
    MultiLine,
}

/// Refuses control characters (C0 U+0000-U+001F, DEL U+007F, C1 U+0080-U+009F): they are
/// invisible in listings, break logs and terminals, and a NUL cuts C strings short. The
/// OpenAPI document states the same rule as a `pattern`.
pub fn check_text(field: &str, value: &str, kind: Text) -> Result<(), ApiError> {
    let allowed = |c: char| kind == Text::MultiLine && matches!(c, '\t' | '\n' | '\r');
    match value
        .chars()
        .enumerate()
        .find(|&(_, c)| c.is_control() && !allowed(c))
    {
        None => Ok(()),
        Some((at, c)) => Err(ApiError::Unprocessable(format!(
            "{field}: control characters are not allowed (U+{:04X} at character {})",
            u32::from(c),
            at + 1
        ))),
    }
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

/// The two ids of a job's path (`/source-connections/{id}/jobs/{job_id}`), in that order.
pub fn job_path(path: &(String, String)) -> Result<(Uuid, Uuid), ApiError> {
    Ok((
        path_uuid("source_connection_id", &path.0)?,
        path_uuid("job_id", &path.1)?,
    ))
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

    /// A boolean parameter in FastAPI's spellings (`true`/`false`, `1`/`0`, `yes`/`no`,
    /// `on`/`off`), `default` when absent.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        let Some(raw) = self.0.get(name) else {
            return Ok(default);
        };
        match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ApiError::Unprocessable(format!(
                "{name} must be a boolean, got {}",
                clip(raw)
            ))),
        }
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

/// Longest readable id accepted (Airweave sets none; ours bounds the stream name).
const MAX_READABLE_ID: usize = 128;

/// Checks a readable id chosen by the client: Airweave's pattern, then our length bound.
pub fn check_readable_id(rid: &str) -> Result<(), ApiError> {
    if !valid_readable_id(rid) {
        return Err(ApiError::Unprocessable(
            "readable_id: must match ^[a-z0-9]+(-[a-z0-9]+)*$ (lower-case letters and \
             digits, in groups separated by single hyphens)"
                .into(),
        ));
    }
    check_len("readable_id", rid, 1, MAX_READABLE_ID)
}

/// The header a reconnecting EventSource sends with the last `id:` it received.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The version to resume after: 0 without the header (or with an empty one, which
/// EventSource never sends but a proxy might), 422 for anything but an integer >= 0.
pub fn last_event_id(req: &HttpRequest) -> Result<u64, ApiError> {
    let Some(value) = req.headers().get(LAST_EVENT_ID) else {
        return Ok(0);
    };
    let bad = |shown: &str| {
        ApiError::Unprocessable(format!(
            "Last-Event-ID must be a stream version (an integer >= 0), got {shown:?}"
        ))
    };
    let text = value
        .to_str()
        .map_err(|_| bad("a header that is not text"))?
        .trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<u64>().map_err(|_| bad(&clip(text)))
}

/// The required `version` query parameter of a job's state: a stream version.
pub fn job_version(query: &HashMap<String, String>) -> Result<u64, ApiError> {
    if !query.contains_key("version") {
        return Err(ApiError::Unprocessable(
            "version is required: the stream version to show the job at (1 or more)".into(),
        ));
    }
    Ok(Query(query).int("version", 0, 0, i64::MAX)? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> String {
        match parse_object(body.as_bytes()) {
            Err(ApiError::Unprocessable(detail)) => detail,
            other => panic!("{body}: expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_naming_where() {
        assert_eq!(
            refusal(r#"{"name":"dup","name":"long enough"}"#),
            "name: duplicate key in JSON object"
        );
        assert_eq!(
            refusal(r#"{"config": {"seed": 1, "entity_count": 2, "seed": 3}}"#),
            "config.seed: duplicate key in JSON object"
        );
        assert_eq!(
            refusal(r#"{"a": [1, {"b": {"c": 1, "c": 1}}]}"#),
            "a[1].b.c: duplicate key in JSON object"
        );
        // Keys equal once unescaped are the same key.
        assert_eq!(
            refusal(r#"{"name": "x", "n\u0061me": "y"}"#),
            "name: duplicate key in JSON object"
        );
    }

    #[test]
    fn bodies_parse_as_serde_json_would_when_keys_are_distinct() {
        let text = r#"{"s": "é\n", "i": -7, "u": 18446744073709551615, "f": 0.5,
                       "b": true, "n": null, "a": [[], {}], "o": {"x": {"y": [1, "2"]}}}"#;
        let ours = Value::Object(parse_object(text.as_bytes()).unwrap());
        let theirs: Value = serde_json::from_str(text).unwrap();
        assert_eq!(ours, theirs);
        // Same object key in two sibling objects is no duplicate.
        assert!(parse_object(br#"{"a": {"k": 1}, "b": {"k": 2}}"#).is_ok());
    }

    #[test]
    fn malformed_bodies_are_still_explained() {
        assert!(refusal(r#"{"name":"#).starts_with("Request body is not valid JSON"));
        assert!(refusal(r#"{"a": 1} {"b": 2}"#).starts_with("Request body is not valid JSON"));
        assert_eq!(refusal("[1]"), "Request body must be a JSON object");
        assert_eq!(refusal(" \n"), "Request body is required (a JSON object)");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(refusal(&format!(r#"{{"a": {deep}}}"#)).contains("recursion limit"));
    }

    #[test]
    fn control_characters_are_refused_in_text_naming_the_field() {
        for bad in [
            "a\0b",
            "tab\there",
            "line\nbreak",
            "del\u{7f}",
            "c1\u{85}",
            "\u{9f}",
        ] {
            let e = check_text("name", bad, Text::OneLine)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("name: control characters are not allowed (U+"),
                "{e}"
            );
        }
        assert_eq!(
            check_text("name", "ab\0", Text::OneLine)
                .unwrap_err()
                .to_string(),
            "name: control characters are not allowed (U+0000 at character 3)"
        );
        for ok in ["Finance Data", "é ü ß 日本", "a\u{a0}b", "emoji 🎉"] {
            assert!(check_text("name", ok, Text::OneLine).is_ok(), "{ok:?}");
        }
        // A description may span lines; other control characters stay out.
        assert!(check_text("description", "one\r\ntwo\tthree", Text::MultiLine).is_ok());
        assert!(check_text("description", "bell\u{7}", Text::MultiLine).is_err());
        assert!(check_text("description", "nul\0", Text::MultiLine).is_err());
    }

    /// 7 bytes of a body, then nothing more, ever.
    fn stalled_body() -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
        futures::stream::iter([Ok(Bytes::from_static(b"{\"name\""))])
            .chain(futures::stream::pending())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_refused_when_the_timeout_ends() {
        let started = tokio::time::Instant::now();
        let e = read_body(stalled_body(), Some(100), 1024, Duration::from_millis(2500))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        assert!(matches!(e, ApiError::RequestTimeout(_)), "{e:?}");
        assert_eq!(e.to_string(), "Request body not received within 2.5 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_slowly_but_within_the_timeout_is_read() {
        let chunks = futures::stream::iter([&b"{\"na"[..], b"me\": ", b"\"slow\"}"])
            .then(|c| async move {
                tokio::time::sleep(Duration::from_millis(900)).await;
                Ok(Bytes::from_static(c))
            })
            .boxed();
        let body = read_body(chunks, None, 1024, Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(body, b"{\"name\": \"slow\"}");
    }

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
