//! Strategies shared by the fuzz targets of every crate (`#[path]`): events of every family
//! with awkward values (any char, huge counts and timeouts, times across chrono's range),
//! their v1 bodies, and byte-level damage.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value};
use syncjobs_domain::{
    AccessEvent, CollectionEvent, EntityCounts, Event, SourceConnectionEvent, SyncJobEvent,
    WorkerEvent,
};
use uuid::Uuid;

/// Every event type name the store records.
pub const TYPES: [&str; 20] = [
    "JobCreated",
    "JobStarted",
    "ProgressRecorded",
    "JobCompleted",
    "JobFailed",
    "CancelRequested",
    "Cancelled",
    "ForceCancelled",
    "CollectionCreated",
    "CollectionUpdated",
    "CollectionDeleted",
    "SourceConnectionCreated",
    "SourceConnectionDeleted",
    "OrganizationCreated",
    "ApiKeyCreated",
    "ApiKeyRevoked",
    "JobResumed",
    "WorkerStarted",
    "WorkerStopped",
    "WorkerLost",
];

pub fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

pub fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

/// Any instant chrono can hold, whole range (±262,000 years).
pub fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    (
        -8_000_000_000_000i64..8_000_000_000_000,
        0u32..1_000_000_000,
    )
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().unwrap_or_default())
}

/// Times a store really records: years 1 to 9999, the range RFC 3339 can write.
pub fn stored_time() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().unwrap_or_default())
}

pub fn counts() -> impl Strategy<Value = EntityCounts> {
    // Small and huge: huge counts are what overflow a careless sum.
    let n = prop_oneof![0u64..1000, any::<u64>()];
    (n.clone(), n.clone(), n.clone(), n.clone(), n.clone(), n).prop_map(
        |(inserted, updated, deleted, kept, skipped, failed)| EntityCounts {
            inserted,
            updated,
            deleted,
            kept,
            skipped,
            failed,
        },
    )
}

pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Decimals of up to 10 digits, like the configs clients send: serde_json (without
        // its `float_roundtrip` feature) may read a 17-digit float back one bit off.
        (any::<i32>(), 0i32..4).prop_map(|(m, e)| Value::from(f64::from(m) / 10f64.powi(e))),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

pub fn timeout() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1000, any::<u64>()]
}

pub fn job_event() -> impl Strategy<Value = SyncJobEvent> {
    prop_oneof![
        (uuid(), uuid(), uuid(), text(), json_value()).prop_map(|(j, s, o, short_name, config)| {
            SyncJobEvent::JobCreated {
                job_id: j,
                source_connection_id: s,
                organization_id: o,
                short_name,
                config,
            }
        }),
        text().prop_map(|worker| SyncJobEvent::JobStarted { worker }),
        counts().prop_map(|counts| SyncJobEvent::ProgressRecorded { counts }),
        counts().prop_map(|counts| SyncJobEvent::JobCompleted { counts }),
        (text(), prop::option::of(text()), counts(), any::<bool>()).prop_map(
            |(error, error_category, counts, counts_reconciled)| SyncJobEvent::JobFailed {
                error,
                error_category,
                counts,
                counts_reconciled,
            }
        ),
        (text(), timeout()).prop_map(|(requested_by, timeout_seconds)| {
            SyncJobEvent::CancelRequested {
                requested_by,
                timeout_seconds,
            }
        }),
        (counts(), prop::option::of(text()), any::<bool>()).prop_map(
            |(counts, note, counts_reconciled)| SyncJobEvent::Cancelled {
                counts,
                note,
                counts_reconciled,
            }
        ),
        (text(), timeout(), any_time(), counts(), any::<bool>()).prop_map(
            |(error, timeout_seconds, requested_at, counts, counts_reconciled)| {
                SyncJobEvent::ForceCancelled {
                    error,
                    timeout_seconds,
                    requested_at,
                    counts,
                    counts_reconciled,
                }
            }
        ),
        (
            any::<u32>(),
            text(),
            prop::option::of(any_time()),
            counts(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(attempt, lost_worker, last_seen, counts, counts_reconciled, handed_back)| {
                    SyncJobEvent::JobResumed {
                        attempt,
                        lost_worker,
                        last_seen,
                        counts,
                        counts_reconciled,
                        handed_back,
                    }
                }
            ),
    ]
}

pub fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => job_event().prop_map(Event::Job),
        1 => (uuid(), uuid(), text(), text()).prop_map(|(c, o, name, readable_id)| {
            Event::Collection(CollectionEvent::CollectionCreated {
                collection_id: c,
                organization_id: o,
                name,
                readable_id,
            })
        }),
        1 => (uuid(), prop::option::of(text())).prop_map(|(c, name)| Event::Collection(
            CollectionEvent::CollectionUpdated { collection_id: c, name }
        )),
        1 => uuid().prop_map(|c| Event::Collection(CollectionEvent::CollectionDeleted {
            collection_id: c
        })),
        1 => (
            (uuid(), uuid(), uuid(), text(), text()),
            (prop::option::of(text()), text(), json_value(), text(), any::<bool>())
        )
            .prop_map(|((s, o, c, rcid, name), (description, short_name, config, auth_method, authenticated))| {
                Event::SourceConnection(SourceConnectionEvent::SourceConnectionCreated {
                    source_connection_id: s,
                    organization_id: o,
                    collection_id: c,
                    readable_collection_id: rcid,
                    name,
                    description,
                    short_name,
                    config,
                    auth_method,
                    authenticated,
                })
            }),
        1 => (uuid(), any::<bool>()).prop_map(|(s, with_collection)| Event::SourceConnection(
            SourceConnectionEvent::SourceConnectionDeleted { source_connection_id: s, with_collection }
        )),
        1 => (uuid(), text()).prop_map(|(o, name)| Event::Access(
            AccessEvent::OrganizationCreated { organization_id: o, name }
        )),
        1 => (uuid(), uuid(), text(), text(), prop::option::of(any_time())).prop_map(
            |(k, o, key_hash, prefix, expires_at)| Event::Access(AccessEvent::ApiKeyCreated {
                key_id: k,
                organization_id: o,
                key_hash,
                prefix,
                expires_at,
            })
        ),
        1 => uuid().prop_map(|k| Event::Access(AccessEvent::ApiKeyRevoked { key_id: k })),
        1 => (text(), text(), any::<u32>(), prop::option::of(any::<u64>())).prop_map(
            |(id, host, pid, capacity)| Event::Worker(WorkerEvent::WorkerStarted {
                id,
                host,
                pid,
                capacity,
            })
        ),
        1 => (text(), any::<u64>()).prop_map(|(id, handed_back)| Event::Worker(
            WorkerEvent::WorkerStopped { id, handed_back }
        )),
        1 => (text(), any_time(), any::<u64>(), text()).prop_map(
            |(id, last_seen, timeout_seconds, detected_by)| Event::Worker(
                WorkerEvent::WorkerLost { id, last_seen, timeout_seconds, detected_by }
            )
        ),
    ]
}

/// The body a v1 build wrote for `e` (counts flat in `data`, no cancel timeout), and the
/// event a current build must read it as.
pub fn as_v1(e: &Event) -> (String, Event) {
    let mut value = serde_json::to_value(e).expect("events serialise");
    let mut expected = e.clone();
    if let Some(data) = value.get_mut("data").and_then(Value::as_object_mut) {
        // JobResumed came after v1: no v1 body of it exists to flatten.
        if !matches!(e, Event::Job(SyncJobEvent::JobResumed { .. })) {
            if let Some(Value::Object(counts)) = data.remove("counts") {
                data.extend(counts);
            }
        }
        if let Event::Job(SyncJobEvent::CancelRequested {
            timeout_seconds, ..
        }) = &mut expected
        {
            data.remove("timeout_seconds");
            *timeout_seconds = 180;
        }
    }
    (value.to_string(), expected)
}

/// A byte-level change to a body: what a torn write, a bad disk or a hand edit leaves.
#[derive(Debug, Clone)]
pub enum Mutation {
    Truncate(prop::sample::Index),
    FlipBit(prop::sample::Index, u8),
    Insert(prop::sample::Index, &'static str),
    Remove(prop::sample::Index, usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop::sample::select(vec![
        "\"",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "-1",
        "1e400",
        "18446744073709551616",
        "null",
        "\\u0000",
        "\\ud800",
        "\"type\":\"JobStarted\"",
        "\u{feff}",
        "0.5",
        "true",
    ]);
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<prop::sample::Index>(), token).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<prop::sample::Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

pub fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::FlipBit(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] ^= 1 << b;
        }
        Mutation::Insert(i, t) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, t.bytes());
        }
        Mutation::Remove(i, n) => {
            let i = i.index(bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
    }
}

/// Every JSON pointer of a tree, the root included.
pub fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(item, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}
