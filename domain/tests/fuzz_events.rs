//! Fuzz target: event bodies as stored, decoded by family ([`Event::from_stored_as`]) and
//! through the upcaster ([`Event::from_stored`], schema v1 and v2).
//!
//! Properties: any body at any schema version decodes or is refused with an error, never a
//! panic; what decodes is an event that re-encodes to itself and can be folded and asked
//! for its deadline and counts without a panic; every valid event round-trips, and every
//! v1 body reads as the current event it stands for.

#[path = "../../tests/support/alloc_probe.rs"]
mod alloc_probe;
#[path = "../../tests/support/cases.rs"]
mod cases;
#[allow(dead_code)] // each target uses its own part
#[path = "../../tests/support/strategies.rs"]
mod strategies;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::Value;
use strategies::{any_time, as_v1, event, json_value, mutate, mutation, pointers, TYPES};
use syncjobs_domain::events::CURRENT_SCHEMA_VERSION;
use syncjobs_domain::{EntityCounts, Event, JobState, SyncJobEvent};
use uuid::Uuid;

/// A decoded event must be safe to use: its type, its fold from a fresh job, the deadline
/// and duration the service and `replay` compute from it, its counts' sums.
fn use_decoded(e: &Event, at: DateTime<Utc>) {
    let _ = e.event_type();
    let Event::Job(job) = e else { return };
    let created = SyncJobEvent::JobCreated {
        job_id: Uuid::nil(),
        source_connection_id: Uuid::nil(),
        organization_id: Uuid::nil(),
        short_name: "timed".into(),
        config: Value::Null,
    };
    let started = SyncJobEvent::JobStarted { worker: "w".into() };
    for history in [vec![&created, job], vec![&created, &started, job]] {
        if let Ok(Some(state)) = JobState::fold(history.into_iter().map(|e| (e, at))) {
            let _ = state.watchdog_deadline();
            let _ = state.duration_seconds();
            let _ = state.counts.total();
            let _ = state.counts.encountered();
        }
    }
}

/// Decodes `body` every way the store and the importers do; no panic, and anything that
/// decodes re-encodes to itself.
fn decode_every_way(body: &str) {
    let hints = TYPES.iter().copied().chain(["", "Nope", "jobcreated"]);
    let versions = [
        0,
        1,
        CURRENT_SCHEMA_VERSION,
        CURRENT_SCHEMA_VERSION + 1,
        u32::MAX,
    ];
    let mut decoded = Vec::new();
    for v in versions {
        decoded.push(Event::from_stored(v, body));
        for hint in hints.clone() {
            decoded.push(Event::from_stored_as(v, hint, body));
        }
    }
    for e in decoded.into_iter().flatten() {
        let json = e.to_json().expect("a decoded event serialises");
        assert_eq!(
            Event::from_stored(CURRENT_SCHEMA_VERSION, &json)
                .ok()
                .as_ref(),
            Some(&e),
            "{json}"
        );
        use_decoded(&e, Utc::now());
    }
}

proptest! {
    #![proptest_config(cases::cases(256))]

    #[test]
    fn every_event_round_trips_at_the_current_schema(e in event(), at in any_time()) {
        let json = e.to_json().unwrap();
        prop_assert_eq!(&Event::from_stored(CURRENT_SCHEMA_VERSION, &json).unwrap(), &e);
        prop_assert_eq!(
            &Event::from_stored_as(CURRENT_SCHEMA_VERSION, e.event_type(), &json).unwrap(),
            &e
        );
        use_decoded(&e, at);
    }

    #[test]
    fn every_v1_body_reads_as_the_event_it_stands_for(e in event()) {
        let (v1, expected) = as_v1(&e);
        prop_assert_eq!(&Event::from_stored(1, &v1).unwrap(), &expected, "{}", v1);
        prop_assert_eq!(&Event::from_stored_as(1, e.event_type(), &v1).unwrap(), &expected);
    }

    #[test]
    fn damaged_bodies_decode_or_are_refused_never_panic(
        e in event(),
        v1 in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let json = if v1 { as_v1(&e).0 } else { e.to_json().unwrap() };
        let mut bytes = json.into_bytes();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        decode_every_way(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn bodies_with_a_field_of_the_wrong_shape_decode_or_are_refused(
        e in event(),
        v1 in any::<bool>(),
        at in any::<prop::sample::Index>(),
        replacement in json_value(),
    ) {
        let json = if v1 { as_v1(&e).0 } else { e.to_json().unwrap() };
        let mut value: Value = serde_json::from_str(&json).unwrap();
        let mut all = Vec::new();
        pointers(&value, String::new(), &mut all);
        let target = &all[at.index(all.len())];
        if let Some(slot) = value.pointer_mut(target) {
            *slot = replacement;
        }
        decode_every_way(&value.to_string());
    }

    #[test]
    fn arbitrary_text_is_refused_cleanly(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let body = String::from_utf8_lossy(&body);
        let ((), largest) = alloc_probe::largest_allocation(|| decode_every_way(&body));
        prop_assert!(largest <= alloc_probe::allowance(body.len()), "{largest} bytes");
    }
}

/// Found by the targets above (their `use_decoded` step): a CancelRequested whose
/// stored timeout is beyond chrono's range made `watchdog_deadline` panic (the service's
/// recovery and `syncjobs replay` both ask for it). Such a deadline is simply never reached.
#[test]
fn a_cancel_timeout_beyond_the_calendar_has_a_deadline_instead_of_a_panic() {
    let at = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    for timeout_seconds in [u64::MAX, i64::MAX as u64, 10_000_000_000_000] {
        let history = [
            SyncJobEvent::JobCreated {
                job_id: Uuid::nil(),
                source_connection_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                short_name: "timed".into(),
                config: Value::Null,
            },
            SyncJobEvent::JobStarted { worker: "w".into() },
            SyncJobEvent::CancelRequested {
                requested_by: "api".into(),
                timeout_seconds,
            },
        ];
        let state = JobState::fold(history.iter().map(|e| (e, at)))
            .unwrap()
            .unwrap();
        let deadline = state
            .watchdog_deadline()
            .expect("cancelling has a deadline");
        assert!(
            deadline > at + chrono::Duration::days(365 * 1000),
            "{deadline}"
        );
    }
}

/// Found with it: counts near `u64::MAX` (a damaged or hand-written history) overflowed the
/// sums the progress stream and the pipeline read. They saturate instead.
#[test]
fn huge_counts_sum_without_overflow() {
    let c = EntityCounts {
        inserted: u64::MAX,
        updated: 1,
        deleted: u64::MAX,
        kept: 0,
        skipped: 0,
        failed: 0,
    };
    assert_eq!(c.encountered(), u64::MAX);
    assert_eq!(c.total(), u64::MAX);
}
