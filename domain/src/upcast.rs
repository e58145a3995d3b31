//! Schema evolution: stored events are never rewritten; older bodies are upcast on read.
//!
//! Version history:
//! - v1: counts were flat fields of the job events (`{"inserted":..,"updated":..}`), and
//!   CancelRequested had no `timeout_seconds` (the timeout was the fixed 180 s default).
//! - v2 (current): counts live under `counts`; CancelRequested records its timeout.
//!
//! A field added with a default that means "as before" needs no new version: bodies
//! without it decode as they always did, and older builds ignore it. So far:
//! `counts_reconciled` on JobFailed, Cancelled and ForceCancelled (absent: false), written
//! only when true.

use crate::events::{
    event_type, EntityCounts, Event, EventFamily, SyncJobEvent, CURRENT_SCHEMA_VERSION,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The watchdog timeout every v1 CancelRequested was recorded under.
const V1_CANCEL_TIMEOUT_SECONDS: u64 = 180;

#[derive(Debug, thiserror::Error)]
pub enum UpcastError {
    #[error("event body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema version {0} is newer than this build understands ({CURRENT_SCHEMA_VERSION})")]
    FromTheFuture(u32),
    #[error("schema version 0 does not exist")]
    Zero,
}

/// Parses a stored body written at `schema_version` into the current event type.
pub fn decode(schema_version: u32, json: &str) -> Result<Event, UpcastError> {
    match schema_version {
        CURRENT_SCHEMA_VERSION => decode_current(json),
        0 => Err(UpcastError::Zero),
        v if v > CURRENT_SCHEMA_VERSION => Err(UpcastError::FromTheFuture(v)),
        v => {
            let mut value: Value = serde_json::from_str(json)?;
            if v < 2 {
                value = v1_to_v2(value);
            }
            Ok(serde_json::from_value(value)?)
        }
    }
}

/// Like [`decode`], given the event type the store recorded beside the body: a current body
/// is deserialised straight into the enum of that type's family, in one pass, instead of a
/// first pass over the body for its `type`. The body still decides what the event is: one
/// that is not of the named family goes through [`decode`] (which decodes or refuses it), so
/// a type column that disagrees with its body is left for the caller to catch as before.
pub fn decode_as(schema_version: u32, event_type: &str, json: &str) -> Result<Event, UpcastError> {
    if schema_version == CURRENT_SCHEMA_VERSION {
        if let Some(event) = decode_counts_event(event_type, json) {
            return Ok(event);
        }
        let hinted = match EventFamily::of(event_type) {
            Some(EventFamily::Job) => serde_json::from_str(json).map(Event::Job),
            Some(EventFamily::Collection) => serde_json::from_str(json).map(Event::Collection),
            Some(EventFamily::SourceConnection) => {
                serde_json::from_str(json).map(Event::SourceConnection)
            }
            Some(EventFamily::Access) => serde_json::from_str(json).map(Event::Access),
            Some(EventFamily::Webhook) => serde_json::from_str(json).map(Event::Webhook),
            Some(EventFamily::Worker) => serde_json::from_str(json).map(Event::Worker),
            None => return decode(schema_version, json),
        };
        if let Ok(event) = hinted {
            return Ok(event);
        }
    }
    decode(schema_version, json)
}

const COUNTS_PREFIX_PROGRESS: &str = r#"{"type":"ProgressRecorded","data":{"counts":{"#;
const COUNTS_PREFIX_COMPLETED: &str = r#"{"type":"JobCompleted","data":{"counts":{"#;

/// A `ProgressRecorded` or `JobCompleted` body exactly as [`Event::to_json`] writes it
/// (every count, in field order, no spaces), read without serde; None for anything else,
/// which the general path then reads (or refuses) as before. Eight of a finished job's ten
/// events have one of these bodies, and serde's decoding was a third of the CPU of a
/// PostgreSQL first start (bench #12).
fn decode_counts_event(event_type: &str, json: &str) -> Option<Event> {
    let (mut rest, progress) = match event_type {
        event_type::PROGRESS_RECORDED => (json.strip_prefix(COUNTS_PREFIX_PROGRESS)?, true),
        event_type::JOB_COMPLETED => (json.strip_prefix(COUNTS_PREFIX_COMPLETED)?, false),
        _ => return None,
    };
    let mut values = [0u64; 6];
    for (i, (name, value)) in COUNT_FIELDS.iter().zip(&mut values).enumerate() {
        if i > 0 {
            rest = rest.strip_prefix(',')?;
        }
        rest = rest
            .strip_prefix('"')?
            .strip_prefix(name)?
            .strip_prefix("\":")?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, tail) = rest.split_at(digits);
        // JSON has no leading zeros; a number too large for u64 fails to parse. Both are
        // left to serde, which refuses them.
        if digits == 0 || (digits > 1 && number.starts_with('0')) {
            return None;
        }
        *value = number.parse().ok()?;
        rest = tail;
    }
    if rest != "}}}" {
        return None;
    }
    let [inserted, updated, deleted, kept, skipped, failed] = values;
    let counts = EntityCounts {
        inserted,
        updated,
        deleted,
        kept,
        skipped,
        failed,
    };
    Some(Event::Job(if progress {
        SyncJobEvent::ProgressRecorded { counts }
    } else {
        SyncJobEvent::JobCompleted { counts }
    }))
}

/// Reads the body's `type` first and deserialises the one enum that has it. `Event` is
/// untagged, and serde's untagged path buffers the whole body and tries each enum in turn:
/// that was a third of the CPU of replaying the log at start-up (BENCHMARKS.md, #4).
fn decode_current(json: &str) -> Result<Event, UpcastError> {
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
    }
    let Ok(tag) = serde_json::from_str::<Tag>(json) else {
        // Not an event body at all: the general path reports why.
        return Ok(serde_json::from_str(json)?);
    };
    Ok(match EventFamily::of(&tag.kind) {
        Some(EventFamily::Job) => Event::Job(serde_json::from_str(json)?),
        Some(EventFamily::Collection) => Event::Collection(serde_json::from_str(json)?),
        Some(EventFamily::SourceConnection) => Event::SourceConnection(serde_json::from_str(json)?),
        Some(EventFamily::Access) => Event::Access(serde_json::from_str(json)?),
        Some(EventFamily::Webhook) => Event::Webhook(serde_json::from_str(json)?),
        Some(EventFamily::Worker) => Event::Worker(serde_json::from_str(json)?),
        None => serde_json::from_str(json)?,
    })
}

const COUNT_FIELDS: [&str; 6] = [
    "inserted", "updated", "deleted", "kept", "skipped", "failed",
];

fn v1_to_v2(mut value: Value) -> Value {
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(data) = value.get_mut("data").and_then(Value::as_object_mut) else {
        return value;
    };
    match kind.as_str() {
        event_type::PROGRESS_RECORDED
        | event_type::JOB_COMPLETED
        | event_type::JOB_FAILED
        | event_type::CANCELLED
        | event_type::FORCE_CANCELLED => {
            let mut counts = Map::new();
            for field in COUNT_FIELDS {
                if let Some(n) = data.remove(field) {
                    counts.insert(field.to_owned(), n);
                }
            }
            data.entry("counts").or_insert(Value::Object(counts));
        }
        event_type::CANCEL_REQUESTED => {
            data.entry("timeout_seconds")
                .or_insert(Value::from(V1_CANCEL_TIMEOUT_SECONDS));
        }
        _ => {}
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-read counts bodies decode as serde decodes them, and any body not exactly in
    /// `to_json`'s form is left to serde, with serde's answer (an event or a refusal).
    #[test]
    fn counts_bodies_read_by_hand_match_serde_and_others_fall_back() {
        let counts = EntityCounts {
            inserted: 0,
            updated: 7,
            deleted: 10,
            kept: 123_456,
            skipped: 1,
            failed: u64::MAX,
        };
        for event in [
            SyncJobEvent::ProgressRecorded { counts },
            SyncJobEvent::JobCompleted { counts },
            SyncJobEvent::ProgressRecorded {
                counts: EntityCounts::default(),
            },
        ] {
            let event = Event::Job(event);
            let json = event.to_json().unwrap();
            let by_hand = decode_counts_event(event.event_type(), &json);
            assert_eq!(by_hand.as_ref(), Some(&event), "{json}");
            assert_eq!(decode_current(&json).unwrap(), event);
            assert_eq!(
                decode_as(CURRENT_SCHEMA_VERSION, event.event_type(), &json).unwrap(),
                event
            );
            // A type column naming the other counts event: the body decides.
            for hint in [event_type::PROGRESS_RECORDED, event_type::JOB_COMPLETED] {
                assert_eq!(
                    decode_as(CURRENT_SCHEMA_VERSION, hint, &json).unwrap(),
                    event
                );
            }
        }
        let p = |c: &str| format!(r#"{{"type":"ProgressRecorded","data":{{"counts":{{{c}}}}}}}"#);
        let all = r#""inserted":1,"updated":2,"deleted":3,"kept":4,"skipped":5,"failed":6"#;
        assert!(decode_counts_event(event_type::PROGRESS_RECORDED, &p(all)).is_some());
        for body in [
            // serde reads these; the hand path leaves them to it.
            p(r#""inserted":1,"updated":2"#),
            p(r#""updated":2,"inserted":1,"deleted":3,"kept":4,"skipped":5,"failed":6"#),
            p(&all.replace(':', ": ")),
            p(&all.replace("inserted", r"\u0069nserted")),
            format!("{} ", p(all)),
            // serde refuses these, and so does decode_as.
            p(&all.replace(":1,", ":01,")),
            p(&all.replace(":1,", ":-1,")),
            p(&all.replace(":1,", ":1.5,")),
            p(&all.replace(":6", ":18446744073709551616")),
            p(&all.replace(":6", ":6,")),
            format!("{}x", p(all)),
        ] {
            assert_eq!(
                decode_counts_event(event_type::PROGRESS_RECORDED, &body),
                None,
                "{body}"
            );
            let hinted = decode_as(CURRENT_SCHEMA_VERSION, event_type::PROGRESS_RECORDED, &body);
            match decode_current(&body) {
                Ok(event) => assert_eq!(hinted.unwrap(), event, "{body}"),
                Err(_) => assert!(hinted.is_err(), "{body}"),
            }
        }
        // Another type's body, or an older schema's, never takes the hand path.
        let started = Event::Job(SyncJobEvent::JobStarted { worker: "w".into() });
        let json = started.to_json().unwrap();
        assert_eq!(decode_counts_event(event_type::JOB_STARTED, &json), None);
        assert_eq!(
            decode_counts_event(event_type::PROGRESS_RECORDED, &json),
            None
        );
    }

    #[test]
    fn a_v1_progress_event_reads_as_current() {
        let v1 = r#"{"type":"ProgressRecorded","data":{"inserted":7,"updated":2,"failed":1}}"#;
        let event = decode(1, v1).unwrap();
        assert_eq!(
            event,
            Event::Job(SyncJobEvent::ProgressRecorded {
                counts: EntityCounts {
                    inserted: 7,
                    updated: 2,
                    failed: 1,
                    ..Default::default()
                }
            })
        );
    }

    #[test]
    fn a_v1_cancel_request_gets_the_timeout_it_was_made_under() {
        let v1 = r#"{"type":"CancelRequested","data":{"requested_by":"api-key:1"}}"#;
        assert_eq!(
            decode(1, v1).unwrap(),
            Event::Job(SyncJobEvent::CancelRequested {
                requested_by: "api-key:1".into(),
                timeout_seconds: 180
            })
        );
    }

    #[test]
    fn a_v1_final_event_reads_as_current_and_not_reconciled() {
        let v1 = r#"{"type":"JobFailed","data":{"error":"e","inserted":3}}"#;
        assert_eq!(
            decode(1, v1).unwrap(),
            Event::Job(SyncJobEvent::JobFailed {
                error: "e".into(),
                error_category: None,
                counts: EntityCounts {
                    inserted: 3,
                    ..Default::default()
                },
                counts_reconciled: false,
            })
        );
    }

    #[test]
    fn a_v1_body_read_with_its_type_is_upcast_too() {
        let v1 = r#"{"type":"ProgressRecorded","data":{"inserted":7}}"#;
        assert_eq!(
            decode_as(1, "ProgressRecorded", v1).unwrap(),
            decode(1, v1).unwrap()
        );
    }

    #[test]
    fn bodies_that_are_no_known_event_are_refused() {
        for body in [
            "not json",
            r#"{"type":"Nope","data":{}}"#,
            r#"{"data":{}}"#,
            r#"{"type":"JobStarted","data":{"worker":7}}"#,
            r#"{"type":"JobStarted","data":{"worker":"w"}} trailing"#,
        ] {
            assert!(
                matches!(
                    decode(CURRENT_SCHEMA_VERSION, body),
                    Err(UpcastError::Json(_))
                ),
                "{body}"
            );
            for hint in ["JobStarted", "CollectionCreated", "Nope"] {
                assert!(
                    matches!(
                        decode_as(CURRENT_SCHEMA_VERSION, hint, body),
                        Err(UpcastError::Json(_))
                    ),
                    "{hint}: {body}"
                );
            }
        }
    }

    #[test]
    fn unknown_versions_are_refused_not_guessed() {
        assert!(matches!(
            decode(99, "{}"),
            Err(UpcastError::FromTheFuture(99))
        ));
        assert!(matches!(decode(0, "{}"), Err(UpcastError::Zero)));
    }
}
