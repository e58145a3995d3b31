//! The one timestamp codec: RFC 3339, UTC, written with `Z`, by chrono. Each reader gets the
//! precision it has always seen, from here rather than from a format of its own:
//!
//! - [`micros`]: the API's bodies, the CLI, the progress stream (`2026-04-23T10:00:00.123456Z`);
//! - [`nanos`]: what a store writes, so that the text parses back to the identical instant;
//! - [`millis`]: people reading a replay (`2026-04-23T10:00:00.123Z`);
//! - [`parse`]: any RFC 3339 text (a stored time, whatever its precision or offset).
//!
//! Log lines carry tracing-subscriber's own timestamps, which read exactly as [`micros`].

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

/// `2026-04-23T10:00:00.123456Z`: the wire contract's precision (Airweave's SDKs read it).
pub fn micros(t: &DateTime<Utc>) -> String {
    let mut buf = [0; MICROS_LEN];
    match micros_into(t, &mut buf) {
        Some(text) => text.to_owned(),
        None => t.to_rfc3339_opts(SecondsFormat::Micros, true),
    }
}

/// Length of [`micros`]' text for years 0 to 9999.
pub const MICROS_LEN: usize = "2026-04-23T10:00:00.123456Z".len();

/// [`micros`] written into `buf`, digit by digit, allocating nothing: every response has a
/// few timestamps, and chrono's writer (which builds a `String`) took a few % of the CPU of
/// a `GET` one job (BENCHMARKS.md #2). `None` for what only chrono spells right: years
/// outside 0..=9999 and leap seconds ([`micros`] then asks chrono).
pub fn micros_into<'a>(t: &DateTime<Utc>, buf: &'a mut [u8; MICROS_LEN]) -> Option<&'a str> {
    let t = t.naive_utc();
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = t.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    *buf = *b"0000-00-00T00:00:00.000000Z";
    for (at, width, value) in [
        (0, 4, year),
        (5, 2, t.month()),
        (8, 2, t.day()),
        (11, 2, t.hour()),
        (14, 2, t.minute()),
        (17, 2, t.second()),
        (20, 6, nanos / 1000),
    ] {
        let mut value = value;
        for digit in buf[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    std::str::from_utf8(buf).ok()
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
        let mut buf = [0; super::MICROS_LEN];
        match super::micros_into(t, &mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_str(&super::micros(t)),
        }
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
    fn micros_reads_as_chrono_writes_it_at_any_instant() {
        let chrono_text = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut instants: Vec<DateTime<Utc>> = [
            (0, 0),
            (951_782_400, 999_999_999), // 2000-02-29, the last nanosecond of a second
            (-62_167_219_200, 1_000),   // year 0
            (-62_167_219_201, 0),       // year -1
            (253_402_300_799, 5_000),   // 9999-12-31T23:59:59
            (253_402_300_800, 0),       // year 10000
        ]
        .into_iter()
        .map(|(s, n)| Utc.timestamp_opt(s, n).unwrap())
        .collect();
        // A leap second, as chrono holds it.
        instants.push(
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
        );
        let mut s: i64 = 1;
        for _ in 0..2_000 {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407)
                & i64::MAX;
            let secs = s % 4_102_444_800; // up to 2100
            instants.push(Utc.timestamp_opt(secs, (s % 1_000_000_000) as u32).unwrap());
        }
        for t in &instants {
            assert_eq!(micros(t), chrono_text(t), "{t:?}");
        }
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
