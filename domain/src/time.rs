//! The one timestamp codec: RFC 3339, UTC, written with `Z`, by chrono. Each reader gets the
//! precision it has always seen, from here rather than from a format of its own:
//!
//! - [`micros`]: the API's bodies, the CLI, the progress stream (`2026-04-23T10:00:00.123456Z`);
//! - [`nanos`]: what a store writes, so that the text parses back to the identical instant;
//! - [`millis`]: people reading a replay (`2026-04-23T10:00:00.123Z`);
//! - [`parse`]: any RFC 3339 text (a stored time, whatever its precision or offset).
//!
//! Log lines carry tracing-subscriber's own timestamps, which read exactly as [`micros`].

use chrono::{DateTime, SecondsFormat, Utc};

/// `2026-04-23T10:00:00.123456Z`: the wire contract's precision (Airweave's SDKs read it).
pub fn micros(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `2026-04-23T10:00:00.123456789Z`: full precision, fixed width.
pub fn nanos(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// `2026-04-23T10:00:00.123Z`.
pub fn millis(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads RFC 3339 text at any precision and offset, as UTC.
pub fn parse(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    Ok(DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc))
}

/// `#[serde(serialize_with = "...")]` helpers writing [`micros`].
pub mod serde_micros {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    /// A timestamp as a JSON string.
    pub fn required<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::micros(t))
    }

    /// A timestamp as a JSON string, or `null`.
    pub fn optional<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => required(t, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn each_precision_reads_as_its_readers_expect() {
        let t = Utc.timestamp_opt(1_776_938_400, 123_456_789).unwrap();
        assert_eq!(micros(&t), "2026-04-23T10:00:00.123456Z");
        assert_eq!(nanos(&t), "2026-04-23T10:00:00.123456789Z");
        assert_eq!(millis(&t), "2026-04-23T10:00:00.123Z");
        let whole = Utc.timestamp_opt(1_776_938_400, 0).unwrap();
        assert_eq!(micros(&whole), "2026-04-23T10:00:00.000000Z");
        assert_eq!(nanos(&whole), "2026-04-23T10:00:00.000000000Z");
        assert_eq!(millis(&whole), "2026-04-23T10:00:00.000Z");
    }

    #[test]
    fn stored_text_parses_back_to_the_same_instant() {
        let t = Utc.timestamp_opt(1_776_938_400, 123_456_789).unwrap();
        assert_eq!(parse(&nanos(&t)), Ok(t));
        assert_eq!(
            parse("2026-04-23T11:00:00.123456789+01:00"),
            Ok(t),
            "an offset is read as UTC"
        );
        assert!(parse("2025-02-29T12:00:00.000000000Z").is_err());
        assert!(parse("yesterday").is_err());
    }
}
