//! Reading back the times the embedded store writes (`recorded_at`).

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

/// Parses a stored RFC 3339 time. The store always writes `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`
/// (UTC, nanoseconds): that shape is read directly, because chrono's general RFC 3339
/// parser was ~5% of a start-up that decodes every event of the log. Anything else,
/// including whatever the direct path does not accept, is left to chrono.
pub(crate) fn parse_stored(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    if let Some(t) = parse_fixed(s.as_bytes()) {
        return Ok(t);
    }
    Ok(DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc))
}

/// The exact shape the store writes, or None (then chrono decides).
fn parse_fixed(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() != 30
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[29] != b'Z'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(num(0, 4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, num(5, 7)?, num(8, 10)?)?;
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    // A leap second (60) is left to chrono.
    if second > 59 {
        return None;
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, num(20, 29)?)?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;

    fn chrono_reads(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn stored_times_read_back_as_chrono_reads_them() {
        let written = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        assert!(parse_fixed(written.as_bytes()).is_some(), "{written}");
        for s in [
            written.as_str(),
            "2026-11-29T05:30:09.242665123Z",
            "0001-01-01T00:00:00.000000000Z",
            "9999-12-31T23:59:59.999999999Z",
            "2024-02-29T12:00:00.000000001Z",
            // other shapes chrono reads: fewer digits, an offset, a leap second
            "2026-11-29T05:30:09.242665Z",
            "2026-11-29T05:30:09Z",
            "2026-11-29T06:30:09.242665123+01:00",
            "2016-12-31T23:59:60.500000000Z",
            "2026-11-29 05:30:09.242665123Z",
        ] {
            assert_eq!(parse_stored(s).ok(), chrono_reads(s), "{s}");
            assert!(parse_stored(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn malformed_times_are_refused() {
        for s in [
            "2025-02-29T12:00:00.000000000Z",
            "2026-13-01T00:00:00.000000000Z",
            "2026-11-29T24:00:00.000000000Z",
            "2026-11-29T05:61:09.242665123Z",
            "2026-11-29T05:30:09.24266512xZ",
            "+026-11-29T05:30:09.242665123Z",
            "",
            "yesterday",
        ] {
            assert!(parse_stored(s).is_err(), "{s}");
            assert!(chrono_reads(s).is_none(), "chrono agrees: {s}");
        }
    }
}
